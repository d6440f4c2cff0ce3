"""cifarlab: train, compare and diagnose CNN image classifiers on CIFAR-10."""

__version__ = "0.1.0"

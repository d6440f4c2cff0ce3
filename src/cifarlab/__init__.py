"""cifarlab: train, compare and diagnose CNN image classifiers on CIFAR-10.

    import cifarlab
    data = cifarlab.load_data("cifar-10-python.tar.gz")
    run = cifarlab.train("batchnorm", data=data, epochs=5, out="runs/batchnorm")

The public functions live in `cifarlab.api` and are imported on first use, so that
`import cifarlab` (and the command line's `--help`) stays fast.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"
# The public API, the names of `cifarlab.api.__all__`, listed here so `import cifarlab` stays cheap.
__all__ = [
    "Run", "Study", "build_report", "evaluate", "experiment_config", "export", "load_data",
    "open_run", "predict", "search", "study", "train",
]  # fmt: skip


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module("cifarlab.api"), name)
    raise AttributeError(f"module 'cifarlab' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])

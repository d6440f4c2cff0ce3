"""The notebook's step A, for any data a user has: find it, read it safely, split it.

dataset.py     `Dataset`, `load` and the seeded validation split: the one entry point
standard.py    the standard sets (CIFAR-10, CIFAR-100, Fashion-MNIST, MNIST) from their files
folders.py     class-folder datasets: your own images, one folder per class
images.py      one image file as the model's input; which files count as images
safe_files.py  pickles, tar archives and downloads read without running any code
cache.py       the per-user cache of decoded arrays and extracted archives
"""

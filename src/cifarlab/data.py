"""The notebook's steps A–C: find CIFAR-10, read it safely, and split it reproducibly.

Images stay uint8 in memory; scaling to [0, 1] and one-hot labels happen per batch in
`cifarlab.pipeline`. The split is the notebook's: a seeded random share of the training
images becomes the validation set, and the official test set is kept apart for the end.

    cifarlab data info --data cifar-10-python.tar.gz
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cifarlab import archives
from cifarlab.errors import UserError

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_SHA256 = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
_TRAIN_BATCHES = tuple(f"data_batch_{index}" for index in range(1, 6))
_BATCHES = (*_TRAIN_BATCHES, "test_batch")


@dataclass(frozen=True)
class Dataset:
    """Train, validation and test images (uint8, N×H×W×3) with integer labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    source: str  # Where the images came from, for run records and reports.
    name: str = "cifar10"
    notes: dict = field(default_factory=dict)  # How the splits were made.

    def __repr__(self) -> str:
        sizes = ", ".join(f"{split} {sum(counts)}" for split, counts in self.counts().items())
        return (
            f"Dataset({self.name}: {sizes} images of {'×'.join(map(str, self.image_shape))}, "
            f"{self.num_classes} classes, from {self.source})"
        )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])

    def counts(self) -> dict[str, list[int]]:
        """Images per class in each split, in class order."""
        splits = {"train": self.y_train, "val": self.y_val, "test": self.y_test}
        return {
            split: np.bincount(labels, minlength=self.num_classes).tolist()
            for split, labels in splits.items()
        }


def load(
    path: str | Path | None = None,
    dataset: str = "cifar10",
    val_fraction: float = 0.2,
    seed: int = 0,
    image_size: int = 32,
    test_fraction: float = 0.2,
    quiet: bool = False,
) -> Dataset:
    """The dataset at `path` (archive, batches folder or a folder holding either), split.

    Without `path`: `$CIFARLAB_DATA`, else the per-user cache, else the official download.
    `test_fraction` applies only to datasets without their own test split.
    """
    if dataset != "cifar10":
        raise UserError(f"Unknown dataset '{dataset}'; choose cifar10.")
    if image_size != 32:
        raise UserError(f"CIFAR-10 images are 32 pixels square, not {image_size}.")
    source = locate(path, quiet=quiet)
    x_train, y_train, x_test, y_test = read_cifar10(source)
    return split(x_train, y_train, x_test, y_test, CIFAR10_CLASSES, str(source), val_fraction, seed)


def load_for(config, path: str | Path | None = None, quiet: bool = False) -> Dataset:
    """The data a run of `config` trains on: its dataset, split and image size."""
    return load(
        path, config.dataset, config.val_fraction, config.seed, config.image_size,
        config.test_fraction, quiet,
    )  # fmt: skip


def split(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    class_names: tuple[str, ...],
    source: str,
    val_fraction: float,
    seed: int,
    name: str = "cifar10",
    notes: dict | None = None,
) -> Dataset:
    """Hold out a seeded random `val_fraction` of the training images, as the notebook's step A."""
    if not 0 < val_fraction < 1:
        raise UserError(f"val_fraction must lie between 0 and 1, not {val_fraction}.")
    order = np.random.default_rng(seed).permutation(len(y_train))
    num_val = int(val_fraction * len(y_train))
    if num_val < 1 or num_val == len(y_train):
        raise UserError(f"{len(y_train)} training images are too few to hold out {val_fraction}.")
    val, train = order[:num_val], order[num_val:]
    return Dataset(
        x_train=x_train[train],
        y_train=y_train[train],
        x_val=x_train[val],
        y_val=y_train[val],
        x_test=x_test,
        y_test=y_test,
        class_names=tuple(class_names),
        source=source,
        name=name,
        notes={"val_fraction": val_fraction, "seed": seed, **(notes or {})},
    )


def cache_dir() -> Path:
    """The per-user cache: `$XDG_CACHE_HOME/cifarlab`, else `~/.cache/cifarlab`."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cifarlab"


def locate(path: str | Path | None = None, quiet: bool = False) -> Path:
    """The CIFAR-10 archive or batches folder to read, downloading it only as the last resort."""
    if path is None and os.environ.get("CIFARLAB_DATA"):
        path = os.environ["CIFARLAB_DATA"]
    if path is not None:
        return _resolve(Path(path).expanduser())
    cached = cache_dir() / CIFAR10_ARCHIVE
    if cached.is_file():
        return cached
    return archives.download(CIFAR10_URL, cached, CIFAR10_SHA256, quiet=quiet)


def _resolve(path: Path) -> Path:
    if not path.exists():
        raise UserError(f"Data path {path} does not exist; pass an existing archive or folder.")
    if path.is_file():
        return path
    if all((path / name).is_file() for name in _BATCHES):
        return path
    for candidate in (path / CIFAR10_FOLDER, path / CIFAR10_ARCHIVE):
        if candidate.exists():
            return _resolve(candidate)
    raise UserError(
        f"{path} holds neither {CIFAR10_ARCHIVE} nor a {CIFAR10_FOLDER} folder; "
        "point --data at one of them."
    )


def read_cifar10(source: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train and test images (N×32×32×3 uint8) and labels from an archive or batches folder.

    Decoded arrays are cached under the per-user cache, keyed by the source's files, so a second
    read takes well under a second.
    """
    cached = cache_dir() / "decoded" / f"cifar10-{_fingerprint(source)}.npz"
    if cached.is_file():
        with np.load(cached) as arrays:
            return tuple(arrays[key] for key in ("x_train", "y_train", "x_test", "y_test"))
    if source.is_dir():
        payloads = {name: (source / name).read_bytes() for name in _BATCHES}
    else:
        payloads = archives.read_tar_members(source, set(_BATCHES))
    missing = [name for name in _BATCHES if name not in payloads]
    if missing:
        raise UserError(f"{source} lacks {', '.join(missing)}; it is not a CIFAR-10 archive.")
    train = [_read_batch(payloads[name], f"{source}:{name}") for name in _TRAIN_BATCHES]
    x_test, y_test = _read_batch(payloads["test_batch"], f"{source}:test_batch")
    x_train = np.concatenate([images for images, _ in train])
    y_train = np.concatenate([labels for _, labels in train])
    _save_atomically(cached, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return x_train, y_train, x_test, y_test


def _read_batch(payload: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    batch = archives.safe_unpickle(payload, source)
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise UserError(f"{source} is not a CIFAR-10 batch (no data and labels); replace it.")
    data, labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise UserError(f"{source} holds {data.dtype} rows of shape {data.shape}, not uint8×3072.")
    if labels.shape != (len(data),) or (len(labels) and not 0 <= labels.min() <= labels.max() < 10):
        raise UserError(f"{source} has {labels.shape} labels for {len(data)} images, or not 0–9.")
    # Each row is the red plane, then green, then blue, 32×32 each.
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.int64)


def _fingerprint(source: Path) -> str:
    files = sorted(source.iterdir()) if source.is_dir() else [source]
    stats = [(str(file.resolve()), file.stat().st_size, file.stat().st_mtime_ns) for file in files]
    return hashlib.sha1(repr(stats).encode()).hexdigest()[:16]


def _save_atomically(path: Path, **arrays: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.stem}.{os.getpid()}.part.npz")
    np.savez(partial, **arrays)
    os.replace(partial, path)


def describe(dataset: Dataset) -> str:
    """A table of images per class and split, for `cifarlab data info`."""
    counts = dataset.counts()
    width = max(len(name) for name in dataset.class_names)
    lines = [
        f"source: {dataset.source}",
        f"image shape: {'×'.join(map(str, dataset.image_shape))}",
        f"{'class':<{width}}  {'train':>7} {'val':>7} {'test':>7}",
    ]
    for index, name in enumerate(dataset.class_names):
        row = [counts[split][index] for split in ("train", "val", "test")]
        lines.append(f"{name:<{width}}  {row[0]:>7} {row[1]:>7} {row[2]:>7}")
    totals = [sum(counts[split]) for split in ("train", "val", "test")]
    lines.append(f"{'total':<{width}}  {totals[0]:>7} {totals[1]:>7} {totals[2]:>7}")
    return "\n".join(lines)

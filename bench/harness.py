"""What the benchmark scripts share: their data, cifarlab runs in scratch folders, and a summary of
per-epoch seconds (median and spread) that leaves out each run's first, tracing epoch."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import statistics
import tempfile
from dataclasses import dataclass

import numpy as np

from cifarlab import config as configs
from cifarlab import run_folder, training
from cifarlab.data import dataset as data
from cifarlab.data.standard import CIFAR10_CLASSES


def synthetic(train_images: int, seed: int) -> data.Dataset:
    """Random uint8 images in CIFAR-10's shape, a quarter as many for validation and test."""
    rng = np.random.default_rng(seed)

    def split(count: int) -> tuple[np.ndarray, np.ndarray]:
        images = rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
        return images, rng.integers(0, 10, count)

    (x_train, y_train), (x_val, y_val), (x_test, y_test) = (
        split(train_images), split(train_images // 4), split(train_images // 4),
    )  # fmt: skip
    return data.Dataset(x_train, y_train, x_val, y_val, x_test, y_test,
                        CIFAR10_CLASSES, source="synthetic")  # fmt: skip


def per_class(dataset: data.Dataset, images_per_class: int | None) -> data.Dataset:
    """`dataset` cut to `images_per_class` of the archive's training images per class, split as
    before (with the default 20 % validation: 0.8·N train and 0.2·N validation per class), and
    N / 5 test images per class, as `make-cifar10-archive --per-class N` keeps."""
    if images_per_class is None:
        return dataset
    val_share = dataset.notes.get("val_fraction", 0.2)
    num_val = round(images_per_class * val_share)

    def first(labels: np.ndarray, count: int) -> np.ndarray:
        return np.sort(np.concatenate([np.flatnonzero(labels == c)[:count]
                                       for c in range(dataset.num_classes)]))  # fmt: skip

    train = first(dataset.y_train, images_per_class - num_val)
    val = first(dataset.y_val, num_val)
    test = first(dataset.y_test, images_per_class // 5)
    return dataclasses.replace(
        dataset,
        x_train=dataset.x_train[train], y_train=dataset.y_train[train],
        x_val=dataset.x_val[val], y_val=dataset.y_val[val],
        x_test=dataset.x_test[test], y_test=dataset.y_test[test],
    )  # fmt: skip


def cifarlab_run(config: configs.Config, dataset: data.Dataset) -> tuple[dict, list[dict]]:
    """`training.train_and_evaluate` in a scratch run folder: its metrics and history.csv's rows.

    The run also evaluates its best checkpoint afterwards, untimed, as the CLI's does.
    """
    tensorflow_logger = logging.getLogger("tensorflow")
    level = tensorflow_logger.level
    # Evaluating each run's new model retraces `predict`, which TensorFlow warns about.
    tensorflow_logger.setLevel(logging.ERROR)
    try:
        with tempfile.TemporaryDirectory(prefix="cifarlab-bench-") as folder:
            with contextlib.redirect_stdout(io.StringIO()):
                metrics = training.train_and_evaluate(config, folder, dataset, quiet=True)
            return metrics, run_folder.read_history(folder)
    finally:
        tensorflow_logger.setLevel(level)


def cifarlab_history(config: configs.Config, dataset: data.Dataset) -> dict[str, list]:
    """`cifarlab_run`'s history.csv as columns."""
    _, rows = cifarlab_run(config, dataset)
    return {key: [row[key] for row in rows] for key in rows[0]}


def timed_epochs(seconds: list[float]) -> list[float]:
    """A run's epoch seconds without its first epoch (tracing, and this machine's 10–14 s
    first-step stall), unless that is the only one."""
    return list(seconds[1:]) if len(seconds) > 1 else list(seconds)


@dataclass(frozen=True)
class EpochTimes:
    """Median and range of a set of epoch seconds."""

    median: float
    low: float
    high: float
    count: int

    @classmethod
    def of(cls, seconds: list[float]) -> EpochTimes:
        return cls(statistics.median(seconds), min(seconds), max(seconds), len(seconds))

    def __str__(self) -> str:
        return f"{self.median:6.1f} ({self.low:.1f}–{self.high:.1f}, n={self.count})"


def which_epochs(epochs: int) -> str:
    """Which epochs of each run the figures come from, in words."""
    if epochs == 1:
        return "epoch 1 of 1 timed, including tracing and the first-step stall"
    timed = "epoch 2" if epochs == 2 else f"epochs 2–{epochs}"
    return f"{timed} of {epochs} timed per run (epoch 1, with tracing, left out)"


def best_val_accuracy(history: dict) -> float:
    """Validation accuracy at the epoch of lowest validation loss, whose checkpoint is kept."""
    losses = history["val_loss"]
    return float(history["val_accuracy"][losses.index(min(losses))])

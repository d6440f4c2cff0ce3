"""Shared fixtures: small datasets in the real CIFAR-10 file format, and an isolated cache."""

from __future__ import annotations

import io
import json
import os
import pickle
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def write_cifar10_archive(path: Path, per_class: int = 8, test_per_class: int = 4, seed: int = 0):
    """An archive with exactly the official layout: pickled dicts with bytes keys, uint8 rows.

    Each class has its own mean colour, so a model can learn something in one epoch.
    """
    rng = np.random.default_rng(seed)
    palette = rng.integers(30, 225, size=(10, 3))

    def images(count: int) -> tuple[np.ndarray, list[int]]:
        labels = np.repeat(np.arange(10), count)
        rng.shuffle(labels)
        pixels = palette[labels][:, :, None, None] + rng.normal(0, 25, (len(labels), 3, 32, 32))
        rows = np.clip(pixels, 0, 255).astype(np.uint8).reshape(len(labels), 3072)
        return rows, labels.tolist()

    train_rows, train_labels = images(per_class)
    test_rows, test_labels = images(test_per_class)
    batches = {
        f"data_batch_{index + 1}": (train_rows[part], [train_labels[i] for i in part])
        for index, part in enumerate(np.array_split(np.arange(len(train_labels)), 5))
    }
    batches["test_batch"] = (test_rows, test_labels)
    with tarfile.open(path, "w:gz") as tar:
        for name, (rows, labels) in batches.items():
            payload = {b"batch_label": name.encode(), b"labels": labels, b"data": rows,
                       b"filenames": [f"{i}.png".encode() for i in range(len(labels))]}  # fmt: skip
            _add(tar, name, pickle.dumps(payload, protocol=2))
        meta = {b"label_names": [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog",
                                 b"frog", b"horse", b"ship", b"truck"]}  # fmt: skip
        _add(tar, "batches.meta", pickle.dumps(meta, protocol=2))
    return path


def _add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def backed_up_epoch(backup: Path) -> int | None:
    """The epoch Keras's BackupAndRestore has written whole into `backup`, or None while there
    is none: it writes the weights, then the metadata, whose file exists (empty) a moment
    before its epoch number is in it."""
    try:
        return int(json.loads((backup / "training_metadata.json").read_text())["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def kill_once_backed_up(process: subprocess.Popen, backup: Path, timeout: float = 600) -> None:
    """SIGKILL the training `process` as soon as it has backed up an epoch whole; fail if it
    ends or the time runs out first."""
    try:
        deadline = time.monotonic() + timeout
        while backed_up_epoch(backup) is None:
            assert process.poll() is None, "the run ended before backing up an epoch"
            assert time.monotonic() < deadline, "no epoch was backed up in time"
            time.sleep(0.01)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Each test session decodes into its own cache, never the user's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.delenv("CIFARLAB_DATA", raising=False)


@pytest.fixture(scope="session")
def tiny_archive(tmp_path_factory) -> Path:
    """80 training and 40 test images in an official-format cifar-10-python.tar.gz."""
    folder = tmp_path_factory.mktemp("tiny")
    return write_cifar10_archive(folder / "cifar-10-python.tar.gz")


@pytest.fixture(scope="session")
def real_subset(tmp_path_factory) -> Path:
    """A real CIFAR-10 subset (500 training images per class) built from ../shared/data."""
    maker = SHARED_DATA / "make-cifar10-archive"
    if not maker.exists():
        pytest.skip(f"{maker} is not available")
    path = tmp_path_factory.mktemp("real") / "cifar-10-python.tar.gz"
    subprocess.run([sys.executable, str(maker), str(path), "--per-class", "500"], check=True)
    return path


@pytest.fixture(scope="session")
def trained_run(tiny_archive, tmp_path_factory) -> Path:
    """A baseline run folder trained for one epoch on `tiny_archive`, shared by the session."""
    from cifarlab import config, training
    from cifarlab.data import dataset

    run_config = config.override(config.experiment("baseline"), epochs=1, precision="float32")
    run_dir = tmp_path_factory.mktemp("runs") / "baseline"
    training.train_and_evaluate(
        run_config, run_dir, dataset.load_for(run_config, tiny_archive), quiet=True
    )
    return run_dir


@pytest.fixture(scope="session")
def diagnosed_run(trained_run, tmp_path_factory) -> Path:
    """A copy of `trained_run` with what the study command adds: curves.png and a verdict."""
    import json
    import shutil

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    run_dir = tmp_path_factory.mktemp("runs") / "diagnosed"
    shutil.copytree(trained_run, run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["diagnosis"] = {"verdict": "underfitting: train longer"}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    figure, axes = pyplot.subplots(figsize=(4, 2.5))
    axes.plot([2.3, 1.9, 1.6], label="train loss")
    axes.plot([2.2, 2.0, 1.9], label="validation loss")
    axes.legend()
    figure.savefig(run_dir / "curves.png", dpi=80)
    pyplot.close(figure)
    return run_dir

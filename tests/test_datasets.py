"""The standard datasets, each read from a tiny fixture written in its real file format."""

from __future__ import annotations

import gzip
import io
import json
import pickle
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from cifarlab import arguments, cli, load_data, models
from cifarlab.config import BASELINE
from cifarlab.data import cache, standard
from cifarlab.errors import UserError

FINE_NAMES = [f"fine_{index:02d}" for index in range(100)]


def class_images(labels: np.ndarray, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """uint8 images whose brightness follows the label, so one epoch learns something."""
    rng = np.random.default_rng(seed)
    base = (30 + 20 * (labels % 10)).reshape(-1, *[1] * len(shape))
    return np.clip(base + rng.normal(0, 10, (len(labels), *shape)), 0, 255).astype(np.uint8)


def labels_for(count: int, num_classes: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.arange(count) % num_classes)


def write_cifar100_archive(path: Path) -> Path:
    """The official layout: cifar-100-python/{train,test,meta}, pickled dicts with bytes keys."""
    with tarfile.open(path, "w:gz") as tar:
        for name, count in (("train", 200), ("test", 100)):
            fine = labels_for(count, 100, seed=count)
            rows = class_images(fine, (3 * 32 * 32,), seed=count)
            batch = {b"filenames": [f"{i}.png".encode() for i in range(count)],
                     b"batch_label": name.encode(), b"fine_labels": fine.tolist(),
                     b"coarse_labels": (fine // 5).tolist(), b"data": rows}  # fmt: skip
            _add(tar, f"cifar-100-python/{name}", pickle.dumps(batch, protocol=2))
        meta = {b"fine_label_names": [name.encode() for name in FINE_NAMES],
                b"coarse_label_names": [f"coarse_{i}".encode() for i in range(20)]}  # fmt: skip
        _add(tar, "cifar-100-python/meta", pickle.dumps(meta, protocol=2))
    return path


def _add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def write_mnist_npz(path: Path) -> dict[str, np.ndarray]:
    """Keras's mnist.npz: x_train, y_train, x_test, y_test as uint8 arrays."""
    arrays = {}
    for split, count in (("train", 60), ("test", 20)):
        arrays[f"y_{split}"] = labels_for(count, 10, seed=count).astype(np.uint8)
        arrays[f"x_{split}"] = class_images(arrays[f"y_{split}"], (28, 28), seed=count)
    np.savez(path, **arrays)
    return arrays


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file: zero, zero, type 8 (unsigned byte), axis count, big-endian sizes, data."""
    header = bytes((0, 0, 8, array.ndim)) + b"".join(n.to_bytes(4, "big") for n in array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes())


def write_fashion_mnist(folder: Path) -> dict[str, np.ndarray]:
    """The four gzipped IDX files under their official names."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, prefix, count in (("train", "train", 60), ("test", "t10k", 20)):
        labels = labels_for(count, 10, seed=count + 1)
        images = class_images(labels, (28, 28), seed=count + 1)
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(idx_bytes(images))
        (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(idx_bytes(labels))
        arrays[f"x_{split}"], arrays[f"y_{split}"] = images, labels
    return arrays


@pytest.fixture(scope="session")
def cifar100_archive(tmp_path_factory) -> Path:
    return write_cifar100_archive(tmp_path_factory.mktemp("c100") / "cifar-100-python.tar.gz")


@pytest.fixture(scope="session")
def fashion_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fashion")
    write_fashion_mnist(folder)
    return folder


def test_cifar100_reads_fine_labels_and_names_from_the_archive(cifar100_archive, tmp_path):
    dataset = load_data(cifar100_archive, dataset="cifar100", quiet=True)
    assert dataset.class_names == tuple(FINE_NAMES) and dataset.num_classes == 100
    assert dataset.image_shape == (32, 32, 3) and dataset.name == "cifar100"
    assert len(dataset.y_train) + len(dataset.y_val) == 200 and len(dataset.y_test) == 100
    with tarfile.open(cifar100_archive) as tar:
        tar.extractall(tmp_path, filter="data")
    for other in (tmp_path, tmp_path / "cifar-100-python"):
        again = load_data(other, dataset="cifar100", quiet=True)
        np.testing.assert_array_equal(again.x_test, dataset.x_test)


def test_cifar100_pixels_keep_the_plane_order(cifar100_archive):
    dataset = load_data(cifar100_archive, dataset="cifar100", quiet=True)
    with tarfile.open(cifar100_archive) as tar:
        test = pickle.loads(tar.extractfile("cifar-100-python/test").read())
    # Row = red plane, green plane, blue plane: pixel (0, 0) is elements 0, 1024 and 2048.
    np.testing.assert_array_equal(dataset.x_test[0, 0, 0], test[b"data"][0, [0, 1024, 2048]])
    assert dataset.y_test[0] == test[b"fine_labels"][0]


def test_mnist_npz_becomes_three_channels_at_the_requested_size(tmp_path):
    arrays = write_mnist_npz(tmp_path / "mnist.npz")
    native = load_data(tmp_path / "mnist.npz", dataset="mnist", image_size=28, quiet=True)
    assert native.class_names == tuple("0123456789")
    # At its own size, every channel is the original greyscale image.
    for channel in range(3):
        np.testing.assert_array_equal(native.x_test[..., channel], arrays["x_test"])
    np.testing.assert_array_equal(native.y_test, arrays["y_test"])
    resized = load_data(tmp_path, dataset="mnist", quiet=True)
    assert resized.image_shape == (32, 32, 3)
    assert resized.notes["original_sizes"]["most_common"] == "28×28"


def test_fashion_mnist_reads_the_idx_files(tmp_path):
    arrays = write_fashion_mnist(tmp_path)
    dataset = load_data(tmp_path, dataset="fashion_mnist", image_size=28, quiet=True)
    assert dataset.class_names[0] == "T-shirt/top" and dataset.num_classes == 10
    np.testing.assert_array_equal(dataset.x_test[..., 1], arrays["x_test"])
    np.testing.assert_array_equal(dataset.y_test, arrays["y_test"])
    assert len(dataset.y_train) + len(dataset.y_val) == 60


def test_idx_with_a_wrong_header_or_length_is_refused(tmp_path):
    write_fashion_mnist(tmp_path)
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(bytes((0, 0, 13, 1)) + (20).to_bytes(4, "big") + bytes(20)))
    with pytest.raises(UserError, match="no IDX header"):
        load_data(tmp_path, dataset="fashion_mnist", quiet=True)
    labels.write_bytes(gzip.compress(bytes((0, 0, 8, 1)) + (20).to_bytes(4, "big") + bytes(19)))
    with pytest.raises(UserError, match="its header declares"):
        load_data(tmp_path, dataset="fashion_mnist", quiet=True)


def test_npz_holding_pickled_objects_is_refused(tmp_path):
    arrays = write_mnist_npz(tmp_path / "mnist.npz")
    objects = np.array([{"code": "would run on load"}], dtype=object)
    np.savez(tmp_path / "mnist.npz", **{**arrays, "y_test": objects})
    with pytest.raises(UserError, match="not Keras's mnist.npz"):
        load_data(tmp_path / "mnist.npz", dataset="mnist", quiet=True)


def test_cached_download_is_used_without_a_path(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cache.directory().mkdir(parents=True)
    write_mnist_npz(cache.directory() / "mnist.npz")
    dataset = load_data(dataset="mnist", quiet=True)
    assert dataset.source == str(cache.directory() / "mnist.npz")


def test_environment_variable_names_a_folder_holding_the_files(fashion_folder, monkeypatch):
    monkeypatch.setenv("CIFARLAB_DATA", str(fashion_folder))
    assert load_data(dataset="fashion_mnist", quiet=True).source == str(fashion_folder)


def test_folder_without_the_files_says_what_it_wants(tmp_path):
    with pytest.raises(UserError, match="is empty; point --data at a dataset or a folder"):
        load_data(tmp_path, dataset="mnist", quiet=True)
    (tmp_path / "notes.txt").write_text("not data")
    with pytest.raises(UserError, match="holds neither mnist data \\(mnist.npz\\) nor class"):
        load_data(tmp_path, dataset="mnist", quiet=True)
    with pytest.raises(UserError, match="Unknown dataset 'svhn'"):
        load_data(tmp_path, dataset="svhn", quiet=True)


def test_command_line_offers_exactly_the_standard_datasets():
    assert tuple(standard.STANDARDS) == arguments.DATASETS


@pytest.mark.parametrize(
    ("image_size", "num_classes", "expected"),
    [
        # Convolutions: 896 + 9,248 + 18,496 + 36,928 = 65,568 whatever the input size.
        # 32 px: two 2×2 pools leave 8×8×64 = 4,096 features; Dense 512: 4,096·512 + 512.
        (32, 10, 65_568 + 2_097_664 + 5_130),
        # 28 px: 7×7×64 = 3,136 features; Dense 512: 3,136·512 + 512 = 1,606,144.
        (28, 10, 65_568 + 1_606_144 + 5_130),
        # 100 classes: the output layer is 512·100 + 100 = 51,300.
        (32, 100, 65_568 + 2_097_664 + 51_300),
    ],
)
def test_parameter_count_follows_image_size_and_classes(image_size, num_classes, expected):
    model = models.build_model(replace(BASELINE, image_size=image_size), num_classes)
    assert model.count_params() == expected


def test_trains_on_fashion_mnist_at_its_own_size(fashion_folder, tmp_path):
    out = tmp_path / "run"
    argv = ["train", "baseline", "--dataset", "fashion_mnist", "--data", str(fashion_folder)]
    assert (
        cli.main([*argv, "--image-size", "28", "--epochs", "1", "--out", str(out), "--quiet"]) == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["params"] == 65_568 + 1_606_144 + 5_130
    assert metrics["dataset"] == "fashion_mnist" and "Ankle boot" in metrics["per_class"]
    assert json.loads((out / "config.json").read_text())["image_size"] == 28

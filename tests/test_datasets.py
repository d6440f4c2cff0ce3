"""The standard datasets, each read from a tiny fixture written in its real file format."""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import pickle
import re
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifarlab import arguments, cli, load_data, models
from cifarlab.config import BASELINE, DataSpec
from cifarlab.data import cache, dataset, standard
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


# The loader's own rules: defaults, records, splits, class folders and the `data info` table.

CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                 "truck")  # fmt: skip


def write_photos(root: Path, per_class: dict[str, tuple[int, tuple[int, int]]]) -> Path:
    """Class folders of flat PNGs: `per_class` maps each class to (count, (width, height))."""
    for index, (name, (count, size)) in enumerate(per_class.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for number in range(count):
            colour = (40 + 90 * index, 100 + number, 200 - 70 * index)
            Image.new("RGB", size, colour).save(root / name / f"{number:03d}.png")
    return root


FRUIT = {"apple": (10, (12, 10)), "banana": (6, (8, 6))}
# Per class, test = max(1, round(0.2 · n)): apple 2, banana round(1.2) = 1; then validation
# from what is left: apple round(0.2 · 8) = 2, banana round(0.2 · 5) = 1; the rest trains.
FRUIT_COUNTS = {"train": [6, 4], "val": [2, 1], "test": [2, 1]}


def test_loading_defaults_are_the_configs(tiny_archive):
    """`load`'s keyword defaults are `DataSpec`'s, so a run and a plain load agree."""
    loaded = load_data(tiny_archive)
    assert loaded.spec == DataSpec() and loaded.split_settings == DataSpec().to_dict()
    assert dataset.load_for(BASELINE, tiny_archive).spec == BASELINE.data_spec
    # The spec kept is the one asked for, even a field a standard set has no use for.
    other = replace(BASELINE, test_fraction=0.3, seed=2)
    assert dataset.load_for(other, tiny_archive).spec == other.data_spec


def test_a_full_size_standard_set_is_split_at_random_unless_stratified(tmp_path):
    """20,000 training images: the notebook's seeded random split, or a stratified one."""
    labels = np.repeat(np.arange(10, dtype=np.uint8), 2_000)
    images = np.zeros((len(labels), 28, 28), np.uint8)
    np.savez(tmp_path / "mnist.npz", x_train=images, y_train=labels, x_test=images[:10],
             y_test=labels[:10])  # fmt: skip
    random = load_data(tmp_path / "mnist.npz", dataset="mnist", image_size=28, quiet=True)
    assert random.notes["val_split"] == "a random 20%, seed 0, as in the notebook"
    assert sum(random.counts()["val"]) == 4_000 and len(set(random.counts()["val"])) > 1
    again = load_data(tmp_path / "mnist.npz", dataset="mnist", image_size=28, quiet=True)
    np.testing.assert_array_equal(again.y_val, random.y_val)
    stratified = load_data(
        tmp_path / "mnist.npz", dataset="mnist", image_size=28, stratify=True, quiet=True
    )
    assert stratified.notes["stratify"] is True
    assert stratified.counts()["val"] == [400] * 10


def test_class_folders_show_decoding_progress_unless_quiet(tmp_path, capsys):
    calls = {
        "load": lambda root: load_data(root),
        "load_spec": lambda root: dataset.load_spec(root, DataSpec()),
        "load_for": lambda root: dataset.load_for(BASELINE, root),
        "load_folders": lambda root: dataset.load_folders(root, 0.2, 0, 32, 0.2),
    }
    for name, call in calls.items():
        capsys.readouterr()
        call(write_photos(tmp_path / name, FRUIT))  # A new folder: decoded, not cached.
        bar = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
        assert bar.startswith("decode: 100%|") and " 16/16 " in bar, (name, bar)
    archive = tmp_path / "fruit.tar.gz"  # Shown for a packed folder too, terminal or not.
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(write_photos(tmp_path / "packed", FRUIT), arcname="fruit")
    load_data(archive)
    assert "decode: 100%|" in capsys.readouterr().err
    quiet_calls = {
        "load": lambda root: load_data(root, quiet=True),
        "load_for": lambda root: dataset.load_for(BASELINE, root, quiet=True),
    }
    for name, call in quiet_calls.items():
        call(write_photos(tmp_path / f"quiet {name}", FRUIT))
        assert "decode" not in capsys.readouterr().err, name


def test_a_dataset_names_its_splits_shape_and_source(tiny_archive):
    loaded = load_data(tiny_archive)
    assert repr(loaded) == (
        f"Dataset(cifar10: train 60, val 20, test 40 images of 32×32×3, 10 classes, "
        f"from {tiny_archive})"
    )
    assert loaded.record() == {
        "fingerprint": loaded.fingerprint,
        "source": str(tiny_archive),
        "name": "cifar10",
        "class_names": list(CIFAR10_NAMES),
        "images": {"train": 60, "val": 20, "test": 40},
    }


def test_the_fingerprint_changes_with_any_image_label_name_or_shape(tiny_archive):
    loaded = load_data(tiny_archive)
    # 16 bytes in hex, as run folders already record it.
    assert re.fullmatch("[0-9a-f]{32}", loaded.fingerprint)
    assert load_data(tiny_archive).fingerprint == loaded.fingerprint
    assert load_data(tiny_archive, seed=4).fingerprint != loaded.fingerprint
    changed = {
        "a class name": {"class_names": ("plane", *loaded.class_names[1:])},
        "a pixel": {"x_test": np.concatenate([loaded.x_test[:1] ^ 1, loaded.x_test[1:]])},
        "a label": {"y_val": np.roll(loaded.y_val, 1)},
        # The same bytes, read as other shapes or types, are other data.
        "the shape": {"x_test": loaded.x_test.reshape(40, 32, 96, 1)},
        "the type": {"y_test": loaded.y_test.view(np.uint64)},
    }
    for what, fields in changed.items():
        assert dataclasses.replace(loaded, **fields).fingerprint != loaded.fingerprint, what


def synthetic(per_class: int, classes: int = 10) -> tuple:
    """`split`'s first six arguments: one-pixel images whose value is their position, and a
    test set of one image per class."""
    labels = np.repeat(np.arange(classes), per_class)
    images = (np.arange(len(labels)) % 256).astype(np.uint8).reshape(-1, 1, 1, 1).repeat(3, 3)
    names = tuple(str(index) for index in range(classes))
    return images, labels, images[:classes], np.arange(classes), names, "synthetic"


def test_a_split_records_how_it_was_made():
    random = dataset.split(*synthetic(2_000), 0.25, 5, "synthetic", {"channels": "grey"})
    assert random.notes == {"val_fraction": 0.25, "seed": 5, "stratify": False,
                            "val_split": "a random 25%, seed 5, as in the notebook",
                            "channels": "grey"}  # fmt: skip
    assert random.spec == DataSpec("synthetic", 1, 0.25, stratify=False, seed=5)
    # 20,000 images: 5,000 held out at random, the same ones for the same seed, others for
    # another seed.
    assert len(random.y_val) == 5_000 and len(random.y_train) == 15_000
    again = dataset.split(*synthetic(2_000), 0.25, 5, "synthetic")
    np.testing.assert_array_equal(random.x_val, again.x_val)
    other = dataset.split(*synthetic(2_000), 0.25, 6, "synthetic")
    assert not np.array_equal(random.x_val, other.x_val)
    stratified = dataset.split(*synthetic(20), 0.25, 1, "synthetic", stratify=True)
    assert stratified.notes["val_split"] == "25% of each class, seed 1"
    assert stratified.notes["stratify"] is True and stratified.spec.stratify is True
    assert stratified.counts() == {"train": [15] * 10, "val": [5] * 10, "test": [1] * 10}


def test_counts_list_every_class_even_one_missing_from_a_split():
    images, labels, x_test, y_test, names, source = synthetic(4, classes=3)
    # The test set lacks the last class: its count is 0, not left out.
    split = dataset.split(images, labels, x_test[:2], y_test[:2], names, source, 0.25, 0)
    assert split.counts() == {"train": [3, 3, 3], "val": [1, 1, 1], "test": [1, 1, 0]}
    assert split.num_classes == 3 and split.image_shape == (1, 1, 3)
    assert split.name == "cifar10" and split.spec.dataset == "cifar10"  # The default name.


def test_a_single_validation_image_is_enough():
    # 10 images of one class, a tenth held out: int(0.1 · 10) = 1.
    split = dataset.split(*synthetic(10, classes=1), 0.1, 0)
    assert split.counts() == {"train": [9], "val": [1], "test": [1]}


def test_a_class_too_small_to_validate_on_is_refused_by_the_split():
    with pytest.raises(UserError) as error:
        dataset.split(*synthetic(1, classes=2), 0.5, 0)
    assert str(error.value) == (
        "Class '0' has 1 image(s) left, too few to hold out 50% for validation and still train "
        "on it; add images to it."
    )


@pytest.mark.parametrize(
    ("val_fraction", "sentence"),
    [
        (0, "val_fraction must lie between 0 and 1, not 0."),
        (1, "val_fraction must lie between 0 and 1, not 1."),
        (1.5, "val_fraction must lie between 0 and 1, not 1.5."),
        # int(0.01 · 80) = 0 images: nothing to validate on.
        (0.01, "80 training images are too few to hold out 0.01."),
    ],
)
def test_a_validation_share_that_leaves_no_split_is_refused(val_fraction, sentence):
    with pytest.raises(UserError) as error:
        dataset.split(*synthetic(8), val_fraction, 0)
    assert str(error.value) == sentence


def test_a_stratified_split_holds_out_the_same_share_of_every_class():
    labels = np.array([0] * 5 + [1] * 3 + [2] * 2)
    kept, held = dataset.stratified_split(labels, 0.4, 0, ("a", "b", "c"), "validation")
    # round(0.4 · 5) = 2, round(0.4 · 3) = 1, round(0.4 · 2) = 1 (at least one each).
    assert np.bincount(labels[held]).tolist() == [2, 1, 1]
    assert np.bincount(labels[kept]).tolist() == [3, 2, 1]
    assert sorted([*kept, *held]) == list(range(10)) and list(kept) == sorted(kept)
    again = dataset.stratified_split(labels, 0.4, 0, ("a", "b", "c"), "validation")
    np.testing.assert_array_equal(held, again[1])
    others = [dataset.stratified_split(labels, 0.4, seed, ("a", "b", "c"), "validation")[1]
              for seed in range(1, 6)]  # fmt: skip
    assert any(not np.array_equal(held, other) for other in others)
    # A small share still holds out one image: round(0.1 · 5) = 0 becomes 1.
    _, held = dataset.stratified_split(labels, 0.1, 0, ("a", "b", "c"), "test")
    assert np.bincount(labels[held]).tolist() == [1, 1, 1]


def test_a_class_left_with_nothing_to_train_on_is_refused():
    labels = np.array([0, 0, 0, 1])
    with pytest.raises(UserError) as error:
        dataset.stratified_split(labels, 0.4, 0, ("a", "b"), "validation")
    assert str(error.value) == (
        "Class 'b' has 1 image(s) left, too few to hold out 40% for validation and still train "
        "on it; add images to it."
    )


def test_class_folders_are_split_per_class_and_say_how(tmp_path):
    root = write_photos(tmp_path / "fruit", FRUIT)
    loaded = load_data(root, seed=3, quiet=True)
    assert loaded.counts() == FRUIT_COUNTS
    assert loaded.class_names == ("apple", "banana") and loaded.name == "fruit"
    assert loaded.source == str(root) and loaded.spec == DataSpec(seed=3)
    carved = "20% of each class, carved out with seed 3"
    assert loaded.notes == {
        "val_fraction": 0.2, "seed": 3, "test_split": carved, "val_split": carved,
        "original_sizes": {"most_common": "12×10", "most_common_count": 10, "distinct": 2,
                           "smallest": "8×6", "largest": "12×10"},
    }  # fmt: skip
    # Each image keeps its label: apple's red channel is 40, banana's 130.
    for images, labels in ((loaded.x_train, loaded.y_train), (loaded.x_val, loaded.y_val),
                           (loaded.x_test, loaded.y_test)):  # fmt: skip
        assert len(images) == len(labels)
        assert (images[..., 0] == np.where(labels == 0, 40, 130)[:, None, None]).all()
    again = load_data(root, seed=3, quiet=True)
    for split in ("x_train", "x_val", "x_test"):
        np.testing.assert_array_equal(getattr(again, split), getattr(loaded, split))
    other = load_data(root, seed=4, quiet=True)
    assert not np.array_equal(other.x_test, loaded.x_test)
    direct = dataset.load_folders(root, 0.25, 2, 16, 0.3, quiet=True)
    assert direct.spec == DataSpec(image_size=16, val_fraction=0.25, test_fraction=0.3, seed=2)


@pytest.mark.parametrize(
    ("count", "purpose"),
    [(1, "20% for test"), (2, "20% for validation")],  # 2: one for test, one left.
)
def test_a_class_folder_too_small_for_a_split_is_refused(tmp_path, count, purpose):
    root = write_photos(tmp_path / "fruit", {"apple": (10, (8, 8)), "banana": (count, (8, 8))})
    with pytest.raises(UserError) as error:
        load_data(root, quiet=True)
    assert str(error.value) == (
        f"Class 'banana' has 1 image(s) left, too few to hold out {purpose} and still train on "
        "it; add images to it."
    )


def test_split_folders_are_used_as_given(tmp_path):
    root = tmp_path / "fruit"
    write_photos(root / "train", FRUIT)
    write_photos(root / "test", {"apple": (2, (12, 10)), "banana": (3, (12, 10))})
    write_photos(root / "val", {"apple": (1, (12, 10)), "banana": (2, (12, 10))})
    loaded = load_data(root, quiet=True)
    assert loaded.counts() == {"train": [10, 6], "val": [1, 2], "test": [2, 3]}
    assert loaded.notes["test_split"] == "the test/ folder"
    assert loaded.notes["val_split"] == "the val/ folder"


def test_a_class_folder_dataset_is_not_a_standard_one(tmp_path):
    root = write_photos(tmp_path / "fruit", FRUIT)
    with pytest.raises(UserError) as error:
        load_data(root, dataset="mnist", quiet=True)
    assert str(error.value) == (
        f"{root} is a folder of class folders, not mnist; leave out --dataset."
    )


@pytest.mark.parametrize("suffix", [".tar.gz", ".tgz", ".tar"])
@pytest.mark.parametrize("wrapped", [True, False], ids=["one folder", "class folders"])
def test_a_class_folder_archive_is_named_after_the_file(tmp_path, capsys, suffix, wrapped):
    root = write_photos(tmp_path / "fruit", FRUIT)
    archive = tmp_path / f"photos{suffix}"
    with tarfile.open(archive, "w:gz" if "gz" in suffix else "w") as tar:
        if wrapped:
            tar.add(root, arcname="fruit")
        else:
            for child in sorted(root.iterdir()):
                tar.add(child, arcname=child.name)
    capsys.readouterr()
    loaded = load_data(archive, seed=3, quiet=True)
    assert "decode" not in capsys.readouterr().err
    assert loaded.name == "photos" and loaded.source == str(archive)
    assert loaded.counts() == FRUIT_COUNTS and loaded.class_names == ("apple", "banana")
    assert loaded.notes["test_split"] == "20% of each class, carved out with seed 3"
    again = load_data(archive, seed=3, quiet=True)
    np.testing.assert_array_equal(again.x_val, loaded.x_val)
    assert dataset.locate(archive) == archive


def test_an_archive_of_images_outside_class_folders_is_refused(tmp_path):
    archive = tmp_path / "loose.tar.gz"
    loose = write_photos(tmp_path / "loose", {"photos": (4, (8, 8))}) / "photos"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(loose, arcname="photos")  # photos/000.png ...: images, but no class folders.
    with pytest.raises(UserError) as error:
        load_data(archive, quiet=True)
    assert str(error.value) == f"{archive} holds images but not in one folder per class."


def test_locate_returns_class_folders_as_given_and_refuses_unknown_datasets(tmp_path):
    root = write_photos(tmp_path / "fruit", FRUIT)
    assert dataset.locate(root) == root
    with pytest.raises(UserError) as error:
        dataset.locate(tmp_path / "fruit" / "apple", dataset="svhn")
    assert str(error.value) == (
        "Unknown dataset 'svhn'; choose cifar10, cifar100, fashion_mnist, mnist."
    )


def test_a_given_path_wins_over_the_environment_and_may_start_with_a_tilde(
    tiny_archive, tmp_path, monkeypatch
):
    monkeypatch.setenv("CIFARLAB_DATA", str(tmp_path / "elsewhere.tar.gz"))
    assert dataset.given_path(tiny_archive) == tiny_archive
    assert dataset.locate(tiny_archive) == tiny_archive
    monkeypatch.setenv("HOME", str(tmp_path))
    assert dataset.given_path("~/data.tar.gz") == tmp_path / "data.tar.gz"
    monkeypatch.setenv("CIFARLAB_DATA", "~/data.tar.gz")
    assert dataset.given_path(None) == tmp_path / "data.tar.gz"
    monkeypatch.setenv("CIFARLAB_DATA", "")
    assert dataset.given_path(None) is None


def test_the_data_info_table_of_a_standard_set(tiny_archive):
    table = dataset.counts_table(load_data(tiny_archive)).splitlines()
    # Names are padded to the longest, "automobile" (10); counts right-aligned in 7.
    assert table[:4] == [
        f"source: {tiny_archive}",
        "image shape: 32×32×3",
        "class         train     val    test",
        "airplane          6       2       4",
    ]
    assert table[4] == "automobile        6       2       4"
    assert table[13] == "total            60      20      40"
    assert table[14:] == [
        "val split: 20% of each class, seed 0",
        "original image size: 32×32",
        "skipped: none",
    ]


def test_the_data_info_table_of_greyscale_and_class_folder_sets(tmp_path):
    write_mnist_npz(tmp_path / "mnist.npz")
    mnist = dataset.counts_table(load_data(tmp_path / "mnist.npz", dataset="mnist", quiet=True))
    assert "channels: greyscale, repeated into 3 channels" in mnist.splitlines()
    root = write_photos(tmp_path / "fruit", FRUIT)
    (root / "banana" / "broken.png").write_bytes(b"not a PNG")
    with pytest.warns(UserWarning, match="unreadable"):
        fruit = dataset.counts_table(load_data(root, seed=3, quiet=True)).splitlines()
    carved = "20% of each class, carved out with seed 3"
    assert fruit[2:] == [
        "class     train     val    test",
        "apple         6       2       2",
        "banana        4       1       1",
        "total        10       3       3",
        f"test split: {carved}",
        f"val split: {carved}",
        "original image sizes: 2 distinct, most common 12×10 (10 images), smallest 8×6, "
        "largest 12×10",
        "skipped 1 unreadable image file(s): banana/broken.png.",
    ]


def test_without_a_path_the_cached_download_is_located(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cache.directory().mkdir(parents=True)
    write_mnist_npz(cache.directory() / "mnist.npz")
    assert dataset.locate(dataset="mnist") == cache.directory() / "mnist.npz"

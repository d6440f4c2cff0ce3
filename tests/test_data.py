"""The loader reads the official layout safely, validates and caches it, and splits it."""

from __future__ import annotations

import io
import pickle
import tarfile

import numpy as np
import pytest

from cifarlab import load_data
from cifarlab.data import cache, dataset, safe_files, standard
from cifarlab.errors import RunError, UserError
from tests.conftest import write_cifar10_archive


def test_reads_archive_and_extracted_folder_alike(tiny_archive, tmp_path):
    from_archive = load_data(tiny_archive)
    with tarfile.open(tiny_archive) as tar:
        tar.extractall(tmp_path, filter="data")
    from_folder = load_data(tmp_path / "cifar-10-batches-py")
    from_parent = load_data(tmp_path)
    for other in (from_folder, from_parent):
        np.testing.assert_array_equal(from_archive.x_train, other.x_train)
        np.testing.assert_array_equal(from_archive.y_test, other.y_test)
    assert from_archive.x_train.dtype == np.uint8
    assert from_archive.x_train.shape[1:] == (32, 32, 3)
    assert from_archive.class_names[3] == "cat"


def test_split_is_seeded_disjoint_and_a_fifth(tiny_archive):
    first, again = load_data(tiny_archive, seed=3), load_data(tiny_archive, seed=3)
    other = load_data(tiny_archive, seed=4)
    # 80 training images, 8 per class: a small subset, so round(0.2 · 8) = 2 of each class are
    # held out for validation, 20 in all, and 60 train.
    assert (len(first.y_val), len(first.y_train), len(first.y_test)) == (20, 60, 40)
    np.testing.assert_array_equal(first.x_val, again.x_val)
    assert not np.array_equal(first.x_val, other.x_val)
    train_rows = {row.tobytes() for row in first.x_train}
    assert not any(row.tobytes() in train_rows for row in first.x_val)


def test_decoded_arrays_are_cached(tiny_archive):
    load_data(tiny_archive)
    cached = list((cache.directory() / "decoded").glob("cifar10-*.npz"))
    assert cached
    with np.load(cached[0]) as arrays:
        assert arrays["x_train"].shape == (80, 32, 32, 3)


def test_environment_variable_names_the_data(tiny_archive, monkeypatch):
    monkeypatch.setenv("CIFARLAB_DATA", str(tiny_archive))
    assert dataset.locate() == tiny_archive


def test_missing_path_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_data(tmp_path / "nowhere.tar.gz")


def test_truncated_archive_is_refused(tiny_archive, tmp_path):
    truncated = tmp_path / "cifar-10-python.tar.gz"
    truncated.write_bytes(tiny_archive.read_bytes()[:5000])
    with pytest.raises(UserError, match="truncated"):
        load_data(truncated)


def test_member_escaping_the_folder_is_refused(tmp_path):
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/../../escape.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(UserError, match="unsafe member"):
        load_data(archive)
    assert not (tmp_path.parent / "escape.txt").exists()


class _RunsCode:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_that_runs_code_is_refused_and_the_code_does_not_run(tmp_path):
    marker = tmp_path / "code-ran"
    archive = write_cifar10_archive(tmp_path / "cifar-10-python.tar.gz")
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path, filter="data")
    evil = pickle.dumps({b"data": _RunsCode(marker), b"labels": []})
    (tmp_path / "cifar-10-batches-py" / "data_batch_2").write_bytes(evil)
    with pytest.raises(UserError, match="data_batch_2"):
        load_data(tmp_path / "cifar-10-batches-py")
    assert not marker.exists()


def test_wrong_array_shape_is_refused(tmp_path):
    archive = write_cifar10_archive(tmp_path / "cifar-10-python.tar.gz")
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path, filter="data")
    bad = {b"data": np.zeros((4, 100), np.uint8), b"labels": [0, 1, 2, 3]}
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(bad))
    with pytest.raises(UserError, match="uint8×3072"):
        load_data(tmp_path / "cifar-10-batches-py")


def test_download_with_wrong_checksum_leaves_nothing(tiny_archive, tmp_path):
    destination = tmp_path / "cache" / "cifar-10-python.tar.gz"
    with pytest.raises(RunError, match="SHA-256"):
        safe_files.download(
            tiny_archive.as_uri(),
            destination,
            standard.STANDARDS["cifar10"].downloads[0].sha256,
            quiet=True,
        )
    assert not destination.exists()
    assert list(destination.parent.iterdir()) == []


def test_download_with_right_checksum_stores_the_file(tiny_archive, tmp_path):
    destination = tmp_path / "cifar-10-python.tar.gz"
    digest = safe_files.sha256_of(tiny_archive)
    safe_files.download(tiny_archive.as_uri(), destination, digest, quiet=True)
    assert destination.read_bytes() == tiny_archive.read_bytes()


def test_failed_download_names_the_url_and_the_flag(tmp_path):
    missing = (tmp_path / "absent.tar.gz").as_uri()
    with pytest.raises(RunError, match="--data") as error:
        safe_files.download(
            missing,
            tmp_path / "out.tar.gz",
            standard.STANDARDS["cifar10"].downloads[0].sha256,
            quiet=True,
        )
    assert missing in str(error.value)


def test_small_subsets_get_a_class_balanced_validation_split(tiny_archive):
    # 8 training images per class: a random 20% could give one class 4 validation images and
    # another none; a stratified split holds out round(0.2 · 8) = 2 of each.
    assert load_data(tiny_archive).counts()["val"] == [2] * 10


def test_full_sets_keep_the_notebooks_random_split_unless_asked():
    labels = np.repeat(np.arange(10), 2_000)  # 20,000 images: not a small subset.
    images = np.zeros((len(labels), 1, 1, 3), np.uint8)
    names = tuple(str(index) for index in range(10))
    arguments = (images, labels, images[:10], labels[:10], names, "synthetic", 0.2, 0)
    random_counts = dataset.split(*arguments).counts()["val"]
    assert sum(random_counts) == 4_000 and len(set(random_counts)) > 1
    assert dataset.split(*arguments, stratify=True).counts()["val"] == [400] * 10

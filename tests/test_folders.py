"""Class-folder datasets: discovery, image conversion, splits, caching, errors and training."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import tarfile
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifarlab import cli, load_data
from cifarlab.data import cache, folders, images
from cifarlab.errors import UserError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CLASSES = ("apple", "banana", "cherry")
COLOURS = {"apple": (200, 30, 30), "banana": (230, 210, 40), "cherry": (40, 30, 160)}
# Each class gets every kind of file in turn: formats, modes and sizes a photo folder holds.
PER_CLASS = (20, 15, 24)  # Unequal, so that stratification shows.
KINDS = ("jpeg", "png_rgba", "png_grey", "png_palette", "bmp", "png_16bit", "gif", "webp")


def write_image(path: Path, kind: str, colour: tuple[int, int, int], seed: int) -> Path:
    """A noisy image of `colour` in the given file kind, of a size that depends on `seed`."""
    rng = np.random.default_rng(seed)
    width, height = 24 + 7 * (seed % 5), 20 + 9 * (seed % 4)
    noise = rng.normal(0, 12, (height, width, 3))
    pixels = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    if kind == "jpeg":
        image.save(path.with_suffix(".jpg"), quality=90)
        return path.with_suffix(".jpg")
    if kind == "png_rgba":
        image.putalpha(255)
        image.save(path.with_suffix(".png"))
    elif kind == "png_grey":
        image.convert("L").save(path.with_suffix(".png"))
    elif kind == "png_palette":
        image.convert("P", palette=Image.Palette.ADAPTIVE).save(path.with_suffix(".png"))
    elif kind == "png_16bit":
        grey = np.asarray(image.convert("L"), dtype=np.uint16) * 257
        Image.fromarray(grey).save(path.with_suffix(".png"))
    else:
        suffix = {"bmp": ".bmp", "gif": ".gif", "webp": ".webp"}[kind]
        image.save(path.with_suffix(suffix))
        return path.with_suffix(suffix)
    return path.with_suffix(".png")


def write_class_folders(root: Path, per_class: dict[str, int], seed: int = 0) -> Path:
    for class_index, (name, count) in enumerate(per_class.items()):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(count):
            kind = KINDS[index % len(KINDS)]
            write_image(
                folder / f"{index:03d}", kind, COLOURS[name], seed + 100 * class_index + index
            )
    return root


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(path.relative_to(root)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in root.rglob("*")
    }


@pytest.fixture(scope="session")
def photo_folder(tmp_path_factory) -> Path:
    """3 classes of 59 images in 8 formats and modes, one corrupt file, and files to ignore."""
    root = write_class_folders(
        tmp_path_factory.mktemp("photos"), dict(zip(CLASSES, PER_CLASS, strict=True))
    )
    (root / "banana" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    (root / "banana" / "notes.txt").write_text("not an image, not a class")
    (root / "cherry" / ".DS_Store").write_bytes(b"\x00\x01")
    return root


@pytest.fixture(scope="session")
def trained_run(photo_folder, tmp_path_factory) -> Path:
    """One epoch of `baseline` on the class folders, trained once through the CLI."""
    out = tmp_path_factory.mktemp("runs") / "baseline"
    argv = ["train", "baseline", "--data", str(photo_folder), "--out", str(out)]
    assert cli.main([*argv, "--epochs", "1", "--batch-size", "8", "--quiet"]) == 0
    return out


def test_loads_every_readable_image_with_folder_names_as_classes(photo_folder):
    before = snapshot(photo_folder)
    with pytest.warns(UserWarning, match="Skipped 1 unreadable image file\\(s\\): .*broken.jpg"):
        dataset = load_data(photo_folder, quiet=True)
    assert dataset.class_names == CLASSES
    assert dataset.name == photo_folder.name
    assert dataset.x_train.dtype == np.uint8 and dataset.image_shape == (32, 32, 3)
    counts = dataset.counts()
    # 60 files with image suffixes, one of them corrupt: the 59 written as images are read.
    assert [sum(column) for column in zip(*counts.values(), strict=True)] == list(PER_CLASS)
    assert "broken.jpg" in dataset.notes["skipped"] and "skipped 1 " in dataset.notes["skipped"]
    assert snapshot(photo_folder) == before, "nothing may be written inside the dataset folder"


def test_image_conversion_follows_the_rules(tmp_path):
    transparent = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    transparent.save(tmp_path / "clear.png")
    assert (images.decode(tmp_path / "clear.png", 8)[0] == 255).all()

    Image.fromarray(np.full((12, 30), 32768, dtype=np.uint16)).save(tmp_path / "deep.png")
    pixels, original = images.decode(tmp_path / "deep.png", 8)
    # Half of the 16-bit range is half of the 8-bit range, the same in all three channels.
    assert original == (30, 12) and pixels.shape == (8, 8, 3)
    assert np.all(np.abs(pixels.astype(int) - 127) <= 1)

    # Stored 64 wide and 32 high, top black, bottom white; EXIF orientation 6 says "rotate 90°
    # clockwise to display", which puts the white half on the left.
    stored = np.zeros((32, 64, 3), dtype=np.uint8)
    stored[16:] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    pixels, _ = images.decode(tmp_path / "rotated.jpg", 8)
    assert pixels[:, :3].mean() > 200 and pixels[:, 5:].mean() < 50


def test_split_is_seeded_and_stratified(photo_folder):
    first = load_data(photo_folder, seed=1, quiet=True)
    again = load_data(photo_folder, seed=1, quiet=True)
    other = load_data(photo_folder, seed=2, quiet=True)
    np.testing.assert_array_equal(first.x_test, again.x_test)
    np.testing.assert_array_equal(first.x_val, again.x_val)
    assert not np.array_equal(first.x_test, other.x_test)
    readable = np.array(PER_CLASS)
    num_test = np.maximum(1, np.round(0.2 * readable))
    num_val = np.maximum(1, np.round(0.2 * (readable - num_test)))
    counts = first.counts()
    np.testing.assert_array_equal(counts["test"], num_test)
    np.testing.assert_array_equal(counts["val"], num_val)
    np.testing.assert_array_equal(counts["train"], readable - num_test - num_val)
    assert "carved out with seed 1" in first.notes["test_split"]
    train_rows = {row.tobytes() for row in first.x_train}
    assert not any(row.tobytes() in train_rows for row in [*first.x_val, *first.x_test])


def test_train_test_and_val_folders_are_used_as_given(tmp_path):
    per_class = {"apple": 6, "banana": 5}
    write_class_folders(tmp_path / "train", per_class)
    write_class_folders(tmp_path / "test", {"apple": 2, "banana": 3}, seed=50)
    dataset = load_data(tmp_path, test_fraction=0.5, quiet=True)
    assert dataset.counts()["test"] == [2, 3]
    assert dataset.notes["test_split"] == "the test/ folder"
    assert sum(dataset.counts()["train"]) + sum(dataset.counts()["val"]) == 11

    write_class_folders(tmp_path / "val", {"apple": 1, "banana": 2}, seed=80)
    dataset = load_data(tmp_path, quiet=True)
    assert dataset.counts() == {"train": [6, 5], "val": [1, 2], "test": [2, 3]}


def test_cache_is_reused_and_invalidated_when_a_file_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = write_class_folders(tmp_path / "photos", {"apple": 6, "banana": 6})
    load_data(root, quiet=True)
    (cached,) = (cache.directory() / "decoded").glob("folder-*.npz")
    # Mark the cached pixels: a second load that returns the mark did not decode again.
    with np.load(cached) as stored:
        arrays = {key: stored[key] for key in stored.files}
    cache.save_atomically(cached, **{**arrays, "images": np.full_like(arrays["images"], 7)})
    assert (load_data(root, quiet=True).x_train == 7).all()

    write_image(root / "apple" / "000", "jpeg", (0, 255, 0), seed=999)
    assert not (load_data(root, quiet=True).x_train == 7).all()
    assert len(list((cache.directory() / "decoded").glob("folder-*.npz"))) == 2


def test_fewer_than_two_classes_is_refused(tmp_path):
    write_class_folders(tmp_path, {"apple": 5})
    with pytest.raises(UserError, match="at least 2"):
        load_data(tmp_path, quiet=True)


def test_class_too_small_for_the_splits_is_refused(tmp_path):
    write_class_folders(tmp_path, {"apple": 8, "banana": 2})
    with pytest.raises(UserError, match="Class 'banana' has"):
        load_data(tmp_path, quiet=True)


def test_standard_dataset_option_is_refused_for_class_folders(photo_folder):
    with pytest.raises(UserError, match="leave out --dataset"):
        load_data(photo_folder, dataset="mnist", quiet=True)


def test_data_info_shows_classes_splits_sizes_and_skipped_files(photo_folder, capsys):
    assert cli.main(["data", "info", "--data", str(photo_folder), "--image-size", "16"]) == 0
    shown = capsys.readouterr().out
    for expected in (*CLASSES, "image shape: 16×16×3", "original image sizes:", "broken.jpg"):
        assert expected in shown
    assert "test split: 20% of each class" in shown


def test_trains_and_evaluates_with_its_own_class_names(trained_run, photo_folder):
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["class_names"] == list(CLASSES)
    assert list(metrics["per_class"]) == list(CLASSES)
    assert metrics["dataset"] == photo_folder.name
    assert np.array(metrics["confusion_matrix"]).shape == (3, 3)
    assert cli.main(["evaluate", str(trained_run), "--data", str(photo_folder)]) == 0
    again = json.loads((trained_run / "evaluation.json").read_text())
    assert again["test"] == metrics["test"] and again["class_names"] == list(CLASSES)


@pytest.fixture(scope="session")
def cifar10_jpeg_subset(tmp_path_factory) -> Path:
    """The first 300 training and 100 test JPEGs per class of the real CIFAR-10, as folders."""
    archive = SHARED_DATA / "cifar10-jpeg.tar.gz"
    if not archive.exists():
        pytest.skip(f"{archive} is not available")
    root = tmp_path_factory.mktemp("cifar10-jpeg")
    kept: dict[tuple[str, str], int] = {}
    with tarfile.open(archive) as tar:
        for member in tar:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) != 3:
                continue
            limit = 300 if parts[0] == "train" else 100
            if kept.get(parts[:2], 0) < limit:
                kept[parts[:2]] = kept.get(parts[:2], 0) + 1
                tar.extract(member, root, filter="data")
    return root


@pytest.mark.slow
def test_real_jpeg_folders_train_well_above_chance(cifar10_jpeg_subset, tmp_path):
    out = tmp_path / "baseline"
    argv = ["train", "baseline", "--data", str(cifar10_jpeg_subset), "--out", str(out)]
    assert cli.main([*argv, "--epochs", "3", "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert (
        metrics["class_names"][0] == "airplane" and metrics["per_class"]["truck"]["support"] == 100
    )
    # Measured test accuracy after 3 epochs on 2,400 training images: 0.414, 0.395, 0.401
    # (seeds 0, 1, 2; CPU). Chance is 0.10; the bar leaves room for noise across machines.
    assert metrics["test"]["accuracy"] > 0.25


def test_study_and_predict_use_the_folders_class_names(photo_folder, tmp_path, capsys):
    out = tmp_path / "study"
    argv = ["study", "--data", str(photo_folder), "--out", str(out), "--epochs", "1"]
    argv += ["--experiments", "baseline,augmented", "--image-size", "24", "--quiet"]
    assert cli.main(argv) == 0
    metrics = json.loads((out / "baseline" / "metrics.json").read_text())
    assert metrics["class_names"] == list(CLASSES) and "diagnosis" in metrics
    assert json.loads((out / "baseline" / "config.json").read_text())["image_size"] == 24
    assert all(name in (out / "report.md").read_text() for name in CLASSES)

    photo = next(path for path in sorted(photo_folder.rglob("*.png")))
    capsys.readouterr()
    assert cli.main(["predict", str(out / "baseline"), str(photo), "--json"]) == 0
    answer = json.loads(capsys.readouterr().out.strip().splitlines()[0])
    assert {entry["class"] for entry in answer["top"]} <= set(CLASSES)


def test_a_packed_class_folder_archive_loads_like_the_folder(photo_folder, tmp_path):
    archive = tmp_path / "photos.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(photo_folder, arcname="photos")  # One wrapping folder, as people pack them.
    from_archive = load_data(archive, quiet=True)
    from_folder = load_data(photo_folder, quiet=True)
    assert from_archive.class_names == from_folder.class_names
    assert from_archive.counts() == from_folder.counts()
    np.testing.assert_array_equal(from_archive.x_test, from_folder.x_test)
    assert from_archive.name == "photos" and from_archive.source == str(archive)
    assert load_data(archive, quiet=True).counts() == from_folder.counts()  # From the cache.


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one CPU decodes in-process")
def test_a_script_loading_outside_its_main_guard_fails_in_one_sentence(tmp_path):
    """Decoding workers import the script again; unguarded, they used to wait on its lock."""
    root = tmp_path / "many"
    for name, colour in (("red", (220, 20, 20)), ("blue", (20, 20, 220))):
        (root / name).mkdir(parents=True)
        for index in range(folders._PARALLEL_FROM // 2):  # Enough to decode in processes.
            Image.new("RGB", (8, 8), colour).save(root / name / f"{index:04d}.png")
    environment = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    call = f"cifarlab.load_data({str(root)!r}, quiet=True)\nprint('loaded')"

    def run(script: str) -> subprocess.CompletedProcess:
        path = tmp_path / "script.py"
        path.write_text(f"import cifarlab\n{script}\n")
        command = [sys.executable, str(path)]
        return subprocess.run(command, capture_output=True, text=True, env=environment, timeout=600)

    unguarded = run(call)
    assert unguarded.returncode != 0 and "loaded" not in unguarded.stdout
    assert 'outside `if __name__ == "__main__":`' in unguarded.stderr.splitlines()[-1]
    assert not list((tmp_path / "cache").rglob("*.npz"))
    guarded = run("if __name__ == '__main__':\n    " + call.replace("\n", "\n    "))
    assert guarded.returncode == 0, guarded.stderr
    assert guarded.stdout.splitlines()[-1] == "loaded"


# The folder rules on small folders: what counts as a class and an image, links, the cache key,
# chunks of work and the sentences.


def write_flat(folder: Path, count: int, colour: tuple[int, int, int], size=(8, 8)) -> Path:
    """`count` flat PNGs named 000.png, 001.png, ... in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        Image.new("RGB", size, colour).save(folder / f"{index:03d}.png")
    return folder


def test_skipped_files_are_named_up_to_five_and_the_rest_counted():
    names = [f"cat/{index}.jpg" for index in range(7)]
    assert folders.skipped_summary(names[:1]) == "skipped 1 unreadable image file(s): cat/0.jpg."
    assert folders.skipped_summary(names[:5]) == (
        "skipped 5 unreadable image file(s): cat/0.jpg, cat/1.jpg, cat/2.jpg, cat/3.jpg, cat/4.jpg."
    )
    assert folders.skipped_summary(tuple(names)) == (
        "skipped 7 unreadable image file(s): cat/0.jpg, cat/1.jpg, cat/2.jpg, cat/3.jpg, "
        "cat/4.jpg and 2 more."
    )


def test_image_sizes_are_summarised_by_count_and_area():
    # Areas 360, 400, 15, 3,840 and 360: the smallest and largest by area, not by a side.
    sizes = np.array([[30, 12], [2, 200], [3, 5], [64, 60], [30, 12]])
    assert folders.size_summary(sizes) == {
        "most_common": "30×12",
        "most_common_count": 2,
        "distinct": 4,
        "smallest": "3×5",
        "largest": "64×60",
    }


def test_what_counts_as_a_class_folder(tmp_path):
    (tmp_path / "file.png").write_bytes(b"")
    assert not folders.is_class_folder(tmp_path / "file.png")
    assert not folders.is_class_folder(tmp_path / "absent")
    empty = tmp_path / "empty"
    (empty / "apple").mkdir(parents=True)
    (empty / "notes").mkdir()
    (empty / "notes" / "readme.txt").write_text("no images here")
    assert not folders.is_class_folder(empty)
    hidden = write_flat(tmp_path / "hidden" / ".thumbnails", 2, (9, 9, 9)).parent
    (hidden / "apple").mkdir()
    (hidden / "apple" / ".cover.png").write_bytes((hidden / ".thumbnails" / "000.png").read_bytes())
    assert not folders.is_class_folder(hidden)  # Hidden folders and files are not data.
    (tmp_path / "split" / "train").mkdir(parents=True)
    assert folders.is_class_folder(tmp_path / "split")  # A train/ folder says so by itself.
    write_flat(tmp_path / "nested" / "apple" / "2024" / "june", 1, (200, 0, 0))
    assert folders.is_class_folder(tmp_path / "nested")


def test_images_are_found_below_each_class_in_a_fixed_order(tmp_path):
    root = tmp_path / "fruit"
    write_flat(root / "Xigua", 2, (230, 210, 40))  # Upper case sorts first.
    write_flat(root / "apple" / "red", 1, (200, 30, 30))
    (root / "apple" / "GREEN.PNG").write_bytes((root / "Xigua" / "000.png").read_bytes())
    (root / "apple" / "notes.txt").write_text("not an image")
    (root / "apple" / ".hidden.png").write_bytes(b"")
    files = folders.class_images(root)
    assert [(file.split, file.class_name, file.relative) for file in files] == [
        ("train", "Xigua", "Xigua/000.png"),
        ("train", "Xigua", "Xigua/001.png"),
        ("train", "apple", "apple/GREEN.PNG"),
        ("train", "apple", "apple/red/000.png"),
    ]
    stat = (root / "apple" / "red" / "000.png").stat()
    assert (files[-1].size, files[-1].modified) == (stat.st_size, stat.st_mtime_ns)


def test_split_folders_must_not_bring_new_classes(tmp_path):
    write_flat(tmp_path / "train" / "apple", 2, (200, 30, 30))
    write_flat(tmp_path / "train" / "banana", 2, (230, 210, 40))
    write_flat(tmp_path / "test" / "lime", 1, (20, 200, 20))
    write_flat(tmp_path / "test" / "kiwi", 1, (20, 200, 20))
    write_flat(tmp_path / "test" / "apple", 1, (200, 30, 30))
    with pytest.raises(UserError) as error:
        folders.class_images(tmp_path)
    assert str(error.value) == (
        f"{tmp_path / 'test'} has classes that {tmp_path / 'train'} lacks (kiwi, lime); every "
        "class needs training images."
    )
    for name in ("kiwi", "lime"):
        shutil.rmtree(tmp_path / "test" / name)
    files = folders.class_images(tmp_path)
    assert [(file.split, file.relative) for file in files] == [
        ("train", "train/apple/000.png"), ("train", "train/apple/001.png"),
        ("train", "train/banana/000.png"), ("train", "train/banana/001.png"),
        ("test", "test/apple/000.png"),
    ]  # fmt: skip


def test_one_class_is_refused_in_one_sentence(tmp_path):
    write_flat(tmp_path / "train" / "apple", 2, (200, 30, 30))
    with pytest.raises(UserError) as error:
        folders.class_images(tmp_path)
    assert str(error.value) == (
        f"{tmp_path / 'train'} has 1 class folder(s); a classifier needs at least 2, one folder "
        "of images per class."
    )


def test_links_back_up_and_dangling_links_are_skipped_with_a_warning(tmp_path):
    root = tmp_path / "fruit"
    write_flat(root / "train" / "apple", 2, (200, 30, 30))
    write_flat(root / "train" / "banana", 1, (230, 210, 40))
    (root / "train" / "apple" / "again").symlink_to(root / "train" / "apple")
    (root / "train" / "apple" / "up").symlink_to(root / "train")
    (root / "train" / "banana" / "top").symlink_to(root)
    (root / "train" / "banana" / "gone.png").symlink_to(tmp_path / "deleted.png")
    with pytest.warns(UserWarning) as caught:
        files = folders.class_images(root)
    assert [file.relative for file in files] == [
        "train/apple/000.png", "train/apple/001.png", "train/banana/000.png"
    ]  # fmt: skip
    assert sorted(str(warning.message) for warning in caught) == sorted([
        f"Skipped {root}/train/apple/again: a link back to a folder above it.",
        f"Skipped {root}/train/apple/up: a link back to a folder above it.",
        f"Skipped {root}/train/banana/top: a link back to a folder above it.",
        f"Skipped {root}/train/banana/gone.png: No such file or directory.",
    ])  # fmt: skip


def test_a_link_to_a_folder_elsewhere_is_followed(tmp_path):
    write_flat(tmp_path / "elsewhere", 2, (40, 30, 160))
    root = tmp_path / "fruit"
    write_flat(root / "apple", 1, (200, 30, 30))
    (root / "cherry").symlink_to(tmp_path / "elsewhere")
    assert [file.relative for file in folders.class_images(root)] == [
        "apple/000.png", "cherry/000.png", "cherry/001.png"
    ]  # fmt: skip


def test_the_cache_is_keyed_by_image_size(tmp_path):
    root = tmp_path / "fruit"
    write_flat(root / "apple", 2, (200, 30, 30), size=(12, 10))
    write_flat(root / "banana", 1, (230, 210, 40), size=(12, 10))
    small, large = folders.read(root, 8, quiet=True), folders.read(root, 16, quiet=True)
    assert small.images.shape == (3, 8, 8, 3) and large.images.shape == (3, 16, 16, 3)
    assert small.labels.tolist() == [0, 0, 1] and small.splits.tolist() == [0, 0, 0]
    assert small.original_sizes.tolist() == [[12, 10]] * 3
    assert small.class_names == ("apple", "banana") and small.skipped == ()
    np.testing.assert_array_equal(small.indices("train"), [0, 1, 2])
    assert small.indices("test").tolist() == [] and small.indices("val").tolist() == []


def test_work_is_handed_out_in_chunks_and_failures_placed_in_theirs(tmp_path, capsys):
    """601 files are two chunks of 500 and 101; an unreadable one in the second is skipped,
    and every other image keeps its own label and pixels."""
    root = tmp_path / "many"
    write_flat(root / "a", 300, (200, 30, 30))
    write_flat(root / "b", 300, (30, 30, 200))
    (root / "b" / "broken.png").write_bytes(b"not a PNG")  # Sorted last: file 601.
    with pytest.warns(UserWarning, match="Skipped 1 unreadable image file"):
        decoded = folders.read(root, 8)
    assert decoded.skipped == ("b/broken.png",)
    assert decoded.labels.tolist() == [0] * 300 + [1] * 300
    assert decoded.images.dtype == np.uint8 and decoded.original_sizes.dtype == np.int64
    assert (decoded.images[:300] == (200, 30, 30)).all()
    assert (decoded.images[300:] == (30, 30, 200)).all()
    bar = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert re.fullmatch(r"decode: 100%\|█+\| 601/601 \[.*image/s\]", bar), bar


def test_decode_all_marks_unreadable_files_and_leaves_them_black(tmp_path):
    good = write_flat(tmp_path, 2, (10, 20, 30), size=(6, 4))
    (tmp_path / "bad.png").write_bytes(b"")
    paths = [good / "000.png", tmp_path / "bad.png", good / "001.png"]
    pixels, sizes, failed = folders.decode_all(paths, 4, quiet=True)
    assert failed == [1] and sizes.tolist() == [[6, 4], [0, 0], [6, 4]]
    assert (pixels[1] == 0).all() and (pixels[[0, 2]] == (10, 20, 30)).all()


def test_loading_refuses_in_a_worker_importing_its_parents_script(tmp_path, monkeypatch):
    root = tmp_path / "fruit"
    write_flat(root / "apple", 2, (200, 30, 30))
    write_flat(root / "banana", 2, (230, 210, 40))
    # What `multiprocessing` sets in a spawned worker while it imports the parent's script.
    monkeypatch.setattr(multiprocessing.current_process(), "_inheriting", True, raising=False)
    with pytest.raises(UserError) as error:
        load_data(root, quiet=True)
    assert str(error.value) == (
        "This worker process is importing your script again; call cifarlab under "
        '`if __name__ == "__main__":` there.'
    )
    monkeypatch.setattr(multiprocessing.current_process(), "_inheriting", False)
    folders.refuse_in_an_importing_worker()  # Anywhere else, nothing to refuse.


def test_few_images_decode_in_this_process():
    with folders._executor(folders._PARALLEL_FROM - 1) as executor:
        assert isinstance(executor, ThreadPoolExecutor) and executor._max_workers == 1


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one CPU decodes in-process")
def test_many_images_decode_in_spawned_processes_one_per_cpu():
    with folders._executor(folders._PARALLEL_FROM) as executor:
        assert isinstance(executor, ProcessPoolExecutor)
        assert executor._max_workers == len(os.sched_getaffinity(0))
        # Forking a process that runs TensorFlow's threads can deadlock; spawning cannot.
        assert executor._mp_context.get_start_method() == "spawn"


def test_quiet_reading_shows_no_progress_and_the_default_shows_it(tmp_path, capsys):
    root = tmp_path / "fruit"
    write_flat(root / "apple", 2, (200, 30, 30))
    write_flat(root / "banana", 1, (230, 210, 40))
    capsys.readouterr()
    folders.read(root, 8, quiet=True)
    assert capsys.readouterr().err == ""
    folders.decode_all(sorted(root.rglob("*.png")), 8)
    assert "decode: 100%" in capsys.readouterr().err


def test_a_new_decoder_version_decodes_again(tmp_path, monkeypatch):
    """Arrays cached by another version of `images.decode` are not reused."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = tmp_path / "fruit"
    write_flat(root / "apple", 2, (200, 30, 30))
    write_flat(root / "banana", 1, (230, 210, 40))
    folders.read(root, 8, quiet=True)
    (cached,) = (cache.directory() / "decoded").glob("folder-*.npz")
    with np.load(cached) as stored:
        arrays = {key: stored[key] for key in stored.files}
    cache.save_atomically(cached, **{**arrays, "images": np.full_like(arrays["images"], 7)})
    assert (folders.read(root, 8, quiet=True).images == 7).all()  # The marked cache.
    monkeypatch.setattr(folders, "DECODER_VERSION", folders.DECODER_VERSION + 1)
    assert (folders.read(root, 8, quiet=True).images[0] == (200, 30, 30)).all()


def test_the_cache_is_keyed_by_the_folder_too(tmp_path):
    """A copy elsewhere with the same names, sizes and times but other pixels is other data."""
    first = tmp_path / "first"
    for name, colour in (("apple", (200, 30, 30)), ("banana", (230, 210, 40))):
        (first / name).mkdir(parents=True)
        Image.new("RGB", (8, 8), colour).save(first / name / "000.bmp")
    shutil.copytree(first, tmp_path / "second")  # Keeps each file's modification time.
    second_apple = tmp_path / "second" / "apple" / "000.bmp"
    stat = second_apple.stat()
    Image.new("RGB", (8, 8), (0, 0, 255)).save(second_apple)  # A BMP: the same size in bytes.
    os.utime(second_apple, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert second_apple.stat().st_size == stat.st_size
    assert (folders.read(first, 8, quiet=True).images[0] == (200, 30, 30)).all()
    assert (folders.read(tmp_path / "second", 8, quiet=True).images[0] == (0, 0, 255)).all()


def test_class_folders_without_images_read_as_no_images_of_the_documented_types(tmp_path):
    (tmp_path / "apple").mkdir()
    (tmp_path / "banana").mkdir()
    decoded = folders.read(tmp_path, 8, quiet=True)
    assert decoded.images.shape == (0, 8, 8, 3) and decoded.images.dtype == np.uint8
    assert decoded.labels.dtype == decoded.splits.dtype == np.int64
    assert decoded.original_sizes.shape == (0, 2) and decoded.skipped == ()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to leave one")
def test_a_process_allowed_one_cpu_decodes_in_process_however_many_the_machine_has():
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})
    try:
        with folders._executor(folders._PARALLEL_FROM) as executor:
            assert isinstance(executor, ThreadPoolExecutor)
    finally:
        os.sched_setaffinity(0, allowed)

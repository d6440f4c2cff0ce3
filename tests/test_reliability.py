"""Reliability under real failures: racing processes on a cold cache, two writers and a `kill -9`
on one run folder, torn files, messy folders, disguised files and a diverging run.

Every command runs as its own process, exactly as a user (or a sweep's workers) would start it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from cifarlab import load_data, run_folder
from cifarlab.data import images
from cifarlab.errors import UserError
from tests.conftest import kill_once_backed_up

COMMAND = [sys.executable, "-m", "cifarlab.cli"]
PHOTO_CLASSES = {"cat": (200, 60, 40), "dog": (60, 180, 60), "fox": (40, 60, 200)}
PHOTOS_PER_CLASS = 6
# A PostScript file, which Pillow identifies as EPS and would hand to Ghostscript to draw.
POSTSCRIPT = (
    b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n%%EndComments\n"
    b"newpath 0 0 moveto 10 10 lineto stroke\nshowpage\n%%EOF\n"
)


def environment(cache: Path) -> dict[str, str]:
    return {**os.environ, "XDG_CACHE_HOME": str(cache), "TF_CPP_MIN_LOG_LEVEL": "3"}


def cifarlab(*arguments: object, cache: Path) -> subprocess.CompletedProcess:
    """`cifarlab ARGUMENTS` in its own process, with `cache` as the per-user cache."""
    return subprocess.run(
        [*COMMAND, *map(str, arguments)],
        capture_output=True,
        text=True,
        env=environment(cache),
        timeout=600,
    )


def assert_one_sentence(result: subprocess.CompletedProcess, exit_code: int, *phrases: str):
    """The command failed with `exit_code` and said why in one `cifarlab: ...` sentence."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == exit_code, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("cifarlab: ") and lines[0].endswith("."), lines[0]
    for phrase in phrases:
        assert phrase in lines[0]


def partial_files(folder: Path) -> list[str]:
    """Files and folders below `folder` (hidden ones included) left by an unfinished write."""
    return [
        os.path.join(parent, name)
        for parent, folders, files in os.walk(folder)
        for name in folders + files
        if ".part" in name
    ]


def write_photos(root: Path) -> Path:
    """`root/<class>/` folders of small noisy photos, alternately JPEG and PNG."""
    rng = np.random.default_rng(0)
    for name, colour in PHOTO_CLASSES.items():
        (root / name).mkdir(parents=True)
        for index in range(PHOTOS_PER_CLASS):
            pixels = np.clip(np.array(colour) + rng.normal(0, 12, (20, 24, 3)), 0, 255)
            suffix = ".jpg" if index % 2 else ".png"
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{index}{suffix}")
    return root


@pytest.fixture(scope="module")
def photo_archive(tmp_path_factory) -> Path:
    """A class-folder dataset packed as users send one: `photos/<class>/` in `photos.tar.gz`."""
    folder = tmp_path_factory.mktemp("photos")
    archive = folder / "photos.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(write_photos(folder / "photos"), arcname="photos")
    return archive


# 1. Processes racing to fill an empty cache.


# Python and NumPy take about half a second to start, which varies by more than the whole decode
# of a small dataset; so each process imports first, then waits at a common start line.
_AT_THE_START_LINE = """
import sys, time
from pathlib import Path
from cifarlab import cli
from cifarlab.data import dataset
Path(sys.argv[2]).touch()
while not Path(sys.argv[1]).exists():
    time.sleep(0.001)
sys.exit(cli.main(sys.argv[3:]))
"""


@pytest.mark.parametrize(
    "data, num_images",
    [("photo_archive", 3 * PHOTOS_PER_CLASS), ("tiny_archive", 80 + 40)],
    ids=["class-folder archive", "official archive"],
)
def test_four_processes_filling_an_empty_cache_agree(data, num_images, request, tmp_path):
    archive, cache = request.getfixturevalue(data), tmp_path / "cache"
    go, command = tmp_path / "go", ["data", "info", "--data", archive]
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _AT_THE_START_LINE, go, tmp_path / f"ready{index}", *command],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment(cache),
        )
        for index in range(4)
    ]
    try:
        deadline = time.monotonic() + 300
        while len(list(tmp_path.glob("ready*"))) < 4 and time.monotonic() < deadline:
            assert all(process.poll() is None for process in processes)
            time.sleep(0.01)
        assert not (cache / "cifarlab").exists()  # Nobody has touched the cache yet.
        go.touch()
        results = [process.communicate(timeout=300) for process in processes]
    finally:
        for process in processes:
            process.kill()
    for process, (_, stderr) in zip(processes, results, strict=True):
        assert process.returncode == 0 and "Traceback" not in stderr, stderr
    if data == "photo_archive":  # Its decode shows a progress bar: one decodes, three wait.
        assert sum("decode:" in stderr for _, stderr in results) == 1
    outputs = {stdout for stdout, _ in results}
    assert len(outputs) == 1, outputs
    totals = re.search(r"^total +(\d+) +(\d+) +(\d+)$", outputs.pop(), re.MULTILINE)
    assert sum(map(int, totals.groups())) == num_images  # Train, validation and test: all read.
    assert partial_files(cache) == []


def test_a_torn_cache_entry_is_rebuilt(tiny_archive, tmp_path):
    cache = tmp_path / "cache"
    first = cifarlab("data", "info", "--data", tiny_archive, cache=cache)
    assert first.returncode == 0, first.stderr
    (entry,) = (cache / "cifarlab" / "decoded").glob("*.npz")
    entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])
    again = cifarlab("data", "info", "--data", tiny_archive, cache=cache)
    assert again.returncode == 0, again.stderr
    assert again.stdout == first.stdout


# 2. Two jobs, one run folder.


def test_a_second_writer_is_refused_and_a_killed_one_leaves_no_lock(tiny_archive, tmp_path):
    out, cache = tmp_path / "run", tmp_path / "cache"
    # Enough epochs that the first run is still training when the second has started up.
    train = ["train", "baseline", "--data", tiny_archive, "--out", out, "--epochs", "30",
             "--batch-size", "8", "--quiet", "--precision", "float32"]  # fmt: skip
    first = subprocess.Popen(
        [*COMMAND, *map(str, train)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=environment(cache),
    )
    try:
        deadline = time.monotonic() + 300
        while not (out / run_folder.CONFIG).is_file() and time.monotonic() < deadline:
            assert first.poll() is None, "the first run ended before writing its config"
            time.sleep(0.05)
        second = cifarlab(*train, cache=cache)
        assert first.poll() is None, "the first run finished too soon; give it more epochs"
        assert_one_sentence(second, 2, "being written by another cifarlab process")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert not run_folder.is_finished(out)

    # The operating system dropped the killed process's lock: the same command resumes.
    third = cifarlab(*train, cache=cache)
    assert third.returncode == 0, third.stderr
    assert "being written" not in third.stderr
    assert [row["epoch"] for row in run_folder.read_history(out)] == list(range(30))
    assert run_folder.is_finished(out)
    assert partial_files(out) == []


# 3. Torn and garbled files.


def test_a_torn_metrics_file_means_unfinished(trained_run, tmp_path):
    copy = tmp_path / "baseline"
    shutil.copytree(trained_run, copy)
    metrics = copy / run_folder.METRICS
    metrics.write_bytes(metrics.read_bytes()[: metrics.stat().st_size // 2])
    assert not run_folder.is_finished(copy)
    assert_one_sentence(cifarlab("report", copy, cache=tmp_path), 2, str(copy), "metrics.json")


def test_a_garbled_config_is_one_sentence(trained_run, tmp_path):
    copy = tmp_path / "baseline"
    shutil.copytree(trained_run, copy)
    (copy / run_folder.CONFIG).write_text('{"name": "baseline", "epochs": ')
    assert_one_sentence(cifarlab("report", copy, cache=tmp_path), 2, "config.json", "damaged")


# A run killed in training, as its folder is left: a backup of its last finished epoch, and a
# history row for each epoch up to it (one more when the kill fell between a row and its backup).
RESUMABLE = ("--epochs", "10", "--quiet", "--precision", "float32")
BACKUP_METADATA = Path(run_folder.BACKUP) / "training_metadata.json"  # Keras's epoch number.


@pytest.fixture(scope="module")
def killed_run(tiny_archive, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("killed") / "run"
    arguments = ["train", "baseline", *RESUMABLE, "--data", tiny_archive, "--out", out]
    process = subprocess.Popen(
        [*COMMAND, *map(str, arguments)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=environment(out.parent / "cache"),
    )
    kill_once_backed_up(process, out / run_folder.BACKUP, timeout=300)
    assert (out / BACKUP_METADATA).is_file(), "the run finished training before the kill"
    return out


def copy_of(killed_run: Path, tmp_path: Path) -> tuple[Path, int, list[str]]:
    """A copy of the killed run, its backup's epoch and its history's lines."""
    out = tmp_path / "baseline"
    shutil.copytree(killed_run, out)
    backup_epoch = int(json.loads((out / BACKUP_METADATA).read_text())["epoch"])
    lines = (out / run_folder.HISTORY).read_text().splitlines(keepends=True)
    assert backup_epoch >= 1 and len(lines) - 1 >= backup_epoch
    return out, backup_epoch, lines


def train_again(out: Path, tiny_archive, tmp_path, command="train") -> subprocess.CompletedProcess:
    """The killed run's command again: `train`, or a `study` of its experiment around it."""
    if command == "train":
        where = ["train", "baseline", "--out", out]
    else:
        where = ["study", "--experiments", "baseline", "--out", out.parent]
    return cifarlab(*where, *RESUMABLE, "--data", tiny_archive, cache=tmp_path / "cache")


def cut_short(row: str) -> str:
    return row[: len(row) // 2]  # Columns and a number missing.


def zero_filled(row: str) -> str:
    return row[:3] + "\0" * 40  # Space allotted but never written, as after a crash.


@pytest.mark.parametrize(
    ("command", "tear"),
    [("train", cut_short), ("train", zero_filled), ("study", cut_short)],
    ids=["train, cut short", "train, zero-filled", "study, cut short"],
)
def test_a_torn_history_row_past_the_backup_is_dropped_and_the_run_resumes(
    command, tear, killed_run, tiny_archive, tmp_path
):
    out, backup_epoch, lines = copy_of(killed_run, tmp_path)
    kept = run_folder.read_history(out)[:backup_epoch]
    # The next epoch's row, as a kill while CSVLogger wrote it leaves it: no line end.
    epoch, rest = lines[-1].split(",", 1)
    (out / run_folder.HISTORY).write_text("".join(lines) + tear(f"{int(epoch) + 1},{rest}"))
    result = train_again(out, tiny_archive, tmp_path, command)
    assert result.returncode == 0, result.stderr
    rows = run_folder.read_history(out)
    assert [row["epoch"] for row in rows] == list(range(10))
    assert rows[:backup_epoch] == kept  # The epochs trained before the kill are kept as they were.
    assert run_folder.is_finished(out)  # Its metrics agree with the history: ten epochs.


def test_a_torn_first_row_without_a_backup_starts_the_run_afresh(
    killed_run, tiny_archive, tmp_path
):
    out, _, lines = copy_of(killed_run, tmp_path)
    # What a kill while the first epoch's row was written leaves: no backup yet, a torn row.
    shutil.rmtree(out / run_folder.BACKUP)
    (out / run_folder.HISTORY).write_text(lines[0] + lines[1][: len(lines[1]) // 2])
    result = train_again(out, tiny_archive, tmp_path)
    assert result.returncode == 0, result.stderr
    assert [row["epoch"] for row in run_folder.read_history(out)] == list(range(10))
    assert run_folder.is_finished(out)


@pytest.mark.parametrize("damage", ["a torn row", "rows missing"])
def test_a_damaged_history_up_to_the_backup_is_refused_and_kept(
    damage, killed_run, tiny_archive, tmp_path
):
    out, backup_epoch, lines = copy_of(killed_run, tmp_path)
    if damage == "a torn row":  # The first epoch's row, which the resume would keep.
        lines[1] = lines[1][: len(lines[1]) // 2] + "\n"
    else:  # The backup's last epoch has no row.
        lines = lines[:backup_epoch]
    (out / run_folder.HISTORY).write_text("".join(lines))
    history = (out / run_folder.HISTORY).read_bytes()
    assert_one_sentence(train_again(out, tiny_archive, tmp_path), 2, str(out), "damaged")
    assert (out / run_folder.HISTORY).read_bytes() == history
    assert (out / BACKUP_METADATA).is_file()


def test_a_finished_run_leaves_no_partial_files(trained_run):
    assert run_folder.is_finished(trained_run)
    assert partial_files(trained_run) == []


# 4. Messy class folders.


def test_a_link_loop_and_an_unreadable_folder_are_skipped_with_warnings(tmp_path):
    root = write_photos(tmp_path / "photos")
    os.symlink("..", root / "cat" / "loop")  # Leads back to the dataset folder, and on forever.
    locked = root / "dog" / "locked"
    locked.mkdir()
    shutil.copy(root / "dog" / "1.jpg", locked / "extra.jpg")
    locked.chmod(0)
    # Root reads a folder whatever its mode, so that part is checked only as another user.
    blocks_reads = os.geteuid() != 0
    try:
        with pytest.warns(UserWarning) as caught:
            data = load_data(root, quiet=True)
    finally:
        locked.chmod(0o755)
    warned = [str(warning.message) for warning in caught]
    assert any(str(root / "cat" / "loop") in text and "link back" in text for text in warned)
    if blocks_reads:
        assert any(str(locked) in text and "ermission denied" in text for text in warned)
    labels = np.concatenate([data.y_train, data.y_val, data.y_test])
    # Every photo once, in its own class: none of the dog or fox photos reached through the loop.
    dogs = PHOTOS_PER_CLASS + (0 if blocks_reads else 1)  # As root, the locked photo too.
    assert np.bincount(labels).tolist() == [PHOTOS_PER_CLASS, dogs, PHOTOS_PER_CLASS]


@pytest.mark.parametrize("contents", ["nothing", "text files only"])
def test_a_folder_without_images_is_one_sentence(contents, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    if contents == "text files only":
        for name in PHOTO_CLASSES:
            (folder / name).mkdir()
            (folder / name / "notes.txt").write_text("no pictures here\n")
    with pytest.raises(UserError, match=re.escape(str(folder))):
        load_data(folder)
    assert_one_sentence(cifarlab("data", "info", "--data", folder, cache=tmp_path), 2, str(folder))


# 5. Files that are not what their names say.


def test_postscript_is_refused_whatever_its_name(trained_run, tmp_path):
    disguised, named = tmp_path / "photo.jpg", tmp_path / "photo.eps"
    disguised.write_bytes(POSTSCRIPT)
    named.write_bytes(POSTSCRIPT)
    with Image.open(disguised) as opened:  # Pillow left to itself would take it.
        assert opened.format == "EPS"
    for source in (POSTSCRIPT, disguised, named):
        with pytest.raises(UserError, match="is not a supported image"):
            images.load(source)
    good = tmp_path / "good.png"
    Image.new("RGB", (32, 32), (200, 60, 40)).save(good)

    result = cifarlab("predict", trained_run, disguised, named, good, cache=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.splitlines() == [
        f"cifarlab: {path} is not a supported image ({images.SUPPORTED})."
        for path in (disguised, named)
    ]
    assert "good.png" in result.stdout  # The readable image is still classified.


# 6. A diverging run.


def test_a_nan_loss_stops_the_run_with_one_sentence_and_keeps_the_best_checkpoint(
    tiny_archive, tmp_path
):
    out = tmp_path / "run"
    result = cifarlab("train", "baseline", "--learning-rate", "1000", "--data", tiny_archive,
                      "--out", out, "--epochs", "3", "--quiet", "--precision", "float32",
                      cache=tmp_path / "cache")  # fmt: skip
    assert_one_sentence(result, 1, "diverged", str(out), "--learning-rate")
    assert not run_folder.is_finished(out)
    val_losses = [row["val_loss"] for row in run_folder.read_history(out)]
    # At this rate the first epoch ends with a huge but finite validation loss (about 1e29 on a
    # CPU) and the second turns NaN; where the first epoch already diverged there is no best
    # checkpoint to keep, and the sentence above is all there is to check.
    if any(np.isfinite(val_losses)):
        model = keras.models.load_model(out / run_folder.BEST_MODEL)
        assert all(np.isfinite(weight).all() for weight in model.get_weights())
    assert partial_files(out) == []

"""Write errors end in one sentence, never a traceback, and never cost saved work: an `--out`
that is a file or read-only is refused before TensorFlow loads; a disk that fills up during
training stops it in one sentence; a checkpoint save that fails keeps the previous best.

Full and read-only disks are real: small tmpfs mounts in a private mount namespace
(`unshare -rm`), made by the test process for its own children only.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.test_cli import IMPORTS_SCRIPT, assert_one_sentence, user_environment


def can_mount() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = ["unshare", "-rm", "sh", "-c", "mount -t tmpfs tmpfs /mnt"]
    return subprocess.run(probe, capture_output=True).returncode == 0


needs_mounts = pytest.mark.skipif(not can_mount(), reason="no private tmpfs mounts here")


def in_namespace(mount: str, *command: object) -> subprocess.CompletedProcess:
    """`command` in a private mount namespace where `mount` (a shell line) was run first."""
    line = " ".join(f"'{part}'" for part in map(str, command))
    script = f"{mount} && exec {line}"
    return subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True,
                          env=user_environment())  # fmt: skip


@pytest.mark.parametrize(
    "arguments",
    [
        ["train", "baseline", "--data", "{data}", "--out", "{file}"],
        ["train", "baseline", "--data", "{data}", "--out", "{file}/run"],
        ["study", "--data", "{data}", "--out", "{file}"],
        ["report", "{run}", "--out", "{file}"],
        ["predict", "{run}", "{file}", "--explain", "{file}"],
    ],
)
def test_an_out_that_is_a_file_is_refused_before_tensorflow_loads(
    arguments, trained_run, tiny_archive, tmp_path
):
    existing = tmp_path / "notes.txt"
    existing.write_text("mine\n")
    values = {"data": tiny_archive, "file": existing, "run": trained_run}
    command = [sys.executable, "-c", IMPORTS_SCRIPT, *(a.format(**values) for a in arguments)]
    result = subprocess.run(command, capture_output=True, text=True, env=user_environment())
    assert result.stdout.split() == ["2", "False", "False"], result.stdout + result.stderr
    line = assert_one_sentence(result.stderr)
    assert "is a file" in line or "inside the file" in line
    assert existing.read_text() == "mine\n"


def train_on_tmpfs(options: str, folder, data, *arguments) -> subprocess.CompletedProcess:
    """`cifarlab train baseline` into `folder`/run, with a tmpfs mounted there with `options`."""
    folder.mkdir()
    return in_namespace(f"mount -t tmpfs -o {options} tmpfs {folder}", sys.executable, "-m",
                        "cifarlab.cli", "train", "baseline", "--data", data,
                        "--out", folder / "run", *arguments)  # fmt: skip


@needs_mounts
def test_a_read_only_out_is_refused_in_one_sentence(tiny_archive, tmp_path):
    result = train_on_tmpfs("ro", tmp_path / "readonly", tiny_archive)
    assert result.returncode == 2
    assert "read-only" in assert_one_sentence(result.stderr)


@needs_mounts
def test_a_disk_that_fills_up_during_training_stops_in_one_sentence(tiny_archive, tmp_path):
    # 1 MB: the config and history fit, the 8.7 MB checkpoint of the notebook's network not.
    result = train_on_tmpfs("size=1m", tmp_path / "full", tiny_archive, "--epochs", "2",
                            "--precision", "float32", "--quiet")  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "no space left" in assert_one_sentence(result.stderr)


KEEP_BEST = """
import sys
from pathlib import Path
import keras, numpy as np
from cifarlab.training import BestCheckpoint

folder = Path(sys.argv[1])
model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2000), keras.layers.Dense(2)])
checkpoint = BestCheckpoint(folder / "best.keras")
checkpoint.set_model(model)
checkpoint.on_epoch_end(0, {"val_loss": 2.0})
saved = model.get_weights()
(folder / "filler").write_bytes(b"x")
with open(folder / "filler", "ab") as filler:  # Fill the disk to its last byte.
    try:
        while True:
            filler.write(b"\\0" * 65536)
            filler.flush()
    except OSError:
        pass
model.set_weights([weight + 1 for weight in saved])
try:
    checkpoint.on_epoch_end(1, {"val_loss": 1.0})
    print("saved")
except OSError:
    print("refused")
kept = keras.models.load_model(folder / "best.keras").get_weights()
print(all(np.array_equal(a, b) for a, b in zip(kept, saved)))
print(sorted(path.name for path in folder.iterdir()))
"""


@needs_mounts
def test_a_checkpoint_save_that_fails_keeps_the_previous_best(tmp_path):
    folder = tmp_path / "disk"
    folder.mkdir()
    result = in_namespace(f"mount -t tmpfs -o size=1m tmpfs {folder}", sys.executable, "-c",
                          KEEP_BEST, folder)  # fmt: skip
    lines = result.stdout.split("\n")
    assert lines[:3] == ["refused", "True", "['best.keras', 'filler']"], result.stderr[-2000:]

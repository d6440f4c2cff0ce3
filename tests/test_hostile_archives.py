"""Hostile archives and an unusable cache: tar bombs, killed extractions, read-only or full caches.

Every archive is a real file and every kill a real process. Bombs are members of zeros, which
gzip shrinks about 200-fold at level 1: a 512 MiB member is a 2.3 MB archive, written in a
second, and refused before any of it is decompressed.
"""

from __future__ import annotations

import io
import json
import os
import re
import resource
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifarlab import cli
from cifarlab.data import cache, safe_files

COMMAND = [sys.executable, "-m", "cifarlab.cli"]
PROGRESS = re.compile(r"^decode: .*\]$")  # tqdm's bar, which `data info` shows while decoding.
_MiB = 1 << 20


class Zeros:
    """A file object of `size` zero bytes, read in blocks as `tarfile.addfile` does."""

    def __init__(self, size: int):
        self.left = size

    def read(self, size: int = -1) -> bytes:
        size = self.left if size < 0 else min(size, self.left)
        self.left -= size
        return bytes(size)


def write_archive(path: Path, members: dict[str, bytes | int]) -> Path:
    """A .tar.gz of `members`: bytes as given, an int as that many zero bytes."""
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = content if isinstance(content, int) else len(content)
            source = Zeros(content) if isinstance(content, int) else io.BytesIO(content)
            tar.addfile(info, source)
    return path


def png(colour: tuple[int, int, int], seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.normal(0, 12, (12, 12, 3)), 0, 255)
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def photos(per_class: int = 6) -> dict[str, bytes]:
    """Members of a packed class-folder dataset: `photos/<class>/<n>.png`, two classes."""
    colours = {"cat": (200, 60, 40), "dog": (40, 60, 200)}
    return {
        f"photos/{name}/{index:04d}.png": png(colour, index)
        for name, colour in colours.items()
        for index in range(per_class)
    }


def run_cli(capsys, *arguments: object) -> tuple[int, list[str], str]:
    """`cifarlab ARGUMENTS` in this process: exit code, stderr lines but progress bars, stdout."""
    capsys.readouterr()
    code = cli.main([str(argument) for argument in arguments])
    captured = capsys.readouterr()
    return code, messages(captured.err), captured.out


def messages(stderr: str) -> list[str]:
    """The lines of `stderr` but the decoding progress bar's."""
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if line and not PROGRESS.match(line)]


def assert_refused(code: int, lines: list[str], *phrases: str) -> None:
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith("cifarlab: "), lines
    assert lines[0].endswith("."), lines[0]
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


def leftovers(folder: Path) -> list[str]:
    """Everything under `folder` but the (empty) lock files of `filelock`."""
    return sorted(
        str(path.relative_to(folder))
        for path in folder.rglob("*")
        if not path.is_dir() and not path.name.endswith(".lock")
    ) + sorted(str(path.relative_to(folder)) for path in folder.rglob("*.part"))


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(folder))
    return folder / "cifarlab"


# 1. Tar bombs: refused from the headers, before a byte is read or written.


def test_a_pickle_member_over_its_cap_is_refused_naming_it(tmp_path, fresh_cache, capsys):
    bomb = write_archive(
        tmp_path / "cifar-10-python.tar.gz",
        {"cifar-10-batches-py/data_batch_1": safe_files.MAX_MEMBER_BYTES + 1},
    )
    code, lines, _ = run_cli(capsys, "data", "info", "--data", bomb)
    assert_refused(code, lines, str(bomb), "'cifar-10-batches-py/data_batch_1'", "one member")
    assert leftovers(fresh_cache) == []


@pytest.mark.parametrize(
    ("sizes", "phrase"),
    [
        # 1 MB of archive that once wrote 1.1 GB into the cache: here 96 MiB, ratio ~300.
        ((48 * _MiB, 48 * _MiB), "times its"),
        ((safe_files.MAX_IMAGE_BYTES + 1,), "limit for one member"),
    ],
    ids=["ratio", "member"],
)
def test_a_class_folder_bomb_is_refused_and_leaves_nothing(
    tmp_path, fresh_cache, capsys, sizes, phrase
):
    zeros = {f"photos/cat/huge{index}.png": size for index, size in enumerate(sizes)}
    bomb = write_archive(tmp_path / "photos.tar.gz", {**photos(), **zeros})
    code, lines, _ = run_cli(capsys, "data", "info", "--data", bomb)
    assert_refused(code, lines, str(bomb), "photos/cat/huge", phrase)
    assert leftovers(fresh_cache) == []  # No extraction, no `.part`, no decoded arrays.


@pytest.mark.parametrize("kind", ["pickles", "photos"])
def test_an_archive_over_the_total_cap_is_refused(
    kind, tmp_path, tiny_archive, fresh_cache, capsys, monkeypatch
):
    """The real caps (512 MiB read, 16 GiB extracted) sit above anything a test can compress
    under the ratio bound cheaply, so the limit is lowered below these small real archives."""
    if kind == "pickles":
        archive, limit = tiny_archive, "MAX_READ_BYTES"
    else:
        archive, limit = write_archive(tmp_path / "photos.tar.gz", photos()), "MAX_EXTRACTED_BYTES"
    monkeypatch.setattr(safe_files, limit, 2_000)
    code, lines, _ = run_cli(capsys, "data", "info", "--data", archive)
    assert_refused(code, lines, str(archive), "limit for one archive")
    assert leftovers(fresh_cache) == []


def peak_memory(archive: Path, cache_home: Path) -> tuple[int, str, int]:
    """Exit code, stderr and peak RSS in bytes of `cifarlab data info --data ARCHIVE`, measured
    by a parent process of its own so that no other child of pytest counts."""
    measure = (
        "import json, resource, subprocess, sys\n"
        "done = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024\n"
        "print(json.dumps([done.returncode, done.stderr, peak]))\n"
    )
    environment = {**os.environ, "XDG_CACHE_HOME": str(cache_home)}
    command = [sys.executable, "-c", measure, *COMMAND, "data", "info", "--data", str(archive)]
    done = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=600)
    return tuple(json.loads(done.stdout))


def test_a_bomb_is_refused_in_the_memory_of_a_good_archive(tmp_path, tiny_archive):
    """The issue's bomb (a 2 MB archive whose `data_batch_1` is 2 GiB of zeros) peaked at
    2.15 GB; at twice the member cap it would need 512 MiB more than a good archive."""
    size = 2 * safe_files.MAX_MEMBER_BYTES
    bomb = write_archive(tmp_path / "bomb.tar.gz", {"cifar-10-batches-py/data_batch_1": size})
    code, errors, bomb_peak = peak_memory(bomb, tmp_path / "cache")
    assert code == 2 and errors.startswith("cifarlab: ") and "data_batch_1" in errors, errors
    good_code, good_errors, good_peak = peak_memory(tiny_archive, tmp_path / "cache")
    assert good_code == 0, good_errors
    assert bomb_peak < good_peak + 64 * _MiB, (bomb_peak, good_peak)


# 2. A kill -9 mid-extraction leaves a `.part`, which the next run removes; SIGTERM leaves none.


@pytest.mark.parametrize("kill", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_part_left_by_a_killed_extraction_is_removed_by_the_next_run(
    kill, tmp_path, fresh_cache, capsys
):
    # Enough files (below the count that starts decoding processes) and one 60 MiB file
    # (below the ratio bound's 64 MiB floor) that extraction lasts a while.
    members = {**photos(per_class=900), "photos/notes.bin": 60 * _MiB}
    archive = write_archive(tmp_path / "photos.tar.gz", members)
    environment = {**os.environ, "XDG_CACHE_HOME": str(fresh_cache.parent)}
    command = [*COMMAND, "data", "info", "--data", str(archive)]
    process = subprocess.Popen(command, env=environment, stderr=subprocess.DEVNULL)
    try:
        extracted, deadline = fresh_cache / "extracted", time.monotonic() + 120
        while process.poll() is None and time.monotonic() < deadline:
            if extracted.is_dir() and any(extracted.glob(".*.part")):
                process.send_signal(kill)
                break
            time.sleep(0.001)
        process.wait(timeout=60)
    finally:
        process.kill()
    if kill == signal.SIGKILL:
        assert process.returncode == -kill, "the extraction ended before it was killed"
        assert list(extracted.glob(".*.part"))  # The kill left its partial extraction behind.
    else:  # SIGTERM ends the command as Ctrl-C does, cleaning up on the way out.
        assert process.returncode == 130, "the extraction ended before it was stopped"
        assert not list(fresh_cache.rglob("*.part"))

    code, lines, out = run_cli(capsys, "data", "info", "--data", archive)
    assert code == 0, lines
    assert "total" in out
    assert not list(fresh_cache.rglob("*.part"))


def test_a_part_being_written_is_kept_and_an_abandoned_one_removed(
    tiny_archive, fresh_cache, capsys
):
    decoded = fresh_cache / "decoded"
    decoded.mkdir(parents=True)
    busy = decoded / "busy.npz"
    busy_part = decoded / ".busy.npz.k2x9a7qe.part"
    abandoned_part = decoded / ".abandoned.npz.p0q1r2s3.part"
    with cache.building(busy):  # As another process writing `busy` would hold it.
        busy_part.write_bytes(b"half")
        abandoned_part.write_bytes(b"left by a kill")
        code, lines, _ = run_cli(capsys, "data", "info", "--data", tiny_archive)
        assert code == 0, lines
        assert busy_part.exists()
    assert not abandoned_part.exists()


# 3. A cache that cannot be written: one warning, and the data read without it.


@pytest.fixture(params=["cache home is a file", "cache folder is a file"])
def cache_that_is_a_file(request, tmp_path, monkeypatch) -> Path:
    """A cache path that fails for root too: a regular file where a folder should be."""
    home = tmp_path / "cache"
    if request.param == "cache home is a file":
        home.write_text("not a folder")
    else:
        home.mkdir()
        (home / "cifarlab").write_text("not a folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))
    return home


def assert_one_cache_warning(lines: list[str]) -> None:
    assert len(lines) == 1, lines
    assert lines[0].startswith("cifarlab: warning: The cache "), lines[0]
    assert "could not be used" in lines[0], lines[0]


def test_a_cache_that_is_a_file_is_skipped_with_one_warning(
    cache_that_is_a_file, tiny_archive, capsys
):
    code, lines, out = run_cli(capsys, "data", "info", "--data", tiny_archive)
    assert code == 0, lines
    assert_one_cache_warning(lines)
    assert "total" in out


def test_without_a_cache_an_archive_is_extracted_to_a_temporary_folder_and_removed(
    cache_that_is_a_file, tmp_path, capsys, monkeypatch
):
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    archive = write_archive(tmp_path / "photos.tar.gz", photos())
    code, lines, out = run_cli(capsys, "data", "info", "--data", archive)
    assert code == 0, lines
    assert_one_cache_warning(lines)
    assert "cat" in out and "dog" in out
    assert list(temporary.iterdir()) == []  # Removed once decoded, not at the process's end.


def test_without_a_cache_or_a_temporary_folder_extraction_is_one_sentence(
    cache_that_is_a_file, tmp_path, capsys, monkeypatch
):
    (tmp_path / "tmp").write_text("not a folder either")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    archive = write_archive(tmp_path / "photos.tar.gz", photos())
    code, lines, _ = run_cli(capsys, "data", "info", "--data", archive)
    assert code == 1, lines
    assert len(lines) == 2 and lines[0].startswith("cifarlab: warning: "), lines
    assert lines[1].startswith("cifarlab: ") and str(archive) in lines[1], lines[1]
    assert "XDG_CACHE_HOME" in lines[1] and lines[1].endswith("."), lines[1]


def test_a_download_into_an_unusable_cache_is_one_sentence(cache_that_is_a_file, capsys):
    code, lines, _ = run_cli(capsys, "data", "info", "--dataset", "mnist")
    assert code == 1, lines
    assert len(lines) == 1 and lines[0].startswith("cifarlab: Could not download "), lines
    assert "--data" in lines[0]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a chmod 555 folder anyway")
def test_a_read_only_cache_is_skipped_with_one_warning(tiny_archive, fresh_cache, capsys):
    fresh_cache.mkdir(parents=True)
    fresh_cache.chmod(0o555)
    try:
        code, lines, out = run_cli(capsys, "data", "info", "--data", tiny_archive)
    finally:
        fresh_cache.chmod(0o755)
    assert code == 0, lines
    assert_one_cache_warning(lines)
    assert "Permission denied" in lines[0] and "total" in out


def test_a_cache_whose_writes_fail_midway_is_skipped_with_one_warning(tmp_path, tiny_archive):
    """A file-size limit makes each write past 64 KiB fail (EFBIG) as a full disk does
    (ENOSPC); the decoded arrays of the tiny archive are 360 KB. Python ignores SIGXFSZ."""

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    cache_home = tmp_path / "cache"
    done = subprocess.run(
        [*COMMAND, "data", "info", "--data", str(tiny_archive)],
        capture_output=True,
        text=True,
        env={**os.environ, "XDG_CACHE_HOME": str(cache_home)},
        preexec_fn=limit_file_size,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert_one_cache_warning(messages(done.stderr))
    assert "File too large" in done.stderr
    assert leftovers(cache_home) == []

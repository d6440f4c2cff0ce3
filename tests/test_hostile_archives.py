"""Hostile archives and an unusable cache: tar bombs, killed extractions, read-only or full caches.

Every archive is a real file and every kill a real process. Bombs are members of zeros, which
gzip shrinks about 200-fold at level 1: a 512 MiB member is a 2.3 MB archive, written in a
second, and refused before any of it is decompressed.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import resource
import signal
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifarlab import cli
from cifarlab.data import cache, images, safe_files
from cifarlab.errors import UserError

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


def test_an_interrupt_just_after_the_part_is_made_leaves_none(tmp_path, fresh_cache, monkeypatch):
    """SIGTERM raises KeyboardInterrupt at whatever line runs: in the race above it once landed
    after `mkdtemp` had made the extraction's `.part` and before `extract`'s cleanup covered it,
    which left the `.part` behind. Here the interrupt lands exactly there, every time."""
    made = tempfile.mkdtemp

    def interrupted_mkdtemp(*arguments, **keywords):
        made(*arguments, **keywords)
        raise KeyboardInterrupt

    monkeypatch.setattr(tempfile, "mkdtemp", interrupted_mkdtemp)
    with pytest.raises(KeyboardInterrupt):
        cache.extracted(write_archive(tmp_path / "photos.tar.gz", photos()))
    assert (fresh_cache / "extracted").is_dir()  # The interrupt came after the `.part` was made.
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


# 4. The rules themselves, on small real archives: which members are read, and each limit on
#    both sides of its boundary. The limits are lowered so that the archives stay small.


def test_only_the_wanted_regular_files_are_read(tiny_archive, tmp_path):
    """An archive packed by `tar czf` has folder entries too; neither they nor unwanted files
    are returned, and each member comes back whole."""
    with tarfile.open(tiny_archive) as tar:
        tar.extractall(tmp_path, filter="data")
    packed = tmp_path / "packed.tar.gz"
    (tmp_path / "cifar-10-batches-py" / "readme.html").write_text("<p>not data</p>")
    with tarfile.open(packed, "w:gz") as tar:
        tar.add(tmp_path / "cifar-10-batches-py", arcname="cifar-10-batches-py")
        assert tar.getmember("cifar-10-batches-py").isdir()
    found = safe_files.read_tar_members(packed, {"test_batch", "batches.meta", "absent"})
    folder = tmp_path / "cifar-10-batches-py"
    assert found == {name: (folder / name).read_bytes() for name in ("test_batch", "batches.meta")}


def link(name: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, "/etc/passwd"
    return info


@pytest.mark.parametrize(
    "unsafe",
    [
        tarfile.TarInfo("/cifar-10-batches-py/data_batch_1"),
        tarfile.TarInfo("cifar-10-batches-py/../data_batch_1"),
        link("cifar-10-batches-py/data_batch_1", tarfile.SYMTYPE),
        link("cifar-10-batches-py/data_batch_1", tarfile.LNKTYPE),
    ],
    ids=["absolute", "parent", "symbolic link", "hard link"],
)
def test_an_unsafe_member_refuses_the_whole_archive(unsafe, tmp_path):
    archive = tmp_path / "unsafe.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.addfile(tarfile.TarInfo("cifar-10-batches-py/readme.html"), io.BytesIO())
        tar.addfile(unsafe, io.BytesIO())
    sentence = f"{archive} contains an unsafe member '{unsafe.name}'; refusing it."
    with pytest.raises(UserError) as error:
        safe_files.read_tar_members(archive, {"data_batch_1"})
    assert str(error.value) == sentence
    with pytest.raises(UserError) as error:
        safe_files.extract(archive, tmp_path / "out")
    assert str(error.value) == sentence
    assert not (tmp_path / "out").exists()


def two_members(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """An archive of two members of 1.5 MiB each (3 MiB in all), which zeros keep a few KB."""
    members = {"data/a": bytes(3 * _MiB // 2), "data/b": bytes(3 * _MiB // 2)}
    return write_archive(tmp_path / "two.tar.gz", members), {"a": members["data/a"],
                                                            "b": members["data/b"]}  # fmt: skip


def refusal(archive: Path) -> str:
    with pytest.raises(UserError) as error:
        safe_files.read_tar_members(archive, {"a", "b"})
    prefix, suffix = f"{archive} is refused because ", "; if it is genuine, extract it yourself"
    assert str(error.value).startswith(prefix) and suffix in str(error.value)
    return str(error.value)[len(prefix) : str(error.value).index(suffix)]


def test_a_member_of_exactly_the_member_limit_is_read(tmp_path, monkeypatch):
    archive, members = two_members(tmp_path)
    monkeypatch.setattr(safe_files, "MAX_MEMBER_BYTES", 3 * _MiB // 2)
    assert safe_files.read_tar_members(archive, {"a", "b"}) == members
    monkeypatch.setattr(safe_files, "MAX_MEMBER_BYTES", 3 * _MiB // 2 - 1)
    assert refusal(archive) == (
        "its member 'data/a' would unpack to 1.5 MiB, over the 1.5 MiB limit for one member"
    )
    monkeypatch.setattr(safe_files, "MAX_MEMBER_BYTES", _MiB)
    assert refusal(archive) == (
        "its member 'data/a' would unpack to 1.5 MiB, over the 1.0 MiB limit for one member"
    )


def test_members_adding_up_to_exactly_the_archive_limit_are_read(tmp_path, monkeypatch):
    archive, members = two_members(tmp_path)
    monkeypatch.setattr(safe_files, "MAX_READ_BYTES", 3 * _MiB)
    assert safe_files.read_tar_members(archive, {"a", "b"}) == members
    # Each member is under the limit; the two together are over it.
    monkeypatch.setattr(safe_files, "MAX_READ_BYTES", 2 * _MiB)
    assert refusal(archive) == (
        "its members up to 'data/b' would unpack to 3.0 MiB, over the 2.0 MiB limit for one archive"
    )


def test_the_ratio_limit_applies_from_its_floor_and_admits_exactly_its_ratio(tmp_path, monkeypatch):
    archive, members = two_members(tmp_path)
    compressed = archive.stat().st_size
    ratio = 3 * _MiB // compressed  # Zeros: far above any real archive's ratio.
    assert 3 * _MiB % compressed and ratio > 100, compressed
    # At its floor (3 MiB in all) no archive is refused for its ratio, however high.
    monkeypatch.setattr(safe_files, "RATIO_FROM", 3 * _MiB)
    monkeypatch.setattr(safe_files, "MAX_RATIO", 1)
    assert safe_files.read_tar_members(archive, {"a", "b"}) == members
    # Above it: a ratio of one more than the archive's admits it, the archive's own refuses it.
    monkeypatch.setattr(safe_files, "RATIO_FROM", 3 * _MiB - 1)
    monkeypatch.setattr(safe_files, "MAX_RATIO", ratio + 1)
    assert safe_files.read_tar_members(archive, {"a", "b"}) == members
    monkeypatch.setattr(safe_files, "MAX_RATIO", ratio)
    assert refusal(archive) == (
        f"its members up to 'data/b' would unpack to 3.0 MiB, {ratio:,} times its "
        f"{compressed / _MiB:,.1f} MiB, more than the {ratio} times no real dataset exceeds "
        "(a decompression bomb)"
    )


def named_files(*names: str) -> dict[str, bytes]:
    """Small members: a PNG for each image name, a few bytes of text for any other."""
    return {name: png((90, 90, 90), index) if name.endswith(".png") else b"notes"
            for index, name in enumerate(names)}  # fmt: skip


def images_and_notes(images: int, notes: int, folder: str = "photos/cat") -> list[str]:
    return [f"{folder}/{index:03d}.png" for index in range(images)] + [
        f"{folder}/{index:03d}.txt" for index in range(notes)
    ]


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (images_and_notes(3, 2), True),
        (images_and_notes(2, 2), False),  # A tie is not "most".
        (images_and_notes(2, 3), False),
        # Only the first 50 files count: 25 images and 25 others, then images.
        (images_and_notes(25, 25) + images_and_notes(3, 0, "photos/dog"), False),
        (images_and_notes(26, 24) + images_and_notes(0, 3, "photos/dog"), True),
        ([name.replace(".png", ".PNG") for name in images_and_notes(3, 2)], True),
    ],
    ids=["most", "tie", "fewer", "after the sample", "within the sample", "upper-case"],
)
def test_an_archive_holds_images_when_most_of_its_first_files_are_images(names, expected, tmp_path):
    archive = write_archive(tmp_path / "photos.tar.gz", named_files(*names))
    assert safe_files.holds_images(archive, images.IMAGE_SUFFIXES) is expected


def test_what_is_not_an_archive_of_images_holds_none(tmp_path, tiny_archive):
    (tmp_path / "notes.txt").write_text("not an archive")
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(
        write_archive(tmp_path / "full.tar.gz", photos(per_class=40)).read_bytes()
    )
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    for path in (tmp_path / "notes.txt", tmp_path, tmp_path / "absent.tar.gz", tiny_archive):
        assert safe_files.holds_images(path, images.IMAGE_SUFFIXES) is False, path
    assert safe_files.holds_images(truncated, images.IMAGE_SUFFIXES) is False


def test_a_large_non_image_ends_the_sample_before_it_is_read(tmp_path):
    """A pickle or array of a standard dataset (over 1 MiB) says "not a class-folder archive"
    whatever follows; a stray file of exactly 1 MiB is just a stray file."""
    names = images_and_notes(3, 0)
    stray = {**named_files(*names), "photos/notes.bin": _MiB}
    assert safe_files.holds_images(
        write_archive(tmp_path / "a.tar.gz", stray), images.IMAGE_SUFFIXES
    )
    data = {**named_files(*names), "photos/notes.bin": _MiB + 1}
    archive = write_archive(tmp_path / "b.tar.gz", data)
    assert not safe_files.holds_images(archive, images.IMAGE_SUFFIXES)


def test_a_member_too_large_to_extract_ends_the_sample(tmp_path, monkeypatch):
    """Files after it are not looked at (nor is it decompressed): `extract` refuses it."""
    monkeypatch.setattr(safe_files, "MAX_IMAGE_BYTES", _MiB // 2)
    members = {**named_files(*images_and_notes(3, 0)), "photos/cat/huge.png": _MiB // 2 + 1}
    members |= named_files(*images_and_notes(0, 5, "photos/dog"))
    archive = write_archive(tmp_path / "photos.tar.gz", members)
    assert safe_files.holds_images(archive, images.IMAGE_SUFFIXES)
    with pytest.raises(UserError, match="its member 'photos/cat/huge.png' would unpack to 0.5 MiB"):
        safe_files.extract(archive, tmp_path / "out")
    # Up to the total limit for extraction, the files after it count too.
    monkeypatch.setattr(safe_files, "MAX_IMAGE_BYTES", _MiB)
    assert not safe_files.holds_images(archive, images.IMAGE_SUFFIXES)


def test_the_total_limit_for_extraction_ends_the_sample(tmp_path, monkeypatch):
    members = {**named_files(*images_and_notes(3, 0)), **named_files(*images_and_notes(0, 5))}
    archive = write_archive(tmp_path / "photos.tar.gz", members)
    sizes = [len(content) for content in members.values()]
    # The three images fit; the first note takes the total over the limit and ends the sample.
    monkeypatch.setattr(safe_files, "MAX_EXTRACTED_BYTES", sum(sizes[:3]) + sizes[3] - 1)
    assert safe_files.holds_images(archive, images.IMAGE_SUFFIXES)
    monkeypatch.setattr(safe_files, "MAX_EXTRACTED_BYTES", sum(sizes))
    assert not safe_files.holds_images(archive, images.IMAGE_SUFFIXES)


def test_an_archive_of_exactly_the_ratio_limit_is_read(tmp_path, monkeypatch):
    """ "More than the ratio" is refused; exactly the ratio is not. A fraction makes the limit
    times the archive's size exactly its unpacked size."""
    archive, members = two_members(tmp_path)
    monkeypatch.setattr(safe_files, "RATIO_FROM", 0)
    monkeypatch.setattr(safe_files, "MAX_RATIO", Fraction(3 * _MiB, archive.stat().st_size))
    assert safe_files.read_tar_members(archive, {"a", "b"}) == members


def test_extraction_creates_the_destination_folders_and_only_regular_files(tmp_path):
    archive = tmp_path / "photos.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, content in photos(per_class=2).items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        pipe = tarfile.TarInfo("photos/cat/pipe")  # A named pipe packed with the photos.
        pipe.type = tarfile.FIFOTYPE
        tar.addfile(pipe)
    destination = tmp_path / "cache" / "extracted" / "photos"  # Neither folder exists yet.
    assert safe_files.extract(archive, destination) == destination
    extracted = sorted(str(path.relative_to(destination)) for path in destination.rglob("*"))
    assert extracted == ["photos", "photos/cat", "photos/cat/0000.png", "photos/cat/0001.png",
                         "photos/dog", "photos/dog/0000.png", "photos/dog/0001.png"]  # fmt: skip
    assert (destination / "photos/dog/0001.png").read_bytes() == photos(2)["photos/dog/0001.png"]
    assert [path.name for path in destination.parent.iterdir()] == ["photos"]  # No `.part`.


def test_a_damaged_archive_is_one_sentence_and_leaves_nothing(tmp_path):
    archive = write_archive(tmp_path / "photos.tar.gz", photos(per_class=40))
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    destination = tmp_path / "out" / "photos"
    with pytest.raises(UserError) as error:
        safe_files.extract(archive, destination)
    sentence = str(error.value)
    assert sentence.startswith(f"{archive} could not be extracted (") and sentence.endswith(
        "); check the file."
    ), sentence
    assert list((tmp_path / "out").iterdir()) == []


def test_a_damaged_gzip_stream_is_one_sentence_and_leaves_nothing(tmp_path):
    """Two gzip members, the second with its magic number overwritten: gzip's error for it is
    an OSError without an errno, which is the archive's fault, not the disk's."""
    packed = io.BytesIO()
    with tarfile.open(fileobj=packed, mode="w") as tar:
        for name, content in photos(per_class=20).items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    data, half = packed.getvalue(), len(packed.getvalue()) // 2
    archive = tmp_path / "photos.tar.gz"
    archive.write_bytes(gzip.compress(data[:half]) + b"XX" + gzip.compress(data[half:])[2:])
    with pytest.raises(UserError) as error:
        safe_files.extract(archive, tmp_path / "out" / "photos")
    assert str(error.value) == (
        f"{archive} could not be extracted (Not a gzipped file (b'XX')); check the file."
    )
    assert list((tmp_path / "out").iterdir()) == []


def test_extracted_files_belong_to_the_user_without_special_or_shared_write_bits(tmp_path):
    archive = tmp_path / "photos.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, content in photos(per_class=1).items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.uid, info.gid = len(content), 0o6777, 12345, 12345
            tar.addfile(info, io.BytesIO(content))
    destination = safe_files.extract(archive, tmp_path / "out")
    for path in destination.rglob("*.png"):
        # Set-user-ID, set-group-ID and write by group or others are dropped: rwxr-xr-x.
        assert stat.S_IMODE(path.stat().st_mode) == 0o755, path
        assert path.stat().st_uid == os.getuid(), path

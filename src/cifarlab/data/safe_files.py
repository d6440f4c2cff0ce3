"""Reading and fetching dataset files safely: no code runs from a data file, ever.

Pickles are read with an allow-list that admits only NumPy array reconstruction and plain
containers. Tar archives are read member by member in memory; a member that is a link or whose
name leaves the archive's folder makes the whole archive refused, and so does one whose header
(`TarInfo.size`) says it, or the members so far, would unpack to more than the limits below,
before a byte of it is read or written. Downloads are verified against a SHA-256 and moved into
place atomically, so a partial file never looks complete.
"""

from __future__ import annotations

import hashlib
import io
import lzma
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from cifarlab.errors import RunError, UserError

# The only globals a dataset pickle may name: NumPy's array reconstruction and plain types.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
    ("builtins", "bytearray"),
}


_LARGE_MEMBER = 1 << 20  # Bytes; a non-image file this large is data, not a stray note.
_MiB = 1 << 20

# What an archive may unpack to, from its members' headers. A gzip stream of zeros unpacks to
# about 1,000 times its size (a 2 MB archive held a 2 GiB `data_batch_1`), so sizes are checked
# before reading; each limit leaves room above the largest real dataset the project reads.
# One pickle or array read into memory: CIFAR-100's `train`, the largest, is 50,000 × 3,072
# pixel bytes plus labels, about 155 MB; CIFAR-10's batches are about 31 MB each.
MAX_MEMBER_BYTES = 256 * _MiB
# All members of a standard dataset's archive: CIFAR-10's and CIFAR-100's each come to about
# 186 MB (their archives are 163 MB and 161 MB compressed).
MAX_READ_BYTES = 512 * _MiB
# One file of a class-folder archive: the largest image `images.decode` accepts (40 megapixels)
# is 120 MB as an uncompressed 8-bit RGB BMP; the JPEG copy of CIFAR-10 has none over 1.2 KB.
MAX_IMAGE_BYTES = 128 * _MiB
# All files of a class-folder archive, copied into the cache: the JPEG copy of CIFAR-10 is
# 60,000 files and 55 MB (measured), so 16 GiB is 300 of it, or 4,000 phone photos of 4 MB; a
# larger collection is better passed as a folder, which is read in place.
MAX_EXTRACTED_BYTES = 16 * 1024 * _MiB
# Uncompressed bytes per archive byte: real archives stay near 1 (CIFAR-10's pickles: 1.1) to
# 3 (the JPEG copy of CIFAR-10: 2.8, measured; uncompressed BMP or TIFF photos: 2 to 4), while
# zeros reach 1,000. Below `RATIO_FROM` bytes in all, no archive is refused for its ratio: that
# much fits in memory and on disk anywhere, and small archives of flat test images compress well.
MAX_RATIO = 20
RATIO_FROM = 64 * _MiB
# What decompressing a damaged archive raises (gzip's and bz2's errors are OSErrors).
_ARCHIVE_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError)


class _AllowListUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"forbidden global {module}.{name}")
        return super().find_class(module, name)


def safe_unpickle(payload: bytes, source: str) -> object:
    """Unpickle `payload`, admitting only arrays and plain containers; errors name `source`."""
    try:
        return _AllowListUnpickler(io.BytesIO(payload), encoding="bytes").load()
    except Exception as error:  # Any failure means the file is not a dataset pickle.
        raise UserError(f"{source} is not a valid dataset file ({error}); replace it.") from error


def read_tar_members(archive: Path, wanted: set[str]) -> dict[str, bytes]:
    """The bytes of the regular-file members of `archive` whose base names are in `wanted`.

    Refuses the archive if any member is a link, has an absolute or `..` path, or would unpack
    past `MAX_MEMBER_BYTES`, `MAX_READ_BYTES` or `MAX_RATIO`, and reports a truncated or
    corrupt archive as one sentence naming the file.
    """
    found: dict[str, bytes] = {}
    try:
        # Opened apart from the reading below so that a file that is no tar is told apart; the
        # `with` below closes it. ("r" would be equivalent to "r:*".)
        opened = tarfile.open(archive, "r:*")  # noqa: SIM115  # pragma: no mutate
    except tarfile.ReadError as error:  # No compression tarfile knows reads a tar from it.
        raise UserError(
            f"{archive} is not a readable tar archive (a text file, or one cut short); --data "
            "takes the official cifar-10-python.tar.gz, its extracted folder, a folder of class "
            "folders or a .tar.gz of one."
        ) from error
    except _ARCHIVE_ERRORS as error:
        raise UserError(f"{archive} cannot be read ({_first_line(error)}).") from error
    try:
        with opened as tar:
            for member in _checked_members(tar, archive, MAX_MEMBER_BYTES, MAX_READ_BYTES):
                name = PurePosixPath(member.name).name
                if member.isfile() and name in wanted:
                    with tar.extractfile(member) as file:
                        # Never more than the checked size, whatever the stream holds (the
                        # stream ends there too, hence the pragma).
                        found[name] = file.read(member.size)  # pragma: no mutate
    except _ARCHIVE_ERRORS as error:
        raise UserError(
            f"{archive} is truncated or not a valid tar.gz archive ({_first_line(error)}); "
            "download it again."
        ) from error
    return found


def _first_line(error: Exception) -> str:
    """The reason an archive failed, in a few words: tarfile lists every compression it tried
    on lines of their own, under a first line that says it."""
    return str(error).splitlines()[0].rstrip(": ") if str(error) else type(error).__name__


def _checked_members(
    tar: tarfile.TarFile, archive: Path, member_limit: int, total_limit: int
) -> Iterator[tarfile.TarInfo]:
    """The members of `tar`, each checked from its header before any of its bytes are read."""
    compressed = max(archive.stat().st_size, 1)  # pragma: no mutate (a tar is over 2 bytes)
    total = 0
    for member in tar:
        path = PurePosixPath(member.name)
        if path.is_absolute() or ".." in path.parts or member.issym() or member.islnk():
            raise UserError(f"{archive} contains an unsafe member '{member.name}'; refusing it.")
        total += member.size
        problem = _size_problem(member, total, compressed, member_limit, total_limit)
        if problem:
            raise UserError(
                f"{archive} is refused because {problem}; if it is genuine, extract it yourself "
                "and pass the folder with --data."
            )
        yield member


def _size_problem(
    member: tarfile.TarInfo, total: int, compressed: int, member_limit: int, total_limit: int
) -> str | None:
    """Why `member` (with `total` bytes unpacked up to it) may not be unpacked, or None."""
    if member.size > member_limit:
        return (
            f"its member '{member.name}' would unpack to {_in_mib(member.size)}, over the "
            f"{_in_mib(member_limit)} limit for one member"
        )
    if total > total_limit:
        return (
            f"its members up to '{member.name}' would unpack to {_in_mib(total)}, over the "
            f"{_in_mib(total_limit)} limit for one archive"
        )
    if total > RATIO_FROM and total > MAX_RATIO * compressed:
        return (
            f"its members up to '{member.name}' would unpack to {_in_mib(total)}, "
            f"{total // compressed:,} times its {_in_mib(compressed)}, more than the "
            f"{MAX_RATIO} times no real dataset exceeds (a decompression bomb)"
        )
    return None


def _in_mib(size: int) -> str:
    return f"{size / _MiB:,.1f} MiB"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):  # pragma: no mutate (size: same digest)
            digest.update(block)
    return digest.hexdigest()


def download(url: str, destination: Path, sha256: str, quiet: bool = False) -> Path:
    """Fetch `url` to `destination`, verifying its SHA-256; the file appears only when complete."""
    partial = None  # pragma: no mutate (equivalent: "" is as false as None)
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        handle, partial = tempfile.mkstemp(dir=destination.parent, suffix=".part")
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(
                total=total, unit="B", unit_scale=True, desc="download", disable=quiet
            ) as bar:
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
                    bar.update(len(block))
        actual = sha256_of(Path(partial))
        if actual != sha256:
            raise RunError(
                f"The file downloaded from {url} has SHA-256 {actual}, not {sha256}; "
                "it was discarded, so try again or fetch it by hand."
            )
        os.replace(partial, destination)
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise RunError(
            f"Could not download {url} to {destination} ({getattr(error, 'reason', error)}); "
            "fetch it by hand and pass its path with --data."
        ) from error
    finally:
        if partial and os.path.exists(partial):
            os.remove(partial)
    return destination


def holds_images(archive: Path, suffixes: frozenset[str], sample: int = 50) -> bool:
    """True if `archive` is a tar archive most of whose first `sample` files are images.

    Such an archive is a class-folder dataset packed up (`train/cat/0001.jpg`, ...), as opposed
    to a standard dataset's archive of pickles or arrays; a few stray files may ride along.
    A member too large to extract ends the sample before it is decompressed: `extract` then
    refuses the archive in one sentence.
    """
    if not archive.is_file() or not tarfile.is_tarfile(archive):
        return False
    images = others = total = 0
    try:
        compressed = max(archive.stat().st_size, 1)  # pragma: no mutate (a tar is over 2 bytes)
        with tarfile.open(archive, "r:*") as tar:  # pragma: no mutate (equivalent: "r" is "r:*")
            for member in tar:
                total += member.size
                if member.isfile():
                    is_image = PurePosixPath(member.name).suffix.lower() in suffixes
                    if not is_image and member.size > _LARGE_MEMBER:
                        # A dataset's pickle or array: stop before decompressing past it.
                        return False
                    images, others = images + is_image, others + (not is_image)
                too_large = _size_problem(
                    member, total, compressed, MAX_IMAGE_BYTES, MAX_EXTRACTED_BYTES
                )
                if images + others >= sample or too_large:
                    break
    except _ARCHIVE_ERRORS:
        return False
    return images > others


def extract(archive: Path, destination: Path) -> Path:
    """Extract `archive` into `destination`, only regular files and folders inside it.

    Every member is checked (`MAX_IMAGE_BYTES`, `MAX_EXTRACTED_BYTES`, `MAX_RATIO`) before any
    is written. The files appear under `destination` only when all are written, so an
    interrupted extraction is redone rather than half used (`cache.extracted` does it once,
    under a lock). A refused or damaged archive is a `UserError`; an `OSError` means a file
    could not be read or written (`destination` read-only or full), which the caller reports.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(
        tempfile.mkdtemp(dir=destination.parent, prefix=f".{destination.name}.", suffix=".part")
    )
    try:
        with tarfile.open(archive, "r:*") as tar:  # pragma: no mutate (equivalent: "r" is "r:*")
            members = [
                member
                for member in _checked_members(tar, archive, MAX_IMAGE_BYTES, MAX_EXTRACTED_BYTES)
                if member.isfile() or member.isdir()
            ]
            tar.extractall(partial, members=members, filter="data")
        os.replace(partial, destination)
    except OSError as error:
        if error.errno is not None:
            raise  # A file could not be read or written, not a damaged archive: see above.
        # gzip's and bz2's errors for a damaged stream are OSErrors without an errno.
        raise UserError(f"{archive} could not be extracted ({error}); check the file.") from error
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError) as error:
        raise UserError(f"{archive} could not be extracted ({error}); check the file.") from error
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return destination

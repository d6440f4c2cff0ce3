"""Reading and fetching dataset files safely: no code runs from a data file, ever.

Pickles are read with an allow-list that admits only NumPy array reconstruction and plain
containers. Tar archives are read member by member in memory; a member that is a link or whose
name leaves the archive's folder makes the whole archive refused. Downloads are verified
against a SHA-256 and moved into place atomically, so a partial file never looks complete.
"""

from __future__ import annotations

import hashlib
import io
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

    Refuses the archive if any member is a link or has an absolute or `..` path, and reports a
    truncated or corrupt archive as one sentence naming the file.
    """
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in _checked_members(tar, archive):
                name = PurePosixPath(member.name).name
                if member.isfile() and name in wanted:
                    found[name] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
        raise UserError(
            f"{archive} is truncated or not a valid tar.gz archive ({error}); download it again."
        ) from error
    return found


def _checked_members(tar: tarfile.TarFile, archive: Path) -> Iterator[tarfile.TarInfo]:
    for member in tar:
        path = PurePosixPath(member.name)
        if path.is_absolute() or ".." in path.parts or member.issym() or member.islnk():
            raise UserError(f"{archive} contains an unsafe member '{member.name}'; refusing it.")
        yield member


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, destination: Path, sha256: str, quiet: bool = False) -> Path:
    """Fetch `url` to `destination`, verifying its SHA-256; the file appears only when complete."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=destination.parent, suffix=".part")
    try:
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
            f"Could not download {url} ({getattr(error, 'reason', error)}); fetch it by hand "
            "and pass its path with --data."
        ) from error
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return destination


def holds_images(archive: Path, suffixes: frozenset[str], sample: int = 50) -> bool:
    """True if `archive` is a tar archive most of whose first `sample` files are images.

    Such an archive is a class-folder dataset packed up (`train/cat/0001.jpg`, ...), as opposed
    to a standard dataset's archive of pickles or arrays; a few stray files may ride along.
    """
    if not archive.is_file() or not tarfile.is_tarfile(archive):
        return False
    images = others = 0
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                if member.isfile():
                    is_image = PurePosixPath(member.name).suffix.lower() in suffixes
                    if not is_image and member.size > _LARGE_MEMBER:
                        # A dataset's pickle or array: stop before decompressing past it.
                        return False
                    images, others = images + is_image, others + (not is_image)
                if images + others >= sample:
                    break
    except (tarfile.TarError, EOFError, OSError, zlib.error):
        return False
    return images > others


def extract(archive: Path, destination: Path) -> Path:
    """Extract `archive` into `destination`, only regular files and folders inside it.

    The files appear under `destination` only when all are written, so an interrupted
    extraction is redone rather than half used (`cache.extracted` does it once, under a lock).
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(
        tempfile.mkdtemp(dir=destination.parent, prefix=f".{destination.name}.", suffix=".part")
    )
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = [m for m in _checked_members(tar, archive) if m.isfile() or m.isdir()]
            tar.extractall(partial, members=members, filter="data")
        os.replace(partial, destination)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
        raise UserError(f"{archive} could not be extracted ({error}); check the file.") from error
    finally:
        if partial.exists():
            shutil.rmtree(partial)
    return destination

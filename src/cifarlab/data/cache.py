"""The per-user cache: downloads, extracted archives and decoded arrays, never in the user's data.

Decoded arrays are stored as plain `.npz` files named after a fingerprint of the files they
came from (paths, sizes and modification times), so changing, adding or removing a source
file makes a fresh decode, and an unchanged source is read back in well under a second.

Any number of processes may fill the cache at once (Ray workers of a sweep do): each entry is
built under a lock from `filelock` (the others wait rather than decode the same files again),
into a private temporary name (`.<entry>.<random>.part`) that is renamed into place only when
complete. A `.part` whose entry's lock no process holds was left by a killed process: the next
process to build an entry in the same folder removes it.

The cache is optional. One that cannot be written (read-only, full, or a file where the folder
should be) is named in one warning, and the data is read without it: arrays are decoded and
not stored, and a class-folder archive is extracted into a temporary folder that goes once its
images are decoded.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from cifarlab.data import safe_files
from cifarlab.errors import RunError
from cifarlab.files import atomic_path

# Temporary extractions made because the cache could not be used, until `release`.
_TEMPORARY: dict[Path, tempfile.TemporaryDirectory] = {}
_WARNED: set[Path] = set()  # Cache folders already named in a warning by this process.


def directory() -> Path:
    """The per-user cache: `$XDG_CACHE_HOME/cifarlab`, else `~/.cache/cifarlab`."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cifarlab"


def fingerprint(entries: Iterable[tuple[str, int, int]], *settings: object) -> str:
    """A short hash of (name, size in bytes, modification time in ns) entries and settings."""
    return hashlib.sha1(repr((sorted(entries), settings)).encode()).hexdigest()[:16]


def file_entries(source: Path) -> list[tuple[str, int, int]]:
    """Fingerprint entries for a file, or for every file directly inside a folder."""
    files = sorted(source.iterdir()) if source.is_dir() else [source]
    return [(str(file.resolve()), file.stat().st_size, file.stat().st_mtime_ns) for file in files]


@contextmanager
def building(entry: Path) -> Iterator[None]:
    """Hold the lock for building cache entry `entry`; other processes wait for it.

    Stale `.part` entries beside `entry` are removed first, and `entry`'s own on the way out:
    an interrupt (SIGTERM raises one anywhere) can land after a writer made its `.part` but
    before its own cleanup was in place. Raises `OSError` where the cache cannot be written.
    """
    from filelock import FileLock

    entry.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(_lock_path(entry)):
        _remove_stale_parts(entry)
        try:
            yield
        finally:
            _remove_own_parts(entry)


def arrays(name: str, build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The arrays cached as `decoded/<name>.npz`, built and stored first if they are not there.

    Where the cache cannot be used, the arrays are built and returned without being stored.
    """
    path = directory() / "decoded" / f"{name}.npz"
    stored = _stored_arrays(path)
    if stored is not None:
        return stored
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(building(path))
        except OSError as error:
            _warn_unusable(error)
            return build()
        stored = _stored_arrays(path)  # Another process may have built it while this one waited.
        if stored is None:
            stored = build()
            try:
                save_atomically(path, **stored)
            except OSError as error:  # Full, or made read-only since the lock was taken.
                _warn_unusable(error)
    return stored


def extracted(archive: Path) -> Path:
    """`archive` extracted once into the cache, keyed by its path, size and modification time.

    Where the cache cannot be used, the archive is extracted into a temporary folder instead,
    which `release` removes once its images are decoded (or the process's end, at the latest).
    """
    key = fingerprint(file_entries(archive))
    destination = directory() / "extracted" / f"{archive.name}-{key}"
    if destination.is_dir():
        return destination
    try:
        with building(destination):
            if not destination.is_dir():  # Another process may have extracted it meanwhile.
                safe_files.extract(archive, destination)
        return destination
    except OSError as error:
        _warn_unusable(error)
        return _extracted_temporarily(archive, error)


def release(path: Path) -> None:
    """Remove the temporary extraction `path` lies in, if `extracted` made one for lack of a
    cache; a path in the cache or anywhere else is left alone."""
    path = Path(path)
    for destination in [known for known in _TEMPORARY if known in (path, *path.parents)]:
        _TEMPORARY.pop(destination).cleanup()


def save_atomically(path: Path, **named_arrays: np.ndarray) -> None:
    """Write an `.npz` so that a reader never sees a half-written file."""
    with atomic_path(path) as partial, open(partial, "wb") as file:
        np.savez(file, **named_arrays)


def _stored_arrays(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays stored at `path`, or None where there are none or they are damaged."""
    if not path.is_file():
        return None
    try:
        # Plain arrays only: a cache file that asks for pickled objects is refused.
        with np.load(path, allow_pickle=False) as stored:
            return {key: stored[key] for key in stored.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        # A damaged entry is rebuilt rather than trusted; a read-only cache cannot drop it.
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
        return None


def _extracted_temporarily(archive: Path, cache_error: OSError) -> Path:
    try:
        folder = tempfile.TemporaryDirectory(prefix="cifarlab-")
        try:
            destination = safe_files.extract(archive, Path(folder.name) / archive.name)
        except BaseException:
            folder.cleanup()
            raise
    except OSError as error:
        raise RunError(
            f"{archive} could not be extracted, neither into the cache {directory()} "
            f"({_reason(cache_error)}) nor into a temporary folder ({_reason(error)}); free "
            "some disk space or set XDG_CACHE_HOME to a writable folder."
        ) from error
    _TEMPORARY[destination] = folder
    return destination


def _remove_stale_parts(entry: Path) -> None:
    """Remove the `.part` entries beside `entry` that no process is writing.

    Each is named `.<entry>.<random>.part` and written only under its entry's lock, so one
    whose lock is free (or is `entry`'s own, which the caller holds) was left by a kill.
    """
    from filelock import FileLock, Timeout

    for part in entry.parent.glob(".*.part"):
        owner = _owner(part)
        try:
            if owner == entry:
                _remove(part)
                continue
            with FileLock(_lock_path(owner), timeout=0):
                _remove(part)
        except Timeout:
            continue  # Another process holds that lock: the part is being written.
        except OSError:
            continue  # Left for a later run; a cache that cannot be cleaned still works.


def _remove_own_parts(entry: Path) -> None:
    """Remove the `.part` entries of `entry`, whose lock the caller holds: none is being written."""
    for part in entry.parent.glob(".*.part"):
        if _owner(part) == entry:
            with contextlib.suppress(OSError):
                _remove(part)


def _owner(part: Path) -> Path:
    """The entry a `.part` is written for: `.<entry>.<random>.part` is `<entry>`'s."""
    return part.with_name(part.name[1:].rsplit(".", 2)[0])


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _lock_path(entry: Path) -> Path:
    return entry.with_name(f".{entry.name}.lock")


def _warn_unusable(error: OSError) -> None:
    """One warning per process and cache folder: the data is read without the cache."""
    if directory() in _WARNED:
        return
    _WARNED.add(directory())
    warnings.warn(
        f"The cache {directory()} could not be used ({_reason(error)}); reading the data "
        "without it, so the next run reads it again.",
        stacklevel=3,
    )


def _reason(error: OSError) -> str:
    if error.strerror and error.filename:
        return f"{error.strerror}: {error.filename}"
    return str(error) or type(error).__name__

"""The per-user cache: downloads, extracted archives and decoded arrays, never in the user's data.

Decoded arrays are stored as plain `.npz` files named after a fingerprint of the files they
came from (paths, sizes and modification times), so changing, adding or removing a source
file makes a fresh decode, and an unchanged source is read back in well under a second.

Any number of processes may fill the cache at once (Ray workers of a sweep do): each entry is
built under a lock from `filelock` (the others wait rather than decode the same files again),
into a private temporary name that is renamed into place only when complete.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from cifarlab.data import safe_files
from cifarlab.files import atomic_path


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
    """Hold the lock for building cache entry `entry`; other processes wait for it."""
    from filelock import FileLock

    entry.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(entry.with_name(f".{entry.name}.lock")):
        yield


def arrays(name: str, build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The arrays cached as `decoded/<name>.npz`, built and stored first if they are not there."""
    path = directory() / "decoded" / f"{name}.npz"
    if not path.is_file():
        with building(path):
            if not path.is_file():  # Another process may have built it while this one waited.
                save_atomically(path, **build())
    try:
        # Plain arrays only: a cache file that asks for pickled objects is refused.
        with np.load(path, allow_pickle=False) as stored:
            return {key: stored[key] for key in stored.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        path.unlink(missing_ok=True)  # A damaged entry is rebuilt rather than trusted.
        return arrays(name, build)


def extracted(archive: Path) -> Path:
    """`archive` extracted once into the cache, keyed by its path, size and modification time."""
    key = fingerprint(file_entries(archive))
    destination = directory() / "extracted" / f"{archive.name}-{key}"
    if not destination.is_dir():
        with building(destination):
            if not destination.is_dir():
                safe_files.extract(archive, destination)
    return destination


def save_atomically(path: Path, **named_arrays: np.ndarray) -> None:
    """Write an `.npz` so that a reader never sees a half-written file."""
    with atomic_path(path) as partial, open(partial, "wb") as file:
        np.savez(file, **named_arrays)

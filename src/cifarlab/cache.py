"""The per-user cache: downloaded archives and decoded arrays, never inside the user's data.

Decoded arrays are stored as plain `.npz` files named after a fingerprint of the files they
came from (paths, sizes and modification times), so changing, adding or removing a source
file makes a fresh decode, and an unchanged source is read back in well under a second.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np


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


def arrays(name: str, build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The arrays cached as `decoded/<name>.npz`, built and stored first if they are not there."""
    path = directory() / "decoded" / f"{name}.npz"
    if path.is_file():
        # Plain arrays only: a cache file that asks for pickled objects is refused.
        with np.load(path, allow_pickle=False) as stored:
            return {key: stored[key] for key in stored.files}
    built = build()
    save_atomically(path, **built)
    return built


def save_atomically(path: Path, **named_arrays: np.ndarray) -> None:
    """Write an `.npz` so that a reader never sees a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.stem}.{os.getpid()}.part.npz")
    np.savez(partial, **named_arrays)
    os.replace(partial, path)

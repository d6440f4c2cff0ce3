"""Writing files so that they appear whole or not at all: what a kill or a full disk leaves is
either the old file or the new one, never half of one, and no temporary file behind.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np


@contextmanager
def atomic_path(path: str | Path, suffix: str = ".part") -> Iterator[Path]:
    """A private temporary path beside `path`, renamed onto it once the block succeeds; its
    name ends in `suffix` (Keras saves models only to names ending in ".keras").

    The file gets the permissions a plainly created one would (0666 less the umask), not
    `mkstemp`'s owner-only 0600, so shared run folders stay readable.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(handle)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(partial, 0o666 & ~umask)
    try:
        yield Path(partial)
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as partial:
        partial.write_text(text)
    return Path(path)


def write_json(path: str | Path, values) -> Path:
    return write_text(path, json.dumps(values, indent=2) + "\n")


def write_csv(path: str | Path, rows: list[dict], columns: list[str] | tuple[str, ...]) -> Path:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return write_text(path, buffer.getvalue())


def save_array(path: str | Path, array: np.ndarray) -> Path:
    with atomic_path(path) as partial, open(partial, "wb") as file:
        np.save(file, array)
    return Path(path)

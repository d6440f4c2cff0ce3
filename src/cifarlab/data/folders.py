"""Class-folder datasets: your own images, one folder per class, decoded once and cached.

Two layouts are read; class names are the folder names, sorted:

    my_photos/<class>/*.jpg                                  (test split carved out later)
    my_photos/train/<class>/*.jpg  [my_photos/test/<class>/…]  [my_photos/val/<class>/…]

Every image becomes RGB, is centre-cropped to a square and resized to the model's input size.
Decoding runs in worker processes with a progress bar; the result is cached in the per-user
cache, keyed by the folder's file list, sizes and modification times (without a usable cache,
every run decodes again). Nothing is written inside the dataset folder.

    cifarlab data info --data my_photos/
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import warnings
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import NamedTuple

import numpy as np
from tqdm import tqdm

from cifarlab.data import cache, images
from cifarlab.errors import UserError

SPLITS = ("train", "val", "test")
DECODER_VERSION = 3  # Part of the cache key: change it when images.decode changes its output.
_CHUNK = 500  # Images per task handed to a worker process.
_PARALLEL_FROM = 2000  # Below this many images, starting worker processes costs more than it saves.
_NAMES_SHOWN = 5  # Skipped files named in warnings; the rest are counted.


@dataclass(frozen=True)
class Decoded:
    """Every readable image of a class-folder dataset, with the folder (split) it came from."""

    images: np.ndarray  # N×size×size×3 uint8.
    labels: np.ndarray  # N class indices (int64).
    splits: np.ndarray  # N indices into SPLITS: the top-level folder each image came from.
    original_sizes: np.ndarray  # N×2 (width, height) of the files as stored.
    class_names: tuple[str, ...]
    skipped: tuple[str, ...]  # Files that could not be decoded, relative to the dataset folder.

    def indices(self, split: str) -> np.ndarray:
        """Positions of the images from one split folder (all of them without split folders)."""
        return np.flatnonzero(self.splits == SPLITS.index(split))


def is_class_folder(path: Path) -> bool:
    """True if `path` is a folder with a `train/` folder or a sub-folder holding images."""
    if not path.is_dir():
        return False
    if (path / "train").is_dir():
        return True
    return any(next(_scan(path, child.name), None) for child in _subfolders(path))


def read(root: Path, image_size: int, quiet: bool = False) -> Decoded:
    """All images under `root`, decoded to `image_size` squares, from the cache when unchanged."""
    try:
        files = class_images(root)
        entries = [(file.relative, file.size, file.modified) for file in files]
        key = cache.fingerprint(entries, str(root.resolve()), image_size, DECODER_VERSION)
        decode = functools.partial(_decode_dataset, root, files, image_size, quiet)
        arrays = cache.arrays(f"folder-{key}", decode)
    finally:
        cache.release(root)  # An archive extracted to a temporary folder, for lack of a cache.
    decoded = Decoded(
        images=arrays["images"],
        labels=arrays["labels"],
        splits=arrays["splits"],
        original_sizes=arrays["original_sizes"],
        class_names=tuple(str(name) for name in arrays["class_names"]),
        skipped=tuple(str(name) for name in arrays["skipped"]),
    )
    if decoded.skipped:
        warnings.warn(
            skipped_summary(decoded.skipped).capitalize(),
            stacklevel=2,  # pragma: no mutate (where it points, not what it says)
        )
    return decoded


class ImageFile(NamedTuple):
    split: str  # One of SPLITS: the top-level folder the file is in.
    class_name: str
    relative: str  # The path below the dataset folder, "/"-separated.
    size: int  # Bytes.
    modified: int  # Modification time in nanoseconds.


def class_images(root: Path) -> list[ImageFile]:
    """Every image file in a fixed order, after checking the layout has at least 2 classes."""
    if (root / "train").is_dir():
        prefixes = {split: split for split in SPLITS if (root / split).is_dir()}
    else:
        prefixes = {"train": ""}  # Class folders directly inside `root`: all of it trains.
    classes = {
        split: sorted(folder.name for folder in _subfolders(root / prefix))
        for split, prefix in prefixes.items()
    }
    train_folder = root / prefixes["train"]
    if len(classes["train"]) < 2:
        raise UserError(
            f"{train_folder} has {len(classes['train'])} class folder(s); a classifier needs at "
            "least 2, one folder of images per class."
        )
    for split, names in classes.items():
        unknown = sorted(set(names) - set(classes["train"]))
        if unknown:
            raise UserError(
                f"{root / split} has classes that {train_folder} lacks ({', '.join(unknown)}); "
                "every class needs training images."
            )
    return [
        ImageFile(split, name, relative, size, modified)
        for split, names in classes.items()
        for name in names
        for relative, size, modified in _scan(root, f"{prefixes[split]}/{name}".lstrip("/"))
    ]


def skipped_summary(skipped: tuple[str, ...] | list[str]) -> str:
    """One sentence naming the first few unreadable files and counting the rest."""
    shown = ", ".join(skipped[:_NAMES_SHOWN])
    more = f" and {len(skipped) - _NAMES_SHOWN} more" if len(skipped) > _NAMES_SHOWN else ""
    return f"skipped {len(skipped)} unreadable image file(s): {shown}{more}."


def size_summary(original_sizes: np.ndarray) -> dict:
    """The distribution of original image sizes: the most common, smallest and largest."""
    sizes = Counter(f"{width}×{height}" for width, height in original_sizes.tolist())
    areas = original_sizes.prod(axis=1)
    smallest, largest = original_sizes[areas.argmin()], original_sizes[areas.argmax()]
    common, count = sizes.most_common(1)[0]  # pragma: no mutate (equivalent: [0] is the same)
    return {
        "most_common": common,
        "most_common_count": count,
        "distinct": len(sizes),
        "smallest": f"{smallest[0]}×{smallest[1]}",
        "largest": f"{largest[0]}×{largest[1]}",
    }


def _decode_dataset(root: Path, files: list[ImageFile], image_size: int, quiet: bool) -> dict:
    class_names = sorted({file.class_name for file in files})
    pixels, original_sizes, failed = decode_all(
        [root / file.relative for file in files], image_size, quiet
    )
    readable = np.setdiff1d(np.arange(len(files)), failed)
    labels = np.array([class_names.index(file.class_name) for file in files], dtype=np.int64)
    splits = np.array([SPLITS.index(file.split) for file in files], dtype=np.int64)
    skipped = [files[index].relative for index in failed]
    return {
        "images": pixels[readable],
        "labels": labels[readable],
        "splits": splits[readable],
        "original_sizes": original_sizes[readable],
        "class_names": np.array(class_names, dtype=str),  # pragma: no mutate (names are str)
        "skipped": np.array(skipped, dtype=str),  # pragma: no mutate (reads back alike)
    }


def decode_all(
    paths: list[Path], size: int, quiet: bool = False
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Decode `paths` in parallel: images (zeros where unreadable), sizes, unreadable indices."""
    pixels = np.zeros((len(paths), size, size, 3), dtype=np.uint8)
    original_sizes = np.zeros((len(paths), 2), dtype=np.int64)
    failed: list[int] = []
    starts = range(0, len(paths), _CHUNK)
    chunks = [[str(path) for path in paths[start : start + _CHUNK]] for start in starts]
    with (
        _executor(len(paths)) as executor,
        tqdm(total=len(paths), desc="decode", unit="image", disable=quiet) as bar,
    ):
        try:
            results = executor.map(_decode_chunk, chunks, repeat(size))
            # pragma below: one result per chunk, so `strict` never finds unequal lengths.
            for start, result in zip(starts, results, strict=True):  # pragma: no mutate
                chunk_images, chunk_sizes, chunk_failed = result
                pixels[start : start + len(chunk_images)] = chunk_images
                original_sizes[start : start + len(chunk_sizes)] = chunk_sizes
                failed.extend(start + index for index in chunk_failed)
                bar.update(len(chunk_images))
        except BrokenProcessPool:
            raise UserError(
                "A worker process decoding images stopped early (too little memory, or a script "
                'calling cifarlab outside `if __name__ == "__main__":`); nothing was cached.'
            ) from None
    return pixels, original_sizes, failed


def refuse_in_an_importing_worker() -> None:
    """Refuse to load data in a spawned worker that is still importing the parent's script.

    Spawned workers (`decode_all`'s among them) import the parent's main script again before
    they take work. A script that loads data outside `if __name__ == "__main__":` would load it
    again in each worker, which would wait for the cache lock its parent holds while the
    parent waits for the workers. This is the check Python's own `multiprocessing` makes (on
    `_inheriting`), made before that wait rather than when the worker starts processes itself;
    the worker ends and its parent's pool breaks, which `decode_all` reports.
    """
    # pragma below: a process without the attribute is not inheriting; None is as false.
    if getattr(multiprocessing.current_process(), "_inheriting", False):  # pragma: no mutate
        raise UserError(
            "This worker process is importing your script again; call cifarlab under "
            '`if __name__ == "__main__":` there.'
        )


def _decode_chunk(paths: list[str], size: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    pixels = np.zeros((len(paths), size, size, 3), dtype=np.uint8)  # pragma: no mutate (cast later)
    sizes = np.zeros((len(paths), 2), dtype=np.int64)  # pragma: no mutate (decode_all casts it)
    failed = []
    for index, path in enumerate(paths):
        try:
            # The same rules as `cifarlab predict`, so training and inference images agree.
            pixels[index], sizes[index] = images.decode(path, size)
        # Any failure to decode a user's file (truncated, not an image, a decompression bomb)
        # means the same thing: skip that file and report it.
        except Exception:  # noqa: BLE001
            failed.append(index)
    return pixels, sizes, failed


def _executor(num_images: int) -> Executor:
    # The pragmas below: how many workers decode changes the speed, never the images (Linux has
    # sched_getaffinity; ProcessPoolExecutor's own default is the CPU count).
    if hasattr(os, "sched_getaffinity"):  # pragma: no mutate
        workers = len(os.sched_getaffinity(0))  # pragma: no mutate
    else:
        workers = os.cpu_count() or 1  # pragma: no mutate
    if num_images < _PARALLEL_FROM or workers < 2:
        return ThreadPoolExecutor(max_workers=1)
    # "spawn" because the parent may already run TensorFlow's threads, which forking can deadlock.
    # Its workers import the parent's script again: see `refuse_in_an_importing_worker`.
    context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(workers, mp_context=context)  # pragma: no mutate


def _subfolders(folder: Path) -> list[Path]:
    return [
        child for child in folder.iterdir() if child.is_dir() and not child.name.startswith(".")
    ]


def _scan(root: Path, relative: str, visited: frozenset | None = None) -> Iterator[tuple]:
    """(relative path, bytes, modification ns) of the image files below `root/relative`, sorted.

    Strings and `os.scandir` rather than `Path` objects: a 60,000-image folder is listed in
    well under a second this way. A folder reached twice through links (a loop, including one
    back to the dataset folder) and entries that cannot be read are skipped with a warning.
    """
    folder = os.path.join(root, relative)
    try:
        if visited is None:
            # The folders above `relative`, the dataset folder included: a link back to one of
            # them would list the other classes' images as this one's.
            parts = relative.split("/")
            visited = frozenset(
                _identity(os.path.join(root, *parts[:end])) for end in range(len(parts))
            )
        identity = _identity(folder)
        if identity in visited:
            warnings.warn(
                f"Skipped {folder}: a link back to a folder above it.",
                stacklevel=2,  # pragma: no mutate (where it points, not what it says)
            )
            return
        with os.scandir(folder) as listing:
            entries = sorted(listing, key=lambda entry: entry.name)
    except OSError as error:
        warnings.warn(
            f"Skipped {folder}: {error.strerror or error}.",
            stacklevel=2,  # pragma: no mutate (where it points, not what it says)
        )
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        try:
            if entry.is_dir():
                yield from _scan(root, f"{relative}/{entry.name}", visited | {identity})
            elif os.path.splitext(entry.name)[1].lower() in images.IMAGE_SUFFIXES:
                stat = entry.stat()
                yield f"{relative}/{entry.name}", stat.st_size, stat.st_mtime_ns
        except OSError as error:
            warnings.warn(
                f"Skipped {entry.path}: {error.strerror or error}.",
                stacklevel=2,  # pragma: no mutate (where it points, not what it says)
            )


def _identity(folder: str) -> tuple[int, int]:
    """The (device, inode) pair naming `folder` however it was reached."""
    stat = os.stat(folder)
    return stat.st_dev, stat.st_ino

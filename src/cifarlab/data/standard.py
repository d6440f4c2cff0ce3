"""The standard image datasets Keras ships loaders for, read safely from their official files.

    cifar10        cifar-10-python.tar.gz (pickled batches)        32×32 RGB, 10 classes
    cifar100       cifar-100-python.tar.gz (pickled, fine labels)  32×32 RGB, 100 classes
    fashion_mnist  the four IDX .gz files                          28×28 grey, 10 classes
    mnist          mnist.npz (Keras's copy)                        28×28 grey, 10 classes

`--data` may name the official file, its extracted folder, or a folder holding either;
without it, `$CIFARLAB_DATA`, then the per-user cache, then the official download (checked
against its SHA-256). Pickles go through the allow-list unpickler, `.npz` files are read
with `allow_pickle=False`, and IDX headers are checked before any pixel is read.

    cifarlab data info --dataset fashion_mnist --data ~/datasets/
"""

from __future__ import annotations

import gzip
import io
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from cifarlab.data import cache, images, safe_files
from cifarlab.errors import UserError

_KERAS_BUCKET = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
_CIFAR10_BATCHES = (*(f"data_batch_{index}" for index in range(1, 6)), "test_batch")
# Fashion-MNIST's four files as Keras fetches them, with their published SHA-256 sums.
_FASHION_SHA256 = {
    "train-images-idx3-ubyte.gz":
        "08dc20ab1689590a0bcd66e874647b6ee8464e2d501b5a3f1f78831db19a3fdc",
    "train-labels-idx1-ubyte.gz":
        "b0197879cbda89f3dc7b894f9fd52b858e68ea4182b6947c9d8c2b67e5f18dcc",
    "t10k-images-idx3-ubyte.gz":
        "78dcbbfb5a27efaf1b6c1d616caca68560be8766c5bffcb2791df9273a534229",
    "t10k-labels-idx1-ubyte.gz":
        "42bd18137a62d5998cdeae52bf3a0676ac6b706f5cf8439b47bb5b151ae3dccf",
}  # fmt: skip


@dataclass(frozen=True)
class Download:
    file: str
    url: str
    sha256: str


@dataclass(frozen=True)
class Standard:
    """Where a standard dataset's files come from and which of them are read."""

    name: str
    downloads: tuple[Download, ...]
    members: tuple[str, ...]  # The files read: inside the archive, its folder, or as is.
    folder: str = ""  # The folder the official archive extracts to.
    cache_folder: str = ""  # Sub-folder of the cache the downloads go to.


STANDARDS = {
    "cifar10": Standard(
        "cifar10",
        (Download("cifar-10-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                  "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"),),
        _CIFAR10_BATCHES,
        folder="cifar-10-batches-py",
    ),
    "cifar100": Standard(
        "cifar100",
        (Download("cifar-100-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                  "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7"),),
        ("train", "test", "meta"),
        folder="cifar-100-python",
    ),
    "fashion_mnist": Standard(
        "fashion_mnist",
        tuple(Download(name, _KERAS_BUCKET + name, sha) for name, sha in _FASHION_SHA256.items()),
        tuple(_FASHION_SHA256),
        cache_folder="fashion-mnist",
    ),
    "mnist": Standard(
        "mnist",
        (Download("mnist.npz", _KERAS_BUCKET + "mnist.npz",
                  "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"),),
        ("mnist.npz",),
    ),
}  # fmt: skip


class Arrays(NamedTuple):
    """A standard dataset's official train and test sets, as uint8 N×H×W×3 and int64 labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    source: str
    notes: dict


def read(name: str, path: Path | None, image_size: int, quiet: bool = False) -> Arrays:
    """Standard dataset `name` from `path` (or cache, or download), resized to `image_size`."""
    if name not in STANDARDS:
        raise UserError(
            f"Unknown dataset '{name}'; choose one of {', '.join(STANDARDS)}, "
            "or pass a folder of class folders with --data."
        )
    standard = STANDARDS[name]
    source = find_source(standard, path, quiet)
    key = cache.fingerprint(cache.file_entries(source))
    stored = cache.arrays(f"{name}-{key}", lambda: _decode(standard, source))
    native = stored["x_train"].shape[1:3]
    notes = {"original_sizes": {"most_common": f"{native[1]}×{native[0]}", "distinct": 1}}
    if stored["x_train"].ndim == 3:
        notes["channels"] = "greyscale, repeated into 3 channels"
    return Arrays(
        resize(stored["x_train"], image_size), stored["y_train"],
        resize(stored["x_test"], image_size), stored["y_test"],
        tuple(str(class_name) for class_name in stored["class_names"]), str(source), notes,
    )  # fmt: skip


def find_source(standard: Standard, path: Path | None, quiet: bool = False) -> Path:
    """The file or folder to read `standard` from, downloading it only as the last resort."""
    if path is not None:
        return _resolve(standard, Path(path).expanduser())
    folder = cache.directory() / standard.cache_folder
    for download in standard.downloads:
        if not (folder / download.file).is_file():
            safe_files.download(download.url, folder / download.file, download.sha256, quiet)
    return folder if len(standard.downloads) > 1 else folder / standard.downloads[0].file


def _resolve(standard: Standard, path: Path) -> Path:
    if not path.exists():
        raise UserError(f"Data path {path} does not exist; pass an existing archive or folder.")
    if path.is_file() or all((path / member).is_file() for member in standard.members):
        return path
    for candidate in (standard.folder, *(download.file for download in standard.downloads)):
        if candidate and (path / candidate).exists():
            return _resolve(standard, path / candidate)
    wanted = ", ".join(download.file for download in standard.downloads)
    if standard.folder:
        wanted += f" or a {standard.folder} folder"
    if not any(path.iterdir()):
        raise UserError(f"{path} is empty; point --data at a dataset or a folder of class folders.")
    raise UserError(
        f"{path} holds neither {standard.name} data ({wanted}) nor class folders of images "
        f"({images.SUPPORTED}); point --data at one."
    )


def _decode(standard: Standard, source: Path) -> dict[str, np.ndarray]:
    payloads = _payloads(standard, source)
    missing = [member for member in standard.members if member not in payloads]
    if missing:
        raise UserError(f"{source} lacks {', '.join(missing)}; it is not {standard.name} data.")
    reader = {"cifar10": _cifar10, "cifar100": _cifar100, "mnist": _mnist}.get(
        standard.name, _fashion_mnist
    )
    return reader(payloads, str(source))


def _payloads(standard: Standard, source: Path) -> dict[str, bytes]:
    if source.is_dir():
        return {m: (source / m).read_bytes() for m in standard.members if (source / m).is_file()}
    if standard.folder:
        return safe_files.read_tar_members(source, set(standard.members))
    # A single-file dataset given as the file itself, whatever it is called.
    return {standard.members[0]: source.read_bytes()}


def _cifar10(payloads: dict[str, bytes], source: str) -> dict[str, np.ndarray]:
    parts = [
        read_cifar_batch(payloads[name], f"{source}:{name}", b"labels", 10)
        for name in _CIFAR10_BATCHES
    ]
    return {
        "x_train": np.concatenate([images for images, _ in parts[:5]]),
        "y_train": np.concatenate([labels for _, labels in parts[:5]]),
        "x_test": parts[5][0],
        "y_test": parts[5][1],
        "class_names": np.array(CIFAR10_CLASSES),
    }


def _cifar100(payloads: dict[str, bytes], source: str) -> dict[str, np.ndarray]:
    meta = safe_files.safe_unpickle(payloads["meta"], f"{source}:meta")
    names = meta.get(b"fine_label_names") if isinstance(meta, dict) else None
    if not isinstance(names, list) or len(names) != 100:
        raise UserError(f"{source}:meta has no 100 fine_label_names; it is not CIFAR-100.")
    x_train, y_train = read_cifar_batch(payloads["train"], f"{source}:train", b"fine_labels", 100)
    x_test, y_test = read_cifar_batch(payloads["test"], f"{source}:test", b"fine_labels", 100)
    class_names = np.array([bytes(name).decode() for name in names])
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test,
            "class_names": class_names}  # fmt: skip


def read_cifar_batch(
    payload: bytes, source: str, label_key: bytes, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Images (N×32×32×3 uint8) and labels from one pickled CIFAR batch, checked."""
    batch = safe_files.safe_unpickle(payload, source)
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        raise UserError(f"{source} is not a CIFAR batch (no data and labels); replace it.")
    data, labels = np.asarray(batch[b"data"]), np.asarray(batch[label_key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise UserError(f"{source} holds {data.dtype} rows of shape {data.shape}, not uint8×3072.")
    _check_labels(labels, len(data), num_classes, source)
    # Each row is the red plane, then green, then blue, 32×32 each.
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.int64)


def _mnist(payloads: dict[str, bytes], source: str) -> dict[str, np.ndarray]:
    keys = ("x_train", "y_train", "x_test", "y_test")
    try:
        with np.load(io.BytesIO(payloads["mnist.npz"]), allow_pickle=False) as stored:
            arrays = {key: stored[key] for key in keys}
    except (KeyError, ValueError, OSError, zipfile.BadZipFile) as error:
        raise UserError(f"{source} is not Keras's mnist.npz ({error}); replace it.") from error
    for split in ("train", "test"):
        images, labels = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
            raise UserError(f"{source} x_{split} is {images.dtype} {images.shape}, not N×28×28.")
        _check_labels(labels, len(images), 10, f"{source} y_{split}")
        arrays[f"y_{split}"] = labels.astype(np.int64)
    return {**arrays, "class_names": np.array([str(digit) for digit in range(10)])}


def _fashion_mnist(payloads: dict[str, bytes], source: str) -> dict[str, np.ndarray]:
    arrays = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(payloads[f"{prefix}-images-idx3-ubyte.gz"], f"{source}:{prefix}", 3)
        labels = read_idx(payloads[f"{prefix}-labels-idx1-ubyte.gz"], f"{source}:{prefix}", 1)
        _check_labels(labels, len(images), 10, f"{source}:{prefix}-labels")
        arrays[f"x_{split}"], arrays[f"y_{split}"] = images, labels.astype(np.int64)
    return {**arrays, "class_names": np.array(FASHION_MNIST_CLASSES)}


def read_idx(payload: bytes, source: str, dimensions: int) -> np.ndarray:
    """A gzipped IDX file of unsigned bytes with `dimensions` axes, its header checked first."""
    try:
        raw = gzip.decompress(payload)
    except (OSError, EOFError, zlib.error) as error:
        raise UserError(f"{source} is not a gzipped IDX file ({error}); replace it.") from error
    header = 4 + 4 * dimensions
    # The magic number is two zero bytes, the element type (8 = unsigned byte), the axis count.
    if len(raw) < header or raw[:4] != bytes((0, 0, 8, dimensions)):
        raise UserError(f"{source} has no IDX header for {dimensions}-axis unsigned bytes.")
    shape = tuple(
        int.from_bytes(raw[4 + 4 * axis : 8 + 4 * axis], "big") for axis in range(dimensions)
    )
    if len(raw) != header + int(np.prod(shape)):
        raise UserError(f"{source} is {len(raw)} bytes, not the {shape} its header declares.")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _check_labels(labels: np.ndarray, count: int, num_classes: int, source: str) -> None:
    if labels.shape != (count,) or not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"{source} has {labels.shape} labels for {count} images.")
    if count and not 0 <= labels.min() <= labels.max() < num_classes:
        raise UserError(f"{source} has labels outside 0–{num_classes - 1}.")


def resize(images: np.ndarray, size: int) -> np.ndarray:
    """N×H×W (grey) or N×H×W×3 uint8 images as N×size×size×3, bicubic, grey repeated to RGB."""
    if images.shape[1:3] != (size, size):
        # Each image is resized on its own; Pillow's filter is antialiased when shrinking.
        images = np.stack([
            np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC))
            for image in images
        ]) if len(images) else np.zeros((0, size, size, *images.shape[3:]), np.uint8)  # fmt: skip
    if images.ndim == 3:
        images = np.repeat(images[..., None], 3, axis=-1)
    return np.ascontiguousarray(images)

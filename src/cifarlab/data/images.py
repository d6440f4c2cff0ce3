"""Any image file a user has, as the model's input: RGB uint8 pixels of the training size.

Every image is brought to the model's square input the same way: EXIF orientation applied,
transparency flattened onto white, 16-bit and grayscale pixels scaled to 8-bit RGB, then the
largest centred square is cropped and resized with a Lanczos filter. Cropping (rather than
padding) keeps the subject at the scale CIFAR-10's own tightly framed photos show it; the
Lanczos filter averages many source pixels per output pixel, so large photos do not alias.
The pixels are then scaled exactly as in training (`input_pipeline.scale`, by the model's caller).

Memory is budgeted in decoded bytes, not pixels: a 77 KB 16-bit PNG can decode to 80 MB. Each
image's decoded size is estimated from its header and refused above `MAX_DECODED_BYTES`; a
`DecodeBudget` bounds what threads decoding at once may hold. A large image is shrunk first
(centre square, averaged over whole blocks of pixels, a strip at a time) to 4× the output, and
only then converted, so no full-size copy in another mode or in floating point is ever made.

Only the raster formats below are opened, whatever a file's name says: Pillow would otherwise
hand PostScript or PDF files to Ghostscript where it is installed.
"""

from __future__ import annotations

import ctypes
import io
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext, suppress
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from cifarlab.errors import RunError, UserError

MAX_PIXELS = 40_000_000  # Larger images (width × height) are refused as decompression bombs.
MEBIBYTE = 2**20
MAX_DECODED_BYTES = 256 * MEBIBYTE  # One image's decoded pixels and decoder buffers, at most.
# What concurrent decodes may hold together (`DecodeBudget`): two images at the limit above.
DECODE_BUDGET_BYTES = 2 * MAX_DECODED_BYTES
# The formats read, by Pillow's names, and the file endings that mark an image file in a folder.
FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
SUPPORTED = "JPEG, PNG, BMP, GIF, WebP or TIFF"
_WHITE = (255, 255, 255, 255)
_WIDE = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")  # Integer and float pixels over 8 bits.
_ALPHA = ("RGBA", "LA", "PA", "La", "RGBa")
_STRIP_PIXELS = 1_000_000  # Pixels converted at a time while shrinking: 4 MB as RGBA.
# A strip cropped and converted, the shrunk square and the decoder's own state: measured at
# 12-15 MB beside the image, for any size; doubled for safety.
_WORKING_BYTES = 32 * MEBIBYTE
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter, from <malloc.h>.
# Pillow's orientations (as `ImageOps.exif_transpose`), applied here to the shrunk square.
_ORIENTATIONS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class ImageTooLargeError(UserError):
    """The image has more pixels than `MAX_PIXELS`, or would decode to more than
    `MAX_DECODED_BYTES`: refused before its pixels are decoded."""


class DecodeBusyError(RunError):
    """A `DecodeBudget` with a wait limit had no room for the image within that time."""


class DecodeBudget:
    """Decoded bytes that threads may hold at once; a decode waits until its share is free.

    With `wait_seconds`, a decode that waits longer raises `DecodeBusyError` instead. Making
    one also makes the process return freed memory promptly, without which the budget would
    not bound what the process keeps resident (`return_freed_memory_promptly`).
    """

    def __init__(self, total_bytes: int = DECODE_BUDGET_BYTES, wait_seconds: float | None = None):
        return_freed_memory_promptly()
        self.total_bytes, self.wait_seconds = total_bytes, wait_seconds
        self._free = total_bytes
        self._condition = threading.Condition()

    @contextmanager
    def reserve(self, num_bytes: int) -> Iterator[None]:
        num_bytes = min(num_bytes, self.total_bytes)  # One image alone may always decode.
        with self._condition:
            if not self._condition.wait_for(lambda: self._free >= num_bytes, self.wait_seconds):
                raise DecodeBusyError(
                    "Too many large images are being decoded at once; try again in a moment."
                )
            self._free -= num_bytes
        try:
            yield
        finally:
            with self._condition:
                self._free += num_bytes
                self._condition.notify_all()


def return_freed_memory_promptly() -> None:
    """Have glibc give every freed allocation of 8 MB or more straight back to the system.

    By default glibc raises its threshold for mapping blocks to the largest block freed (up to
    32 MB), after which the 16 MB blocks Pillow stores images in come from per-thread arenas
    that keep them once freed. `cifarlab serve` with 40 clients uploading large images peaked
    at 2.5 GB, 1.7 GB past its idle size and 1.2 GB past its decode budget, and with this at
    1.4 GB (`bench/upload_memory.py`); `cifarlab predict` on eight 6300×6300 RGBA PNGs peaked
    at 1.8 GB, and with this at 1.1 GB. The 4 MB strips `_shrink` converts stay below the
    threshold, so they are reused rather than mapped afresh: a threshold of 1 MB made decoding
    40% slower, 8 MB no slower.
    """
    with suppress(OSError, AttributeError):  # Not glibc: its allocator keeps its own policy.
        ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, 8 * MEBIBYTE)


def image_files(paths: list[str | Path]) -> list[Path]:
    """The files named in `paths`, with folders walked (sorted) for files with image endings.

    Files named directly are kept whatever their ending, so a non-image given by name is
    reported rather than silently skipped.
    """
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(
                child
                for child in path.rglob("*")
                if child.is_file()
                and child.suffix.lower() in IMAGE_SUFFIXES
                and not child.name.startswith(".")
            )
        else:
            found.append(path)
    return found


def load(
    source: str | Path | bytes | BinaryIO, image_size: int = 32, budget: DecodeBudget | None = None
) -> np.ndarray:
    """The image at `source` (a path, the file's bytes or an open binary file) as
    (image_size, image_size, 3) uint8, decoded within `budget` where one is given.

    Raises `UserError` with one sentence if it is empty, not an image, truncated or too large.
    """
    return decode(source, image_size, budget)[0]


def decode(
    source: str | Path | bytes | BinaryIO, image_size: int, budget: DecodeBudget | None = None
) -> tuple[np.ndarray, tuple[int, int]]:
    """As `load`, also returning the image's stored (width, height); used for datasets too."""
    name = str(source) if isinstance(source, (str, Path)) else "The upload"
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        if isinstance(source, (str, Path)) and os.path.getsize(source) == 0:
            raise UserError(f"{name} is empty.")
        with Image.open(stream, formats=FORMATS) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ImageTooLargeError(
                    f"{name} is {width}×{height} pixels, more than the limit of "
                    f"{MAX_PIXELS:,}; resize it first."
                )
            # For JPEG, decode at a reduced scale that still leaves 4× the output resolution.
            image.draft("RGB", (image_size * 4, image_size * 4))
            needed = decoded_bytes(image, (width, height))
            if needed > MAX_DECODED_BYTES:
                raise ImageTooLargeError(
                    f"{name} ({width}×{height}, {image.mode}) would take "
                    f"{needed / MEBIBYTE:,.0f} MB to decode, more than the limit of "
                    f"{MAX_DECODED_BYTES // MEBIBYTE} MB; resize it first."
                )
            with budget.reserve(needed) if budget else nullcontext():
                square, scale = _shrink(image, 4 * image_size), _wide_scale(image)
                # Read after loading: TIFF's loader applies and then drops the orientation itself.
                orientation = image.getexif().get(ExifTags.Base.Orientation)
                # Frees the full-size pixels before the budget is given back. (`image.close()`
                # would also close the caller's file, where `source` is one.)
                Image.Image.close(image)
        if orientation in _ORIENTATIONS:
            square = square.transpose(_ORIENTATIONS[orientation])
        return _resize(_to_rgb(square, scale), image_size), (width, height)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageTooLargeError(
            f"{name} has too many pixels to decode safely ({error})."
        ) from error
    except FileNotFoundError as error:
        raise UserError(f"{name} does not exist.") from error
    except PermissionError as error:
        raise UserError(f"{name} cannot be read (permission denied).") from error
    except IsADirectoryError as error:
        raise UserError(f"{name} is a folder, not an image.") from error
    except UnidentifiedImageError as error:
        raise UserError(f"{name} is not a supported image ({SUPPORTED}).") from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        if isinstance(error, UserError):
            raise
        # Truncated or corrupt data surfaces as any of these, depending on the format.
        raise UserError(f"{name} is damaged or truncated ({error}).") from error


def decoded_bytes(image: Image.Image, stored_size: tuple[int, int]) -> int:
    """The most memory that decoding `image` (opened and drafted, not loaded) takes, in bytes;
    `stored_size` is its size in the file. The factors were measured with Pillow 13 on 25 MP
    files of every format and mode (`bench/README.md`, "Memory per upload")."""
    width, height = image.size
    # Pillow keeps "1", "L" and "P" in one byte a pixel, 16-bit modes in two, all others in four.
    per_pixel = 1 if image.mode in ("1", "L", "P") else 2 if image.mode.startswith("I;16") else 4
    # WebP passes through libwebp's buffer and two copies in Python; TIFF can hold a whole strip
    # beside the image, and one more copy while Pillow applies its orientation tag on loading.
    copies = {"WEBP": 4, "TIFF": 2}.get(image.format or "", 1)
    if image.format == "TIFF" and image.getexif().get(ExifTags.Base.Orientation, 1) != 1:
        copies += 1
    total = width * height * per_pixel * copies + _WORKING_BYTES
    if image.format == "JPEG" and image.info.get("progressive"):
        # A progressive JPEG keeps every DCT coefficient (2 bytes a sample), however drafted:
        # 3 bytes a pixel with the usual 4:2:0 subsampling, 6 with none.
        stored_pixels = stored_size[0] * stored_size[1]
        total += int(stored_pixels * _samples_per_pixel(image) * 2)
    return total


def _samples_per_pixel(image: Image.Image) -> float:
    """A JPEG's samples per pixel, all components together, from their sampling factors."""
    # Pillow's `layer`: (component id, horizontal sampling, vertical sampling, table).
    layers = getattr(image, "layer", None) or [(0, 1, 1, 0)] * len(image.getbands())
    horizontal = [layer[1] for layer in layers]
    vertical = [layer[2] for layer in layers]
    samples = sum(across * down for across, down in zip(horizontal, vertical, strict=True))
    return samples / (max(horizontal) * max(vertical))


def _shrink(image: Image.Image, smallest: int) -> Image.Image:
    """The image's centred square, averaged over whole blocks of pixels to no less than
    `smallest` pixels a side, in a mode that averages correctly (float, RGBA, RGB or L).

    Pixels are converted a strip at a time, so no full-size copy of the image is made.
    """
    width, height = image.size
    side = min(width, height)
    factor = max(1, side // smallest)
    side -= side % factor
    left, top = (width - side) // 2, (height - side) // 2
    mode = _working_mode(image)
    square = Image.new(mode, (side // factor, side // factor))
    rows = factor * max(1, _STRIP_PIXELS // (side * factor))
    for offset in range(0, side, rows):
        box = (left, top + offset, left + side, top + min(offset + rows, side))
        strip = image.crop(box).convert(mode)
        square.paste(strip.reduce(factor) if factor > 1 else strip, (0, offset // factor))
    return square


def _working_mode(image: Image.Image) -> str:
    if image.mode in _WIDE:
        return "F"
    if image.mode in _ALPHA or "transparency" in image.info:
        return "RGBA"
    return "L" if image.mode in ("1", "L") else "RGB"


def _wide_scale(image: Image.Image) -> float:
    """The factor that brings the image's integer or float pixels to the 8-bit range."""
    if image.mode.startswith("I;16"):
        return 1 / 257  # 16-bit to 8-bit: 65535 maps to 255.
    if image.mode not in ("I", "F"):
        return 1.0
    highest = image.getextrema()[1]
    if highest > 255:
        return 1 / 257
    if image.mode == "F" and highest <= 1:
        return 255.0  # Float images usually hold values in [0, 1].
    return 1.0


def _to_rgb(image: Image.Image, scale: float) -> Image.Image:
    """8-bit RGB from `_shrink`'s modes: float pixels scaled, transparency composited on white."""
    if image.mode == "F":
        pixels = np.asarray(image, dtype=np.float32) * np.float32(scale)
        image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))
    if image.mode == "RGBA":
        image = Image.alpha_composite(Image.new("RGBA", image.size, _WHITE), image)
    return image.convert("RGB")


def _resize(image: Image.Image, image_size: int) -> np.ndarray:
    """The largest centred square of `image`, resized to `image_size` with a Lanczos filter."""
    fitted = ImageOps.fit(image, (image_size, image_size), method=Image.Resampling.LANCZOS)
    return np.asarray(fitted, dtype=np.uint8).copy()

"""Any image file a user has, as the model's input: RGB uint8 pixels of the training size.

Every image is brought to the model's square input the same way: EXIF orientation applied,
transparency flattened onto white, 16-bit and grayscale pixels scaled to 8-bit RGB, then the
largest centred square is cropped and resized with a Lanczos filter. Cropping (rather than
padding) keeps the subject at the scale CIFAR-10's own tightly framed photos show it; the
Lanczos filter averages many source pixels per output pixel, so large photos do not alias.
The pixels are then scaled exactly as in training (`input_pipeline.scale`, by the model's caller).

Only the raster formats below are opened, whatever a file's name says: Pillow would otherwise
hand PostScript or PDF files to Ghostscript where it is installed.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cifarlab.errors import UserError

MAX_PIXELS = 40_000_000  # Larger images (width × height) are refused as decompression bombs.
# The formats read, by Pillow's names, and the file endings that mark an image file in a folder.
FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
SUPPORTED = "JPEG, PNG, BMP, GIF, WebP or TIFF"
_WHITE = (255, 255, 255, 255)


class ImageTooLargeError(UserError):
    """The image has more pixels than `MAX_PIXELS`: refused before its pixels are decoded."""


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


def load(source: str | Path | bytes, image_size: int = 32) -> np.ndarray:
    """The image at `source` (a path or the file's bytes) as (image_size, image_size, 3) uint8.

    Raises `UserError` with one sentence if it is not an image, is truncated or is too large.
    """
    return decode(source, image_size)[0]


def decode(source: str | Path | bytes, image_size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """As `load`, also returning the image's stored (width, height); used for datasets too."""
    name = "The upload" if isinstance(source, bytes) else str(source)
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with Image.open(stream, formats=FORMATS) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ImageTooLargeError(
                    f"{name} is {width}×{height} pixels, more than the limit of "
                    f"{MAX_PIXELS:,}; resize it first."
                )
            # For JPEG, decode at a reduced scale that still leaves 4× the output resolution.
            image.draft("RGB", (image_size * 4, image_size * 4))
            return _square(_to_rgb(ImageOps.exif_transpose(image)), image_size), (width, height)
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


def _to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB: wide integer and float pixels rescaled, transparency composited on white."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16") or pixels.max(initial=0) > 255:
            pixels = pixels / 257.0  # 16-bit to 8-bit: 65535 maps to 255.
        elif image.mode == "F" and pixels.max(initial=0) <= 1.0:
            pixels = pixels * 255.0  # Float images usually hold values in [0, 1].
        image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "L")
    if image.mode == "RGB":
        return image
    has_alpha = image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info
    if not has_alpha:
        return image.convert("RGB")
    background = Image.new("RGBA", image.size, _WHITE)
    return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")


def _square(image: Image.Image, image_size: int) -> np.ndarray:
    """The largest centred square of `image`, resized to `image_size` with a Lanczos filter."""
    fitted = ImageOps.fit(image, (image_size, image_size), method=Image.Resampling.LANCZOS)
    return np.asarray(fitted, dtype=np.uint8).copy()

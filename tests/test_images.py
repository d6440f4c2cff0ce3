"""Any image file becomes the model's 32×32 RGB input the same way: kinds, sizes, bad input."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
from PIL import Image

from cifarlab.data import images
from cifarlab.errors import UserError

RNG = np.random.default_rng(0)


def encoded(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims `width`×`height` pixels: a decompression bomb's shape."""
    data = bytearray(encoded(Image.new("L", (1, 1)), "PNG"))
    # IHDR's data starts at byte 16 (signature 8, length 4, type 4); its CRC covers type + data.
    data[16:20], data[20:24] = width.to_bytes(4, "big"), height.to_bytes(4, "big")
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    return bytes(data)


@pytest.mark.parametrize(
    ("mode", "size", "format"),
    [
        ("RGB", (640, 480), "JPEG"),
        ("RGB", (3000, 2000), "JPEG"),  # Large enough that JPEG draft decoding kicks in.
        ("L", (50, 70), "JPEG"),
        ("CMYK", (64, 64), "JPEG"),
        ("RGBA", (100, 40), "PNG"),
        ("P", (33, 31), "PNG"),
        ("LA", (20, 20), "PNG"),
        ("1", (45, 45), "PNG"),
        ("RGB", (1, 1), "PNG"),
        ("RGB", (500, 7), "WEBP"),
        ("RGBA", (80, 80), "WEBP"),
        ("P", (40, 40), "GIF"),
        ("RGB", (40, 30), "BMP"),
        ("RGB", (40, 30), "TIFF"),
    ],
)
def test_every_kind_becomes_32_pixel_rgb(mode, size, format):
    pixels = RNG.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels).convert(mode)
    result = images.load(encoded(image, format), 32)
    assert result.shape == (32, 32, 3) and result.dtype == np.uint8


def test_a_32_pixel_rgb_png_keeps_its_exact_pixels(tmp_path):
    pixels = RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "exact.png")
    np.testing.assert_array_equal(images.load(tmp_path / "exact.png", 32), pixels)


def test_sixteen_bit_grayscale_is_scaled_to_eight_bits():
    image = Image.fromarray(np.full((40, 60), 32896, dtype=np.uint16))  # 32896 / 257 = 128.
    result = images.load(encoded(image, "PNG"), 32)
    assert np.all(result == 128)


def test_grayscale_becomes_three_equal_channels():
    result = images.load(encoded(Image.new("L", (64, 48), 77), "PNG"), 32)
    assert np.all(result == 77)


def test_transparency_is_flattened_onto_white():
    clear = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    assert np.all(images.load(encoded(clear, "PNG"), 32) == 255)
    palette = Image.new("P", (40, 40), 0)
    palette.putpalette([0, 0, 0] * 256)
    assert np.all(images.load(encoded(palette, "PNG", transparency=0), 32) == 255)


def test_exif_orientation_is_applied():
    # Stored landscape with red on top and blue below; EXIF 6 says "rotate 90° clockwise to
    # show", which puts red on the right and blue on the left of a portrait picture.
    pixels = np.zeros((40, 80, 3), np.uint8)
    pixels[:20, :, 0] = 255
    pixels[20:, :, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    result = images.load(encoded(Image.fromarray(pixels), "JPEG", exif=exif), 32).astype(int)
    left, right = result[:, :12], result[:, -12:]
    assert (left[..., 2] - left[..., 0]).mean() > 150  # Blue on the left.
    assert (right[..., 0] - right[..., 2]).mean() > 150  # Red on the right.


def test_centre_square_is_kept():
    # A wide image: only the middle third (green) survives the centre crop.
    pixels = np.zeros((30, 90, 3), np.uint8)
    pixels[:, :30, 0] = pixels[:, 30:60, 1] = pixels[:, 60:, 2] = 255
    result = images.load(encoded(Image.fromarray(pixels), "PNG"), 32).astype(int)
    assert result[..., 1].mean() > 240 and result[..., 0].max() < 40 and result[..., 2].max() < 40


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"just some text, not pixels", "not a supported image"),
        (b"", "not a supported image"),
        (encoded(Image.new("RGB", (300, 300)), "JPEG")[:400], "truncated"),
        (encoded(Image.new("RGB", (300, 300), "red"), "PNG")[:-30], "truncated"),
    ],
)
def test_bad_files_raise_one_clear_sentence(data, message):
    with pytest.raises(UserError, match=message):
        images.load(data, 32)


@pytest.mark.parametrize("side", [8000, 50_000])  # Over our limit; over Pillow's own limit.
def test_decompression_bombs_are_refused_before_decoding(side):
    with pytest.raises(images.ImageTooLargeError):
        images.load(png_claiming(side, side), 32)


def test_folders_are_walked_for_image_files(tmp_path):
    (tmp_path / "nested").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "b.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "nested" / "a.JPG")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden.png").write_bytes(b"")
    named = tmp_path / "named.txt"
    found = images.image_files([tmp_path, named])
    assert found == [tmp_path / "b.png", tmp_path / "nested" / "a.JPG", named]

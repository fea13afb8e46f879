"""Decoding: every mode becomes RGB uint8, EXIF is applied, bad bytes give a reason."""

import io

import numpy as np
import pytest
from PIL import Image

from pipeline.core.imageio import ImageReadError, decode_image


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "image, fmt",
    [
        (Image.new("L", (20, 10), 128), "PNG"),
        (Image.new("P", (20, 10), 3), "PNG"),
        (Image.new("RGBA", (20, 10), (255, 0, 0, 128)), "PNG"),
        (Image.new("CMYK", (20, 10), (0, 255, 255, 0)), "JPEG"),
        (Image.fromarray(np.full((10, 20), 40000, dtype=np.uint16)), "PNG"),
        (Image.new("RGB", (20, 10), (1, 2, 3)), "WEBP"),
        (Image.new("RGB", (20, 10), (1, 2, 3)), "BMP"),
        (Image.new("RGB", (20, 10), (1, 2, 3)), "TIFF"),
    ],
)
def test_modes_become_rgb_uint8(image, fmt):
    decoded = decode_image(encode(image, fmt))
    assert decoded.pixels.dtype == np.uint8
    assert decoded.pixels.shape == (10, 20, 3)


def test_sixteen_bit_is_scaled_not_clipped():
    image = Image.fromarray(np.full((4, 4), 32768, dtype=np.uint16))
    value = decode_image(encode(image, "PNG")).pixels[0, 0, 0]
    assert 120 <= value <= 135


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    decoded = decode_image(encode(image, "JPEG", exif=exif))
    assert (decoded.width, decoded.height) == (20, 40)


def test_downscale_short_side():
    decoded = decode_image(encode(Image.new("RGB", (300, 200)), "PNG"), max_short_side=100)
    assert (decoded.width, decoded.height) == (150, 100)
    assert (decoded.original_width, decoded.original_height) == (300, 200)


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty file"),
        (b"not an image at all", "cannot decode image"),
        (encode(Image.new("RGB", (64, 64)), "JPEG")[:100], "cannot decode image"),
    ],
)
def test_bad_bytes_give_one_line_reasons(data, reason):
    with pytest.raises(ImageReadError) as raised:
        decode_image(data)
    assert reason in str(raised.value)
    assert "\n" not in str(raised.value)
    assert "object at 0x" not in str(raised.value)  # no repr of an in-memory buffer


def test_pixel_limit():
    with pytest.raises(ImageReadError, match="too many pixels"):
        decode_image(encode(Image.new("RGB", (100, 100)), "PNG"), max_pixels=5000)

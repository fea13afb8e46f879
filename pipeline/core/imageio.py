"""Image bytes → RGB uint8 arrays: EXIF orientation, colour modes, size limits.

Every failure becomes an ``ImageReadError`` whose message is a one-line reason for the
image's error row.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from pipeline.core.errors import one_line
from pipeline.core.storage import (
    PERMANENT_ERRORS,
    TRANSIENT_ERRORS,
    Location,
    StorageUnavailableError,
    undecodable_path,
)


class ImageReadError(ValueError):
    """An image that cannot be used; the message is the reason in its error row."""


@dataclass
class DecodedImage:
    """An image ready for the model, with its sizes before and after downscaling."""

    pixels: np.ndarray  # (height, width, 3) uint8, RGB
    original_width: int
    original_height: int

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])


def decode_image(data: bytes, max_short_side: int = 0, max_pixels: int = 0) -> DecodedImage:
    """Decode image bytes to an RGB uint8 array.

    EXIF orientation is applied; grayscale, palette, RGBA, CMYK and 16-bit images become
    RGB uint8; an animated image gives its first frame.

    Args:
        data: the file's bytes.
        max_short_side: downscale (area filter) so the short side is at most this; 0 keeps.
        max_pixels: refuse images with more pixels than this; 0 means no limit.

    Raises:
        ImageReadError: empty, corrupt, truncated or oversized input.
    """
    if not data:
        raise ImageReadError("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            check_pixels(image.size, max_pixels)
            image.seek(0)
            image.load()
            image = ImageOps.exif_transpose(image)
            rgb = to_rgb(image)
    except ImageReadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageReadError(f"too many pixels: {error}") from error
    except Image.UnidentifiedImageError as error:  # its text names an in-memory buffer
        raise ImageReadError("cannot decode image: not an image format Pillow reads") from error
    except Exception as error:
        raise ImageReadError(f"cannot decode image: {one_line(error)}") from error
    original_width, original_height = rgb.size
    rgb = downscale(rgb, max_short_side)
    return DecodedImage(np.array(rgb, dtype=np.uint8), original_width, original_height)


def check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    """Refuse images larger than ``max_pixels`` before decoding them."""
    width, height = size
    if max_pixels and width * height > max_pixels:
        raise ImageReadError(f"too many pixels: {width}x{height} exceeds {max_pixels}")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode → RGB with 8 bits per channel."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: scale the full range down to 8 bits, not clip it.
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array * (255.0 / peak), 0, 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB")


def downscale(image: Image.Image, max_short_side: int) -> Image.Image:
    """Resize so the short side is at most ``max_short_side`` (0: unchanged)."""
    short = min(image.size)
    if not max_short_side or short <= max_short_side:
        return image
    scale = max_short_side / short
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BOX)


def load_image(image: Location, max_short_side: int = 0, max_pixels: int = 0) -> DecodedImage:
    """Read and decode one image; every failure is an ``ImageReadError``.

    A store that cannot be reached is not the image's fault: that raises
    ``StorageUnavailableError`` instead.

    Args:
        image: where the image file is.
        max_short_side: see ``decode_image``.
        max_pixels: see ``decode_image``.
    """
    try:
        data = image.read_bytes()
    except PERMANENT_ERRORS as error:
        raw = undecodable_path(image.path) if image.is_local else None
        if raw is not None:
            raise ImageReadError(
                f"the file name is not valid UTF-8 ({raw!r}): rename the file to label it"
            ) from error
        raise ImageReadError(f"cannot read file: {one_line(error)}") from error
    except TRANSIENT_ERRORS as error:  # the store, after the retries
        raise StorageUnavailableError(f"cannot reach {image}: {one_line(error)}") from error
    except Exception as error:
        raise ImageReadError(f"cannot read file: {one_line(error)}") from error
    return decode_image(data, max_short_side=max_short_side, max_pixels=max_pixels)

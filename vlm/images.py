"""Validation of user images (base64, data URLs, uploads) before any model sees them.

Pillow only (no torch). Images are checked from their header before any pixel is decoded, so a
decompression bomb is refused without allocating its pixels; accepted images are re-encoded as PNG,
which also drops metadata and odd formats.
"""
from __future__ import annotations

import base64
import binascii
import io
import re

MAX_IMAGES = 4
MAX_SIDE = 2048  # larger images are downscaled; the model's processor works far below this
_DATA_URL = re.compile(r"^data:(?P<mime>[\w/+.-]+)?(;[\w=-]+)*;base64,", re.IGNORECASE)
ALLOWED_FORMATS = {"PNG", "JPEG", "WEBP", "GIF", "BMP"}


class ImageError(ValueError):
    """An image a user sent cannot be used; the message says why."""


def decode_base64_image(item: object, index: int) -> bytes:
    if not isinstance(item, str) or not item.strip():
        raise ImageError(f"images[{index}] must be a base64 string or a data URL")
    text = _DATA_URL.sub("", item.strip(), count=1)
    text = re.sub(r"\s+", "", text)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ImageError(f"images[{index}] is not valid base64 (truncated or corrupted?)") from None


def normalise_image(data: bytes, index: int, *, max_pixels: int) -> bytes:
    """Return PNG bytes of a safe RGB image, or raise ImageError."""
    from PIL import Image, UnidentifiedImageError  # lazily: keeps the server's start light

    if not data:
        raise ImageError(f"images[{index}] is empty")
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format not in ALLOWED_FORMATS:
                raise ImageError(f"images[{index}] is a {img.format} image; use PNG, JPEG, WEBP, GIF or BMP")
            width, height = img.size
            if width * height > max_pixels:
                raise ImageError(f"images[{index}] is {width}x{height} pixels, over the limit of {max_pixels} pixels")
            img.load()
            rgb = img.convert("RGB")
    except ImageError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"images[{index}] is not a readable image ({type(exc).__name__})") from None
    if max(rgb.size) > MAX_SIDE:
        rgb.thumbnail((MAX_SIDE, MAX_SIDE))
    out = io.BytesIO()
    rgb.save(out, format="PNG")
    return out.getvalue()

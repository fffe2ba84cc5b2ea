"""Validation of user images (base64, data URLs, uploads) before any model sees them.

Pillow only (no torch). Images are checked from their header before any pixel is decoded, so a
decompression bomb is refused without allocating its pixels. Accepted images are turned upright by their EXIF
orientation (a portrait phone photo would otherwise reach the model sideways), downscaled to what a model uses
(VLM_IMAGE_MAX_SIDE, longest side) and re-encoded compactly: photos (JPEG/WEBP sources) as JPEG, everything else as
PNG; re-encoding also drops metadata and odd formats.

Memory: a 4000x3000 photo is ~36 MB of pixels while it is decoded. Decodes run at most DECODE_SLOTS at a time, and
after each one glibc is asked to hand freed arenas back (`malloc_trim`): without both, a dozen concurrent photo
asks left the web process at gigabytes of RSS that it never returned.
"""
from __future__ import annotations

import base64
import binascii
import ctypes
import ctypes.util
import io
import logging
import os
import re
import threading

log = logging.getLogger(__name__)

MAX_IMAGES = 4
# Larger images are downscaled: LLaVA-OneVision's anyres grid tops out near 2304 px, Ollama's vision models lower.
MAX_SIDE = int(os.environ.get("VLM_IMAGE_MAX_SIDE") or 1536)
JPEG_QUALITY = 90
DECODE_SLOTS = 2
_decoding = threading.BoundedSemaphore(DECODE_SLOTS)
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


def normalise_image(data: bytes, index: int, *, max_pixels: int, max_side: int | None = None) -> bytes:
    """Return the bytes (JPEG for photos, else PNG) of a safe, upright RGB image, or raise ImageError."""
    if not data:
        raise ImageError(f"images[{index}] is empty")
    with _decoding:
        try:
            return _normalise(data, index, max_pixels, max_side or MAX_SIDE)
        finally:
            _trim_heap()


def _normalise(data: bytes, index: int, max_pixels: int, max_side: int) -> bytes:
    from PIL import Image, ImageOps, UnidentifiedImageError  # lazily: keeps the server's start light

    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format not in ALLOWED_FORMATS:
                raise ImageError(f"images[{index}] is a {img.format} image; use PNG, JPEG, WEBP, GIF or BMP")
            width, height = img.size
            if width * height > max_pixels:
                raise ImageError(f"images[{index}] is {width}x{height} pixels, over the limit of {max_pixels} pixels")
            photo = img.format in ("JPEG", "WEBP")
            if img.format == "JPEG" and max(img.size) > max_side:
                img.draft("RGB", (max_side, max_side))  # decode at a fraction of the size: far less memory
            img.load()
            upright = ImageOps.exif_transpose(img)
            rgb = upright.convert("RGB")
    except ImageError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"images[{index}] is not a readable image ({type(exc).__name__})") from None
    if max(rgb.size) > max_side:
        rgb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    if photo:
        rgb.save(out, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    else:
        rgb.save(out, format="PNG")
    return out.getvalue()


def _load_libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_libc = _load_libc()


_TRIM_DELAY_S = 0.5
_trim_timer: threading.Timer | None = None
_trim_lock = threading.Lock()


def schedule_heap_trim() -> None:
    """Trim the heap shortly after a large request is done (its body is freed only once the request context is
    gone); several requests finishing together share one trim."""
    global _trim_timer
    if _libc is None:
        return
    with _trim_lock:
        if _trim_timer is not None and _trim_timer.is_alive():
            return
        _trim_timer = threading.Timer(_TRIM_DELAY_S, _trim_heap)
        _trim_timer.daemon = True
        _trim_timer.start()


def _trim_heap() -> None:
    """Give freed heap back to the OS (glibc keeps it per thread otherwise); a no-op elsewhere."""
    if _libc is not None:
        try:
            _libc.malloc_trim(0)
        except (OSError, AttributeError):  # pragma: no cover - not glibc after all
            pass

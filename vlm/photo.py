"""Photo-like variation of clean CAD renders, for synthetic reference images (`vlm.synth`).

A user's reference is a phone photo or a screenshot from another tool, not optim's own render: the background,
light, colour and framing differ. `PhotoLook` draws one such look from a random generator; `apply_look` applies
it to a rendered image (the background and camera jitter are applied by the renderer, see `render_shot`).
Pure Pillow + numpy; deterministic for a given look.
"""
from __future__ import annotations

import io
import math
import random
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

VIEW_DIRECTIONS = {"front": (1.0, 0.0, 0.0), "side": (0.0, -1.0, 0.0), "top": (0.0, 0.0, 1.0),
                   "iso": (1.0, -1.0, 0.8)}


@dataclass(frozen=True)
class PhotoLook:
    background: tuple[int, int, int]
    yaw_deg: float  # camera jitter about Z
    pitch_deg: float  # camera jitter up/down
    brightness: float
    contrast: float
    saturation: float
    tint: tuple[float, float, float]  # per-channel gain (white balance)
    crop: tuple[float, float, float]  # (scale 0..1, x offset 0..1, y offset 0..1) of the kept square
    blur: float  # Gaussian radius in pixels at 384 px
    noise: float  # sensor noise, standard deviation in 0..255 units
    vignette: float  # darkening of the corners, 0..1

    def to_json(self) -> dict:
        return asdict(self)


def draw_look(rng: random.Random, strength: float = 1.0) -> PhotoLook:
    """A random look; strength 0 is a clean render, 1 a plausible phone photo of a printed part."""
    s = max(0.0, float(strength))

    def around(centre: float, spread: float) -> float:
        return centre + rng.uniform(-spread, spread) * s

    grey = rng.randint(150, 250)
    background = tuple(int(min(255, max(0, grey + rng.randint(-35, 35) * s))) for _ in range(3))
    return PhotoLook(
        background=background, yaw_deg=around(0, 12), pitch_deg=around(0, 8), brightness=around(1, 0.25),
        contrast=around(1, 0.25), saturation=around(1, 0.4),
        tint=(around(1, 0.08), around(1, 0.05), around(1, 0.08)),
        crop=(1 - rng.uniform(0, 0.15) * s, rng.random(), rng.random()),
        blur=rng.uniform(0, 1.2) * s, noise=rng.uniform(0, 6) * s, vignette=rng.uniform(0, 0.35) * s)


def jittered_direction(view: str, look: PhotoLook | None) -> tuple[float, float, float]:
    """The view's camera direction turned by the look's yaw and pitch."""
    x, y, z = VIEW_DIRECTIONS[view]
    if look is None:
        return (x, y, z)
    yaw, pitch = math.radians(look.yaw_deg), math.radians(look.pitch_deg)
    x, y = x * math.cos(yaw) - y * math.sin(yaw), x * math.sin(yaw) + y * math.cos(yaw)
    horizontal = math.hypot(x, y)
    elevation = math.atan2(z, horizontal) + pitch if horizontal > 1e-9 else math.copysign(math.pi / 2, z)
    length = math.sqrt(x * x + y * y + z * z)
    heading = math.atan2(y, x) if horizontal > 1e-9 else 0.0
    return (length * math.cos(elevation) * math.cos(heading), length * math.cos(elevation) * math.sin(heading),
            length * math.sin(elevation))


def apply_look(image: np.ndarray, look: PhotoLook, seed: int) -> Image.Image:
    """Light, colour, framing and sensor effects on an RGB uint8 render (the camera and background are the
    renderer's). `seed` fixes the noise pattern."""
    size = image.shape[0]
    img = Image.fromarray(image, "RGB")
    img = ImageEnhance.Brightness(img).enhance(look.brightness)
    img = ImageEnhance.Contrast(img).enhance(look.contrast)
    img = ImageEnhance.Color(img).enhance(look.saturation)
    scale, fx, fy = look.crop
    side = max(8, int(round(size * scale)))
    left, top = int((size - side) * fx), int((size - side) * fy)
    img = img.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
    if look.blur > 0.05:
        img = img.filter(ImageFilter.GaussianBlur(look.blur * size / 384))
    pixels = np.asarray(img, dtype=np.float32) * np.asarray(look.tint, dtype=np.float32)
    if look.vignette > 0:
        ys, xs = np.mgrid[0:size, 0:size]
        r = np.hypot(xs - size / 2, ys - size / 2) / (size / math.sqrt(2))
        pixels *= (1 - look.vignette * r ** 2)[..., None]
    if look.noise > 0:
        pixels += np.random.default_rng(seed).normal(0, look.noise, pixels.shape).astype(np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def png_bytes(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, "PNG", compress_level=6)
    return out.getvalue()

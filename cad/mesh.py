"""Light shared definitions for meshes and views. No numpy import: the web process imports this at start."""
from __future__ import annotations

from dataclasses import dataclass

VIEWS = ("front", "side", "top", "iso")
MIN_SIZE, MAX_SIZE = 64, 2048
PALETTE = [(0.30, 0.36, 0.45), (0.22, 0.22, 0.24), (0.93, 0.55, 0.16), (0.25, 0.62, 0.85), (0.45, 0.70, 0.35),
           (0.80, 0.30, 0.35), (0.60, 0.45, 0.75), (0.85, 0.75, 0.30)]


@dataclass
class PartMesh:
    """Triangles of one part in model coordinates (mm, Z up). ``color`` is RGB in 0..1."""
    name: str
    vertices: "np.ndarray"  # (N, 3) float64
    triangles: "np.ndarray"  # (M, 3) int64 indices into vertices
    color: tuple[float, float, float]


def srgb_to_linear(c: float) -> float:
    """glTF's baseColorFactor is linear; part colours are sRGB, as their authors picked them."""
    return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4


def linear_to_srgb(c: float) -> float:
    return c * 12.92 if c <= 0.0031308 else 1.055 * c ** (1 / 2.4) - 0.055

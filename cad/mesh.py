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

"""B-rep edges of built parts as polylines (imports OCP; used by cad.build in the build worker, for the GLB).

Each part's own edges (where its faces meet, and free edges), each discretised on its exact curve with
GCPnts_TangentialDeflection: the chord may stray from the curve by at most ``edge_deflection`` (a share of the
*part's* bounding-box diagonal, never an absolute length, as the tessellation in cad.export) and turn by at most
``EDGE_ANGULAR_DEFLECTION``, so a circle gets the same points at any scale. Seam edges (where a closed face such as
a cylinder's side meets itself) and degenerated edges (a cone's apex) are parametrisation artefacts, not edges a
designer drew, and are left out. Points are in model coordinates (mm, Z up).
"""
from __future__ import annotations

import numpy as np

EDGE_DEFLECTION = 1 / 4000  # of the part's diagonal: finer than the preview mesh (1/2000 of the model's)
EDGE_ANGULAR_DEFLECTION = 0.15  # radians between neighbouring chords (a full circle: 42 segments)


def edge_deflection(diagonal_mm: float) -> float:
    """Largest distance (model units) of an edge's polyline from its curve: 1/4000 of the part's diagonal."""
    diagonal = float(diagonal_mm)
    if not diagonal > 0 or not diagonal < float("inf"):
        raise ValueError(f"edges need a positive, finite part size, got a diagonal of {diagonal_mm!r}")
    return diagonal * EDGE_DEFLECTION


def _is_seam(edge, faces) -> bool:
    """An edge all of whose faces are one face that is closed along it (a cylinder's or sphere's seam)."""
    from OCP.BRep import BRep_Tool
    from OCP.TopoDS import TopoDS

    first = faces[0]
    return all(f.IsSame(first) for f in faces) and BRep_Tool.IsClosed_s(edge, TopoDS.Face_s(first))


def _edges_with_faces(shape) -> list:
    """[(edge, [faces])] of every distinct edge of the shape (shared edges once, orientation ignored)."""
    from OCP.TopAbs import TopAbs_EDGE, TopAbs_FACE
    from OCP.TopExp import TopExp
    from OCP.TopoDS import TopoDS
    from OCP.TopTools import TopTools_IndexedDataMapOfShapeListOfShape

    ancestors = TopTools_IndexedDataMapOfShapeListOfShape()
    TopExp.MapShapesAndAncestors_s(shape, TopAbs_EDGE, TopAbs_FACE, ancestors)
    return [(TopoDS.Edge_s(ancestors.FindKey(i)), list(ancestors.FindFromIndex(i)))
            for i in range(1, ancestors.Extent() + 1)]


def polyline(edge, deflection: float) -> np.ndarray:
    """(K, 3) points along one edge's exact curve, ends included, chords within ``deflection`` of the curve."""
    from OCP.BRepAdaptor import BRepAdaptor_Curve
    from OCP.GCPnts import GCPnts_TangentialDeflection

    curve = BRepAdaptor_Curve(edge)
    sampler = GCPnts_TangentialDeflection(curve, EDGE_ANGULAR_DEFLECTION, deflection, 2, 1e-9, deflection * 1e-3)
    points = [sampler.Value(i) for i in range(1, sampler.NbPoints() + 1)]
    return np.array([(p.X(), p.Y(), p.Z()) for p in points], dtype=np.float64).reshape(-1, 3)


def part_edges(shape) -> list[np.ndarray]:
    """Polylines of the B-rep edges of one part (a cadquery Shape placed in model coordinates)."""
    from OCP.BRep import BRep_Tool

    from cad.build import tight_box

    lo, hi = tight_box(shape)
    deflection = edge_deflection(float(np.linalg.norm(np.subtract(hi, lo))))
    lines = []
    for edge, faces in _edges_with_faces(shape.wrapped):
        if BRep_Tool.Degenerated_s(edge) or (faces and _is_seam(edge, faces)):
            continue
        points = polyline(edge, deflection)
        if len(points) >= 2:
            lines.append(points)
    return lines


def segments(lines: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(points (N, 3), index pairs (M, 2)) of polylines, for a glTF LINES primitive (mode 1)."""
    if not lines:
        return np.zeros((0, 3)), np.zeros((0, 2), dtype=np.int64)
    offsets = np.cumsum([0] + [len(line) for line in lines[:-1]])
    pairs = [np.stack([np.arange(len(line) - 1), np.arange(1, len(line))], axis=1) + offset
             for line, offset in zip(lines, offsets)]
    return np.concatenate(lines), np.concatenate(pairs).astype(np.int64)

"""Tessellation and file export of built parts (imports cadquery/OCP; used by cad.build only).

Units and axes of the outputs:

* **GLB**: positions are in **metres** with **Y up** (the glTF convention), so viewers measure correctly: model X ->
  glTF X, model Z (up) -> glTF Y, model Y -> glTF -Z, and every coordinate is multiplied by 0.001. One node per part,
  named like the part (``chassis``, ``wheel_l1``, ...), under a root node named after the model; each part has its
  own mesh, PBR material (its colour) and smooth-within-a-face vertex normals. Coarse tessellation (preview).
  A part's B-rep edges (cad.edges) are a child node of its node, named ``<part> edges``, holding one LINES
  primitive (mode 1) with the shared material ``optim edges``; the node's extras say ``{"optim": "brep_edges",
  "edges": <number of B-rep edges>}``, so a viewer tells them from faces (and hides them with their part).
* **STL**: millimetres, model axes (Z up), binary, fine tessellation (``stl_tolerance``).
* **STEP**: millimetres, model axes, exact B-rep assembly with part names and colours.
"""
from __future__ import annotations

import json
import struct
import tempfile
from pathlib import Path

import numpy as np

from cad.mesh import srgb_to_linear
from cad.render import PartMesh

# Tessellation deflections are shares of the part's bounding-box diagonal, never absolute lengths: a 0.75 mm plate
# and a 2 m frame get the same triangles (an absolute 0.05 mm floor made a 0.2 mm part a few coarse facets, an
# absolute 0.02 mm STL deflection gave a 2 m part 560k triangles). Angular tolerances are scale-free already.
PREVIEW_DEFLECTION = 1 / 2000  # of the diagonal (0.19 mm on the 385 mm rover)
STL_DEFLECTION = 1 / 20000  # of the diagonal (0.019 mm on the rover: finer than the preview, for downloads)
STL_ANGULAR_TOLERANCE = 0.1
PREVIEW_ANGULAR_TOLERANCE = 0.3


def _relative(diagonal_mm: float, share: float) -> float:
    diagonal = float(diagonal_mm)
    if not diagonal > 0 or not diagonal < float("inf"):
        raise ValueError(f"a tessellation needs a positive, finite model size, got a diagonal of {diagonal_mm!r}")
    return diagonal * share


def preview_tolerance(diagonal_mm: float) -> float:
    """Coarse linear deflection for interactive previews: 1/2000 of the model's diagonal, at any scale."""
    return _relative(diagonal_mm, PREVIEW_DEFLECTION)


def stl_tolerance(diagonal_mm: float) -> float:
    """Fine linear deflection for STL downloads: 1/20000 of the model's diagonal, at any scale."""
    return _relative(diagonal_mm, STL_DEFLECTION)


def tessellate(shape, tolerance: float, angular_tolerance: float = PREVIEW_ANGULAR_TOLERANCE):
    """(vertices (N,3) float64, triangles (M,3) int64) of a cadquery Shape, in model coordinates (mm).

    ``tolerance`` is a deflection in model units (``preview_tolerance``/``stl_tolerance`` of the model's diagonal).
    cadquery's own ``Shape.mesh`` asks OCC for a deflection *relative to each edge's size* with that number as the
    ratio, so the same part got 5x the triangles at x0.01 and 50x at x0.001; here OCC meshes with an absolute
    deflection, and the same part gets the same triangles at any scale.
    """
    from OCP.BRep import BRep_Tool
    from OCP.BRepMesh import BRepMesh_IncrementalMesh
    from OCP.BRepTools import BRepTools
    from OCP.TopAbs import TopAbs_REVERSED
    from OCP.TopLoc import TopLoc_Location

    if not BRepTools.Triangulation_s(shape.wrapped, tolerance):
        BRepMesh_IncrementalMesh(shape.wrapped, tolerance, False, angular_tolerance, False)
    # Read the triangulation as cadquery's Shape.tessellate does, without its Shape.mesh (which meshes again,
    # relative to edge size, wherever OCC recorded a deflection above the one asked for: curved faces). Nodes are
    # read as coordinate tuples and moved by the face's location in numpy (only when it is not the identity): a
    # gp_Pnt per node and its Transformed copy made this 3x slower, 6 ms of every bracket fit evaluation.
    points, faces, offset = [], [], 0
    for face in shape.Faces():
        location = TopLoc_Location()
        poly = BRep_Tool.Triangulation_s(face.wrapped, location)
        if poly is None:
            continue
        nodes = np.array([poly.Node(i).Coord() for i in range(1, poly.NbNodes() + 1)],
                         dtype=np.float64).reshape(-1, 3)
        if not location.IsIdentity():
            nodes = _transformed(nodes, location.Transformation())
        points.append(nodes)
        corners = np.array([poly.Triangle(i).Get() for i in range(1, poly.NbTriangles() + 1)],
                           dtype=np.int64).reshape(-1, 3) - 1 + offset
        faces.append(corners[:, [0, 2, 1]] if face.wrapped.Orientation() == TopAbs_REVERSED else corners)
        offset += len(nodes)
    if not faces or not sum(len(f) for f in faces):
        return np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64)
    return np.concatenate(points), np.concatenate(faces)


def _transformed(points: np.ndarray, transform) -> np.ndarray:
    """``points`` (N,3) moved by a gp_Trsf: its 3x4 matrix (scale included, as gp_Trsf.Value gives it)."""
    matrix = np.array([[transform.Value(row, col) for col in range(1, 5)] for row in range(1, 4)])
    return points @ matrix[:, :3].T + matrix[:, 3]


def vertex_normals(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Area-weighted vertex normals. OCC tessellates face by face, so edges between faces stay sharp."""
    corners = vertices[triangles]
    face_normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    normals = np.zeros_like(vertices)
    for k in range(3):
        np.add.at(normals, triangles[:, k], face_normals)
    lengths = np.linalg.norm(normals, axis=1, keepdims=True)
    return normals / np.where(lengths > 0, lengths, 1.0)


def _to_gltf_axes_metres(points: np.ndarray) -> np.ndarray:
    return np.stack([points[:, 0], points[:, 2], -points[:, 1]], axis=1) * 0.001


EDGE_MATERIAL = {"name": "optim edges", "pbrMetallicRoughness": {"baseColorFactor": [0.006, 0.009, 0.016, 1.0],
                                                               "metallicFactor": 0.0, "roughnessFactor": 1.0}}


class _Writer:
    """The binary chunk and the accessor/bufferView lists of one GLB being written."""

    def __init__(self):
        self.binary = bytearray()
        self.buffer_views, self.accessors = [], []

    def add(self, array: np.ndarray, target: int, kind: str, component: int, bounds: bool = False) -> int:
        while len(self.binary) % 4:
            self.binary.append(0)
        data = array.tobytes()
        self.buffer_views.append({"buffer": 0, "byteOffset": len(self.binary), "byteLength": len(data),
                                  "target": target})
        self.binary.extend(data)
        accessor = {"bufferView": len(self.buffer_views) - 1, "componentType": component,
                    "count": int(len(array) if kind == "VEC3" else array.size), "type": kind}
        if bounds:
            accessor.update(min=array.min(axis=0).tolist(), max=array.max(axis=0).tolist())
        self.accessors.append(accessor)
        return len(self.accessors) - 1

    def positions(self, points_mm: np.ndarray) -> int:
        return self.add(_to_gltf_axes_metres(points_mm).astype(np.float32), 34962, "VEC3", 5126, bounds=True)

    def indices(self, indices: np.ndarray) -> int:
        return self.add(indices.astype(np.uint32), 34963, "SCALAR", 5125)


def _edge_node(writer: _Writer, gltf_meshes: list, name: str, lines: list, material: int) -> dict | None:
    from cad.edges import segments

    points, pairs = segments(lines)
    if not len(pairs):
        return None
    gltf_meshes.append({"name": f"{name} edges", "primitives": [{
        "attributes": {"POSITION": writer.positions(points)}, "indices": writer.indices(pairs),
        "material": material, "mode": 1}]})
    return {"name": f"{name} edges", "mesh": len(gltf_meshes) - 1,
            "extras": {"optim": "brep_edges", "edges": len(lines)}}


def glb_bytes(meshes: list[PartMesh], root_name: str, edges: dict[str, list] | None = None) -> bytes:
    """Binary glTF 2.0 with one named node per part, and its B-rep edges ``edges[part name]`` (polylines, mm)
    as a child node (see module docstring for units)."""
    writer = _Writer()
    gltf_meshes, materials, nodes, parts = [], [], [], []
    edges = edges or {}
    if any(edges.values()):
        materials.append(EDGE_MATERIAL)
    for mesh in meshes:
        if not len(mesh.triangles):
            continue
        normals = (vertex_normals(mesh.vertices, mesh.triangles)[:, [0, 2, 1]] * [1, 1, -1]).astype(np.float32)
        attributes = {"POSITION": writer.positions(mesh.vertices),
                      "NORMAL": writer.add(normals, 34962, "VEC3", 5126)}
        materials.append({"name": mesh.name, "pbrMetallicRoughness": {
            "baseColorFactor": [*(srgb_to_linear(float(c)) for c in mesh.color), 1.0], "metallicFactor": 0.0, "roughnessFactor": 0.7}})
        gltf_meshes.append({"name": mesh.name, "primitives": [{
            "attributes": attributes, "indices": writer.indices(mesh.triangles),
            "material": len(materials) - 1, "mode": 4}]})
        part = {"name": mesh.name, "mesh": len(gltf_meshes) - 1}
        edge_node = _edge_node(writer, gltf_meshes, mesh.name, edges.get(mesh.name) or [], 0)
        parts.append(len(nodes))
        nodes.append(part)
        if edge_node:
            part["children"] = [len(nodes)]
            nodes.append(edge_node)
    binary = writer.binary
    while len(binary) % 4:
        binary.append(0)
    nodes.append({"name": root_name, "children": parts,
                  "extras": {"units": "m", "up": "Y", "source_units": "mm", "source_up": "Z"}})
    document = {
        "asset": {"version": "2.0", "generator": "optim cad.export"},
        "scene": 0, "scenes": [{"name": root_name, "nodes": [len(nodes) - 1]}],
        "nodes": nodes, "meshes": gltf_meshes, "materials": materials, "accessors": writer.accessors,
        "bufferViews": writer.buffer_views, "buffers": [{"byteLength": len(binary)}],
    }
    json_chunk = json.dumps(document, separators=(",", ":")).encode("utf-8")
    json_chunk += b" " * (-len(json_chunk) % 4)
    total = 12 + 8 + len(json_chunk) + 8 + len(binary)
    return b"".join([struct.pack("<4sII", b"glTF", 2, total),
                     struct.pack("<I4s", len(json_chunk), b"JSON"), json_chunk,
                     struct.pack("<I4s", len(binary), b"BIN\x00"), bytes(binary)])


def stl_bytes(shapes: list) -> bytes:
    """Binary STL (mm) of all parts together, finely tessellated on copies (keeps preview meshes coarse)."""
    import cadquery as cq

    from cad.build import tight_box

    compound = cq.Compound.makeCompound([shape.copy() for shape in shapes])
    lo, hi = tight_box(compound)
    diagonal = float(np.linalg.norm(np.subtract(hi, lo)))
    with tempfile.TemporaryDirectory(prefix="optim-stl-") as folder:
        path = Path(folder) / "model.stl"
        # relative=False: OCC takes the tolerance as a deflection in model units (here a share of the whole
        # model's diagonal), not as a fraction of each edge's length.
        compound.exportStl(str(path), tolerance=stl_tolerance(diagonal), angularTolerance=STL_ANGULAR_TOLERANCE,
                           ascii=False, relative=False)
        return path.read_bytes()


def step_bytes(assembly) -> bytes:
    """STEP AP214 (mm) of the assembly, keeping part names and colours."""
    with tempfile.TemporaryDirectory(prefix="optim-step-") as folder:
        path = Path(folder) / "model.step"
        assembly.export(str(path), exportType="STEP")
        return path.read_bytes()

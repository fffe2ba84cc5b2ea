"""Tessellation and file export of built parts (imports cadquery/OCP; used by cad.build only).

Units and axes of the outputs:

* **GLB**: positions are in **metres** with **Y up** (the glTF convention), so viewers measure correctly: model X ->
  glTF X, model Z (up) -> glTF Y, model Y -> glTF -Z, and every coordinate is multiplied by 0.001. One node per part,
  named like the part (``chassis``, ``wheel_l1``, ...), under a root node named after the model; each part has its
  own mesh, PBR material (its colour) and smooth-within-a-face vertex normals. Coarse tessellation (preview).
* **STL**: millimetres, model axes (Z up), binary, fine tessellation (``STL_TOLERANCE_MM``).
* **STEP**: millimetres, model axes, exact B-rep assembly with part names and colours.
"""
from __future__ import annotations

import json
import struct
import tempfile
from pathlib import Path

import numpy as np

from cad.render import PartMesh

STL_TOLERANCE_MM = 0.02
STL_ANGULAR_TOLERANCE = 0.1
PREVIEW_ANGULAR_TOLERANCE = 0.3


def preview_tolerance(diagonal_mm: float) -> float:
    """Coarse linear deflection for interactive previews: ~1/2000 of the model size, 0.05..0.5 mm."""
    return float(min(max(diagonal_mm / 2000.0, 0.05), 0.5))


def tessellate(shape, tolerance: float, angular_tolerance: float = PREVIEW_ANGULAR_TOLERANCE):
    """(vertices (N,3) float64, triangles (M,3) int64) of a cadquery Shape, in model coordinates (mm)."""
    vertices, triangles = shape.tessellate(tolerance, angular_tolerance)
    if not triangles:
        return np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64)
    return (np.array([v.toTuple() for v in vertices], dtype=np.float64),
            np.array(triangles, dtype=np.int64))


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


def glb_bytes(meshes: list[PartMesh], root_name: str) -> bytes:
    """Binary glTF 2.0 with one named node per part (see module docstring for units)."""
    binary = bytearray()
    buffer_views, accessors, gltf_meshes, materials, nodes = [], [], [], [], []

    def add_view(data: bytes, target: int) -> int:
        while len(binary) % 4:
            binary.append(0)
        buffer_views.append({"buffer": 0, "byteOffset": len(binary), "byteLength": len(data), "target": target})
        binary.extend(data)
        return len(buffer_views) - 1

    for mesh in meshes:
        if not len(mesh.triangles):
            continue
        positions = _to_gltf_axes_metres(mesh.vertices).astype(np.float32)
        normals = (vertex_normals(mesh.vertices, mesh.triangles)[:, [0, 2, 1]] * [1, 1, -1]).astype(np.float32)
        indices = mesh.triangles.astype(np.uint32)
        position_view = add_view(positions.tobytes(), 34962)
        normal_view = add_view(normals.tobytes(), 34962)
        index_view = add_view(indices.tobytes(), 34963)
        accessors.append({"bufferView": position_view, "componentType": 5126, "count": len(positions),
                          "type": "VEC3", "min": positions.min(axis=0).tolist(), "max": positions.max(axis=0).tolist()})
        accessors.append({"bufferView": normal_view, "componentType": 5126, "count": len(normals), "type": "VEC3"})
        accessors.append({"bufferView": index_view, "componentType": 5125, "count": int(indices.size),
                          "type": "SCALAR"})
        materials.append({"name": mesh.name, "pbrMetallicRoughness": {
            "baseColorFactor": [*map(float, mesh.color), 1.0], "metallicFactor": 0.0, "roughnessFactor": 0.7}})
        base = len(accessors) - 3
        gltf_meshes.append({"name": mesh.name, "primitives": [{
            "attributes": {"POSITION": base, "NORMAL": base + 1}, "indices": base + 2,
            "material": len(materials) - 1, "mode": 4}]})
        nodes.append({"name": mesh.name, "mesh": len(gltf_meshes) - 1})
    while len(binary) % 4:
        binary.append(0)
    nodes.append({"name": root_name, "children": list(range(len(nodes))),
                  "extras": {"units": "m", "up": "Y", "source_units": "mm", "source_up": "Z"}})
    document = {
        "asset": {"version": "2.0", "generator": "optim cad.export"},
        "scene": 0, "scenes": [{"name": root_name, "nodes": [len(nodes) - 1]}],
        "nodes": nodes, "meshes": gltf_meshes, "materials": materials, "accessors": accessors,
        "bufferViews": buffer_views, "buffers": [{"byteLength": len(binary)}],
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

    compound = cq.Compound.makeCompound([shape.copy() for shape in shapes])
    with tempfile.TemporaryDirectory(prefix="optim-stl-") as folder:
        path = Path(folder) / "model.stl"
        # relative=False: the tolerance is an absolute deflection in mm, not a fraction of each edge.
        compound.exportStl(str(path), tolerance=STL_TOLERANCE_MM, angularTolerance=STL_ANGULAR_TOLERANCE,
                           ascii=False, relative=False)
        return path.read_bytes()


def step_bytes(assembly) -> bytes:
    """STEP AP214 (mm) of the assembly, keeping part names and colours."""
    with tempfile.TemporaryDirectory(prefix="optim-step-") as folder:
        path = Path(folder) / "model.step"
        assembly.export(str(path), exportType="STEP")
        return path.read_bytes()

"""B-rep edges in the GLB (issue 18): each part's own edges, discretised relative to the part's size, delivered as a
glTF LINES primitive per part; and the B-rep measurements a proposal preview compares (cad.measure).

A two-part test model (a box and a cylinder side by side, with a scale parameter) makes the expected figures
exact: 12 straight edges on the box's bounding box, two circles on the cylinder (its seam is not a design edge).
"""
from __future__ import annotations

import json
import math
import struct

import numpy as np
import pytest

from cad.build import Builder, build_model, produce
from cad.edges import edge_deflection
from cad.registry import ModelRegistry
from cad.render import meshes_from_glb

SCRIPT = '''"""Blocks

A box and a cylinder side by side. Units are millimetres.
"""
import cadquery as cq

box_length: float = 120.0  # mm, 10..300, Size, step=1: Box length along X
radius: float = 20.0  # mm, 1..100, Size, step=1: Cylinder radius
scale: float = 1.0  # , 0.001..1000, Size: Scale of everything


def build(p):
    s = p.scale
    box = cq.Workplane("XY").box(p.box_length * s, 80 * s, 40 * s, centered=(False, True, False))
    cylinder = cq.Workplane("XY", origin=(-(p.radius + 10) * s, 0, 0)).circle(p.radius * s).extrude(50 * s)
    assembly = cq.Assembly(name="blocks")
    assembly.add(box, name="box")
    assembly.add(cylinder, name="cylinder")
    return assembly
'''


@pytest.fixture(scope="module")
def blocks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("blocks")
    (folder / "blocks.py").write_text(SCRIPT, encoding="utf-8")
    return ModelRegistry(extra_dirs=[folder]).get("blocks")


def edges_of(model, **values):
    return build_model(model.path, model.schema.complete(values)).edge_lines()


def glb_parts(data: bytes) -> tuple[dict, bytes]:
    """The JSON document and binary chunk of a GLB, checked against glTF 2.0's layout rules on the way."""
    magic, version, length = struct.unpack_from("<4sII", data, 0)
    assert (magic, version, length) == (b"glTF", 2, len(data))
    json_length, json_type = struct.unpack_from("<I4s", data, 12)
    assert json_type == b"JSON" and json_length % 4 == 0
    bin_length, bin_type = struct.unpack_from("<I4s", data, 20 + json_length)
    assert bin_type == b"BIN\x00" and bin_length % 4 == 0 and 28 + json_length + bin_length == len(data)
    doc = json.loads(data[20:20 + json_length])
    binary = data[28 + json_length:]
    assert doc["buffers"] == [{"byteLength": bin_length}]
    for view in doc["bufferViews"]:
        assert view["byteOffset"] % 4 == 0 and view["byteOffset"] + view["byteLength"] <= bin_length
    return doc, binary


def read(doc: dict, binary: bytes, index: int) -> np.ndarray:
    accessor = doc["accessors"][index]
    view = doc["bufferViews"][accessor["bufferView"]]
    dtype, width = {5126: ("<f4", 3), 5125: ("<u4", 1)}[accessor["componentType"]]
    width = 3 if accessor["type"] == "VEC3" else 1
    assert accessor["count"] * width * 4 <= view["byteLength"]
    return np.frombuffer(binary, dtype=dtype, count=accessor["count"] * width,
                         offset=view["byteOffset"]).reshape(-1, width)


def test_a_box_has_12_straight_edges_on_its_bounding_box(blocks):
    box = edges_of(blocks)["box"]
    assert len(box) == 12
    assert all(len(line) == 2 for line in box)  # straight edges need no inner points
    lo, hi = np.array([0, -40, -20]), np.array([120, 40, 20])
    for line in box:
        for point in line:  # an edge of a box lies on two of its faces: two coordinates at the box's extremes
            on_faces = np.isclose(point, lo, atol=1e-9) | np.isclose(point, hi, atol=1e-9)
            assert on_faces.sum() >= 2, point
        assert np.count_nonzero(np.abs(line[1] - line[0]) > 1e-9) == 1  # along one axis
    lengths = sorted(round(float(np.linalg.norm(line[1] - line[0])), 9) for line in box)
    assert lengths == [40.0] * 4 + [80.0] * 4 + [120.0] * 4


@pytest.mark.parametrize("scale", [0.01, 1.0, 100.0])
def test_circle_edges_are_fine_relative_to_the_parts_size_at_any_scale(blocks, scale):
    circles = edges_of(blocks, scale=scale)["cylinder"]
    assert len(circles) == 2  # top and bottom; the side's seam line is left out
    radius = 20.0 * scale
    centre = np.array([-30.0 * scale, 0.0])
    diagonal = math.dist((-50 * scale, -20 * scale, 0), (-10 * scale, 20 * scale, 50 * scale))
    for line in circles:
        assert np.allclose(line[0], line[-1], rtol=0, atol=1e-9 * radius)  # closed
        assert np.allclose(np.linalg.norm(line[:, :2] - centre, axis=1), radius, rtol=1e-9)  # on the exact curve
        assert np.ptp(line[:, 2]) == pytest.approx(0, abs=1e-9 * radius)
        chords = np.linalg.norm(np.diff(line, axis=0), axis=1)
        sagitta = radius - np.sqrt(radius ** 2 - (chords / 2) ** 2)  # a chord's largest distance from the arc
        assert sagitta.max() <= edge_deflection(diagonal) * 1.000001
        assert sagitta.max() <= diagonal / 3000  # fine enough to read as a circle: < 0.03 % of the part
        # the same polyline at any scale: the deflection is a share of the part, not millimetres
        assert len(line) == len(edges_of(blocks)["cylinder"][0])
    assert 40 <= len(circles[0]) <= 200


def test_the_glb_carries_each_parts_edges_as_a_lines_primitive(blocks):
    values = blocks.schema.complete({})
    data = produce(blocks.path, values, "glb", name="blocks")
    doc, binary = glb_parts(data)
    expected = edges_of(blocks)
    root = doc["nodes"][doc["scenes"][0]["nodes"][0]]
    parts = {doc["nodes"][i]["name"]: doc["nodes"][i] for i in root["children"]}
    assert set(parts) == {"box", "cylinder"}
    for name, part in parts.items():
        assert [p["mode"] for p in doc["meshes"][part["mesh"]]["primitives"]] == [4]  # faces only
        (child,) = [doc["nodes"][i] for i in part["children"]]
        assert child["name"] == f"{name} edges"
        assert child["extras"] == {"optim": "brep_edges", "edges": len(expected[name])}
        (primitive,) = doc["meshes"][child["mesh"]]["primitives"]
        assert primitive["mode"] == 1 and doc["materials"][primitive["material"]]["name"] == "optim edges"
        points = read(doc, binary, primitive["attributes"]["POSITION"])
        pairs = read(doc, binary, primitive["indices"]).reshape(-1, 2)
        accessor = doc["accessors"][primitive["attributes"]["POSITION"]]
        assert np.allclose(accessor["min"], points.min(axis=0)) and np.allclose(accessor["max"], points.max(axis=0))
        assert pairs.max() < len(points) and len(pairs) == sum(len(line) - 1 for line in expected[name])
        model = np.stack([points[:, 0], -points[:, 2], points[:, 1]], axis=1) * 1000  # metres, Y up -> mm, Z up
        assert np.allclose(model, np.concatenate(expected[name]), atol=1e-4)
    box = doc["nodes"][parts["box"]["children"][0]]
    lo, hi = (np.array(doc["accessors"][doc["meshes"][box["mesh"]]["primitives"][0]["attributes"]["POSITION"]][k])
              for k in ("min", "max"))
    assert np.allclose(hi - lo, [0.120, 0.040, 0.080], atol=1e-6)  # the box's lines span its bounding box
    # readers of the GLB's surfaces (cad.render's camera renders) see the two parts' triangles, no lines
    assert sorted(m.name for m in meshes_from_glb(data)) == ["box", "cylinder"]


def test_measure_gives_the_exact_size_and_volume_change_of_a_parameter(blocks, tmp_path):
    builder = Builder(tmp_path / "cache")
    before = builder.measure(blocks, {})
    after = builder.measure(blocks, {"box_length": 130.0})
    cylinder = math.pi * 20.0 ** 2 * 50.0
    assert before["size"] == pytest.approx([170.0, 80.0, 50.0])  # cylinder from x=-50, box to x=120
    assert after["size"] == pytest.approx([180.0, 80.0, 50.0])
    assert before["volume"] == pytest.approx(120 * 80 * 40 + cylinder, rel=1e-6)
    assert after["volume"] - before["volume"] == pytest.approx(10 * 80 * 40, rel=1e-6)
    assert before["volume_method"] == "union" and before["units"] == "mm"
    assert builder.measure(blocks, {}) == before  # cached like every artifact
    assert builder.stats()["hits"] >= 1

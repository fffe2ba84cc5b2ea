"""Targets (STEP/STL parsing and storage), volumetric IoU (exact B-rep and mesh-based) and residual fields.

The optimiser itself: tests/test_fit_*.py."""
import struct

import numpy as np
import pytest

from cad import export
from cad.build import build_model
from cad.registry import ModelRegistry
from cad.target import TargetError, compare_model, detect_format, load_target, parse_stl, target_glb
from cad.target_store import TargetStore
from cad.voxel import Grid, fractional_occupancy, mesh_iou

REGISTRY = ModelRegistry()
BRACKET = REGISTRY.get("bracket")
UNIT_GRID = Grid([-20, -20, -20], [20, 20, 20], h=1.0, anchor=np.array([-20.0, -20.0, -20.0]))


def box_mesh(lo, hi):
    """A closed, outward-oriented box as (vertices, triangles)."""
    (x0, y0, z0), (x1, y1, z1) = lo, hi
    v = np.array([[x0, y0, z0], [x1, y0, z0], [x1, y1, z0], [x0, y1, z0],
                  [x0, y0, z1], [x1, y0, z1], [x1, y1, z1], [x0, y1, z1]], dtype=float)
    t = np.array([[0, 2, 1], [0, 3, 2], [4, 5, 6], [4, 6, 7], [0, 1, 5], [0, 5, 4],
                  [1, 2, 6], [1, 6, 5], [2, 3, 7], [2, 7, 6], [3, 0, 4], [3, 4, 7]])
    return v, t


def merge(*meshes):
    offset, vs, ts = 0, [], []
    for v, t in meshes:
        vs.append(v), ts.append(t + offset)
        offset += len(v)
    return np.concatenate(vs), np.concatenate(ts)


def binary_stl(vertices, triangles) -> bytes:
    records = b"".join(struct.pack("<12fH", 0, 0, 0, *vertices[tri].ravel(), 0) for tri in triangles)
    return b"\0" * 80 + struct.pack("<I", len(triangles)) + records


def ascii_stl(vertices, triangles) -> bytes:
    lines = ["solid box"]
    for tri in triangles:
        lines += ["facet normal 0 0 0", "outer loop", *(f"vertex {x} {y} {z}" for x, y, z in vertices[tri]),
                  "endloop", "endfacet"]
    return ("\n".join(lines + ["endsolid box"]) + "\n").encode()


# --- parsing and storage -------------------------------------------------------------------------------------------

def test_stl_binary_and_ascii_parse_to_the_same_triangles():
    v, t = box_mesh((0, 0, 0), (10, 20, 30))
    for data in (binary_stl(v, t), ascii_stl(v, t)):
        assert detect_format(data) == "stl"
        vertices, triangles = parse_stl(data)
        assert triangles.shape == (12, 3)
        assert np.allclose(np.ptp(vertices, axis=0), [10, 20, 30])


@pytest.mark.parametrize("data, fragment", [
    (b"hello world, certainly not CAD", "neither a STEP"),
    (b"\x89PNG\r\n\x1a\n" + bytes(200), "neither a STEP"),
    (b"solid x\nfacet normal 0 0 0\nouter loop\nvertex 1 2\nendloop\nendfacet\n", "ASCII STL"),
    (b"\0" * 80 + struct.pack("<I", 0), "no triangles"),
    (b"\0" * 80 + struct.pack("<I", 1) + struct.pack("<12fH", 0, 0, 0, *([float("nan")] * 9), 0), "finite"),
])
def test_garbage_targets_are_rejected_with_a_reason(data, fragment):
    with pytest.raises(TargetError, match=fragment):
        parse_stl(data) if detect_format(data) == "stl" else None


def test_a_step_that_does_not_parse_is_rejected(tmp_path):
    path = tmp_path / "broken.step"
    path.write_bytes(b"ISO-10303-21;\nHEADER;\nthis is not a real STEP file\nEND-ISO-10303-21;\n")
    with pytest.raises(TargetError, match="STEP"):
        load_target(path)


def test_store_replaces_atomically_and_keeps_the_old_target_on_a_failed_check(tmp_path):
    store = TargetStore(tmp_path)
    v, t = box_mesh((0, 0, 0), (1, 1, 1))
    path, info = store.save("bracket", binary_stl(v, t), check=lambda p: {"checked": p.suffix})
    assert path == tmp_path / "targets" / "bracket.stl" and info == {"checked": ".stl"}
    before = path.read_bytes()

    def refuse(p):
        raise TargetError("not a solid")

    with pytest.raises(TargetError):
        store.save("bracket", ascii_stl(v, t), check=refuse)
    with pytest.raises(TargetError):
        store.save("bracket", b"garbage" * 20, check=lambda p: {})
    assert store.path("bracket").read_bytes() == before
    assert [p.name for p in (tmp_path / "targets").iterdir()] == ["bracket.stl"]  # no temporary files left
    step = b"ISO-10303-21;\n..."
    assert store.save("bracket", step, check=lambda p: {})[0].suffix == ".step"
    assert store.path("bracket").suffix == ".step" and not (tmp_path / "targets" / "bracket.stl").exists()
    assert store.delete("bracket") and store.path("bracket") is None and not store.delete("bracket")
    with pytest.raises(TargetError):
        store.path("../etc/passwd")


# --- IoU -----------------------------------------------------------------------------------------------------------

def test_mesh_iou_of_shifted_boxes_matches_the_analytic_value():
    a = box_mesh((0, 0, 0), (10, 10, 10))
    b = box_mesh((5, 0, 0), (15, 10, 10))  # overlap 500 of union 1500
    assert mesh_iou(a, b)["iou"] == pytest.approx(1 / 3, abs=0.02)
    assert mesh_iou(a, b, rays=True)["iou"] == pytest.approx(1 / 3, abs=0.005)
    assert mesh_iou(a, a, rays=True)["iou"] == pytest.approx(1.0)


def test_fractional_occupancy_measures_volume_and_follows_a_face_continuously():
    sums = []
    for length in (10.0, 10.1, 10.2, 10.3, 10.4):
        occupancy = fractional_occupancy(*box_mesh((0, 0, 0), (length, 6, 4)), UNIT_GRID)
        assert occupancy.min() >= 0 and occupancy.max() <= 1
        sums.append(float(occupancy.sum()))
    assert sums[0] == pytest.approx(240, rel=1e-3)
    # A face moving by a tenth of a cell changes the field (a plain voxelisation would not move at all) ...
    assert all(b > a for a, b in zip(sums, sums[1:]))
    # ... and overlapping parts count once, as in the union.
    twice = fractional_occupancy(*_merged(box_mesh((0, 0, 0), (10, 6, 4)), box_mesh((5, 0, 0), (15, 6, 4))), UNIT_GRID)
    assert float(twice.sum()) == pytest.approx(15 * 6 * 4, rel=1e-3)


def _merged(first, second):
    return np.concatenate([first[0], second[0]]), np.concatenate([first[1], second[1] + len(first[0])])


def test_overlapping_shells_and_cavities_count_by_winding_number():
    outer = box_mesh((0, 0, 0), (10, 10, 10))
    overlapping = merge(outer, box_mesh((5, 5, 5), (12, 12, 12)))  # two bodies in one mesh, overlapping
    union = 1000 + 343 - 125
    assert mesh_iou(overlapping, outer, rays=True)["iou"] == pytest.approx(1000 / union, abs=0.01)
    v, t = box_mesh((3, 3, 3), (7, 7, 7))
    hollow = merge(outer, (v, t[:, ::-1]))  # inner shell facing inwards: a closed cavity of 64 mm^3
    assert mesh_iou(hollow, outer, rays=True)["iou"] == pytest.approx(936 / 1000, abs=0.01)


def test_exact_iou_of_a_step_target_and_its_differences(bracket_step):
    same = compare_model(str(BRACKET.path), BRACKET.schema.complete({"base_length": 70.0, "upright_height": 75.0}),
                         str(bracket_step))
    assert same["method"] == "exact" and same["iou"] == pytest.approx(1.0, abs=1e-6)
    assert same["volume"]["difference"] == pytest.approx(0, abs=1e-3)
    other = compare_model(str(BRACKET.path), BRACKET.schema.defaults(), str(bracket_step))
    assert other["method"] == "exact" and 0.3 < other["iou"] < 0.95
    assert other["bbox"]["size_difference"][0] == pytest.approx(80 - 70, abs=1e-6)
    assert other["bbox"]["size_difference"][2] == pytest.approx(60 - 75, abs=1e-6)
    mesh = compare_model(str(BRACKET.path), BRACKET.schema.defaults(), str(bracket_step), method="mesh")
    assert mesh["method"] == "mesh" and mesh["iou"] == pytest.approx(other["iou"], abs=0.03)


def test_stl_target_uses_the_mesh_method_and_the_ghost_is_in_metres(tmp_path):
    stl = tmp_path / "bracket.stl"
    stl.write_bytes(export.stl_bytes([p.shape for p in build_model(BRACKET.path, BRACKET.schema.defaults()).parts]))
    answer = compare_model(str(BRACKET.path), BRACKET.schema.defaults(), str(stl))
    assert answer["method"] == "mesh" and "mesh" in answer["fallback_reason"] and answer["iou"] > 0.95
    glb = target_glb(stl)
    assert glb[:4] == b"glTF" and b'"target"' in glb
    assert load_target(stl).bbox["size"] == pytest.approx([80, 40, 60], abs=1e-3)


def test_exact_iou_is_not_trusted_when_the_booleans_disagree(tmp_path):
    # Same length, width, wall and bosses, so many faces coincide; the box is taller and the lid sits lower. OCC's
    # intersection of these two solids is wrong (IoU 0.17) while their union is right: the answer must not be 0.17.
    enclosure = REGISTRY.get("enclosure")
    hidden = enclosure.schema.complete({
        "length": 159.47, "width": 94.46, "height": 58.47, "wall": 1.37, "floor": 4.13, "corner_radius": 5.09,
        "boss_diameter": 9.58, "screw_hole": 2.06, "vent_slots": 3, "vent_width": 2.55, "lid_thickness": 3.69,
        "lid_lip": 3.99, "lid_lift": 5.99})
    target = tmp_path / "enclosure.step"
    target.write_bytes(export.step_bytes(build_model(enclosure.path, hidden).assembly))
    state = {**hidden, "height": 65.235, "lid_thickness": 2.921, "lid_lip": 4.762, "lid_lift": 0.0}
    answer = compare_model(str(enclosure.path), state, str(target))
    assert 0.85 < answer["iou"] < 0.95
    if answer["method"] == "mesh":  # OCC as pinned: the disagreement is detected and said
        assert "disagree" in answer["fallback_reason"]
    assert compare_model(str(enclosure.path), hidden, str(target))["iou"] > 0.999


# --- the objective's residual fields -------------------------------------------------------------------------

def test_cumulative_profiles_pull_a_far_part_toward_its_place(tmp_path):
    # The rover's head 160 mm from where the target has it: no overlap, so a blurred occupancy field barely cares
    # where the head is, but the cumulative volume profiles fall all the way to the right place.
    rover = REGISTRY.get("rover")
    hidden = rover.schema.complete({"pan_tilt_x": 100.0})
    path = tmp_path / "rover.step"
    path.write_bytes(export.step_bytes(build_model(rover.path, hidden).assembly))

    def cost(x):
        answer = compare_model(str(rover.path), {**hidden, "pan_tilt_x": x}, str(path), method="mesh",
                               detail=False, field={"resolution": 48, "cumulative": True})
        return float(answer["residuals"] @ answer["residuals"])

    costs = [cost(x) for x in (-60.0, 0.0, 50.0, 100.0)]
    assert costs == sorted(costs, reverse=True) and costs[-1] < 0.01 * costs[0]


def test_cumulative_residuals_end_with_the_bounding_box_misfit(bracket_step):
    # A bracket 10 mm longer than the target: the last six residuals are the box's min/max misfits in X, Y, Z as
    # shares of the target's size (weighted), so a short box cannot hide behind thick walls.
    from cad.residual_fields import BOX_WEIGHT

    target = load_target(bracket_step)
    values = BRACKET.schema.complete({"base_length": 80.0, "upright_height": 75.0})
    answer = compare_model(str(BRACKET.path), values, str(bracket_step), method="mesh", detail=False,
                           field={"resolution": 32, "cumulative": True})
    box = answer["residuals"][-6:] / BOX_WEIGHT * np.tile(target.bbox["size"], 2)
    moved = np.flatnonzero(np.abs(box) > 0.01)
    assert len(moved) == 1 and abs(box[moved[0]]) == pytest.approx(10.0, abs=0.01)
    same = compare_model(str(BRACKET.path), BRACKET.schema.complete({"base_length": 70.0, "upright_height": 75.0}),
                         str(bracket_step), method="mesh", detail=False, field={"resolution": 32, "cumulative": True})
    assert np.abs(same["residuals"]).max() < 1e-4

"""Builder: artifacts (GLB/STL/STEP/PNG/bounding box), caching, concurrency and error reporting."""
import io
import json
import struct
import threading
import time

import numpy as np
import pytest
from PIL import Image

from cad.build import Builder
from cad.errors import BuildError, ParameterError
from cad.registry import ModelRegistry
from cad.render import BACKGROUND

REGISTRY = ModelRegistry()
ROVER = REGISTRY.get("rover")
DEFAULT_PARTS = {"chassis", "pan_tilt_head", "sensor_fork", *(f"wheel_{s}{i}" for s in "lr" for i in (1, 2, 3))}


@pytest.fixture(scope="module")
def shared_builder(tmp_path_factory):
    return Builder(tmp_path_factory.mktemp("cad-cache"))


def glb_document(data: bytes) -> dict:
    magic, version, length = struct.unpack_from("<4sII", data, 0)
    assert (magic, version, length) == (b"glTF", 2, len(data))
    chunk_length, chunk_type = struct.unpack_from("<I4s", data, 12)
    assert chunk_type == b"JSON"
    bin_length, bin_type = struct.unpack_from("<I4s", data, 20 + chunk_length)
    assert bin_type == b"BIN\x00" and 28 + chunk_length + bin_length == len(data)
    return json.loads(data[20:20 + chunk_length])


def test_glb_has_one_named_node_per_part_in_metres_y_up(shared_builder):
    document = glb_document(shared_builder.export(ROVER, {}, "glb"))
    root = document["nodes"][document["scenes"][0]["nodes"][0]]
    assert root["name"] == "rover"
    children = {document["nodes"][i]["name"]: document["nodes"][i] for i in root["children"]}
    assert set(children) == DEFAULT_PARTS
    assert all("mesh" in node for node in children.values())
    # Metres, Y up: the 220 mm long chassis spans 0.22 along X; its 6 mm thickness lies along Y.
    chassis = document["meshes"][children["chassis"]["mesh"]]["primitives"][0]
    position = document["accessors"][chassis["attributes"]["POSITION"]]
    span = np.array(position["max"]) - np.array(position["min"])
    assert span == pytest.approx([0.220, 0.006, 0.140], abs=1e-4)


def test_glb_follows_parameters_and_bool_part_toggle(shared_builder):
    without_fork = glb_document(shared_builder.export(ROVER, {"show_sensor_fork": False, "wheels_per_side": 4}, "glb"))
    names = {node["name"] for node in without_fork["nodes"]}
    assert "sensor_fork" not in names and "wheel_r4" in names


def test_stl_and_step_are_real_files(shared_builder):
    stl = shared_builder.export(ROVER, {}, "stl")
    triangles = struct.unpack_from("<I", stl, 80)[0]
    assert triangles > 1000 and len(stl) == 84 + 50 * triangles
    glb = glb_document(shared_builder.export(ROVER, {}, "glb"))
    glb_triangles = sum(glb["accessors"][p["indices"]]["count"] for m in glb["meshes"] for p in m["primitives"]
                        if p["mode"] == 4) // 3  # the B-rep edges' LINES primitives are not triangles
    assert triangles > glb_triangles  # downloads are tessellated finer than the preview
    step = shared_builder.export(ROVER, {}, "step")
    assert step.startswith(b"ISO-10303-21") and b"wheel_l1" in step and b"pan_tilt_head" in step


def decode(png: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    return np.asarray(image.convert("RGB"))


def test_png_views_have_size_content_and_differ(shared_builder):
    images = {view: decode(shared_builder.render_png(ROVER, {}, view, 128)) for view in ("front", "side", "top", "iso")}
    for view, pixels in images.items():
        assert pixels.shape == (128, 128, 3)
        model_pixels = np.any(pixels != BACKGROUND.astype(np.uint8), axis=2).mean()
        assert 0.1 < model_pixels < 0.9, view
    views = list(images)
    for i, a in enumerate(views):
        for b in views[i + 1:]:
            assert np.abs(images[a].astype(int) - images[b].astype(int)).mean() > 5, (a, b)
    assert decode(shared_builder.render_png(ROVER, {}, "iso", 64)).shape == (64, 64, 3)


def test_png_shows_parameter_change(shared_builder):
    before = decode(shared_builder.render_png(ROVER, {}, "side", 128))
    after = decode(shared_builder.render_png(ROVER, {"pan_tilt_z": 200}, "side", 128))
    assert np.abs(before.astype(int) - after.astype(int)).mean() > 1


def test_render_of_default_rover_is_fast_enough(tmp_path):
    builder = Builder(tmp_path)
    builder.export(ROVER, {}, "glb")  # geometry and preview mesh ready; time the rasteriser + PNG
    start = time.perf_counter()
    builder.render_png(ROVER, {}, "iso", 384)
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize("call, error", [
    (lambda b: b.render_png(ROVER, {}, "back", 128), ValueError),
    (lambda b: b.render_png(ROVER, {}, "iso", 32), ValueError),
    (lambda b: b.render_png(ROVER, {}, "iso", 4096), ValueError),
    (lambda b: b.render_png(ROVER, {}, "iso", 128.0), ValueError),
    (lambda b: b.export(ROVER, {}, "obj"), ValueError),
    (lambda b: b.export(ROVER, {"wheel_diameter": 500}, "glb"), ParameterError),
    (lambda b: b.bounding_box(ROVER, {"nope": 1}), ParameterError),
])
def test_bad_requests_are_rejected_and_change_nothing(tmp_path, call, error):
    builder = Builder(tmp_path)
    with pytest.raises(error):
        call(builder)
    assert builder.stats()["misses"] == 0 and not any(tmp_path.iterdir())


def test_returning_to_a_previous_state_is_a_cache_hit(tmp_path):
    builder = Builder(tmp_path)
    first = builder.export(ROVER, {"wheel_diameter": 90}, "glb")
    builder.export(ROVER, {"wheel_diameter": 100}, "glb")
    assert builder.stats()["misses"] == 2 and builder.stats()["hits"] == 0
    again = builder.export(ROVER, {"wheel_diameter": 90.0}, "glb")
    assert again == first
    stats = builder.stats()
    assert stats["misses"] == 2 and stats["memory_hits"] == 1
    # Spelling the defaults out explicitly is the same state as leaving them implicit.
    builder.export(ROVER, {**ROVER.schema.defaults(), "wheel_diameter": 90}, "glb")
    assert builder.stats()["misses"] == 2


def test_disk_cache_serves_a_new_builder_and_writes_atomically(tmp_path):
    Builder(tmp_path).render_png(ROVER, {"fork_width": 60}, "top", 96)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) == 1 and files[0].suffix == ".png" and not files[0].name.startswith(".tmp")
    fresh = Builder(tmp_path)
    png = fresh.render_png(ROVER, {"fork_width": 60}, "top", 96)
    assert png == files[0].read_bytes()
    assert fresh.stats()["disk_hits"] == 1 and fresh.stats()["misses"] == 0


def test_memory_lru_is_bounded(tmp_path):
    builder = Builder(tmp_path, memory_items=2)
    for diameter in (60, 70, 80):
        builder.bounding_box(ROVER, {"wheel_diameter": diameter})
    assert builder.stats()["memory_items"] == 2


def test_two_threads_asking_for_the_same_state_build_once(tmp_path):
    builder = Builder(tmp_path)
    results, barrier = [], threading.Barrier(4)

    def ask():
        barrier.wait()
        results.append(builder.export(ROVER, {"chassis_length": 301}, "stl"))

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(results) == 4 and len(set(results)) == 1
    assert builder.stats()["misses"] == 1 and builder.stats()["hits"] == 3


def test_bounding_box_reports_whole_model_and_parts(shared_builder):
    box = shared_builder.bounding_box(ROVER, {"rover_yaw": 0})
    assert box["units"] == "mm" and set(box["parts"]) == DEFAULT_PARTS
    assert box["size"][0] >= 220 and box["min"][2] == pytest.approx(-40, abs=0.01)


def test_warm_up_caches_the_default_state(tmp_path):
    builder = Builder(tmp_path)
    assert builder.warm_up(ROVER) > 0
    misses = builder.stats()["misses"]
    builder.export(ROVER, {}, "glb")
    builder.render_png(ROVER, {}, "iso", 384)
    assert builder.stats()["misses"] == misses


def test_script_runtime_error_points_at_the_line(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    (models / "faulty.py").write_text(
        '"""Faulty"""\nimport cadquery as cq\n\nsize: float = 10.0  # mm, 1..20, Size\n\n\n'
        'def build(p):\n    box = cq.Workplane().box(p.size, p.size, p.size)\n    return box.fillet(p.size)\n')
    (models / "not_assembly.py").write_text(
        '"""Plain"""\nimport cadquery as cq\n\nsize: float = 10.0  # mm, 1..20, Size\n\n\n'
        'def build(p):\n    return cq.Workplane().sketch().rect(p.size, p.size).finalize()\n')
    registry = ModelRegistry([models])
    builder = Builder(tmp_path / "cache")
    with pytest.raises(BuildError) as error:
        builder.export(registry.get("faulty"), {}, "glb")
    assert error.value.line == 9 and error.value.path.endswith("faulty.py")
    with pytest.raises(BuildError, match="no solid geometry"):  # a Workplane is accepted, a bare sketch is not
        builder.export(registry.get("not_assembly"), {}, "glb")
    assert builder.stats()["misses"] == 0 and builder.stats()["errors"] == 2


def test_the_disk_cache_stays_under_its_limit_and_keeps_recently_used_files(tmp_path):
    rover = ModelRegistry().get("rover")
    first = Builder(tmp_path / "cache")
    sizes = [len(first.export(rover, {"chassis_length": 200 + i}, "glb")) for i in range(2)]
    limit = int(max(sizes) * 3.5)  # room for three GLBs
    builder = Builder(tmp_path / "cache", disk_limit_bytes=limit)
    kept = {"chassis_length": 200}
    for i in range(2, 8):
        builder.export(rover, {"chassis_length": 200 + i}, "glb")
        time.sleep(0.01)  # distinct modification times
        Builder(tmp_path / "cache", disk_limit_bytes=limit).export(rover, kept, "glb")  # a disk hit: marks it used
    files = [f for f in (tmp_path / "cache").glob("*/*") if f.is_file()]
    assert sum(f.stat().st_size for f in files) <= limit and 1 < len(files) < 8
    fresh = Builder(tmp_path / "cache", disk_limit_bytes=limit)
    fresh.export(rover, kept, "glb")
    assert fresh.stats()["disk_hits"] == 1  # the file used all along survived the pruning


def test_glb_colours_are_linear_as_gltf_requires(shared_builder):
    """glTF's baseColorFactor is linear: an sRGB part colour written unchanged looks washed out in other viewers."""
    import json
    import struct

    from cad.mesh import linear_to_srgb, srgb_to_linear
    from cad.registry import ModelRegistry

    data = shared_builder.export(ModelRegistry().get("bracket"), {}, "glb")
    doc = json.loads(data[20:20 + struct.unpack_from("<I", data, 12)[0]])
    factors = [m["pbrMetallicRoughness"]["baseColorFactor"][:3] for m in doc["materials"]
               if m["name"] != "optim edges"]  # the parts' colours (the B-rep edge lines share one dark material)
    assert factors and all(0 <= c <= 1 for f in factors for c in f)
    assert abs(srgb_to_linear(0.5) - 0.2140) < 1e-4 and abs(linear_to_srgb(srgb_to_linear(0.73)) - 0.73) < 1e-9
    from cad.render import meshes_from_glb

    back = meshes_from_glb(data)  # read back as the sRGB colours the parts were given
    assert [tuple(round(c, 6) for c in m.color) for m in back] == \
        [tuple(round(linear_to_srgb(c), 6) for c in f) for f in factors]


def test_tessellate_moves_located_faces_with_their_location():
    """A part placed by a Location (an assembly's located solids) tessellates where it is placed, rotated and
    moved, not at its origin: the triangles of the moved part are those of the part itself, moved."""
    import cadquery as cq

    from cad.export import tessellate

    part = cq.Workplane("XY").box(30, 20, 10).faces(">Z").hole(6).val()
    placed = part.moved(cq.Location(cq.Vector(100, -50, 7), cq.Vector(0, 0, 1), 90))
    vertices, triangles = tessellate(part, 0.05)
    moved_vertices, moved_triangles = tessellate(placed, 0.05)
    assert np.array_equal(triangles, moved_triangles)
    expected = np.stack([-vertices[:, 1] + 100, vertices[:, 0] - 50, vertices[:, 2] + 7], axis=1)
    assert np.allclose(moved_vertices, expected, atol=1e-9)
    assert np.allclose(moved_vertices.min(axis=0), [90, -65, 2], atol=1e-6)

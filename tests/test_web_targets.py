"""Targets and optimisation over HTTP (Flask test client on a real app; real CadQuery builds in the worker)."""
from __future__ import annotations

import json
import struct

import pytest

from web import create_app
from web.config import Config
from web.targets_api import MAX_TARGET_BYTES

HIDDEN = {"base_length": 70.0, "upright_height": 75.0}


@pytest.fixture()
def app(tmp_path):
    app = create_app(Config(data_dir=tmp_path / "data", cad_warmup=False, testing=True))
    app.testing = True
    yield app
    app.extensions["optim"].shutdown()


@pytest.fixture()
def client(app):
    with app.test_client() as c:
        yield c


def file_of_state(client, values: dict, fmt: str) -> bytes:
    """The bracket exported at ``values`` through the API itself, then the session put back to the defaults."""
    assert client.patch("/api/params?model=bracket", json={"values": values}).status_code == 200
    data = client.get(f"/api/model.{fmt}?model=bracket").data
    assert client.post("/api/reset?model=bracket", json={}).status_code == 200
    return data


def glb_json(data: bytes) -> dict:
    length = struct.unpack_from("<I", data, 12)[0]
    return json.loads(data[20:20 + length])


def test_no_target_is_404_everywhere(client):
    for method, path in (("get", "/api/target"), ("get", "/api/target.glb"), ("delete", "/api/target")):
        r = getattr(client, method)(path + "?model=bracket")
        assert r.status_code == 404 and r.get_json()["error"] == "no_target", path
    r = client.post("/api/optimise?model=bracket", json={})
    assert r.status_code == 404 and r.get_json()["error"] == "no_target"
    r = client.put("/api/target?model=nope", data=b"x")
    assert r.status_code == 404 and r.get_json()["error"] == "unknown_model"


def test_step_target_reports_exact_iou_and_differences_and_a_ghost_in_metres(client, app):
    step = file_of_state(client, HIDDEN, "step")
    r = client.put("/api/target?model=bracket", data=step, content_type="application/octet-stream")
    assert r.status_code == 201, r.get_json()
    body = r.get_json()
    assert body["format"] == "step" and body["kind"] == "solid" and body["size_bytes"] == len(step)
    assert (app.config["OPTIM"].data_dir / "targets" / "bracket.step").read_bytes() == step
    comparison = client.get("/api/target?model=bracket").get_json()["comparison"]
    assert comparison["method"] == "exact" and 0.3 < comparison["iou"] < 0.95
    assert comparison["bbox"]["size_difference"][0] == pytest.approx(80 - 70, abs=1e-6)
    assert comparison["volume"]["difference"] != 0
    # Editing the model toward the target is visible in the next answer.
    client.patch("/api/params?model=bracket", json={"values": HIDDEN})
    assert client.get("/api/target?model=bracket").get_json()["comparison"]["iou"] == pytest.approx(1, abs=1e-6)
    ghost = client.get("/api/target.glb?model=bracket")
    assert ghost.status_code == 200 and ghost.mimetype == "model/gltf-binary"
    document = glb_json(ghost.data)
    assert [n["name"] for n in document["nodes"]] == ["target", "target"]
    position = next(a for a in document["accessors"] if a["type"] == "VEC3" and "min" in a)
    span = [hi - lo for lo, hi in zip(position["min"], position["max"])]
    assert span == pytest.approx([0.070, 0.075, 0.040], abs=1e-4)  # metres, Y up: height on Y, width on Z


def test_stl_multipart_upload_uses_the_mesh_method(client):
    stl = file_of_state(client, HIDDEN, "stl")
    r = client.put("/api/target?model=bracket", data={"target": (__import__("io").BytesIO(stl), "part.stl")},
                   content_type="multipart/form-data")
    assert r.status_code == 201, r.get_json()
    body = r.get_json()
    assert body["format"] == "stl" and body["kind"] == "mesh"
    assert body["comparison"]["method"] == "mesh" and 0.3 < body["comparison"]["iou"] < 0.95


def test_bad_uploads_are_refused_and_keep_the_previous_target(client, app):
    step = file_of_state(client, HIDDEN, "step")
    assert client.put("/api/target?model=bracket", data=step).status_code == 201
    cases = [
        (b"definitely not a CAD file" * 10, 422, "invalid_target"),
        (b"ISO-10303-21;\nHEADER;\ngarbage\nEND-ISO-10303-21;\n", 422, "invalid_target"),
        (b"", 400, "missing_target"),
        (b"\0" * (MAX_TARGET_BYTES + 1), 413, "too_large"),
    ]
    for data, status, code in cases:
        r = client.put("/api/target?model=bracket", data=data, content_type="application/octet-stream")
        assert r.status_code == status and r.get_json()["error"] == code, (code, r.get_json())
        assert "Traceback" not in r.get_data(as_text=True)
    folder = app.config["OPTIM"].data_dir / "targets"
    assert [p.name for p in folder.iterdir()] == ["bracket.step"] and (folder / "bracket.step").read_bytes() == step
    assert client.delete("/api/target?model=bracket").get_json() == {"model": "bracket", "deleted": True}
    assert client.get("/api/target?model=bracket").status_code == 404


def test_optimise_improves_iou_as_one_undoable_entry(client):
    step = file_of_state(client, HIDDEN, "step")
    client.put("/api/target?model=bracket", data=step)
    version = client.get("/api/params?model=bracket").get_json()["version"]
    r = client.post("/api/optimise?model=bracket", json={"version": version - 1})
    assert r.status_code == 409 and r.get_json()["error"] == "version_conflict"
    for bad in ({"max_steps": 0}, {"max_steps": "many"}, {"max_steps": 10**6}, {"use_vlm": "yes"}):
        assert client.post("/api/optimise?model=bracket", json=bad).status_code == 400, bad
    r = client.post("/api/optimise?model=bracket", json={"version": version, "max_steps": 120})
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    report = body["optimise"]
    assert report["applied"] and report["iou_before"] < 0.9 and report["iou_after"] > 0.98
    assert report["method"] == "exact" and 1 < report["steps"] <= 120
    assert body["version"] == version + 1 and body["entry"]["source"] == {"kind": "optimise"}
    assert set(body["entry"]["changes"]) >= {"base_length", "upright_height"}
    assert body["values"]["base_length"] == pytest.approx(70, abs=2)
    history = client.get("/api/history?model=bracket").get_json()
    assert history["entries"][-1]["id"] == body["entry"]["id"]
    undone = client.post("/api/undo?model=bracket", json={}).get_json()
    assert undone["values"]["base_length"] == 80.0 and undone["values"]["upright_height"] == 60.0


def test_optimise_streams_progress_then_done(client):
    client.put("/api/target?model=bracket", data=file_of_state(client, HIDDEN, "step"))
    r = client.post("/api/optimise?model=bracket", json={"stream": True, "max_steps": 12})
    assert r.status_code == 200 and r.mimetype == "text/event-stream"
    events = []
    for block in r.get_data(as_text=True).split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
        if "event" in lines:
            events.append((lines["event"], json.loads(lines["data"])))
    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "done" and kinds.count("progress") >= 5
    steps = [data["step"] for kind, data in events if kind == "progress"]
    assert steps == sorted(steps) and max(steps) <= 12
    done = events[-1][1]
    assert done["optimise"]["steps"] == 12 and done["optimise"]["stopped"] == "budget"

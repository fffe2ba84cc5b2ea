"""Targets and optimisation over HTTP (Flask test client on a real app; real CadQuery builds in the worker)."""
from __future__ import annotations

import json
import logging
import os
import struct
import time

import pytest

from cad import worker
from cad.fit import DEFAULT_SCHEDULE
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


def sse_events(raw: str) -> list[tuple[str, dict]]:
    events = []
    for block in raw.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":"))
        if "event" in lines:
            events.append((lines["event"], json.loads(lines["data"])))
    return events


def stream_events(response):
    """A streamed (buffered=False) test response's events as the server sends them; keep-alives as ("", {}).
    Read in the test's own thread: Flask's streamed context belongs to the thread that started it."""
    buffer = ""
    for chunk in response.response:
        buffer += chunk.decode() if isinstance(chunk, bytes) else chunk
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            yield from sse_events(block + "\n\n") or [("", {})]


def next_event(events, kind: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    for event, data in events:
        if event == kind:
            return data
        assert time.monotonic() < deadline, f"no {kind!r} event within {timeout} s"
    raise AssertionError(f"the stream ended before a {kind!r} event")


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
    assert set(report["proposed"]) == set(body["entry"]["changes"])  # what was applied, as the search proposed it
    assert (report["vlm_used"], report["vlm_accepted"], report["vlm_iou"], report["vlm_proposed"]) == (False, False,
                                                                                                        None, {})
    assert "vlm_note" not in report
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
    events = sse_events(r.get_data(as_text=True))
    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "done" and kinds.count("progress") >= 5 and "vlm" not in kinds
    steps = [data["step"] for kind, data in events if kind == "progress"]
    assert steps == sorted(steps) and max(steps) <= 12
    assert {data["stages"] for kind, data in events if kind == "progress"} == {len(DEFAULT_SCHEDULE)}
    done = events[-1][1]
    assert done["optimise"]["steps"] == 12 and done["optimise"]["stopped"] == "budget"


def test_cancel_ends_a_streamed_run_early_and_keeps_its_best_state(client, app):
    client.put("/api/target?model=bracket", data=file_of_state(client, HIDDEN, "step"))
    r = client.delete("/api/optimise?model=bracket")
    assert r.status_code == 404 and r.get_json()["error"] == "not_running"
    assert client.delete("/api/optimise?model=nope").get_json()["error"] == "unknown_model"
    version = client.get("/api/params?model=bracket").get_json()["version"]
    r = client.post("/api/optimise?model=bracket", json={"stream": True, "max_steps": 2000}, buffered=False)
    assert r.status_code == 200
    events = stream_events(r)
    next_event(events, "progress")
    other = app.test_client()
    busy = other.post("/api/optimise?model=bracket", json={})
    assert busy.status_code == 409 and busy.get_json()["error"] == "optimise_running"
    cancelled_at = time.monotonic()
    r = other.delete("/api/optimise?model=bracket")
    assert r.status_code == 202 and r.get_json() == {"model": "bracket", "cancelling": True}
    done = next_event(events, "done", timeout=60)
    assert time.monotonic() - cancelled_at < 20
    assert list(events) == []  # the stream ends with done (and gives its request context back)
    report = done["optimise"]
    assert report["stopped"] == "cancelled" and report["steps"] < 2000
    # The best state so far is applied (one undoable entry) exactly when it beats the start.
    history = client.get("/api/history?model=bracket").get_json()
    if report["applied"]:
        assert report["iou_after"] > report["iou_before"] and done["version"] == version + 1
        assert history["entries"][-1]["id"] == done["entry"]["id"] and done["entry"]["source"] == {"kind": "optimise"}
    else:
        assert done["entry"] is None and done["version"] == version
    assert other.delete("/api/optimise?model=bracket").status_code == 404  # nothing runs any more


def test_a_streaming_client_that_goes_away_cancels_the_run(client, app, caplog):
    caplog.set_level(logging.INFO, logger="web.optimise_api")
    client.put("/api/target?model=bracket", data=file_of_state(client, HIDDEN, "step"))
    r = client.post("/api/optimise?model=bracket", json={"stream": True, "max_steps": 2000}, buffered=False)
    next_event(stream_events(r), "progress")
    r.close()  # what the server does when the browser closes the connection
    deadline = time.monotonic() + 30
    while app.test_client().delete("/api/optimise?model=bracket").status_code != 404:
        assert time.monotonic() < deadline, "the run went on after its client left"
        time.sleep(0.2)
    assert any("optimise of bracket cancelled" in m for m in caplog.messages), caplog.messages


SLOW_MODEL = '''"""Slow box
A cube whose script takes far too long once it is larger than 12 mm."""
import time

import cadquery as cq

size: float = 10.0  # mm, 1..40, Size, step=0.5: Edge length of the cube


def build(p):
    if p.size > 12:
        time.sleep(120)
    return cq.Assembly().add(cq.Workplane().box(p.size, p.size, p.size), name="cube")
'''


def cube_stl(edge: float) -> bytes:
    """A binary STL of a cube centred on the origin (the slow model's shape at size ``edge``)."""
    h = edge / 2
    corners = [(x, y, z) for x in (-h, h) for y in (-h, h) for z in (-h, h)]
    faces = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    triangles = [tri for a, b, c, d in faces for tri in ((a, b, c), (a, c, d))]
    records = b"".join(struct.pack("<12fH", 0, 0, 0, *[v for i in tri for v in corners[i]], 0) for tri in triangles)
    return b"\0" * 80 + struct.pack("<I", len(triangles)) + records


def test_a_build_timeout_answers_504_and_changes_nothing(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    (models / "slowbox.py").write_text(SLOW_MODEL)
    app = create_app(Config(data_dir=tmp_path / "data", cad_warmup=False, testing=True, models_dir=models,
                            build_timeout_s=3))
    try:
        c = app.test_client()
        r = c.put("/api/target?model=slowbox", data=cube_stl(20))
        assert r.status_code == 201 and 0 < r.get_json()["comparison"]["iou"] < 0.5, r.get_json()
        version = r.get_json()["version"]
        # The search toward the 20 mm target soon tries a cube over 12 mm, whose build hangs.
        r = c.post("/api/optimise?model=slowbox", json={"max_steps": 40})
        assert r.status_code == 504, r.get_json()
        body = r.get_json()
        assert body["error"] == "cad_build_timeout" and "timed out after 3 s" in body["message"]
        assert "slowbox.py" in body["message"] and "CAD_BUILD_TIMEOUT" in body["message"]
        assert "Traceback" not in r.get_data(as_text=True)
        state = c.get("/api/params?model=slowbox").get_json()
        assert state["version"] == version and state["values"]["size"] == 10.0
        assert c.delete("/api/optimise?model=slowbox").status_code == 404  # the run is over
        # Any build: the same answer.
        assert c.patch("/api/params?model=slowbox", json={"values": {"size": 14}}).status_code == 200
        r = c.get("/api/model.glb?model=slowbox")
        assert r.status_code == 504 and r.get_json()["error"] == "cad_build_timeout"
    finally:
        app.extensions["optim"].shutdown()


def test_shutdown_stops_a_running_optimisation_and_the_build_worker(tmp_path):
    app = create_app(Config(data_dir=tmp_path / "data", cad_warmup=False, testing=True))
    c = app.test_client()
    c.put("/api/target?model=bracket", data=file_of_state(c, HIDDEN, "step"))
    version = c.get("/api/params?model=bracket").get_json()["version"]
    r = c.post("/api/optimise?model=bracket", json={"stream": True, "max_steps": 2000}, buffered=False)
    events = stream_events(r)
    next_event(events, "progress")
    pid = worker.shared_client().pid
    assert pid is not None
    app.extensions["optim"].shutdown()
    assert worker.shared_client().pid is None
    with pytest.raises(ProcessLookupError):  # gone, and reaped
        os.kill(pid, 0)
    error = next_event(events, "error", timeout=60)
    assert error["error"] == "shutting_down" and list(events) == []
    assert worker.shared_client().pid is None  # the cancelled run started no new worker
    assert c.get("/api/params?model=bracket").get_json()["version"] == version  # and applied nothing
    app.extensions["optim"].shutdown()  # optim.py calls it twice (signal handler, then on the way out)

"""The CAD and design-session HTTP API, through Flask's test client on a real app (real CadQuery builds)."""
from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from PIL import Image

from tests.session_faults import FAULTS, dump, fail_session_writes
from web import create_app
from web.config import Config

REPO = Path(__file__).resolve().parent.parent


def make_app(data_dir: Path, **overrides):
    config = Config(data_dir=data_dir, cad_warmup=False, testing=True, **overrides)
    app = create_app(config)
    app.testing = True
    return app


@pytest.fixture()
def client(tmp_path):
    app = make_app(tmp_path / "data")
    with app.test_client() as c:
        yield c
    app.extensions["optim"].shutdown()


def params(client):
    r = client.get("/api/params")
    assert r.status_code == 200
    return r.get_json()


def first_float_param(state):
    return next(p for p in state["schema"] if p["type"] == "float" and p["max"] > p["default"])


def test_import_and_first_request_load_no_heavy_modules():
    code = (
        "import sys, tempfile; from pathlib import Path\n"
        "import optim\n"
        "from web import create_app; from web.config import Config\n"
        "app = create_app(Config(data_dir=Path(tempfile.mkdtemp())))\n"
        "c = app.test_client(); assert c.get('/healthz').status_code == 200\n"
        "assert c.get('/api/params').status_code == 200\n"
        "assert c.get('/api/vlm/status').status_code == 200\n"
        "heavy = {'torch', 'transformers', 'peft', 'cadquery', 'OCP', 'accelerate'}\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_schema_and_values(client):
    state = params(client)
    assert state["model"] == "rover" and state["version"] == 0
    names = {p["name"] for p in state["schema"]}
    assert len(names) >= 15
    for p in state["schema"]:
        assert set(p) == {"name", "label", "unit", "type", "min", "max", "step", "default", "group", "description"}
        assert state["values"][p["name"]] == p["default"]
    assert state["can_undo"] is False and state["can_redo"] is False


def test_patch_undo_redo_reset_history(client):
    state = params(client)
    p = first_float_param(state)
    new = min(p["max"], p["default"] + 5 * (p["step"] or 1))
    r = client.patch("/api/params", json={"version": 0, "values": {p["name"]: new}})
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["version"] == 1 and body["values"][p["name"]] == new and body["can_undo"]
    assert body["entry"]["changes"] == {p["name"]: {"from": p["default"], "to": new}}
    assert body["entry"]["source"] == {"kind": "user"}

    hist = client.get("/api/history").get_json()
    assert hist["position"] == 0 and len(hist["entries"]) == 1

    r = client.post("/api/undo", json={"version": 1})
    assert r.status_code == 200 and r.get_json()["values"][p["name"]] == p["default"]
    r = client.post("/api/redo", json={"version": 2})
    assert r.status_code == 200 and r.get_json()["values"][p["name"]] == new
    r = client.post("/api/reset", json={"version": 3})
    assert r.status_code == 200
    assert r.get_json()["values"] == {q["name"]: q["default"] for q in state["schema"]}
    assert r.get_json()["entry"]["source"]["kind"] == "reset"
    # reset is undoable
    r = client.post("/api/undo", json={})
    assert r.get_json()["values"][p["name"]] == new


def test_a_history_entry_previews_then_restores_as_one_undoable_step(client):
    state = params(client)
    floats = [p for p in state["schema"] if p["type"] == "float" and p["max"] > p["default"]][:2]
    a, b = floats
    step = lambda p, k: min(p["max"], p["default"] + k * (p["step"] or 1))  # noqa: E731
    version = 0
    for values in ({a["name"]: step(a, 2)}, {b["name"]: step(b, 3)}, {a["name"]: step(a, 4)}):
        version = client.patch("/api/params", json={"version": version, "values": values}).get_json()["version"]
    client.post("/api/undo", json={"version": version})  # entry 2 becomes redoable
    current = params(client)
    assert current["values"][a["name"]] == step(a, 2) and current["values"][b["name"]] == step(b, 3)

    # entry 0's state (a changed, b still default), and the redoable entry 2's state: nothing is written
    first = client.get("/api/history/0").get_json()
    assert first["values"][a["name"]] == step(a, 2) and first["values"][b["name"]] == b["default"]
    assert first["changes"] == {b["name"]: {"from": step(b, 3), "to": b["default"]}}
    redoable = client.get("/api/history/2").get_json()
    assert redoable["changes"] == {a["name"]: {"from": step(a, 2), "to": step(a, 4)}}
    start = client.get("/api/history/-1").get_json()
    assert start["values"] == {p["name"]: p["default"] for p in state["schema"]}
    assert client.get("/api/history/1").get_json()["changes"] == {}  # the current entry
    assert params(client) == current

    r = client.post("/api/history/0/restore", json={"version": current["version"]})
    assert r.status_code == 200, r.get_json()
    restored = r.get_json()
    assert restored["values"] == first["values"] and restored["version"] == current["version"] + 1
    assert restored["entry"]["source"] == {"kind": "restore", "index": 0}
    assert restored["entry"]["changes"] == first["changes"]
    hist = client.get("/api/history").get_json()
    assert len(hist["entries"]) == 3 and hist["position"] == 2  # one new entry (the redo branch is dropped)
    undone = client.post("/api/undo", json={"version": restored["version"]}).get_json()
    assert undone["values"] == current["values"]  # one undo takes the whole restore back
    # restoring the state the design is in makes no entry
    again = client.post("/api/history/1/restore", json={"version": undone["version"]}).get_json()
    assert again["entry"] is None and again["version"] == undone["version"]


@pytest.mark.parametrize("path, method, body, status, code", [
    ("/api/history/7", "get", None, 404, "no_such_entry"),
    ("/api/history/-2", "get", None, 404, "no_such_entry"),
    ("/api/history/7/restore", "post", {}, 404, "no_such_entry"),
    ("/api/history/0/restore", "post", {"version": 0}, 409, "version_conflict"),
    ("/api/history/0/restore", "post", {"version": "1"}, 400, None),
    ("/api/history/x", "get", None, 404, "no_such_entry"),
    ("/api/history/1.5/restore", "post", {}, 404, "no_such_entry"),
])
def test_a_bad_history_entry_request_is_refused_and_changes_nothing(client, path, method, body, status, code):
    p = first_float_param(params(client))
    client.patch("/api/params", json={"values": {p["name"]: p["default"] + (p["step"] or 1)}})
    before, history = params(client), client.get("/api/history").get_json()
    r = getattr(client, method)(path, **({} if body is None else {"json": body}))
    assert r.status_code == status and r.is_json and r.get_json()["message"], r.data
    if code:
        assert r.get_json()["error"] == code
    assert params(client) == before and client.get("/api/history").get_json() == history


def test_nothing_to_undo_or_redo(client):
    r = client.post("/api/undo")
    assert r.status_code == 409 and r.get_json()["error"] == "nothing_to_undo"
    r = client.post("/api/redo")
    assert r.status_code == 409 and r.get_json()["error"] == "nothing_to_redo"


def test_stale_version_is_refused_and_changes_nothing(client):
    state = params(client)
    p = first_float_param(state)
    assert client.patch("/api/params", json={"version": 0, "values": {p["name"]: p["default"] + (p["step"] or 1)}}).status_code == 200
    r = client.patch("/api/params", json={"version": 0, "values": {p["name"]: p["max"]}})
    assert r.status_code == 409
    body = r.get_json()
    assert body["error"] == "version_conflict" and body["current_version"] == 1 and "reload" in body["message"]
    assert params(client)["values"][p["name"]] == p["default"] + (p["step"] or 1)


def test_concurrent_edits_with_same_version_one_wins(tmp_path):
    app = make_app(tmp_path / "data")
    state = app.test_client().get("/api/params").get_json()
    p = first_float_param(state)
    results = []

    def edit(i):
        with app.test_client() as c:
            value = p["default"] + (i + 1) * (p["step"] or 1)
            results.append(c.patch("/api/params", json={"version": 0, "values": {p["name"]: value}}).status_code)

    threads = [threading.Thread(target=edit, args=(i,)) for i in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(results) == [200] + [409] * 7
    assert len(app.test_client().get("/api/history").get_json()["entries"]) == 1


@pytest.mark.parametrize("values, fragment", [
    ({"no_such_parameter": 1}, "no_such_parameter"),
    ({"__NAME__": "wide"}, "__NAME__"),
    ({"__NAME__": True}, "__NAME__"),
    ({"__NAME__": 1e9}, "between"),
    ({"__NAME__": -1e9}, "between"),
])
def test_invalid_values_get_422_naming_the_parameter(client, values, fragment):
    state = params(client)
    p = first_float_param(state)
    values = {k.replace("__NAME__", p["name"]): v for k, v in values.items()}
    fragment = fragment.replace("__NAME__", p["name"])
    r = client.patch("/api/params", json={"version": 0, "values": values})
    assert r.status_code == 422
    body = r.get_json()
    assert body["error"] == "invalid_parameter" and fragment in body["message"]
    assert params(client)["version"] == 0


def test_nan_and_infinity_are_rejected(client):
    p = first_float_param(params(client))
    for literal in ("NaN", "Infinity", "-Infinity"):
        r = client.patch("/api/params", data=f'{{"values": {{"{p["name"]}": {literal}}}}}',
                         content_type="application/json")
        assert r.status_code == 422, literal
        assert r.get_json()["parameter"] == p["name"]
    assert params(client)["version"] == 0


@pytest.mark.parametrize("data", ["{", "[1, 2]", '"text"', "", '{"values": []}', '{"values": {}, "version": "3"}'])
def test_malformed_bodies_get_400(client, data):
    r = client.patch("/api/params", data=data, content_type="application/json")
    assert r.status_code == 400
    body = r.get_json()
    assert body["error"] and body["message"]
    assert "Traceback" not in r.get_data(as_text=True)


def test_unknown_routes_and_methods_are_json(client):
    r = client.get("/api/nope")
    assert r.status_code == 404 and r.get_json()["error"] == "not_found"
    r = client.delete("/api/params")
    assert r.status_code == 405 and r.get_json()["error"]
    r = client.get("/api/params?model=../../etc/passwd")
    assert r.status_code == 404 and r.get_json()["error"] == "unknown_model"


def test_oversized_body_gets_413(tmp_path):
    app = make_app(tmp_path / "data", max_upload_mb=0.01)
    r = app.test_client().patch("/api/params", data=b"{" + b" " * 20000 + b"}", content_type="application/json")
    assert r.status_code == 413 and r.get_json()["error"] == "too_large"


def test_session_survives_restart(tmp_path):
    data = tmp_path / "data"
    app = make_app(data)
    c = app.test_client()
    p = first_float_param(c.get("/api/params").get_json())
    value = p["default"] + (p["step"] or 1)
    c.patch("/api/params", json={"values": {p["name"]: value}})
    app2 = make_app(data)
    state = app2.test_client().get("/api/params").get_json()
    assert state["values"][p["name"]] == value and state["version"] == 1 and state["can_undo"]
    assert app2.test_client().post("/api/undo").get_json()["values"][p["name"]] == p["default"]


def test_json_session_of_an_earlier_release_is_migrated_at_start(tmp_path):
    data = tmp_path / "data"
    (data / "sessions").mkdir(parents=True)
    entries = [{"id": f"old{k}", "source": {"kind": "vlm", "proposal_id": "p1"} if k else {"kind": "user"},
                "summary": "s", "changes": {"wheel_diameter": {"from": 80.0 + k, "to": 81.0 + k}},
                "timestamp": 1.7e9 + k} for k in range(3)]
    old = {"format": 1, "model": "rover", "version": 4, "position": 1, "entries": entries,
           "values": {"wheel_diameter": 82.0}}
    (data / "sessions" / "rover.json").write_text(json.dumps(old, indent=1, sort_keys=True))
    c = make_app(data).test_client()
    hist = c.get("/api/history").get_json()
    assert [e["id"] for e in hist["entries"]] == ["old0", "old1", "old2"] and hist["position"] == 1
    assert hist["entries"][1]["source"] == {"kind": "vlm", "proposal_id": "p1"}
    assert c.get("/api/params").get_json()["values"]["wheel_diameter"] == 82.0
    r = c.post("/api/redo", json={"version": 4})
    assert r.status_code == 200 and r.get_json()["values"]["wheel_diameter"] == 83.0
    assert not (data / "sessions" / "rover.json").exists() and (data / "sessions" / "rover.json.migrated").exists()
    assert make_app(data).test_client().get("/api/params").get_json()["version"] == 5  # not imported twice


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_failed_save_keeps_database_and_state(tmp_path, monkeypatch, fault):
    data = tmp_path / "data"
    app = make_app(data)
    c = app.test_client()
    p = first_float_param(c.get("/api/params").get_json())
    c.patch("/api/params", json={"values": {p["name"]: p["default"] + (p["step"] or 1)}})
    store = app.extensions["optim"].sessions
    before = dump(store.db.path)
    fail_session_writes(monkeypatch, store.db, fault)
    r = c.patch("/api/params", json={"values": {p["name"]: p["max"]}})
    assert r.status_code == 503 and r.get_json()["error"] == "session_not_saved"
    monkeypatch.undo()
    store.db.close()
    assert dump(store.db.path) == before
    assert c.get("/api/params").get_json()["version"] == 1
    assert c.patch("/api/params", json={"values": {p["name"]: p["max"]}}).status_code == 200  # disk back: works


def test_exports(client):
    glb = client.get("/api/model.glb")
    assert glb.status_code == 200 and glb.data[:4] == b"glTF" and glb.mimetype == "model/gltf-binary"
    json_len = int.from_bytes(glb.data[12:16], "little")
    gltf = json.loads(glb.data[20:20 + json_len])
    node_names = {n.get("name") for n in gltf["nodes"]}
    assert {"chassis", "sensor_fork"} <= node_names
    stl = client.get("/api/model.stl?download=1")
    assert stl.status_code == 200 and len(stl.data) > 1000
    assert "attachment" in stl.headers["Content-Disposition"]
    step = client.get("/api/model.step")
    assert step.status_code == 200 and b"ISO-10303-21" in step.data[:200]
    assert client.get("/api/model.obj").status_code == 404


def test_export_follows_edits_and_etag(client):
    first = client.get("/api/model.stl")
    again = client.get("/api/model.stl", headers={"If-None-Match": first.headers["ETag"]})
    assert again.status_code == 304
    p = first_float_param(params(client))
    client.patch("/api/params", json={"values": {p["name"]: p["max"]}})
    changed = client.get("/api/model.stl", headers={"If-None-Match": first.headers["ETag"]})
    assert changed.status_code == 200 and changed.data != first.data


def test_render_png(client):
    r = client.get("/api/render.png?view=top&size=128")
    assert r.status_code == 200 and r.mimetype == "image/png"
    img = Image.open(io.BytesIO(r.data))
    assert img.size == (128, 128)
    # not an option or not an integer: 400; an integer outside 64..1024: 422
    for bad, status in (("view=diagonal", 400), ("size=abc", 400), ("size=10", 422), ("size=1025", 422),
                        ("size=99999", 422)):
        r = client.get(f"/api/render.png?{bad}")
        assert r.status_code == status, bad
        assert r.get_json()["message"]


def test_models_list(client):
    body = client.get("/api/models").get_json()
    assert body["default"] == "rover"
    assert any(m["name"] == "rover" and m["title"] for m in body["models"])


def test_config_reads_the_cache_limit_and_refuses_a_useless_one():
    from web.config import Config

    assert Config.from_env({"CAD_CACHE_MB": "64"}).cache_mb == 64
    with pytest.raises(ValueError, match="CAD_CACHE_MB"):
        Config.from_env({"CAD_CACHE_MB": "0"}).validate()

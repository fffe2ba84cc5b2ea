"""POST /api/preview.glb (issue 18, preview before apply): the GLB of the current values with some values over them,
validated like an edit, without touching the session (no history entry, no new version), through Flask's test
client on a real app (real CadQuery builds in the build worker)."""
from __future__ import annotations

import json

import pytest

from tests.test_web_cad import make_app


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    app = make_app(tmp_path_factory.mktemp("preview") / "data")
    yield app
    app.extensions["optim"].shutdown()


@pytest.fixture()
def client(app):
    with app.test_client() as c:
        yield c


def session_of(client, model="rover") -> tuple[dict, dict]:
    state = client.get(f"/api/params?model={model}").get_json()
    history = client.get(f"/api/history?model={model}").get_json()
    return state, history


def glb_json(data: bytes) -> dict:
    assert data[:4] == b"glTF"
    length = int.from_bytes(data[12:16], "little")
    return json.loads(data[20:20 + length])


def extent(data: bytes) -> list[float]:
    """The model's size along x, y, z over every part's POSITION accessor (metres, Y up)."""
    accessors = [a for a in glb_json(data)["accessors"] if "max" in a]
    return [max(a["max"][i] for a in accessors) - min(a["min"][i] for a in accessors) for i in range(3)]


def test_preview_builds_the_proposed_state_and_leaves_the_session_alone(client):
    before, history = session_of(client)
    wheel = next(p for p in before["schema"] if p["name"] == "wheel_diameter")
    bigger = min(wheel["max"], before["values"]["wheel_diameter"] + 40)
    current = client.get("/api/model.glb").data
    r = client.post("/api/preview.glb", json={"values": {"wheel_diameter": bigger}})
    assert r.status_code == 200, r.get_json()
    assert r.mimetype == "model/gltf-binary"
    assert r.headers["X-Base-Version"] == str(before["version"])
    assert r.data != current
    assert extent(r.data)[0] > extent(current)[0] + 0.03  # 40 mm bigger wheels: a longer rover (metres)
    after, history_after = session_of(client)
    assert after["values"] == before["values"] and after["version"] == before["version"]
    assert history_after == history
    # The proposal applied as an edit gives the GLB the preview showed.
    edited = client.patch("/api/params", json={"values": {"wheel_diameter": bigger}, "version": before["version"]})
    assert edited.status_code == 200
    assert client.get("/api/model.glb").data == r.data
    client.post("/api/undo")


def test_no_values_preview_the_current_design(client):
    current = client.get("/api/model.glb").data
    for kwargs in ({}, {"json": {}}, {"json": {"values": {}}}):
        r = client.post("/api/preview.glb", **kwargs)
        assert r.status_code == 200, r.get_json()
        assert r.data == current


def test_preview_of_another_model_by_query_or_body(client):
    models = [m["name"] for m in client.get("/api/models").get_json()["models"]]
    other = next(m for m in models if m != "rover")
    expected = client.get(f"/api/model.glb?model={other}").data
    assert client.post(f"/api/preview.glb?model={other}", json={}).data == expected
    assert client.post("/api/preview.glb", json={"model": other}).data == expected


@pytest.mark.parametrize("body, status, code, parameter", [
    ({"values": {"wheel_diameter": 1e9}}, 422, "invalid_parameter", "wheel_diameter"),
    ({"values": {"wheel_diameter": "big"}}, 422, "invalid_parameter", "wheel_diameter"),
    ({"values": {"wheel_diameter": True}}, 422, "invalid_parameter", "wheel_diameter"),
    ({"values": {"no_such_parameter": 1}}, 422, "invalid_parameter", "no_such_parameter"),
    ({"values": [1, 2]}, 400, "bad_values", None),
    ({"values": "wheel_diameter=120"}, 400, "bad_values", None),
    ({"model": 5}, 400, "bad_model", None),
    ({"model": "x" * 500}, 400, "bad_model", None),
    ({"model": "no-such-model"}, 404, "unknown_model", None),
])
def test_bad_previews_are_json_errors_and_change_nothing(client, body, status, code, parameter):
    before = session_of(client)
    r = client.post("/api/preview.glb", json=body)
    assert r.status_code == status, r.data[:200]
    err = r.get_json()
    assert err["error"] == code and err["message"]
    if parameter:
        assert err["parameter"] == parameter and parameter in err["message"]
    assert session_of(client) == before


def test_malformed_bodies_and_conflicting_models_are_400(client):
    before = session_of(client)
    for raw in (b"{not json", b"[1, 2]", b'"values"'):
        r = client.post("/api/preview.glb", data=raw, content_type="application/json")
        assert r.status_code == 400 and r.get_json()["error"] == "malformed_json"
    r = client.post("/api/preview.glb?model=rover", json={"model": "bracket"})
    assert r.status_code == 400 and r.get_json()["error"] == "bad_model"
    assert session_of(client) == before


def test_preview_respects_the_sessions_narrowed_range(client):
    state = client.get("/api/params").get_json()
    wheel = next(p for p in state["schema"] if p["name"] == "wheel_diameter")
    value = state["values"]["wheel_diameter"]
    r = client.put("/api/params/range", json={"parameter": "wheel_diameter", "min": wheel["min"], "max": value,
                                              "version": state["version"]})
    assert r.status_code == 200, r.get_json()
    before = session_of(client)
    r = client.post("/api/preview.glb", json={"values": {"wheel_diameter": value + 1}})
    assert r.status_code == 422 and r.get_json()["parameter"] == "wheel_diameter"
    assert session_of(client) == before
    client.delete("/api/params/range?parameter=wheel_diameter")


def test_the_operation_is_in_the_generated_document(client):
    doc = client.get("/api/openapi.json").get_json()
    op = doc["paths"]["/api/preview.glb"]["post"]
    assert op["operationId"] == "post_api_preview_glb"
    assert "model/gltf-binary" in op["responses"]["200"]["content"]
    assert {"400", "404", "422", "504"} <= set(op["responses"])
    body = doc["components"]["schemas"]["PreviewRequest"]
    assert body["properties"]["values"] == {"$ref": "#/components/schemas/ParameterValues"}


def test_a_cross_site_preview_is_refused(client):
    r = client.post("/api/preview.glb", json={}, headers={"Origin": "https://evil.example",
                                                          "Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 403

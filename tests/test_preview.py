"""POST /api/preview.glb (issue 18, preview before apply): the GLB of the current values with some values over them,
validated like an edit, without touching the session (no history entry, no new version), through Flask's test
client on a real app (real CadQuery builds in the build worker)."""
from __future__ import annotations

import json

import pytest

from tests.test_web_cad import make_app
from tests.test_web_targets import client  # noqa: F401  (a fixture: the test client of this module's app)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    app = make_app(tmp_path_factory.mktemp("preview") / "data")
    yield app
    app.extensions["optim"].shutdown()


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
@pytest.mark.parametrize("route", ["/api/preview.glb", "/api/preview/diff"])
def test_bad_previews_are_json_errors_and_change_nothing(client, body, status, code, parameter, route):
    before = session_of(client)
    r = client.post(route, json=body)
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


def test_the_diff_gives_the_exact_size_and_volume_change_of_a_proposal(client):
    """The bracket's base leg 80 -> 100 mm: 20 mm longer along X, and one leg's thickness x width x 20 more volume
    (its holes move along but keep their size); measured on the B-rep, so exact to the kernel's precision."""
    from web.contract.responses import PreviewDiff

    state, history = session_of(client, "bracket")
    p = state["values"]
    assert p["base_length"] == 80
    r = client.post("/api/preview/diff?model=bracket", json={"values": {"base_length": 100}})
    assert r.status_code == 200, r.get_json()
    diff = r.get_json()
    PreviewDiff.model_validate(diff)  # the contract's response model
    assert diff["model"] == "bracket" and diff["units"] == "mm" and diff["base_version"] == state["version"]
    assert diff["before"]["size"] == pytest.approx([80, p["width"], p["upright_height"]], abs=1e-6)
    assert diff["after"]["size"] == pytest.approx([100, p["width"], p["upright_height"]], abs=1e-6)
    assert diff["size_change"] == pytest.approx([20, 0, 0], abs=1e-6)
    leg = p["thickness"] * p["width"] * 20
    assert diff["volume_change"] == pytest.approx(leg, rel=1e-6)
    assert diff["after"]["volume"] - diff["before"]["volume"] == pytest.approx(leg, rel=1e-6)
    assert diff["volume_relative"] == pytest.approx(leg / diff["before"]["volume"], rel=1e-9)
    assert diff["before"]["volume_method"] == "union"
    assert session_of(client, "bracket") == (state, history)  # nothing applied
    # The current design's own figures are the target panel's (the same B-rep measurement).
    same = client.post("/api/preview/diff?model=bracket", json={}).get_json()
    assert same["before"] == same["after"] == diff["before"] and same["volume_change"] == 0


def test_the_operation_is_in_the_generated_document(client):
    doc = client.get("/api/openapi.json").get_json()
    op = doc["paths"]["/api/preview.glb"]["post"]
    assert op["operationId"] == "post_api_preview_glb"
    assert "model/gltf-binary" in op["responses"]["200"]["content"]
    assert {"400", "404", "422", "504"} <= set(op["responses"])
    assert op["responses"]["200"]["headers"]["X-Base-Version"]["schema"] == {"type": "integer"}
    diff = doc["paths"]["/api/preview/diff"]["post"]
    assert diff["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/PreviewDiff"}
    assert {"400", "404", "422", "504"} <= set(diff["responses"])
    assert diff["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/PreviewRequest"}
    assert {"before", "after", "units", "volume_change"} <= set(doc["components"]["schemas"]["PreviewDiff"]["required"])
    body = doc["components"]["schemas"]["PreviewRequest"]
    assert body["properties"]["values"] == {"$ref": "#/components/schemas/ParameterValues"}


def test_a_cross_site_preview_is_refused(client):
    r = client.post("/api/preview.glb", json={}, headers={"Origin": "https://evil.example",
                                                          "Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 403


# --- "include current view": the render from the viewer's camera (POST /api/vlm's camera) ---------------------
import base64  # noqa: E402
import io  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from web import create_app  # noqa: E402
from web.config import Config  # noqa: E402

ISO = {"position": [400, -400, 300], "target": [0, 0, 40], "up": [0, 0, 1], "fov": 40, "aspect": 1.5}
TOP = {"position": [0, 0, 600], "target": [0, 0, 0], "up": [1, 0, 0], "projection": "orthographic", "height": 400}


@pytest.fixture()
def vlm_client(ollama, tmp_path):
    config = Config(data_dir=tmp_path / "data", cad_warmup=False, backend="ollama", ollama_url=ollama.url,
                    ollama_model="llava:latest", keep_alive_s=300)
    app = create_app(config)
    with app.test_client() as c:
        yield c
    app.extensions["optim"].shutdown()


def sent_render(ollama) -> np.ndarray:
    body = [q for q in ollama.requests if q.path == "/api/chat"][-1].body
    images = body["messages"][-1]["images"]
    assert len(images) == 1
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(images[0]))).convert("RGB"))


def test_the_render_the_model_sees_is_taken_from_the_camera_sent(vlm_client, ollama):
    c = vlm_client
    before = session_of(c)
    renders = {}
    for name, camera in (("iso", None), ("camera-iso", ISO), ("camera-top", TOP)):
        body = {"prompt": f"bigger wheels {name}", "include_render": True, **({"camera": camera} if camera else {})}
        r = c.post("/api/vlm", json=body)
        assert r.status_code == 200, r.get_json()
        renders[name] = sent_render(ollama)
        assert renders[name].shape == (384, 384, 3)
    fixed = c.get("/api/render.png?view=iso&size=384").data
    assert np.array_equal(renders["iso"], np.asarray(Image.open(io.BytesIO(fixed)).convert("RGB")))
    assert not np.array_equal(renders["camera-iso"], renders["iso"])
    assert not np.array_equal(renders["camera-top"], renders["camera-iso"])
    for image in renders.values():  # each shows the model, not an empty background
        assert (np.abs(image.astype(int) - [246, 247, 250]).max(axis=2) > 24).mean() > 0.02
    # drawn by the build worker and cached by camera: the same view again is not drawn again
    builder = c.application.extensions["optim"].builder
    drawn = builder.stats()["misses"]
    assert c.post("/api/vlm", json={"prompt": "bigger wheels again", "include_render": True,
                                    "camera": TOP}).status_code == 200
    assert np.array_equal(sent_render(ollama), renders["camera-top"]) and builder.stats()["misses"] == drawn
    assert session_of(c) == before


@pytest.mark.parametrize("camera", [
    "iso", [1, 2, 3], {"position": [1, 2], "target": [0, 0, 0], "up": [0, 0, 1]},
    {"position": ["1", 2, 3], "target": [0, 0, 0], "up": [0, 0, 1]},
    {"position": [1e300, 2, 3], "target": [0, 0, 0], "up": [0, 0, 1]},
    {"position": [1, 2, 3], "target": [0, 0, 0], "up": [0, 0, 1], "fov": 0},
    {"position": [1, 2, 3], "target": [0, 0, 0], "up": [0, 0, 1], "projection": "fisheye"},
    {"position": [1, 2, 3], "target": [0, 0, 0], "up": [0, 0, 1], "extra": 1},
])
def test_a_bad_camera_is_400_before_any_model_work(vlm_client, ollama, camera):
    r = vlm_client.post("/api/vlm", json={"prompt": "ok", "include_render": True, "camera": camera})
    assert r.status_code == 400, r.get_json()
    assert r.get_json()["error"] == "bad_camera" and "camera" in r.get_json()["message"]
    assert not [q for q in ollama.requests if q.path == "/api/chat"]


@pytest.mark.parametrize("camera", [
    {"position": [0, 0, 0], "target": [0, 0, 0], "up": [0, 0, 1]},
    {"position": [0, 0, 10], "target": [0, 0, 0], "up": [0, 0, 1]},
])
def test_a_degenerate_camera_is_422(vlm_client, ollama, camera):
    r = vlm_client.post("/api/vlm", json={"prompt": "ok", "include_render": True, "camera": camera})
    assert r.status_code == 422 and r.get_json()["error"] == "bad_camera", r.get_json()
    assert not [q for q in ollama.requests if q.path == "/api/chat"]


def test_render_camera_frames_what_it_is_given():
    from cad import render
    from cad.mesh import PartMesh

    v = np.array([[x, y, z] for x in (-5, 5) for y in (-5, 5) for z in (-5, 5)], float)
    t = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1], [2, 3, 7], [2, 7, 6],
                  [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]])
    cube = [PartMesh("cube", v, t, (0.3, 0.4, 0.5))]

    def share(camera):
        image = np.asarray(Image.open(io.BytesIO(render.render_png(cube, "iso", 128, camera=camera))))
        return (np.abs(image.astype(int) - [246, 247, 250]).max(axis=2) > 24).mean()

    top = {"position": [0, 0, 100], "target": [0, 0, 0], "up": [1, 0, 0], "projection": "orthographic"}
    assert share({**top, "height": 20}) == pytest.approx(0.25, abs=0.03)  # a 10 mm square in 20 mm
    assert share({**top, "height": 40}) == pytest.approx(0.0625, abs=0.02)
    near, far = (share({"position": [0, 0, d], "target": [0, 0, 0], "up": [1, 0, 0], "fov": 40}) for d in (40, 80))
    assert near > 3 * far > 0  # perspective: nearer is bigger
    assert share({"position": [0, 0, -100], "target": [0, 0, -200], "up": [1, 0, 0]}) == 0  # looking away


def test_the_length_unit_comes_from_the_schema():
    from cad.schema import Parameter, Schema

    def schema(*units):
        return Schema([Parameter(f"p{i}", f"P{i}", unit, "float", 0.0, 10.0, None, 1.0, "G", "")
                       for i, unit in enumerate(units)])

    assert schema("in", "in", "deg", "").length_unit() == "in"
    assert schema("mm", "deg").length_unit() == "mm"
    assert schema("deg", "").length_unit() == "mm"  # no length parameter: the project's default

"""Property-based fuzzing of every JSON endpoint (hypothesis, Flask test client, real app, fake Ollama engine).

Properties, for every input: never a 5xx; every 4xx is JSON with a string `error` and `message`; a rejected
request changes nothing (design version, values and history are as before); an accepted edit leaves only
finite, in-range values. Example counts are bounded so the file runs in well under a minute.
"""
from __future__ import annotations

import base64
import io
import json
import math

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tests.fake_engines import FakeOllama
from web import create_app
from web.config import Config

FUZZ = settings(max_examples=200, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FEW = settings(FUZZ, max_examples=60)
WRITE_ENDPOINTS = [("PATCH", "/api/params"), ("POST", "/api/undo"), ("POST", "/api/redo"), ("POST", "/api/reset"),
                   ("POST", "/api/vlm"), ("POST", "/api/proposals/{id}/apply")]
UPLOAD_LIMIT_MB = 0.05


@pytest.fixture(scope="module")
def engine():
    fake = FakeOllama()
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def app(engine, tmp_path_factory):
    config = Config(data_dir=tmp_path_factory.mktemp("fuzz") / "data", cad_warmup=False, backend="ollama",
                    ollama_url=engine.url, max_upload_mb=UPLOAD_LIMIT_MB, max_image_pixels=4_000_000)
    app = create_app(config)
    app.testing = True
    yield app
    app.extensions["optim"].shutdown()


@pytest.fixture(scope="module")
def client(app):
    return app.test_client()


@pytest.fixture(scope="module")
def schema(client):
    return client.get("/api/params").get_json()["schema"]


@pytest.fixture(scope="module")
def proposal_id(client):
    r = client.post("/api/vlm", json={"prompt": "bigger wheels"})
    assert r.status_code == 200, r.get_json()
    return r.get_json()["id"]


def design(client) -> tuple:
    hist = client.get("/api/history").get_json()
    return hist["version"], json.dumps(client.get("/api/params").get_json()["values"], sort_keys=True), \
        len(hist["entries"]), hist["position"]


def check(resp, before, client, schema=None):
    """The properties every answer must have; returns the parsed JSON body (or None)."""
    assert resp.status_code < 500, (resp.status_code, resp.get_data(as_text=True)[:300])
    body = None
    if resp.mimetype == "application/json":
        body = resp.get_json()
    if 400 <= resp.status_code < 500:
        assert isinstance(body, dict), resp.get_data(as_text=True)[:200]
        assert isinstance(body.get("error"), str) and body["error"]
        assert isinstance(body.get("message"), str) and body["message"]
        assert "Traceback" not in resp.get_data(as_text=True)
        assert design(client) == before, "a rejected request changed the design"
    if resp.status_code == 200 and schema is not None:
        values = client.get("/api/params").get_json()["values"]
        for p in schema:
            v = values[p["name"]]
            if p["type"] != "bool":
                assert isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                assert p["min"] <= v <= p["max"], (p["name"], v)
    return body


# ------------------------------------------------------------------------------------------------ strategies
JSON_LEAF = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
             | st.text(max_size=30))
JSON_VALUE = st.recursive(JSON_LEAF, lambda inner: st.lists(inner, max_size=4)
                          | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)
ODD_NUMBER_LITERALS = st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1" + "0" * 5000,
                                       "0.1e-400", "1E+308", "-0", "9" * 30])
WILD_VALUE = (st.floats() | st.integers(min_value=-10 ** 40, max_value=10 ** 40) | st.booleans() | st.none()
              | st.text(max_size=20) | st.lists(st.integers(), max_size=3) | st.dictionaries(st.text(max_size=3),
                                                                                             st.integers(), max_size=2))


@st.composite
def raw_bodies(draw) -> bytes:
    """Anything a client might send: bytes, text, JSON of any shape, JSON with NaN/huge literals, truncations."""
    kind = draw(st.sampled_from(["bytes", "text", "json", "literal", "truncated"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "text":
        return draw(st.text(max_size=200)).encode("utf-8", "surrogatepass")
    if kind == "json":
        return json.dumps(draw(JSON_VALUE)).encode()
    if kind == "literal":
        key = draw(st.sampled_from(["version", "values", "prompt", "max_new_tokens", "temperature", "parameters"]))
        return f'{{"{key}": {draw(ODD_NUMBER_LITERALS)}}}'.encode()
    text = json.dumps({"version": 0, "values": {"wheel_diameter": 100}, "prompt": "x"})
    return text[:draw(st.integers(0, len(text) - 1))].encode()


CONTENT_TYPES = st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded",
                                 "application/octet-stream", None])


def _path(path: str, proposal_id: str) -> str:
    return path.replace("{id}", proposal_id)


# ------------------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("method, path", WRITE_ENDPOINTS)
@FEW
@given(body=raw_bodies(), content_type=CONTENT_TYPES)
def test_any_body_gets_a_clean_answer(client, schema, proposal_id, method, path, body, content_type):
    before = design(client)
    kwargs = {"data": body} if content_type is None else {"data": body, "content_type": content_type}
    resp = client.open(_path(path, proposal_id), method=method, **kwargs)
    check(resp, before, client, schema)


@FUZZ
@given(data=st.data())
def test_parameter_edits_with_wild_values(client, schema, data):
    names = [p["name"] for p in schema]
    values = data.draw(st.dictionaries(st.sampled_from(names) | st.text(max_size=12), WILD_VALUE,
                                       min_size=1, max_size=4))
    version = data.draw(st.none() | st.integers(-5, 10 ** 20) | st.text(max_size=5) | st.floats() | st.booleans())
    body = {"values": values} if version is None else {"values": values, "version": version}
    raw = json.dumps(body, allow_nan=True)  # NaN/Infinity go out as the literals JavaScript would refuse to send
    before = design(client)
    resp = client.patch("/api/params", data=raw, content_type="application/json")
    answer = check(resp, before, client, schema)
    assert resp.status_code in (200, 400, 409, 422), resp.status_code
    if resp.status_code == 200 and answer.get("entry"):
        assert answer["version"] == before[0] + 1


def _not_a_render_size(text: str) -> bool:
    try:
        return not 64 <= int(text) <= 1024
    except ValueError:
        return text != ""


@FUZZ
@given(view=st.text(max_size=20), size=st.one_of(st.integers(max_value=63), st.integers(min_value=1025),
                                                 st.text(max_size=8).filter(_not_a_render_size)),
       model=st.none() | st.text(max_size=120))
def test_query_parameters(client, view, size, model):
    before = design(client)
    query = {"view": view, "size": str(size)}
    if model is not None:
        query["model"] = model
    resp = client.get("/api/render.png", query_string=query)
    check(resp, before, client)
    # every size drawn here is out of range (422) or not an integer (400): nothing is rendered
    assert resp.status_code in (400, 404, 422)
    for path in ("/api/params", "/api/history", "/api/model.stl"):
        if model is not None and model != "rover":
            check(client.get(path, query_string={"model": model}), before, client)


def _png(size=(16, 16)) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(out, format="PNG")
    return out.getvalue()


@st.composite
def image_items(draw):
    kind = draw(st.sampled_from(["random", "mutated", "truncated_b64", "not_a_string", "data_url", "odd_text"]))
    png = _png()
    if kind == "random":
        return base64.b64encode(draw(st.binary(max_size=300))).decode()
    if kind == "mutated":
        data = bytearray(png)
        for _ in range(draw(st.integers(1, 6))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        cut = draw(st.integers(8, len(data)))
        return base64.b64encode(bytes(data[:cut])).decode()
    if kind == "truncated_b64":
        text = base64.b64encode(png).decode()
        return text[:draw(st.integers(0, len(text) - 1))]
    if kind == "not_a_string":
        return draw(JSON_VALUE.filter(lambda v: not isinstance(v, str)))
    if kind == "data_url":
        mime = draw(st.sampled_from(["image/png", "image/svg+xml", "text/html", "", "image/png;charset=x"]))
        return f"data:{mime};base64," + base64.b64encode(draw(st.binary(max_size=100)) or png).decode()
    return draw(st.text(max_size=80))


@FUZZ
@given(prompt=st.none() | st.text(max_size=60) | st.integers() | st.just("x" * 4001),
       images=st.none() | st.lists(image_items(), max_size=5) | JSON_LEAF,
       max_new_tokens=st.none() | WILD_VALUE, temperature=st.none() | WILD_VALUE,
       flags=st.dictionaries(st.sampled_from(["stream", "include_render"]), WILD_VALUE, max_size=2))
def test_vlm_requests(client, engine, prompt, images, max_new_tokens, temperature, flags):
    body = {k: v for k, v in {"prompt": prompt, "images": images, "max_new_tokens": max_new_tokens,
                              "temperature": temperature}.items() if v is not None}
    body.update({k: v for k, v in flags.items() if v is not True})  # no streams or renders: keep it fast
    before = design(client)
    resp = client.post("/api/vlm", data=json.dumps(body, allow_nan=True), content_type="application/json")
    check(resp, before, client)
    assert resp.status_code in (200, 400, 404, 413, 422), resp.status_code


def test_decompression_bomb_and_wrong_formats(client):
    from PIL import Image

    bomb = io.BytesIO()
    Image.new("1", (6000, 6000)).save(bomb, format="PNG")  # a few kB on the wire, 36 Mpixel decoded
    svg = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
    for data, fragment in ((bomb.getvalue(), "pixels"), (svg, "not a readable image"),
                           (b"%PDF-1.4\n", "not a readable image")):
        before = design(client)
        resp = client.post("/api/vlm", json={"prompt": "ok", "images": [base64.b64encode(data).decode()]})
        body = check(resp, before, client)
        assert resp.status_code == 422 and fragment in body["message"]


@FEW
@given(files=st.lists(st.binary(max_size=400), min_size=1, max_size=5), prompt=st.text(max_size=30))
def test_multipart_uploads(client, files, prompt):
    before = design(client)
    data = {"prompt": prompt, "images": [(io.BytesIO(f), f"f{i}.png") for i, f in enumerate(files)]}
    resp = client.post("/api/vlm", data=data, content_type="multipart/form-data")
    check(resp, before, client)
    assert resp.status_code in (200, 400, 413, 422)


@FEW
@given(body=st.fixed_dictionaries({}, optional={"version": WILD_VALUE, "parameters": WILD_VALUE
                                                | st.lists(st.text(max_size=20), max_size=3)}))
def test_apply_with_wild_bodies(client, schema, proposal_id, body):
    before = design(client)
    if body.get("version") is None:
        body["version"] = -1  # a real apply must not slip through: this one is always stale
    resp = client.post(f"/api/proposals/{proposal_id}/apply", data=json.dumps(body, allow_nan=True),
                       content_type="application/json")
    check(resp, before, client, schema)
    assert 400 <= resp.status_code < 500


@pytest.mark.parametrize("method, path", WRITE_ENDPOINTS)
@settings(FEW, max_examples=5)
@given(extra=st.integers(1, 200_000))
def test_oversized_bodies_get_413(client, proposal_id, method, path, extra):
    limit = int(UPLOAD_LIMIT_MB * 1024 * 1024)
    before = design(client)
    body = b'{"prompt": "' + b"a" * (limit + extra) + b'"}'
    resp = client.open(_path(path, proposal_id), method=method, data=body, content_type="application/json")
    answer = check(resp, before, client)
    assert resp.status_code == 413 and answer["error"] == "too_large"


@FEW
@given(host=st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40),
       origin=st.none() | st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40))
def test_odd_host_and_origin_headers(client, schema, host, origin):
    headers = {"Host": host} if origin is None else {"Host": host, "Origin": origin}
    before = design(client)
    resp = client.post("/api/reset", json={"version": -1}, headers=headers)  # stale: never applies
    check(resp, before, client, schema)
    assert resp.status_code in (400, 403, 409), resp.status_code

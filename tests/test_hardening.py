"""Answers at the door (issue 17), through the Flask test client on a real app: hostile JSON nesting, unwritable
target storage, 405 Allow, 413 naming the limit that was hit, spec-forbidden values, cross-site expensive GETs, the
page's Content-Security-Policy and the clean-up of leftover temporaries at start."""
from __future__ import annotations

import errno
import re

import pytest

from cad.target_store import TargetNotSaved
from tests.test_security import make_app as make_test_app
from tests.test_web_targets import cube_stl
from web.openapi import spec

UNREACHABLE_ENGINE = "http://127.0.0.1:9"  # the discard port: nothing listens, connecting fails at once
DEEP_BODIES = {
    "arrays_1000": b'{"values": ' + b"[" * 1000 + b"]" * 1000 + b"}",
    "objects_1000": b'{"a": ' * 1000 + b"1" + b"}" * 1000,
    "arrays_100000": b"[" * 100_000 + b"]" * 100_000,  # the decoder itself raises RecursionError
    "values_nested_100": b'{"version": 0, "values": {"x": ' + b"[" * 100 + b"]" * 100 + b"}}",
}


def make_app(tmp_path, **overrides):
    return make_test_app(tmp_path, **{"backend": "ollama", "ollama_url": UNREACHABLE_ENGINE, **overrides})


@pytest.fixture()
def app(tmp_path):
    app = make_app(tmp_path)
    yield app
    app.extensions["optim"].shutdown()


@pytest.fixture()
def client(app):
    return app.test_client()


def design(client) -> tuple:
    hist = client.get("/api/history").get_json()
    return hist["version"], hist["position"], len(hist["entries"]), client.get("/api/params").get_json()["values"]


def assert_json_error(resp, status=None, code=None):
    body = resp.get_json()
    assert resp.mimetype == "application/json" and isinstance(body, dict), resp.get_data(as_text=True)[:200]
    assert isinstance(body.get("error"), str) and isinstance(body.get("message"), str) and body["message"]
    if status is not None:
        assert resp.status_code == status, body
    if code is not None:
        assert body["error"] == code, body
    return body


def write_operations(app):
    """(method, path) of every write route the app serves, path parameters filled in."""
    ops = []
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:\w+:)?(\w+)>", lambda m: "not-a-real-id", rule.rule)
        for method in sorted(rule.methods & {"POST", "PUT", "PATCH", "DELETE"}):
            ops.append((method, path))
    return ops


def json_request_operations(app) -> set[tuple[str, str]]:
    """(METHOD, path) whose request body the OpenAPI document declares as JSON."""
    ops = set()
    for path, item in spec(app)["paths"].items():
        for method, op in item.items():
            if "application/json" in op.get("requestBody", {}).get("content", {}):
                ops.add((method.upper(), re.sub(r"\{\w+\}", "not-a-real-id", path)))
    return ops


# ------------------------------------------------------------------------------------------------ deep JSON
@pytest.mark.parametrize("kind", sorted(DEEP_BODIES))
def test_deeply_nested_json_answers_400_on_every_json_endpoint(client, app, kind):
    ops = write_operations(app)
    json_ops = json_request_operations(app)
    assert len(json_ops) >= 9 and json_ops <= set(ops), json_ops - set(ops)
    before = design(client)
    for method, path in ops:
        resp = client.open(path, method=method, data=DEEP_BODIES[kind], content_type="application/json")
        assert resp.status_code < 500, (method, path, resp.get_data(as_text=True)[:300])
        if (method, path) in json_ops:
            body = assert_json_error(resp, 400, "malformed_json")
            assert "nests deeper" in body["message"] or "not valid JSON" in body["message"], body
        elif resp.status_code >= 400:
            assert_json_error(resp)
    assert design(client) == before


def test_a_shallow_body_still_works(client):
    state = client.get("/api/params").get_json()
    p = next(p for p in state["schema"] if p["type"] == "float")
    resp = client.patch("/api/params", json={"version": state["version"], "values": {p["name"]: p["min"]}})
    assert resp.status_code == 200 and resp.get_json()["version"] == state["version"] + 1


# ------------------------------------------------------------------------------------------------ spec-forbidden values
@pytest.mark.parametrize("body, code", [({"model": {}}, "bad_model"), ({"model": None}, "bad_model"),
                                        ({"model": 7}, "bad_model"), ({"version": None}, "bad_version"),
                                        ({"version": "3"}, "bad_version"), ({"version": True}, "bad_version")])
@pytest.mark.parametrize("path", ["/api/undo", "/api/redo", "/api/reset", "/api/optimise"])
def test_model_and_version_of_the_wrong_type_are_refused(client, path, body, code):
    before = design(client)
    assert_json_error(client.post(path, json=body), 400, code)
    assert design(client) == before


def test_patch_with_null_version_or_object_model_changes_nothing(client):
    state = client.get("/api/params").get_json()
    name = next(p["name"] for p in state["schema"] if p["type"] == "float")
    before = design(client)
    for extra in ({"version": None}, {"model": {}}, {"model": ["rover"]}):
        resp = client.patch("/api/params", json={"values": {name: state["values"][name] + 1}, **extra})
        assert_json_error(resp, 400)
    assert design(client) == before


@pytest.mark.parametrize("path", ["/api/render.png", "/api/model.stl", "/api/model.glb", "/api/model.step"])
@pytest.mark.parametrize("value", ["AAA", "yes", "2"])
def test_download_must_be_a_value_the_spec_allows(client, path, value):
    body = assert_json_error(client.get(path, query_string={"download": value}), 400, "bad_download")
    assert value in body["message"]
    enum = next(p for p in spec()["paths"][path]["get"]["parameters"] if p["name"] == "download")["schema"]["enum"]
    assert value not in enum


@pytest.mark.parametrize("size", ["1025", "2048", "63", "-1"])
def test_render_size_above_the_cap_is_422_and_the_spec_says_the_cap(client, size):
    body = assert_json_error(client.get("/api/render.png", query_string={"size": size}), 422, "bad_size")
    assert "1024" in body["message"]
    schema = next(p for p in spec()["paths"]["/api/render.png"]["get"]["parameters"] if p["name"] == "size")
    assert schema["schema"]["maximum"] == 1024


@pytest.mark.parametrize("size", ["abc", "5_12", " 512", "1e3", "٥١٢"])
def test_render_size_that_is_not_an_integer_is_400(client, size):
    assert_json_error(client.get("/api/render.png", query_string={"size": size}), 400, "bad_size")


# ------------------------------------------------------------------------------------------------ 405 and 413
def test_every_405_names_the_allowed_methods(client, app):
    checked = 0
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", "x", rule.rule).replace("model.x", "model.stl")
        wrong = next(m for m in ("PATCH", "PUT", "DELETE", "POST", "GET") if m not in rule.methods)
        resp = client.open(path, method=wrong)
        if resp.status_code != 405:  # another rule serves that method on the same path
            continue
        body = assert_json_error(resp, 405, "method_not_allowed")
        allow = {m.strip() for m in resp.headers["Allow"].split(",")}
        assert rule.methods - {"OPTIONS", "HEAD"} <= allow and wrong not in allow, (path, allow)
        assert wrong in body["message"]
        checked += 1
    assert checked >= 10


def test_413_names_the_limit_that_was_hit(tmp_path):
    app = make_app(tmp_path, max_upload_mb=1)
    client = app.test_client()
    try:
        # The general body limit
        body = assert_json_error(client.post("/api/vlm", data=b"x" * (2 * 2**20), content_type="application/json"),
                                 413, "too_large")
        assert "1 MB" in body["message"] and "20 MB" not in body["message"]
        # A target may be larger than the general limit: 2 MB is read (and refused as no CAD file), 21 MB is 413
        assert_json_error(client.put("/api/target", data=b"x" * (2 * 2**20)), 422, "invalid_target")
        body = assert_json_error(client.put("/api/target", data=b"\0" * (21 * 2**20)), 413, "too_large")
        assert "20 MB" in body["message"] and "1 MB" not in body["message"]
        # Werkzeug's cap on a non-file form field, well under the body limit
        resp = client.post("/api/vlm", data={"prompt": "x" * 600_000}, content_type="multipart/form-data")
        body = assert_json_error(resp, 413, "too_large")
        assert "form field" in body["message"] and "500,000 bytes" in body["message"], body
        assert client.get("/api/target").status_code == 404
    finally:
        app.extensions["optim"].shutdown()


# ------------------------------------------------------------------------------------------------ target storage
def test_put_target_into_an_unusable_data_dir_is_a_clear_503_and_stores_nothing(tmp_path):
    app = make_app(tmp_path)
    client = app.test_client()
    try:
        data_dir = app.config["OPTIM"].data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        (data_dir / "targets").write_text("a file where the targets folder should be")  # works even as root
        before = design(client)
        body = assert_json_error(client.put("/api/target", data=cube_stl(40)), 503, "target_not_saved")
        assert "could not be saved" in body["message"] and "OPTIM_DATA_DIR" in body["message"]
        assert_json_error(client.get("/api/target"), 404, "no_target")
        assert (data_dir / "targets").read_text().startswith("a file")
        assert design(client) == before
    finally:
        app.extensions["optim"].shutdown()


def test_a_failed_target_write_keeps_the_previous_target(tmp_path):
    """The previous target is a STEP; the new STL cannot be renamed into place (its name is taken by a folder:
    EISDIR, a real failure of the write that root cannot bypass). 503, and the STEP stays the target."""
    app = make_app(tmp_path)
    client = app.test_client()
    try:
        step = client.get("/api/model.step?model=bracket").data
        assert client.put("/api/target?model=bracket", data=step).status_code == 201
        folder = app.config["OPTIM"].data_dir / "targets"
        (folder / "bracket.stl").mkdir()
        assert_json_error(client.put("/api/target?model=bracket", data=cube_stl(40)), 503, "target_not_saved")
        assert (folder / "bracket.step").read_bytes() == step
        assert sorted(p.name for p in folder.iterdir()) == ["bracket.step", "bracket.stl"]  # no temporary left
        target = client.get("/api/target?model=bracket").get_json()
        assert target["format"] == "step" and target["size_bytes"] == len(step)
    finally:
        app.extensions["optim"].shutdown()


def test_a_full_disk_is_507_insufficient_storage(tmp_path):
    with open("/dev/full", "wb", buffering=0) as full:  # a real ENOSPC from the kernel
        with pytest.raises(OSError) as caught:
            full.write(b"x")
    assert caught.value.errno == errno.ENOSPC
    error = TargetNotSaved("saved", tmp_path, caught.value)
    assert (error.status, error.code) == (507, "insufficient_storage") and "No space left" in str(error)


# ------------------------------------------------------------------------------------------------ cross-site GETs, CSP
EXPENSIVE = ["/api/render.png", "/api/model.glb", "/api/model.stl", "/api/model.step", "/api/target",
             "/api/target.glb"]


@pytest.mark.parametrize("path", EXPENSIVE)
@pytest.mark.parametrize("headers", [{"Sec-Fetch-Site": "cross-site"}, {"Origin": "https://evil.example"},
                                     {"Origin": "null"}])
def test_cross_site_requests_for_expensive_gets_are_refused(client, path, headers):
    body = assert_json_error(client.get(path, headers=headers), 403, "cross_origin")
    assert "own page" in body["message"]


def test_same_origin_and_header_less_gets_pass_and_cheap_gets_are_not_blocked(client):
    for headers in ({}, {"Sec-Fetch-Site": "same-origin"}, {"Sec-Fetch-Site": "none"},
                    {"Origin": "http://localhost", "Sec-Fetch-Site": "same-origin"}):
        assert_json_error(client.get("/api/target", headers=headers), 404, "no_target")  # passed the guard
    # Reading state costs no build; a foreign page cannot read the answer anyway (no CORS headers)
    assert client.get("/api/params", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 200


def test_the_page_has_a_content_security_policy_with_a_fresh_nonce_for_its_import_map(client):
    nonces = []
    for _ in range(2):
        resp = client.get("/")
        csp = resp.headers["Content-Security-Policy"]
        directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
        assert directives["default-src"] == "'self'" and directives["object-src"] == "'none'"
        assert directives["frame-ancestors"] == "'none'" and "'unsafe-inline'" not in csp
        nonce = re.search(r"'nonce-([^']+)'", directives["script-src"]).group(1)
        assert f'<script type="importmap" nonce="{nonce}">' in resp.get_data(as_text=True)
        nonces.append(nonce)
    assert nonces[0] != nonces[1]
    assert "Content-Security-Policy" not in client.get("/api/params").headers


# ------------------------------------------------------------------------------------------------ leftovers at start
def test_leftover_temporaries_are_removed_at_start_and_real_files_kept(tmp_path):
    data = tmp_path / "data"
    leftovers = [data / "sessions" / ".rover.json.k2j3h4.tmp", data / "targets" / ".rover.ab12cd.stl",
                 data / "targets" / ".bracket.zz99.step", data / "cache" / "ab" / ".tmp-x1y2z3",
                 data / "dataset" / ".examples.jsonl.0f0f.tmp", data / "dataset" / "images" / ".ab.png.1234.tmp",
                 data / ".stray.json.5678.tmp"]
    kept = [data / "targets" / "bracket.stl", data / "cache" / "ab" / "abcdef.glb", data / "dataset" / "examples.jsonl",
            data / "notes.tmp", data / "sessions" / "README"]
    for path in leftovers + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"partial")
    app = make_app(tmp_path)
    try:
        assert [p for p in leftovers if p.exists()] == []
        assert all(p.read_bytes() == b"partial" for p in kept)
        assert app.test_client().get("/api/params").status_code == 200
    finally:
        app.extensions["optim"].shutdown()

"""The JSON VLM endpoint end to end: real worker process with the tiny LLaVA-OneVision + LoRA, and a real
HTTP Ollama-compatible server for deterministic proposals."""
from __future__ import annotations

import base64
import io
import json
import shutil
import threading

import pytest
from PIL import Image

from web import create_app
from web.config import Config


def png_bytes(size=(32, 32), color=(200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def sse_events(raw: str) -> list[tuple[str, dict]]:
    events = []
    for block in raw.split("\n\n"):
        lines = [line for line in block.splitlines() if line and not line.startswith(":")]
        if not lines:
            continue
        event = next(line[7:] for line in lines if line.startswith("event: "))
        data = json.loads("".join(line[6:] for line in lines if line.startswith("data: ")))
        events.append((event, data))
    return events


@pytest.fixture(scope="module")
def tiny_app(tiny_vlm, tmp_path_factory):
    config = Config(data_dir=tmp_path_factory.mktemp("data"), cad_warmup=False, backend="finetuned",
                    finetuned_model_path=tiny_vlm.adapter_dir, keep_alive_s=-1, vlm_dtype="float32")
    app = create_app(config)
    yield app
    app.extensions["optim"].shutdown()


@pytest.fixture()
def ollama_app(ollama, tmp_path):
    config = Config(data_dir=tmp_path / "data", cad_warmup=False, backend="ollama", ollama_url=ollama.url,
                    ollama_model="llava:latest", keep_alive_s=300)
    app = create_app(config)
    yield app
    app.extensions["optim"].shutdown()


def test_concurrent_first_requests_load_once_and_answer(tiny_app):
    manager = tiny_app.extensions["optim"].manager
    assert manager.status()["state"] == "unloaded"
    results = []

    def ask(i):
        with tiny_app.test_client() as c:
            r = c.post("/api/vlm", json={"prompt": f"make the wheels bigger {i}", "max_new_tokens": 8})
            results.append((r.status_code, r.get_json()))

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    [t.start() for t in threads]
    [t.join(120) for t in threads]
    assert [code for code, _ in results] == [200] * 4, results
    assert manager.load_count == 1
    body = results[0][1]
    assert body["backend"] == "finetuned" and body["id"] and isinstance(body["text"], str)
    assert isinstance(body["proposals"], list) and body["timings"]["total_s"] >= 0
    status = tiny_app.test_client().get("/api/vlm/status").get_json()
    assert status["state"] == "ready" and status["memory"]["rss_bytes"] > 10_000_000
    assert status["adapter"]


def test_identical_deterministic_request_is_cached(tiny_app):
    c = tiny_app.test_client()
    req = {"prompt": "narrower chassis please", "max_new_tokens": 512}  # room for a whole (parseable) answer
    first = c.post("/api/vlm", json=req).get_json()
    assert first["parse_error"] is None, first
    second = c.post("/api/vlm", json=req).get_json()
    assert first["cached"] is False and second["cached"] is True
    assert second["text"] == first["text"] and second["id"] != first["id"]
    third = c.post("/api/vlm", json={**req, "images": [b64(png_bytes())]}).get_json()
    assert third["cached"] is False


def test_an_answer_that_does_not_parse_is_never_cached(tiny_app):
    c = tiny_app.test_client()
    req = {"prompt": "shorter wheels base please", "max_new_tokens": 6}  # cut off: no readable proposal
    first = c.post("/api/vlm", json=req).get_json()
    assert first["parse_error"] and first["finish_reason"] == "length"
    assert c.post("/api/vlm", json=req).get_json()["cached"] is False


def test_images_and_render_reach_the_model(tiny_app):
    c = tiny_app.test_client()
    r = c.post("/api/vlm", json={"prompt": "match this photo", "images": ["data:image/png;base64," + b64(png_bytes())],
                                 "include_render": True, "max_new_tokens": 4})
    assert r.status_code == 200, r.get_json()


def test_streaming_relays_tokens_then_done(tiny_app):
    c = tiny_app.test_client()
    r = c.post("/api/vlm", json={"prompt": "taller head", "stream": True, "max_new_tokens": 8, "temperature": 0.7})
    assert r.status_code == 200 and r.mimetype == "text/event-stream"
    events = sse_events(r.get_data(as_text=True))
    kinds = [e for e, _ in events]
    assert kinds[-1] == "done" and "token" in kinds
    tokens = "".join(d["text"] for e, d in events if e == "token")
    assert tokens == events[-1][1]["text"]


@pytest.mark.parametrize("body, status, code", [
    ({}, 400, "missing_prompt"),
    ({"prompt": "   "}, 400, "missing_prompt"),
    ({"prompt": 5}, 400, "missing_prompt"),
    ({"prompt": "x" * 5000}, 422, "prompt_too_long"),
    ({"prompt": "ok", "images": "abc"}, 400, "bad_images"),
    ({"prompt": "ok", "images": ["###not base64###"]}, 400, "bad_image"),
    ({"prompt": "ok", "images": [b64(b"GIF89a" + b"\0" * 10)]}, 422, "bad_image"),
    ({"prompt": "ok", "images": [b64(b"just some text, not an image")]}, 422, "bad_image"),
    ({"prompt": "ok", "images": [b64(png_bytes())[:-13]]}, 400, "bad_image"),
    ({"prompt": "ok", "images": [b64(png_bytes()[:-40])]}, 422, "bad_image"),
    ({"prompt": "ok", "images": [b64(png_bytes())] * 5}, 400, "too_many_images"),
    ({"prompt": "ok", "max_new_tokens": 0}, 400, "bad_max_new_tokens"),
    ({"prompt": "ok", "max_new_tokens": 1.5}, 400, "bad_max_new_tokens"),
    ({"prompt": "ok", "temperature": "hot"}, 400, "bad_temperature"),
    ({"prompt": "ok", "stream": "maybe"}, 400, "bad_flag"),
    ({"prompt": "ok", "model": "nope"}, 404, "unknown_model"),
])
def test_bad_vlm_requests_are_refused_before_any_model_work(ollama_app, ollama, body, status, code):
    r = ollama_app.test_client().post("/api/vlm", json=body)
    assert r.status_code == status, r.get_json()
    assert r.get_json()["error"] == code and r.get_json()["message"]
    assert not [q for q in ollama.requests if q.path == "/api/chat"]


def test_decompression_bomb_is_refused(ollama_app):
    bomb = io.BytesIO()
    Image.new("1", (12000, 12000)).save(bomb, format="PNG")  # tiny file, 144 Mpixel
    r = ollama_app.test_client().post("/api/vlm", json={"prompt": "ok", "images": [b64(bomb.getvalue())]})
    assert r.status_code == 422 and "pixels" in r.get_json()["message"]


def test_multipart_upload(ollama_app):
    r = ollama_app.test_client().post("/api/vlm", data={"prompt": "bigger wheels",
                                                        "images": (io.BytesIO(png_bytes()), "ref.png")},
                                      content_type="multipart/form-data")
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["proposals"]


def test_proposals_apply_as_one_undoable_entry(ollama_app, ollama):
    c = ollama_app.test_client()
    answer = c.post("/api/vlm", json={"prompt": "bigger wheels", "include_render": True}).get_json()
    sent = [q for q in ollama.requests if q.path == "/api/chat"][-1].body
    assert len(sent["messages"][-1]["images"]) == 1  # the render went to the model
    valid = [p for p in answer["proposals"] if p["valid"]]
    assert valid, answer
    before = c.get("/api/params").get_json()
    r = c.post(f"/api/proposals/{answer['id']}/apply", json={"version": before["version"]})
    assert r.status_code == 200, r.get_json()
    state = r.get_json()
    for p in valid:
        assert state["values"][p["parameter"]] == p["value"]
    assert state["entry"]["source"] == {"kind": "vlm", "proposal_id": answer["id"]}
    undone = c.post("/api/undo").get_json()
    assert undone["values"] == before["values"]


def test_apply_errors(ollama_app):
    c = ollama_app.test_client()
    assert c.post("/api/proposals/nope/apply").status_code == 404
    answer = c.post("/api/vlm", json={"prompt": "bigger wheels"}).get_json()
    r = c.post(f"/api/proposals/{answer['id']}/apply", json={"parameters": ["not_a_parameter"]})
    assert r.status_code == 422 and r.get_json()["error"] == "bad_selection"
    r = c.post(f"/api/proposals/{answer['id']}/apply", json={"version": 99})
    assert r.status_code == 409
    assert c.get("/api/params").get_json()["version"] == 0


def test_ollama_down_gives_503_and_cad_keeps_working(tmp_path):
    config = Config(data_dir=tmp_path / "data", cad_warmup=False, backend="ollama",
                    ollama_url="http://127.0.0.1:9", http_connect_timeout_s=1)
    app = create_app(config)
    c = app.test_client()
    r = c.post("/api/vlm", json={"prompt": "anything"})
    assert r.status_code == 503 and "ollama serve" in r.get_json()["message"]
    assert c.get("/api/params").status_code == 200
    app.extensions["optim"].shutdown()


def test_corrupt_adapter_fails_clearly_while_cad_works(tiny_vlm, tmp_path):
    adapter = tmp_path / "broken"
    shutil.copytree(tiny_vlm.adapter_dir, adapter)
    (adapter / "adapter_model.safetensors").write_bytes(b"\x00garbage" * 10)
    config = Config(data_dir=tmp_path / "data", cad_warmup=False, backend="finetuned", finetuned_model_path=adapter,
                    vlm_dtype="float32")
    app = create_app(config)
    c = app.test_client()
    r = c.post("/api/vlm", json={"prompt": "anything", "max_new_tokens": 2})
    assert r.status_code == 503
    assert "adapter" in r.get_json()["message"].lower()
    status = c.get("/api/vlm/status").get_json()
    assert status["state"] == "failed" and status["error"]
    assert c.get("/api/params").status_code == 200
    assert c.get("/api/render.png?size=64").status_code == 200
    app.extensions["optim"].shutdown()


def test_load_and_unload_endpoints(tiny_vlm, tmp_path):
    config = Config(data_dir=tmp_path / "data", cad_warmup=False, backend="finetuned",
                    finetuned_model_path=tiny_vlm.adapter_dir, vlm_dtype="float32", keep_alive_s=-1)
    app = create_app(config)
    c = app.test_client()
    r = c.post("/api/vlm/load")
    assert r.status_code == 202 and r.get_json()["state"] in {"loading", "ready"}
    app.extensions["optim"].manager.ensure_ready(timeout=120)
    assert c.get("/api/vlm/status").get_json()["state"] == "ready"
    r = c.post("/api/vlm/unload")
    assert r.status_code == 200 and r.get_json()["state"] == "unloaded"
    app.extensions["optim"].shutdown()


def test_status_polling_does_not_hammer_a_remote_engine(ollama_app, ollama):
    c = ollama_app.test_client()
    for _ in range(10):
        body = c.get("/api/vlm/status").get_json()
        assert body["backend"] == "ollama" and body["state"] == "unloaded"
    assert len([q for q in ollama.requests if q.path == "/api/version"]) <= 2


def test_images_to_an_ollama_model_without_vision_get_a_422_that_says_so(ollama_app, ollama):
    ollama.capabilities = ["completion"]
    r = ollama_app.test_client().post("/api/vlm", json={"prompt": "match this photo", "images": [b64(png_bytes())]})
    body = r.get_json()
    assert r.status_code == 422 and body["error"] == "model_not_vision" and "cannot see images" in body["message"]

"""Switching LoRA adapters at run time over real HTTP: GET /api/vlm/adapters, POST /api/vlm/adapter.

The fine-tuned backend runs the tiny LLaVA-OneVision in a real worker process; "alt" is the same adapter with
its lora_B negated, so it demonstrably answers differently on the same base."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import requests
from safetensors.numpy import load_file, save_file

from tests.fake_engines import FakeOllama
from tests.training_data import serve
from web import create_app
from web.config import Config

PROMPT = {"prompt": "make the wheels bigger", "max_new_tokens": 12}


def _edit_config(folder: Path, **changes) -> None:
    path = folder / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.fixture(scope="module")
def runs(tiny_vlm, tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    orig = tiny_vlm.copy_adapter(runs / "orig")
    alt = tiny_vlm.copy_adapter(runs / "alt")
    weights = load_file(alt / "adapter_model.safetensors")
    save_file({k: (-v if "lora_B" in k else v) for k, v in weights.items()}, str(alt / "adapter_model.safetensors"))
    losses = np.linspace(6, 1, 900).tolist()
    (alt / "training_summary.json").write_text(json.dumps({"steps": 900, "loss_per_step": losses}))
    broken = tiny_vlm.copy_adapter(runs / "broken")
    (broken / "adapter_model.safetensors").write_bytes(b"\x00garbage" * 10)
    _edit_config(tiny_vlm.copy_adapter(runs / "wrong-rank"), r=8)  # sound files that do not fit the weights
    _edit_config(tiny_vlm.copy_adapter(runs / "other-base"), base_model_name_or_path=str(runs / "no-such-base"))
    (runs / "notes").mkdir()  # no adapter_config.json: not an adapter
    (runs / "README.md").write_text("not a folder")
    shutil.copytree(orig, runs.parent / "outside", dirs_exist_ok=True)  # beside runs/: not reachable by name
    return runs


@pytest.fixture(scope="module")
def server(runs, tmp_path_factory):
    config = Config(data_dir=tmp_path_factory.mktemp("data"), runs_dir=runs, cad_warmup=False, backend="finetuned",
                    finetuned_model_path=runs / "orig", keep_alive_s=-1, vlm_dtype="float32")
    app = create_app(config)
    with serve(app) as url:
        yield url, app.extensions["optim"].manager
    app.extensions["optim"].shutdown()


def ask(url) -> dict:
    r = requests.post(url + "/api/vlm", json=PROMPT, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def switch(url, name):
    return requests.post(url + "/api/vlm/adapter", json={"name": name}, timeout=120)


def status(url) -> dict:
    return requests.get(url + "/api/vlm/status", timeout=10).json()


def test_listing_shows_adapter_folders_and_the_active_one(server, runs):
    url, _ = server
    body = requests.get(url + "/api/vlm/adapters", timeout=10).json()
    assert [a["name"] for a in body["adapters"]] == ["alt", "broken", "orig", "other-base", "wrong-rank"]
    assert body["active"] == "orig" and body["switchable"] is True
    alt = next(a for a in body["adapters"] if a["name"] == "alt")
    assert alt["r"] == 4 and alt["base_model"] and alt["size_bytes"] > 0 and alt["created"] and not alt["active"]
    assert alt["training"]["steps"] == 900 and len(alt["training"]["loss_per_step"]) <= 200


def test_switching_changes_answers_without_reloading_the_base(server, runs):
    url, manager = server
    assert switch(url, "orig").status_code == 200
    first = ask(url)
    pid, loads = manager.backend.pid, manager.load_count
    r = switch(url, "alt")
    assert r.status_code == 200, r.text
    assert r.json()["applied"] == "now" and r.json()["status"]["adapter"] == str(runs / "alt")
    second = ask(url)
    assert second["text"] != first["text"] and second["cached"] is False and second["adapter"] == str(runs / "alt")
    assert manager.backend.pid == pid and manager.load_count == loads  # same worker, base not reloaded
    listing = requests.get(url + "/api/vlm/adapters", timeout=10).json()
    assert listing["active"] == "alt"
    assert switch(url, "orig").status_code == 200
    again = ask(url)
    assert again["text"] == first["text"] and manager.backend.pid == pid


@pytest.mark.parametrize("name, status_code, code, says", [
    ("../orig", 422, "invalid_adapter_name", "not a path"), ("/etc", 422, "invalid_adapter_name", "not a path"),
    ("orig/../alt", 422, "invalid_adapter_name", "not a path"), ("..", 422, "invalid_adapter_name", "not a path"),
    ("outside", 404, "unknown_adapter", "no adapter"), ("notes", 404, "unknown_adapter", "no adapter"),
    ("nope", 404, "unknown_adapter", "no adapter"),
    ("broken", 422, "bad_adapter", "corrupt"),  # refused before the worker sees it
    ("wrong-rank", 422, "bad_adapter", "could not be loaded"),  # refused by peft inside the worker
    ("other-base", 422, "base_mismatch", "trained on base model"),
])
def test_bad_adapter_names_leave_the_active_adapter_serving(server, runs, name, status_code, code, says):
    url, manager = server
    assert switch(url, "alt").status_code == 200
    before = ask(url)["text"]
    pid = manager.backend.pid
    r = switch(url, name)
    assert r.status_code == status_code, r.text
    assert r.json()["error"] == code and says in r.json()["message"]
    assert status(url)["adapter"] == str(runs / "alt") and status(url)["state"] == "ready"
    assert ask(url)["text"] == before and manager.backend.pid == pid


@pytest.mark.parametrize("body", [{}, {"name": 5}, {"name": "  "}])
def test_malformed_switch_requests(server, body):
    url, _ = server
    r = requests.post(url + "/api/vlm/adapter", json=body, timeout=10)
    assert r.status_code == 400 and r.json()["error"] == "missing_name"


def test_switch_while_unloaded_applies_at_the_next_load(server, runs):
    url, manager = server
    assert switch(url, "orig").status_code == 200
    expected = ask(url)["text"]
    assert switch(url, "alt").status_code == 200
    alt_text = ask(url)["text"]
    assert requests.post(url + "/api/vlm/unload", timeout=30).json()["state"] == "unloaded"
    r = switch(url, "orig")
    assert r.status_code == 200 and r.json()["applied"] == "next_load"
    assert status(url)["adapter"] == str(runs / "orig") and status(url)["state"] == "unloaded"
    loads = manager.load_count
    answer = ask(url)
    assert answer["text"] == expected != alt_text and manager.load_count == loads + 1


def test_fixed_model_backends_refuse_to_switch(tmp_path, runs):
    engine = FakeOllama()
    engine.start()
    app = create_app(Config(data_dir=tmp_path / "data", runs_dir=runs, cad_warmup=False, backend="ollama",
                            ollama_url=engine.url))
    try:
        with serve(app) as url:
            r = switch(url, "orig")
            assert r.status_code == 409 and r.json()["error"] == "adapters_unsupported"
            assert "fine-tuned" in r.json()["message"]
            body = requests.get(url + "/api/vlm/adapters", timeout=10).json()
            assert body["switchable"] is False and body["active"] is None
    finally:
        app.extensions["optim"].shutdown()
        engine.stop()

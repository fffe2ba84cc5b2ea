"""Training an adapter from the API (web/training_api.py, vlm/train_jobs.py) over real HTTP: a real
`python -m vlm.train` child on the tiny LLaVA-OneVision, its progress, cancel, refusals, and switching to the result."""
from __future__ import annotations

import json
import os
import time

import pytest
import requests

from tests.training_data import serve
from web import create_app
from web.config import Config

FINISH_S = 240


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from vlm.synth import SynthConfig, synthesise

    out = tmp_path_factory.mktemp("synth") / "data"
    synthesise(SynthConfig(models=["bracket"], count=12, seed=3, styles={"absolute": 1}, render_share=0.0,
                           val=0.0, test=0.0, workers=1, check_text_builds=False), out, progress=False)
    return out


def _server(tiny_vlm, tmp_path_factory, dataset, backend="finetuned"):
    runs = tmp_path_factory.mktemp("runs")
    tiny_vlm.copy_adapter(runs / "orig")
    config = Config(data_dir=tmp_path_factory.mktemp("data"), runs_dir=runs, cad_warmup=False, backend=backend,
                    finetuned_model_path=runs / "orig", keep_alive_s=-1, vlm_dtype="float32", dataset_dir=dataset)
    return create_app(config), runs


@pytest.fixture(scope="module")
def server(tiny_vlm, tmp_path_factory, dataset):
    app, runs = _server(tiny_vlm, tmp_path_factory, dataset)
    with serve(app) as url:
        yield url, runs, app.extensions["optim"]
    app.extensions["optim"].shutdown()


def wait_until_done(url) -> dict:
    deadline, seen = time.monotonic() + FINISH_S, []
    while time.monotonic() < deadline:
        job = requests.get(url + "/api/vlm/train", timeout=10).json()["job"]
        seen.append(job)
        if job["state"] != "running":
            return job, seen
        time.sleep(0.2)
    raise AssertionError(f"training did not finish in {FINISH_S} s: {seen[-1]}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_trained_adapter_appears_in_the_picker_and_serves(server):
    url, runs, svc = server
    assert requests.get(url + "/api/vlm/train", timeout=10).json() == {"job": None}
    r = requests.post(url + "/api/vlm/train", json={"name": "mine", "max_steps": 6}, timeout=30)
    assert r.status_code == 202, r.text
    assert r.json()["job"]["state"] == "running" and r.json()["job"]["examples"] == 12
    again = requests.post(url + "/api/vlm/train", json={"name": "other", "max_steps": 6}, timeout=30)
    assert again.status_code == 409 and again.json()["error"] == "training_running"
    job, seen = wait_until_done(url)
    assert job["state"] == "finished", job
    assert job["step"] == job["total_steps"] == 6 and job["eta_s"] == 0.0
    steps = [j["step"] for j in seen]
    assert steps == sorted(steps)  # progress only moves forward
    summary = json.loads((runs / "mine" / "training_summary.json").read_text())
    assert summary["examples"] == 12 and summary["steps"] == 6
    listing = requests.get(url + "/api/vlm/adapters", timeout=10).json()
    mine = next(a for a in listing["adapters"] if a["name"] == "mine")
    assert mine["training"]["steps"] == 6 and "error" not in mine
    switched = requests.post(url + "/api/vlm/adapter", json={"name": "mine"}, timeout=120)
    assert switched.status_code == 200, switched.text
    answer = requests.post(url + "/api/vlm", json={"prompt": "make the base longer", "max_new_tokens": 8},
                           timeout=120)
    assert answer.status_code == 200, answer.text
    assert svc.manager.status()["adapter"].endswith("mine")
    taken = requests.post(url + "/api/vlm/train", json={"name": "mine", "max_steps": 2}, timeout=30)
    assert taken.status_code == 409 and taken.json()["error"] == "adapter_exists"


def test_cancel_stops_the_training_child(server):
    url, runs, _ = server
    r = requests.post(url + "/api/vlm/train", json={"name": "long", "max_steps": 100000}, timeout=30)
    assert r.status_code == 202, r.text
    pid = r.json()["job"]["pid"] if "pid" in r.json()["job"] else None
    deadline = time.monotonic() + 60
    while requests.get(url + "/api/vlm/train", timeout=10).json()["job"]["phase"] == "starting":
        assert time.monotonic() < deadline, "training never started its steps"
        time.sleep(0.2)
    cancelled = requests.delete(url + "/api/vlm/train", timeout=30)
    assert cancelled.status_code == 200 and cancelled.json()["job"]["state"] == "cancelled"
    assert not (runs / "long" / "adapter_config.json").exists()  # nothing half-trained is published
    if pid is not None:
        assert not _alive(pid)
    nothing = requests.delete(url + "/api/vlm/train", timeout=10)
    assert nothing.status_code == 409 and nothing.json()["error"] == "no_training"


@pytest.mark.parametrize("body, status, code", [
    ({}, 400, "missing_name"), ({"name": ""}, 400, "missing_name"), ({"name": 5}, 400, "missing_name"),
    ({"name": "../escape"}, 422, "invalid_adapter_name"), ({"name": "a/b"}, 422, "invalid_adapter_name"),
    ({"name": "ok", "max_steps": -1}, 400, "bad_max_steps"), ({"name": "ok", "max_steps": 10**9}, 400, "bad_max_steps"),
    ({"name": "ok", "epochs": "many"}, 400, "bad_epochs"),
])
def test_bad_requests_are_refused_and_start_nothing(server, body, status, code):
    url, runs, _ = server
    before = sorted(p.name for p in runs.iterdir())
    r = requests.post(url + "/api/vlm/train", json=body, timeout=10)
    assert r.status_code == status and r.json()["error"] == code, r.text
    assert r.json()["message"] and "Traceback" not in r.text
    assert sorted(p.name for p in runs.iterdir()) == before


def test_no_examples_and_remote_backends_are_refused(tiny_vlm, tmp_path_factory):
    empty = tmp_path_factory.mktemp("empty")
    app, runs = _server(tiny_vlm, tmp_path_factory, empty)
    client = app.test_client()
    r = client.post("/api/vlm/train", json={"name": "none"})
    assert r.status_code == 422 and r.get_json()["error"] == "no_training_examples"
    assert not (runs / "none").exists()
    app.extensions["optim"].shutdown()
    remote, _ = _server(tiny_vlm, tmp_path_factory, empty, backend="ollama")
    r = remote.test_client().post("/api/vlm/train", json={"name": "x"})
    assert r.status_code == 409 and r.get_json()["error"] == "training_unsupported"
    remote.extensions["optim"].shutdown()

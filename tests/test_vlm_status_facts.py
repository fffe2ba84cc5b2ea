"""/api/vlm/status from the engine's own facts, fetched in the background: a down, evicted or hung engine is
reported within 2 s and never makes a status call (or POST /api/vlm/load) wait."""
from __future__ import annotations

import time

import pytest

from tests.fake_engines import FakeOllama, FakeOpenAI
from tests.polling import wait_until
from web import create_app
from web.config import Config


@pytest.fixture
def engine():
    fake = FakeOllama(stall_s=8.0)
    fake.start()
    yield fake
    fake.stop()


def _app(tmp_path, **kw):
    config = Config(data_dir=tmp_path / "data", cad_warmup=False, keep_alive_s=300, http_read_timeout_s=10,
                    **kw)
    return create_app(config)


@pytest.fixture
def ollama_client(engine, tmp_path):
    app = _app(tmp_path, backend="ollama", ollama_url=engine.url, ollama_model="llava:latest")
    yield app.test_client(), app.extensions["optim"].manager
    app.extensions["optim"].shutdown()


def _status(client) -> dict:
    return client.get("/api/vlm/status").get_json()


def test_memory_and_expiry_come_from_ollamas_ps(ollama_client, engine):
    client, manager = ollama_client
    manager.ensure_ready(timeout=10)
    status = wait_until(lambda: (s := _status(client))["engine"].get("loaded") and s, 2)
    assert status["state"] == "ready" and status["memory"]["gpu_bytes"] == FakeOllama.size_vram
    assert status["engine"]["expires_at"] == "2099-01-01T00:00:00Z" and status["engine"]["reachable"] is True
    assert status["engine"]["age_s"] is not None and status["engine"]["age_s"] < 2


def test_an_evicted_model_is_reported_unloaded_within_2s(ollama_client, engine):
    client, manager = ollama_client
    manager.ensure_ready(timeout=10)
    assert _status(client)["state"] == "ready"
    engine.loaded.clear()  # Ollama's own keep-alive or memory pressure dropped it
    started = time.monotonic()
    status = wait_until(lambda: (s := _status(client))["state"] == "unloaded" and s, 2.0)
    assert status, "the evicted model must be reported within 2 s"
    assert status["engine"]["loaded"] is False and status["memory"]["gpu_bytes"] is None
    print(f"eviction reported after {time.monotonic() - started:.2f} s")


def test_a_down_engine_is_reported_within_2s(ollama_client, engine):
    client, manager = ollama_client
    manager.ensure_ready(timeout=10)
    engine.stop()
    status = wait_until(lambda: (s := _status(client))["state"] == "failed" and s, 2.0)
    assert status, "a stopped engine must be reported within 2 s"
    assert status["engine"]["reachable"] is False and "not reachable" in status["error"]


def test_a_hung_engine_never_stalls_status_or_load(ollama_client, engine):
    client, manager = ollama_client
    manager.ensure_ready(timeout=10)
    first = _status(client)
    assert first["state"] == "ready"
    engine.hang_gets = True
    time.sleep(1.1)  # the facts are old enough to be asked for again; the engine will not answer
    slowest = 0.0
    for _ in range(5):
        started = time.monotonic()
        status = _status(client)
        slowest = max(slowest, time.monotonic() - started)
        time.sleep(0.1)
    assert slowest < 0.5, f"a status call took {slowest:.2f} s against a hung engine"
    assert status["engine"]["age_s"] >= 1.0  # the last known facts, and how old they are
    started = time.monotonic()
    r = client.post("/api/vlm/load")
    assert r.status_code == 202 and time.monotonic() - started < 0.5
    # the engine stays silent past the status read timeout (2 s): then it is reported as not reachable
    status = wait_until(lambda: (s := _status(client))["engine"].get("reachable") is False and s, 4.0)
    assert status and status["state"] == "failed"
    engine.hang_gets = False


def test_openai_engine_that_stops_serving_the_model_is_unloaded(tmp_path):
    with FakeOpenAI() as fake:
        app = _app(tmp_path, backend="openai", openai_base_url=fake.base_url, openai_model=fake.models[0])
        client, manager = app.test_client(), app.extensions["optim"].manager
        try:
            manager.ensure_ready(timeout=10)
            assert wait_until(lambda: _status(client)["engine"].get("loaded"), 2)
            fake.models = ["another-model"]
            status = wait_until(lambda: (s := _status(client))["state"] == "unloaded" and s, 2.0)
            assert status and status["engine"]["served_models"] == ["another-model"]
        finally:
            app.extensions["optim"].shutdown()

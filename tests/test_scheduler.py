"""vlm.scheduler end to end: cancels reach the engine (fake engines record the close; the real tiny worker stops),
a full queue answers 503 busy while edits stay fast, a slow streamed generation is bounded by VLM_GENERATE_TIMEOUT
and not by VLM_READ_TIMEOUT, and the response cache follows the adapter's content.

The servers are real: `optim.py` under waitress (tests/fixtures_server.py) or the Flask app against the fake
engines over HTTP (tests/fake_engines.py); the fine-tuned backend runs the tiny model in its worker process.
"""
from __future__ import annotations

import statistics
import threading
import time

import psutil
import pytest
import requests

from tests.fake_engines import FakeOllama, FakeOpenAI
from tests.fixtures_server import TINY_FINETUNED_ENV, start_live_server
from tests.polling import wait_until
from vlm.backend import CancelToken, GenerateRequest, GenerateResult, GenerationCancelled
from vlm.scheduler import Busy, Scheduler
from web import create_app
from web.config import Config


def ask_stream_until_first_token(url: str, prompt: str, **body) -> requests.Response:
    """POST a streamed /api/vlm and read until its first token event; the response is left open."""
    r = requests.post(url + "/api/vlm", json={"prompt": prompt, "stream": True, **body}, stream=True, timeout=60)
    assert r.status_code == 200, r.text
    for line in r.iter_lines():
        if line.startswith(b"event: token"):
            return r
        assert not line.startswith(b"event: error"), next(r.iter_lines())
    raise AssertionError("the stream ended before its first token")


def queue_stats(server) -> dict:
    return server.api("GET", "/api/vlm/status").json()["queue"]


# ---------------------------------------------------------------------------------------- cancel reaches the engine
def test_stop_of_a_streamed_ask_closes_the_remote_engine_stream_within_a_second(tmp_path):
    engine = FakeOllama(chunks=60, delay_s=0.25)  # a 15 s answer, one piece every 0.25 s
    engine.start()
    server = start_live_server({"VLM_BACKEND": "ollama", "OLLAMA_URL": engine.url, "CAD_WARMUP": "0"},
                               tmp_path / "data")
    try:
        r = ask_stream_until_first_token(server.url, "bigger wheels")
        closed_by_client = time.monotonic()
        r.close()  # what the assistant's Stop does (fetch aborted)
        closed_upstream = engine.wait_for_close(timeout=5)
        assert closed_upstream is not None, "optim kept the engine's stream open"
        assert closed_upstream - closed_by_client < 1.0, closed_upstream - closed_by_client
        print(f"the engine saw its stream closed {closed_upstream - closed_by_client:.2f} s after the client's Stop")
        assert engine.closes[0][0] == "/api/chat"
        assert wait_until(lambda: queue_stats(server)["running"] == 0, 1.0)
        # the engine is free for the next ask at once
        engine.delay_s = 0
        assert server.api("POST", "/api/vlm", json={"prompt": "again"}).status_code == 200
    finally:
        server.stop()
        engine.stop()


def test_stop_ends_the_generation_in_the_worker_within_a_second(tiny_vlm, tmp_path):
    # Unconstrained, the untrained tiny model babbles to max_new_tokens: several seconds of generation.
    server = start_live_server({**TINY_FINETUNED_ENV, "FINETUNED_MODEL_PATH": str(tiny_vlm.adapter_dir),
                                "VLM_CONSTRAINED_DECODING": "0", "CAD_WARMUP": "0"}, tmp_path / "data")
    try:
        r = ask_stream_until_first_token(server.url, "taller head", max_new_tokens=2048, temperature=0.8)
        [worker] = [p for p in psutil.Process(server.process.pid).children(recursive=True)
                    if "vlm.worker" in " ".join(p.cmdline())]
        started = time.monotonic()
        r.close()
        assert wait_until(lambda: queue_stats(server)["running"] == 0, 1.0), "the job did not end within 1 s"
        stopped_after = time.monotonic() - started
        cpu_before = sum(worker.cpu_times()[:2])
        time.sleep(0.5)
        idle_cpu = sum(worker.cpu_times()[:2]) - cpu_before
        assert idle_cpu < 0.1, f"the worker kept computing after the cancel ({idle_cpu:.2f} CPU s in 0.5 s)"
        assert worker.is_running(), "the worker was killed instead of stopping"
        status = server.api("GET", "/api/vlm/status").json()
        assert status["state"] == "ready" and status["load_count"] == 1
        print(f"worker stopped {stopped_after:.2f} s after the client closed the stream")
        answer = server.api("POST", "/api/vlm", json={"prompt": "ok", "max_new_tokens": 4}, timeout=30)
        assert answer.status_code == 200 and answer.json()["timings"]["total_s"] < 5
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------- bounded queue
def test_a_full_queue_answers_busy_at_once_and_edits_stay_fast(tmp_path):
    engine = FakeOllama(behaviour="slow", stall_s=30)  # every ask waits until released
    engine.start()
    server = start_live_server({"VLM_BACKEND": "ollama", "OLLAMA_URL": engine.url, "CAD_WARMUP": "0",
                                "VLM_MAX_QUEUE": "3", "THREADS": "16"}, tmp_path / "data")
    session = requests.Session()

    def params_latencies(count: int) -> list[float]:
        samples = []
        for _ in range(count):
            t0 = time.perf_counter()
            assert session.get(server.url + "/api/params", timeout=10).status_code == 200
            samples.append(time.perf_counter() - t0)
        return samples

    try:
        params_latencies(5)  # warm: the first read builds the session
        idle = params_latencies(40)
        results: list[tuple[int, dict, str | None, float]] = []
        lock = threading.Lock()

        def ask(i):
            t0 = time.monotonic()
            r = requests.post(server.url + "/api/vlm", json={"prompt": f"variant {i}"}, timeout=60)
            with lock:
                results.append((r.status_code, r.json(), r.headers.get("Retry-After"), time.monotonic() - t0))

        asks = [threading.Thread(target=ask, args=(i,)) for i in range(20)]
        [t.start() for t in asks]
        assert wait_until(lambda: len(results) >= 16, 10), results
        busy = [res for res in results if res[0] == 503]
        assert len(busy) == 16 and all(b[1]["error"] == "busy" and b[1]["message"] for b in busy)
        assert all(b[2] and int(b[2]) >= 1 for b in busy) and max(b[3] for b in busy) < 3
        assert queue_stats(server) == {"running": 1, "waiting": 3, "parallel": 1, "max_queue": 3,
                                       "busy_answers": 16}
        loaded = params_latencies(40)  # while 4 asks hold their places
        p99_idle, p99_loaded = max(idle), max(loaded)
        print(f"GET /api/params p50/p99 idle {statistics.median(idle) * 1000:.1f}/{p99_idle * 1000:.1f} ms, "
              f"with 4 asks waiting and 16 refused {statistics.median(loaded) * 1000:.1f}/{p99_loaded * 1000:.1f} ms")
        assert p99_loaded < max(2 * p99_idle, 0.1)
        engine.released.set()  # the engine answers: the four admitted asks complete
        [t.join(30) for t in asks]
        assert sorted(code for code, *_ in results) == [200] * 4 + [503] * 16
    finally:
        server.stop()
        engine.stop()


class _BlockingManager:
    """A stand-in ModelManager whose generations run until released or cancelled."""

    def __init__(self, parallel: int = 1):
        self.backend = type("B", (), {"max_parallel": parallel})()
        self.release = threading.Event()
        self.started: list[str] = []

    def generate(self, request, on_token=None):
        self.started.append(request.prompt)
        while not self.release.wait(0.01):
            if request.cancel.is_set():
                raise GenerationCancelled()
        return GenerateResult(text=request.prompt, model="m")


def _run_in_thread(job, out: dict):
    def run():
        try:
            out[job.request.prompt] = job.run().text
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            out[job.request.prompt] = exc
    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_jobs_run_in_order_within_the_parallel_limit_and_a_cancelled_waiter_leaves_at_once():
    manager = _BlockingManager(parallel=2)
    scheduler = Scheduler(manager, max_queue=2)
    jobs = [scheduler.submit(GenerateRequest(system="", prompt=f"p{i}")) for i in range(4)]
    with pytest.raises(Busy) as err:
        scheduler.submit(GenerateRequest(system="", prompt="p4"))
    assert err.value.status == 503 and err.value.code == "busy" and err.value.retry_after_s >= 1
    out: dict = {}
    threads = [_run_in_thread(job, out) for job in jobs]
    assert wait_until(lambda: manager.started == ["p0", "p1"], 2), manager.started
    started = time.monotonic()
    jobs[2].cancel()
    threads[2].join(1)
    assert isinstance(out["p2"], GenerationCancelled) and time.monotonic() - started < 0.2
    assert scheduler.stats()["waiting"] == 1
    scheduler.submit(GenerateRequest(system="", prompt="p5")).discard()  # the freed place can be taken
    manager.release.set()
    [t.join(2) for t in threads]
    assert out["p0"] == "p0" and out["p3"] == "p3" and manager.started == ["p0", "p1", "p3"]
    assert scheduler.stats() == {"running": 0, "waiting": 0, "parallel": 2, "max_queue": 2, "busy_answers": 1}


def test_a_cancel_token_runs_its_callbacks_once_and_at_once_when_already_set():
    token, calls = CancelToken(), []
    forget = token.on_cancel(lambda: calls.append("a"))
    token.on_cancel(lambda: calls.append("b"))
    forget()
    token.set()
    token.set()
    token.on_cancel(lambda: calls.append("late"))
    assert calls == ["b", "late"] and token.is_set() and token.wait(0)


# ---------------------------------------------------------------------------------------- generation time limits
def _remote_app(tmp_path, engine, **config):
    backend = "openai" if isinstance(engine, FakeOpenAI) else "ollama"
    urls = {"openai_base_url": engine.base_url} if backend == "openai" else {"ollama_url": engine.url}
    return create_app(Config(data_dir=tmp_path / "data", cad_warmup=False, backend=backend, **urls, **config))


@pytest.mark.parametrize("engine_class", [FakeOllama, FakeOpenAI])
def test_a_slow_non_streamed_generation_within_the_generate_timeout_succeeds(tmp_path, engine_class):
    engine = engine_class(chunks=8, delay_s=0.3)  # ~2.1 s in all, never silent for 0.5 s
    engine.start()
    app = _remote_app(tmp_path, engine, http_read_timeout_s=0.5, generate_timeout_s=10)
    try:
        started = time.monotonic()
        r = app.test_client().post("/api/vlm", json={"prompt": "bigger wheels"})
        elapsed = time.monotonic() - started
        assert r.status_code == 200, r.get_json()
        assert r.get_json()["proposals"] and elapsed > 1.5  # longer than the read timeout, and it succeeded
    finally:
        app.extensions["optim"].shutdown()
        engine.stop()


def test_a_generation_past_the_generate_timeout_is_cut_at_the_limit(tmp_path):
    engine = FakeOllama(chunks=40, delay_s=0.2)  # 8 s of answer
    engine.start()
    app = _remote_app(tmp_path, engine, http_read_timeout_s=5, generate_timeout_s=1.0)
    try:
        started = time.monotonic()
        r = app.test_client().post("/api/vlm", json={"prompt": "bigger wheels"})
        elapsed = time.monotonic() - started
        assert r.status_code == 504 and r.get_json()["error"] == "engine_timeout", r.get_json()
        assert "VLM_GENERATE_TIMEOUT" in r.get_json()["message"] and 0.9 < elapsed < 2.0, elapsed
        assert engine.wait_for_close(timeout=1) is not None  # the engine was told to stop
    finally:
        app.extensions["optim"].shutdown()
        engine.stop()


def test_parallel_remote_asks_run_at_once_up_to_vlm_parallel(tmp_path):
    engine = FakeOllama(chunks=6, delay_s=0.25)  # ~1.25 s per answer
    engine.start()
    app = _remote_app(tmp_path, engine, vlm_parallel=3)
    try:
        codes = []
        asks = [threading.Thread(target=lambda i=i: codes.append(
            app.test_client().post("/api/vlm", json={"prompt": f"variant {i}"}).status_code)) for i in range(3)]
        started = time.monotonic()
        [t.start() for t in asks]
        [t.join(20) for t in asks]
        assert codes == [200] * 3 and time.monotonic() - started < 2.5  # not 3 x 1.25 s one after another
    finally:
        app.extensions["optim"].shutdown()
        engine.stop()


# ---------------------------------------------------------------------------------------- response cache
def test_the_cache_follows_an_adapter_retrained_in_place(tiny_vlm, tmp_path):
    from safetensors.numpy import load_file, save_file

    adapter = tiny_vlm.copy_adapter(tmp_path / "adapter")
    app = create_app(Config(data_dir=tmp_path / "data", cad_warmup=False, backend="finetuned",
                            finetuned_model_path=adapter, keep_alive_s=-1, vlm_dtype="float32"))
    c = app.test_client()
    ask = {"prompt": "narrower chassis please", "max_new_tokens": 512}
    try:
        first = c.post("/api/vlm", json=ask).get_json()
        assert first["cached"] is False and first["parse_error"] is None, first
        assert c.post("/api/vlm", json=ask).get_json()["cached"] is True
        weights = adapter / "adapter_model.safetensors"
        tensors = load_file(weights)
        save_file({k: (-v if "lora_B" in k else v) for k, v in tensors.items()}, str(weights))  # "retrained"
        # still loaded with the old weights: the cached answer is still that model's answer
        assert c.post("/api/vlm", json=ask).get_json()["cached"] is True
        assert c.post("/api/vlm/unload").status_code == 200
        retrained = c.post("/api/vlm", json=ask).get_json()
        assert retrained["cached"] is False, "the old adapter's answer was served after the retrain"
        assert c.post("/api/vlm", json=ask).get_json()["cached"] is (retrained["parse_error"] is None)
    finally:
        app.extensions["optim"].shutdown()


def test_nothing_is_served_from_the_cache_while_the_model_is_failed(tmp_path):
    engine = FakeOllama()
    engine.start()
    app = _remote_app(tmp_path, engine)
    c = app.test_client()
    try:
        assert c.post("/api/vlm", json={"prompt": "bigger wheels"}).get_json()["cached"] is False
        assert c.post("/api/vlm", json={"prompt": "bigger wheels"}).get_json()["cached"] is True
        c.post("/api/vlm/unload")
        engine.behaviour = "model_missing"
        c.post("/api/vlm/load")
        assert wait_until(lambda: c.get("/api/vlm/status").get_json()["state"] == "failed", 5)
        r = c.post("/api/vlm", json={"prompt": "bigger wheels"})
        assert r.status_code == 503 and r.get_json()["error"] in {"model_failed", "model_missing"}, r.get_json()
    finally:
        app.extensions["optim"].shutdown()
        engine.stop()


def test_a_client_that_hangs_up_on_a_non_streamed_ask_cancels_it(tmp_path):
    engine = FakeOllama(chunks=60, delay_s=0.25)  # a 15 s answer
    engine.start()
    server = start_live_server({"VLM_BACKEND": "ollama", "OLLAMA_URL": engine.url, "CAD_WARMUP": "0"},
                               tmp_path / "data")
    try:
        started = time.monotonic()
        with pytest.raises(requests.exceptions.ReadTimeout):  # the client gives up and closes its socket
            requests.post(server.url + "/api/vlm", json={"prompt": "bigger wheels"}, timeout=1.0)
        closed_upstream = engine.wait_for_close(timeout=5)
        assert closed_upstream is not None, "optim kept generating for a client that had gone"
        assert closed_upstream - started < 3.0, closed_upstream - started
        assert wait_until(lambda: queue_stats(server)["running"] == 0, 1.0)
    finally:
        server.stop()
        engine.stop()

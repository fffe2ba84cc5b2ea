"""ModelManager over the real FinetunedBackend and worker on the tiny model: one load, keep-alive, failures."""
from __future__ import annotations

import os
import signal
import threading
import time

import psutil
import pytest

from tests.polling import wait_until
from vlm.backend import BackendError, GenerateRequest
from vlm.finetuned import FinetunedBackend
from vlm.lifecycle import ModelManager

STATUS_KEYS = {"backend", "model", "adapter", "state", "progress", "memory", "error", "keep_alive_s", "unload_in_s",
               "dtype", "dtype_reason", "engine"}


def _request(**kw) -> GenerateRequest:
    return GenerateRequest(system="You are a CAD assistant.", prompt=kw.pop("prompt", "Widen the chassis."),
                           max_new_tokens=kw.pop("max_new_tokens", 8), **kw)


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def managers():
    made = []

    def make(backend, **kw):
        manager = ModelManager(backend, **kw)
        made.append(manager)
        return manager

    yield make
    for manager in made:
        manager.shutdown()


def test_concurrent_first_requests_share_one_load_then_keep_alive_unloads(tiny_vlm, managers):
    manager = managers(FinetunedBackend(tiny_vlm.adapter_dir), keep_alive_s=1.5)
    status = manager.status()
    assert set(status) == STATUS_KEYS | {"load_count"} and set(status["progress"]) == {
        "fraction", "phase", "elapsed_s", "eta_s"} and set(status["memory"]) == {"rss_bytes", "gpu_bytes"}
    assert status["state"] == "unloaded" and status["backend"] == "finetuned"

    results, errors, pids = [], [], set()

    def user():
        try:
            results.append(manager.generate(_request(), on_token=lambda t: pids.add(manager.backend.pid)).text)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=user) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and len(results) == 8
    assert manager.load_count == 1 and len(pids) == 1, "eight first requests must share a single load"
    assert len(set(results)) == 1  # greedy: the same answer for everyone

    status = manager.status()
    assert status["state"] == "ready" and status["error"] is None
    assert status["progress"]["fraction"] == 1.0 and status["progress"]["elapsed_s"] > 0
    assert status["memory"]["rss_bytes"] > 50_000_000 and 0 < status["unload_in_s"] <= 1.5
    (pid,) = pids

    time.sleep(0.9)
    manager.generate(_request())  # a request re-arms the keep-alive
    assert manager.status()["unload_in_s"] > 1.0 and manager.load_count == 1
    assert wait_until(lambda: manager.state == "unloaded", timeout=6)
    assert wait_until(lambda: _gone(pid), timeout=6), "the worker process must end on unload"
    assert manager.status()["memory"]["rss_bytes"] is None

    manager.keep_alive_s = 0  # 0: unload right after each request
    manager.generate(_request())
    assert manager.load_count == 2
    new_pid = manager.backend.status()["pid"] or pid
    assert wait_until(lambda: manager.state == "unloaded", timeout=6)
    assert wait_until(lambda: _gone(new_pid), timeout=6)


def test_corrupt_adapter_fails_with_reason_without_a_retry_storm(tiny_vlm, tmp_path, managers):
    adapter = tiny_vlm.copy_adapter(tmp_path / "adapter")
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(b"\x00" * 7)
    clock = FakeClock()
    manager = managers(FinetunedBackend(adapter), failure_cooldown_s=5, clock=clock)
    with pytest.raises(BackendError) as err:
        manager.ensure_ready()
    assert err.value.code == "model_failed" and err.value.status == 503
    assert f"adapter {weights} is corrupt" in err.value.message
    status = manager.status()
    assert status["state"] == "failed" and "is corrupt" in status["error"] and manager.load_count == 1

    # within the cooldown: many callers, no new load
    failures = []
    threads = [threading.Thread(target=lambda: failures.append(pytest.raises(BackendError, manager.ensure_ready)))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(failures) == 8 and manager.load_count == 1
    assert manager.start_load() is False

    clock.now += 6  # after the cooldown a new attempt is made (and fails the same way)
    with pytest.raises(BackendError, match="is corrupt"):
        manager.ensure_ready()
    assert manager.load_count == 2


def test_load_timeout_fails_and_ends_the_worker(tiny_vlm, managers):
    backend = FinetunedBackend(tiny_vlm.adapter_dir)
    manager = managers(backend, load_timeout_s=0.3)
    with pytest.raises(BackendError) as err:
        manager.ensure_ready()
    assert err.value.code == "model_failed" and "did not load within 0.3 s" in err.value.message
    assert wait_until(lambda: backend.pid is None, timeout=10)


def test_killed_worker_fails_its_request_and_the_next_one_reloads(tiny_vlm, managers):
    backend = FinetunedBackend(tiny_vlm.adapter_dir, cancel_grace_s=1.0)
    manager = managers(backend, keep_alive_s=-1)

    # a caller that gives up waiting does not abort the load
    with pytest.raises(BackendError) as err:
        manager.ensure_ready(timeout=0.05)
    assert err.value.code == "model_loading_timeout" and manager.state == "loading"
    manager.ensure_ready()
    assert manager.state == "ready" and manager.load_count == 1
    assert manager.status()["unload_in_s"] is None  # keep_alive -1: never unloaded

    pid = backend.pid
    with pytest.raises(BackendError) as err:
        manager.generate(_request(max_new_tokens=3000), on_token=lambda t: os.kill(pid, signal.SIGKILL))
    assert f"the model worker exited unexpectedly (exit code {-signal.SIGKILL})" in err.value.message
    assert manager.state == "failed" and "exited unexpectedly" in manager.status()["error"]

    result = manager.generate(_request())  # reloads at once: a crash is not a cooldown
    assert result.text is not None and manager.load_count == 2 and manager.state == "ready"
    assert backend.pid != pid

    # a worker that stops answering (frozen) is killed after the cancel grace; the next request reloads. It is
    # frozen (and seen stopped) before the request goes out, so the request sees no event at all however loaded the
    # machine is: frozen on its first token instead, a first token later than the 0.5 s deadline met a worker that
    # still answered the cancel, and nothing was killed
    frozen = backend.pid
    os.kill(frozen, signal.SIGSTOP)
    assert wait_until(lambda: psutil.Process(frozen).status() == psutil.STATUS_STOPPED, timeout=30)
    with pytest.raises(BackendError) as err:
        manager.generate(_request(max_new_tokens=3000, timeout_s=0.5))
    assert err.value.code == "model_timeout" and err.value.status == 504
    assert "(the worker was restarted)" in err.value.message  # no answer to the cancel within the grace: killed
    assert wait_until(lambda: _gone(frozen), timeout=30)
    assert manager.generate(_request()).text is not None and manager.load_count == 3

    manager.unload()
    assert manager.state == "unloaded" and backend.pid is None

"""Honest load progress: phases with their own shares, an ETA only from a measured load of the same model, the
timings persisted per model; VLM_PREWARM takes the import out of the first load."""
from __future__ import annotations

import json
import time

import pytest

from vlm.load_progress import ADAPTER, BUILDING, IMPORTING, READING, STARTING, LoadProgress, LoadTimings
from web.config import Config


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def _bar(last=None, skip=frozenset()):
    reports, clock = [], Clock()
    bar = LoadProgress(lambda f, p, eta_s=None: reports.append((round(f, 3), p, eta_s)), last=last, skip=skip,
                       clock=clock)
    return bar, clock, reports


def test_the_import_is_a_phase_of_its_own_and_never_shown_as_done():
    bar, clock, reports = _bar()
    bar.enter(READING, 1.0)
    bar.enter(IMPORTING)
    clock.now += 60  # a very slow import: the bar waits below the end of the import phase
    bar.tick()
    fraction, phase, eta = reports[-1]
    assert phase == IMPORTING and fraction < 0.85 and eta is None  # no measured load yet: no made-up ETA
    bar.enter(BUILDING)
    bar.enter(ADAPTER)
    assert reports[-1][0] < 1.0
    durations = bar.finish()
    assert reports[-1] == (1.0, "ready", 0.0) and durations[IMPORTING] == pytest.approx(60)
    assert set(durations) == {STARTING, READING, IMPORTING, BUILDING, ADAPTER}


def test_eta_comes_from_the_last_load_of_the_same_model():
    last = {STARTING: 0.5, READING: 1.0, IMPORTING: 8.0, BUILDING: 2.0}
    bar, clock, reports = _bar(last, skip={ADAPTER})
    bar.enter(READING, 1.0)
    bar.enter(IMPORTING)
    clock.now += 2
    bar.tick()
    fraction, phase, eta = reports[-1]
    assert phase == IMPORTING and eta == pytest.approx(6.0 + 2.0)  # 6 s of the import, then the build
    assert fraction == pytest.approx((0.5 + 1.0 + 2.0) / 11.5, abs=0.01)
    clock.now += 20  # slower than last time: the ETA shrinks towards a few percent of the phase, never 0
    bar.tick()
    assert reports[-1][2] >= 8.0 * 0.05 + 2.0 - 1e-6


def test_timings_are_kept_per_model_and_written_atomically(tmp_path):
    path = tmp_path / "data" / "vlm_load_timings.json"
    store = LoadTimings(path)
    assert store.get("a") is None
    store.put("a", {IMPORTING: 5.0, BUILDING: 1.0})
    store.put("b", {IMPORTING: 9.0})
    store.put("a", {BUILDING: 2.0})  # a pre-warmed load measures no import: the old one is kept
    assert store.get("a") == {IMPORTING: 5.0, BUILDING: 2.0} and store.get("b") == {IMPORTING: 9.0}
    assert json.loads(path.read_text())["b"] == {IMPORTING: 9.0}
    assert [p.name for p in path.parent.iterdir()] == [path.name], "no temporaries left behind"
    path.write_text("{not json")
    assert store.get("a") is None  # a damaged file costs the ETA, never the load


def _phases(progress):
    return [p for _, p, _ in progress]


def test_worker_load_reports_phases_then_the_next_load_has_an_eta(tiny_vlm, finetuned_backend_factory, tmp_path):
    timings = tmp_path / "timings.json"
    progress = []
    report = lambda f, p, eta_s=None: progress.append((f, p, eta_s))  # noqa: E731
    first = finetuned_backend_factory(tiny_vlm.adapter_dir, dtype="float32", load_timings_path=timings)
    # started now so its import runs beside the first load's (test time), loaded after it
    second = finetuned_backend_factory(tiny_vlm.adapter_dir, dtype="float32", load_timings_path=timings)
    second.prewarm()
    first.load(report)
    phases = _phases(progress)
    assert phases[0] == STARTING and phases[-1] == "ready"
    assert {READING, IMPORTING, BUILDING, ADAPTER} <= set(phases)
    assert max(f for f, p, _ in progress if p == IMPORTING) < 0.9, "the import must not look finished"
    assert all(eta is None for _, p, eta in progress if p != "ready")  # nothing measured before
    fractions = [f for f, _, _ in progress]
    assert fractions == sorted(fractions), progress
    measured = first.info["load_phases_s"]
    assert measured[IMPORTING] > 0.2 and first.info["prewarmed"] is False
    first.unload()

    progress.clear()
    # the same model again, in a pre-warmed worker: an ETA from the first load, and no import in the load
    pid = second.pid
    assert pid and second.status()["prewarmed"] is True
    assert second.wait_prewarmed(60), "the pre-warm import did not finish"
    started = time.monotonic()
    second.load(report)
    loaded_in = time.monotonic() - started
    assert second.pid == pid, "the load reuses the pre-warmed worker"
    assert second.info["prewarmed"] is True and IMPORTING not in second.info["load_phases_s"]
    assert second.info["timings"]["import_s"] < 0.5  # the modules were already imported
    etas = [eta for _, p, eta in progress if p not in (STARTING, "ready")]
    assert etas and all(eta is not None for eta in etas), "a measured model gets an ETA"
    assert json.loads(timings.read_text())  # persisted for the next start
    print(f"cold load {sum(measured.values()):.2f} s (import {measured[IMPORTING]:.2f} s), pre-warmed load "
          f"{loaded_in:.2f} s (pre-warm import {second.prewarm_info.get('import_s')} s)")


def test_vlm_prewarm_setting():
    assert Config.from_env({"VLM_PREWARM": "1"}).prewarm is True
    assert Config.from_env({}).prewarm is False


def test_the_manager_shows_the_backends_eta_and_never_invents_one():
    import threading

    from vlm.backend import Backend
    from vlm.lifecycle import ModelManager

    class Loading(Backend):
        name = "scripted"

        def __init__(self, eta):
            self.eta, self.release = eta, threading.Event()

        def load(self, progress):
            progress(0.5, IMPORTING, eta_s=self.eta)
            self.release.wait(5)

        def generate(self, request, on_token=None):
            raise AssertionError("not used")

        def unload(self):
            self.release.set()

        def status(self):
            return {}

    for eta, shown in ((None, None), (30.0, pytest.approx(30.0, abs=1.0))):
        manager = ModelManager(Loading(eta), keep_alive_s=-1)
        manager.start_load()
        deadline = time.monotonic() + 5
        while manager.status()["progress"]["phase"] != IMPORTING and time.monotonic() < deadline:
            time.sleep(0.02)
        assert manager.status()["progress"]["eta_s"] == shown
        manager.shutdown()


def test_vlm_prewarm_starts_the_worker_at_server_start_and_shutdown_ends_it(tiny_vlm, tmp_path):
    import psutil

    from web import create_app

    config = Config(data_dir=tmp_path / "data", cad_warmup=False, backend="finetuned", prewarm=True,
                    finetuned_model_path=tiny_vlm.adapter_dir, vlm_dtype="float32", keep_alive_s=-1)
    app = create_app(config)
    services = app.extensions["optim"]
    services.start_background_work()
    pid = services.manager.backend.pid
    status = app.test_client().get("/api/vlm/status").get_json()
    assert pid and status["state"] == "unloaded" and status["engine"]["prewarmed"] is True
    services.shutdown()
    deadline = time.monotonic() + 10
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_after_a_keep_alive_unload_a_fresh_worker_is_pre_warmed(tiny_vlm, tmp_path):
    """VLM_PREWARM: the load after an idle spell finds libraries imported again, with the weights' memory freed."""
    import psutil

    from web import create_app

    config = Config(data_dir=tmp_path / "data", cad_warmup=False, backend="finetuned", prewarm=True,
                    finetuned_model_path=tiny_vlm.adapter_dir, vlm_dtype="float32", keep_alive_s=1)
    app = create_app(config)
    services = app.extensions["optim"]
    client = app.test_client()
    try:
        services.start_background_work()
        backend = services.manager.backend
        assert client.post("/api/vlm/load").status_code in (200, 202)
        deadline = time.monotonic() + 120
        while services.manager.state != "ready" and time.monotonic() < deadline:
            time.sleep(0.1)
        loaded_pid = backend.pid
        assert services.manager.state == "ready" and backend.info["prewarmed"] is True
        deadline = time.monotonic() + 30
        while (services.manager.state != "unloaded" or backend.pid in (None, loaded_pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        status = client.get("/api/vlm/status").get_json()
        assert status["state"] == "unloaded" and status["engine"]["prewarmed"] is True
        assert backend.pid != loaded_pid and not psutil.pid_exists(loaded_pid) or \
            psutil.Process(loaded_pid).status() == psutil.STATUS_ZOMBIE  # the loaded worker's memory is back
        assert backend.wait_prewarmed(60)
        rss = psutil.Process(backend.pid).memory_info().rss
        services.manager.keep_alive_s = -1  # the second load stays
        assert client.post("/api/vlm/load").status_code in (200, 202)
        deadline = time.monotonic() + 120
        while services.manager.state != "ready" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert services.manager.state == "ready" and backend.info["prewarmed"] is True
        assert backend.info["timings"]["import_s"] < 0.5 and rss > 0
    finally:
        services.shutdown()

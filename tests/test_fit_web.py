"""/api/optimise runs the fit's batches on both build workers at once and streams an ETA."""
from __future__ import annotations

import threading
import time

import pytest

from tests.test_web_targets import HIDDEN, app, file_of_state, sse_events  # noqa: F401  (app is a fixture)


def test_optimise_evaluates_on_both_workers_at_once_and_streams_an_eta(app):
    client = app.test_client()
    client.put("/api/target?model=bracket", data=file_of_state(client, HIDDEN, "step"))
    pool = app.extensions["optim"].builder.worker
    if len(getattr(pool, "clients", ())) < 2:
        pytest.skip("CAD_BUILD_WORKERS is 1")
    lock, running, most = threading.Lock(), [0], [0]

    def watched(call):
        def wrapper(job, *args, **kwargs):
            with lock:
                running[0] += 1
                most[0] = max(most[0], running[0])
            try:
                # Each comparison holds its slot a little longer, so two that were dispatched together overlap
                # even when a loaded machine starts the second thread late (it once read 1 under a full suite).
                time.sleep(0.2)
                return call(job, *args, **kwargs)
            finally:
                with lock:
                    running[0] -= 1
        return wrapper

    for worker in pool.clients:
        worker.call = watched(worker.call)
    r = client.post("/api/optimise?model=bracket", json={"stream": True, "max_steps": 24})
    events = sse_events(r.get_data(as_text=True))
    progress = [data for kind, data in events if kind == "progress"]
    assert events[-1][0] == "done" and events[-1][1]["optimise"]["steps"] == 24
    assert most[0] == 2  # two comparisons ran at once
    assert all(isinstance(p["eta_s"], (int, float)) and p["eta_s"] >= 0 for p in progress)
    assert progress[-1]["eta_s"] == 0 and progress[0]["eta_s"] > 0


def test_optimise_searches_inside_a_narrowed_range_and_its_answer_applies(app):
    client = app.test_client()
    client.put("/api/target?model=bracket", data=file_of_state(client, HIDDEN, "step"))
    state = client.get("/api/params?model=bracket").get_json()
    assert state["values"]["base_length"] == 80
    r = client.put("/api/params/range?model=bracket", json={"parameter": "base_length", "min": 76, "max": 90,
                                                             "version": state["version"]})
    assert r.status_code == 200, r.get_json()
    r = client.post("/api/optimise?model=bracket", json={"max_steps": 40})
    assert r.status_code == 200, r.get_json()
    values = client.get("/api/params?model=bracket").get_json()["values"]
    # the target's 70 is outside the user's range: the search goes to its edge, not past it (which was a 422)
    assert 76 <= values["base_length"] <= 90 and values["base_length"] < 80


def test_optimise_streams_its_best_state_so_far(app):
    client = app.test_client()
    client.put("/api/target?model=bracket", data=file_of_state(client, HIDDEN, "step"))
    schema = {p["name"]: p for p in client.get("/api/params?model=bracket").get_json()["schema"]}
    start = client.get("/api/params?model=bracket").get_json()["values"]
    r = client.post("/api/optimise?model=bracket", json={"stream": True, "max_steps": 40})
    events = sse_events(r.get_data(as_text=True))
    kinds = [kind for kind, _ in events]
    best = [data for kind, data in events if kind == "best"]
    assert best and kinds.index("best") < kinds.index("done")
    ious = [b["iou"] for b in best]
    assert ious == sorted(ious) and all(0 <= x <= 1 for x in ious)  # the best so far only gets better
    for b in best:
        assert set(b["values"]) == set(schema)
        assert b["changes"] == {n: v for n, v in b["values"].items() if v != start[n]}
        for name, value in b["changes"].items():
            assert schema[name]["min"] <= value <= schema[name]["max"]


def test_a_comparison_that_starts_after_shutdown_began_starts_no_worker(tmp_path):
    # A state the fit started ahead may begin on its thread after the server began shutting down: it must fail
    # as the run does, not start a fresh build worker for nothing.
    from cad import worker
    from web import create_app
    from web.config import Config
    from web.errors import ApiError
    from web.optimise_api import _Evaluator

    app = create_app(Config(data_dir=tmp_path / "data", cad_warmup=False, testing=True))
    svc = app.extensions["optim"]
    model = svc.registry.get("bracket")
    target = tmp_path / "target.step"
    target.write_bytes(b"not read")
    svc.shutdown()
    assert worker.shared_client().pid is None
    with _Evaluator(svc, model, target) as evaluator:
        job = evaluator.submit(model.schema.defaults(), None) if evaluator.submit else None
        with pytest.raises(ApiError, match="shutting down"):
            job.result(timeout=30) if job is not None else evaluator.objective(model.schema.defaults(), None)
    assert worker.shared_client().pid is None

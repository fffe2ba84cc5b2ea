"""Load against the real server (`python optim.py` subprocess, real HTTP on 127.0.0.1, tiny model).

Default part (< 60 s): 50 concurrent edits with optimistic retries, 20 concurrent VLM requests during the first
load (exactly one load, all answered) while CAD reads stay fast. `@pytest.mark.soak` (`make soak`): longer runs.
"""
from __future__ import annotations

import statistics
import threading
import time

import pytest
import requests

from tests.fixtures_server import start_live_server

EDITORS = 50
VLM_CLIENTS = 20


@pytest.fixture(scope="module")
def server(tiny_vlm, tmp_path_factory):
    live = start_live_server({"VLM_BACKEND": "finetuned", "FINETUNED_MODEL_PATH": str(tiny_vlm.adapter_dir),
                              "VLM_DTYPE": "float32", "VLM_KEEP_ALIVE": "-1", "CAD_WARMUP": "0",
                              # every one of the 20 asks gets a place; test_scheduler covers a full queue
                              "THREADS": "32", "VLM_MAX_QUEUE": str(VLM_CLIENTS)}, tmp_path_factory.mktemp("load") / "data")
    yield live
    live.stop()


def _float_param(schema: list[dict], index: int = 0) -> dict:
    return [p for p in schema if p["type"] == "float" and p["max"] > p["min"]][index]


def concurrent_edits(server, editors: int, param: dict, deadline_s: float = 30) -> dict:
    """`editors` clients each apply one distinct value with optimistic concurrency: read the version, PATCH with
    it, retry on 409. Returns counts and the entries each client was told it created."""
    start = threading.Barrier(editors)
    lock = threading.Lock()
    out = {"ok": [], "conflicts": 0, "other": []}
    stop_at = time.monotonic() + deadline_s

    def edit(i):
        session = requests.Session()
        value = round(param["min"] + (i + 1) * (param["max"] - param["min"]) / (editors + 2), 4)
        start.wait()
        while time.monotonic() < stop_at:
            version = session.get(server.url + "/api/params", timeout=10).json()["version"]
            r = session.patch(server.url + "/api/params", timeout=10,
                              json={"version": version, "values": {param["name"]: value}})
            with lock:
                if r.status_code == 200:
                    out["ok"].append((r.json()["entry"]["id"], value, r.json()["version"]))
                    return
                if r.status_code == 409 and r.json()["error"] == "version_conflict":
                    out["conflicts"] += 1
                    continue
                out["other"].append((r.status_code, r.text[:200]))
                return

    threads = [threading.Thread(target=edit, args=(i,)) for i in range(editors)]
    [t.start() for t in threads]
    [t.join(deadline_s + 15) for t in threads]
    return out


def check_edits(server, before: dict, out: dict, editors: int) -> None:
    assert not out["other"], out["other"][:3]
    assert len(out["ok"]) == editors  # every client got its edit in, exactly once
    hist = server.api("GET", "/api/history").json()
    new_entries = hist["entries"][len(before["entries"]):]
    assert len(new_entries) == editors and hist["version"] == before["version"] + editors
    ids = [e["id"] for e in new_entries]
    assert sorted(ids) == sorted(i for i, _, _ in out["ok"])
    # each 200 answers with the very state its own edit produced: versions are distinct and consecutive
    assert sorted(v for _, _, v in out["ok"]) == list(range(before["version"] + 1, hist["version"] + 1))
    by_version = {e["id"]: before["version"] + 1 + i for i, e in enumerate(new_entries)}
    assert all(by_version[i] == v for i, _, v in out["ok"])
    for prev, entry in zip(new_entries, new_entries[1:]):  # a chain: each edit starts where the last ended
        name = next(iter(entry["changes"]))
        assert entry["changes"][name]["from"] == prev["changes"][name]["to"]


def test_concurrent_edits_apply_once_or_conflict(server):
    param = _float_param(server.api("GET", "/api/params").json()["schema"])
    before = server.api("GET", "/api/history").json()
    out = concurrent_edits(server, EDITORS, param)
    check_edits(server, before, out, EDITORS)
    assert out["conflicts"] > 0  # they really did race


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def test_concurrent_vlm_requests_load_once_while_cad_stays_responsive(server):
    assert server.api("GET", "/api/vlm/status").json()["state"] == "unloaded"
    results, latencies_loading = [], []
    lock = threading.Lock()

    def ask(i):
        r = requests.post(server.url + "/api/vlm", timeout=180,
                          json={"prompt": f"make the wheels bigger, variant {i}", "max_new_tokens": 6})
        with lock:
            results.append((r.status_code, r.json()))

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(VLM_CLIENTS)]
    [t.start() for t in threads]
    session = requests.Session()
    while True:  # sample CAD latency for as long as the model loads
        state = session.get(server.url + "/api/vlm/status", timeout=10).json()["state"]
        if state != "loading" and latencies_loading:
            break
        t0 = time.perf_counter()
        assert session.get(server.url + "/api/params", timeout=10).status_code == 200
        if state == "loading":
            latencies_loading.append(time.perf_counter() - t0)
        time.sleep(0.02)
    [t.join(180) for t in threads]
    assert len(results) == VLM_CLIENTS and all(code == 200 for code, _ in results), \
        [b for c, b in results if c != 200][:2]
    assert all(isinstance(b["proposals"], list) and b["id"] for _, b in results)
    assert len({b["id"] for _, b in results}) == VLM_CLIENTS
    status = server.api("GET", "/api/vlm/status").json()
    assert status["state"] == "ready" and status["load_count"] == 1
    assert len(latencies_loading) >= 5
    p50, p99 = statistics.median(latencies_loading), percentile(latencies_loading, 0.99)
    assert p99 < 0.5, f"GET /api/params during the model load: p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms"


# ---------------------------------------------------------------------------------------- soak (make soak)
@pytest.mark.soak
def test_soak_edit_storms(server):
    schema = server.api("GET", "/api/params").json()["schema"]
    for round_ in range(8):
        param = _float_param(schema, round_ % 3)
        before = server.api("GET", "/api/history").json()
        if len(before["entries"]) > 400:  # history is capped at 500 entries
            break
        out = concurrent_edits(server, EDITORS, param, deadline_s=60)
        check_edits(server, before, out, EDITORS)


@pytest.mark.soak
def test_soak_vlm_traffic_and_load_unload_cycles(server):
    for cycle in range(5):
        r = server.api("POST", "/api/vlm/unload")
        assert r.status_code == 200 and r.json()["state"] == "unloaded" and r.json()["memory"]["rss_bytes"] is None
        codes = []

        def ask(i):
            codes.append(requests.post(server.url + "/api/vlm", timeout=180, json={
                "prompt": f"cycle {cycle} request {i}", "max_new_tokens": 4}).status_code)

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(40)]
        [t.start() for t in threads]
        [t.join(240) for t in threads]
        assert codes == [200] * 40
        assert server.api("GET", "/api/params").status_code == 200
    assert server.api("GET", "/api/vlm/status").json()["state"] == "ready"

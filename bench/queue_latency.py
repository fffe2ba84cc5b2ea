"""GET /api/params latency while VLM asks wait: idle vs with 20 asks queued behind a slow engine.

    .venv/bin/python bench/queue_latency.py [--asks 20] [--samples 200]

Starts `python optim.py` with the Ollama backend pointed at a local fake Ollama (tests/fake_engines.py) whose
generations stall until released, so every ask waits: one runs, VLM_MAX_QUEUE wait, the rest are answered 503
`busy` at once. Times GET /api/params sequentially while idle, then while the asks are held, and prints p50/p99
side by side with the ratio (issue 14's goal: p99 within 2x of idle).
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.fake_engines import FakeOllama  # noqa: E402
from tests.fixtures_server import start_live_server  # noqa: E402

log = logging.getLogger("bench.queue")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def sample(url: str, samples: int) -> list[float]:
    times = []
    with requests.Session() as session:
        for _ in range(samples):
            started = time.perf_counter()
            session.get(url + "/api/params", timeout=30).raise_for_status()
            times.append(time.perf_counter() - started)
    return times


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser()
    parser.add_argument("--asks", type=int, default=20)
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()

    engine = FakeOllama("slow", stall_s=600.0)  # each generation waits for `released` (or stop())
    engine.start()
    root = Path(tempfile.mkdtemp(prefix="bench-queue-"))
    server = start_live_server({"VLM_BACKEND": "ollama", "OLLAMA_URL": engine.url, "CAD_WARMUP": "0",
                                "VLM_GENERATE_TIMEOUT": "600", "VLM_READ_TIMEOUT": "600"}, root / "data")
    answers: list[int] = []
    try:
        sample(server.url, 20)  # warm the session and the server's first-request paths
        idle = sample(server.url, args.samples)

        def ask(i: int) -> None:
            try:
                r = requests.post(server.url + "/api/vlm", json={"prompt": f"make the wheels bigger {i}",
                                                                 "max_new_tokens": 16}, timeout=600)
                answers.append(r.status_code)
            except requests.RequestException as exc:
                log.warning("ask %d failed: %s", i, exc)

        askers = [threading.Thread(target=ask, args=(i,), daemon=True) for i in range(args.asks)]
        for t in askers:
            t.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until every ask is either held or already answered busy
            queue = server.api("GET", "/api/vlm/status").json()["queue"]
            if queue["running"] + queue["waiting"] + len(answers) >= args.asks:
                break
            time.sleep(0.05)
        held = server.api("GET", "/api/vlm/status").json()["queue"]
        queued = sample(server.url, args.samples)
        engine.released.set()
        for t in askers:
            t.join(60)
    finally:
        server.stop()
        engine.stop()

    rows = [("idle", idle), (f"{args.asks} asks sent ({held['running']} running, {held['waiting']} waiting)", queued)]
    width = max(len(name) for name, _ in rows)
    print(f"\nGET /api/params, {args.samples} sequential requests each")
    print(f"{'while'.ljust(width)}  {'p50 ms':>8}  {'p99 ms':>8}")
    for name, values in rows:
        print(f"{name.ljust(width)}  {statistics.median(values) * 1000:8.2f}  {percentile(values, 0.99) * 1000:8.2f}")
    ratio = percentile(queued, 0.99) / percentile(idle, 0.99)
    busy = sum(1 for code in answers if code == 503)
    print(f"p99 ratio queued/idle: {ratio:.2f}x (goal <= 2x); answers: {busy} busy (503), "
          f"{sum(1 for code in answers if code == 200)} ok after release")
    return 0


if __name__ == "__main__":
    sys.exit(main())

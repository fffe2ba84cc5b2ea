"""CAD read latency while the model loads vs idle, against the real server over HTTP.

    .venv/bin/python bench/latency.py [--rounds 3] [--idle 300]

Starts `python optim.py` on a free 127.0.0.1 port with the tiny LLaVA-OneVision + LoRA (built offline into a
temporary folder), measures GET /api/params sequentially while idle, then while the model worker starts and loads
(POST /api/vlm/load; torch/transformers imports and weight loading compete for the same CPUs), unloading between
rounds. Prints p50/p99 side by side with the ratio.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_tiny(root: Path) -> Path:
    """The tiny model, built in a child so this process never imports torch."""
    code = ("import sys; from pathlib import Path; from vlm.tiny import build_tiny_model; "
            "print(build_tiny_model(Path(sys.argv[1]))[1])")
    out = subprocess.run([sys.executable, "-c", code, str(root)], cwd=REPO, check=True, capture_output=True,
                         text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def start_server(adapter: Path, data_dir: Path, log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port), "OPTIM_DATA_DIR": str(data_dir),
           "VLM_BACKEND": "finetuned", "FINETUNED_MODEL_PATH": str(adapter), "VLM_DTYPE": "float32",
           "VLM_KEEP_ALIVE": "-1", "CAD_WARMUP": "0", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, str(REPO / "optim.py")], cwd=REPO, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"optim.py exited: see {log_path}")
        try:
            if requests.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url
        except requests.RequestException:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("optim.py did not start within 60 s")


def timed_get(session: requests.Session, url: str) -> float:
    t0 = time.perf_counter()
    r = session.get(url, timeout=30)
    elapsed = time.perf_counter() - t0
    r.raise_for_status()
    return elapsed


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="model loads to sample during")
    ap.add_argument("--idle", type=int, default=300, help="idle samples")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="optim-latency-") as tmp:
        root = Path(tmp)
        print("building the tiny model ...", flush=True)
        adapter = build_tiny(root / "model")
        proc, url = start_server(adapter, root / "data", root / "server.log")
        session = requests.Session()
        params = url + "/api/params"
        try:
            for _ in range(20):  # warm-up: first requests parse the model script
                timed_get(session, params)
            idle = [timed_get(session, params) for _ in range(args.idle)]
            loading, load_times = [], []
            for _ in range(args.rounds):
                session.post(url + "/api/vlm/unload", timeout=60).raise_for_status()
                time.sleep(0.5)
                t0 = time.perf_counter()
                session.post(url + "/api/vlm/load", timeout=60).raise_for_status()
                while True:
                    state = session.get(url + "/api/vlm/status", timeout=30).json()["state"]
                    if state != "loading":
                        break
                    loading.append(timed_get(session, params))
                if state != "ready":
                    raise SystemExit(f"model load ended in state {state}: see the server log")
                load_times.append(time.perf_counter() - t0)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
    ms = 1000.0
    print(f"\nGET /api/params latency, tiny model, {os.cpu_count()} CPUs "
          f"(model load {statistics.median(load_times):.1f} s median over {len(load_times)} loads)")
    print(f"{'':10}{'samples':>9}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}")
    for label, s in (("idle", idle), ("loading", loading)):
        print(f"{label:10}{len(s):>9}{statistics.median(s) * ms:>10.2f}{pct(s, 0.99) * ms:>10.2f}{max(s) * ms:>10.2f}")
    print(f"{'ratio':10}{'':>9}{statistics.median(loading) / statistics.median(idle):>9.2f}x"
          f"{pct(loading, 0.99) / pct(idle, 0.99):>9.2f}x{max(loading) / max(idle):>9.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

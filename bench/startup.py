"""Server start-to-ready time: optim vs a bare Flask hello-world served the same way (waitress), same run.

Prints the median of N alternating starts of each and the ratio (goal: <= 1.5x).
Usage: python bench/startup.py [--runs 5]
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

HELLO = """
from flask import Flask
from waitress import serve
import os
app = Flask(__name__)
@app.get("/healthz")
def healthz():
    return {"status": "ok"}
serve(app, host="127.0.0.1", port=int(os.environ["PORT"]), threads=16)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def time_to_ready(cmd: list[str], env: dict, timeout: float = 30.0) -> float:
    port = free_port()
    env = {**env, "PORT": str(port)}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while time.perf_counter() - t0 < timeout:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                    if r.status == 200:
                        return time.perf_counter() - t0
            except OSError:
                time.sleep(0.005)
        raise RuntimeError(f"{cmd} did not answer within {timeout}s")
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as data:
        env = {**os.environ, "OPTIM_DATA_DIR": data, "PRELOAD_MODEL": "0"}
        optim_times, hello_times = [], []
        for _ in range(args.runs):  # alternate so both see the same machine state
            hello_times.append(time_to_ready([sys.executable, "-c", HELLO], env))
            optim_times.append(time_to_ready([sys.executable, "optim.py"], env))
    hello, optim = statistics.median(hello_times), statistics.median(optim_times)
    print(f"runs per server:            {args.runs}")
    print(f"bare Flask+waitress ready:  {hello * 1000:7.1f} ms (median)")
    print(f"optim ready (/healthz 200): {optim * 1000:7.1f} ms (median)")
    print(f"ratio optim / bare:         {optim / hello:7.2f}x  (goal <= 1.5x)")


if __name__ == "__main__":
    main()

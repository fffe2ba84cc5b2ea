"""Request latency against the real server over HTTP: design edits as history grows, and CAD reads while the
model loads.

    .venv/bin/python bench/latency.py patch [--samples 200] [--levels 10,1000] [--repo DIR]
    .venv/bin/python bench/latency.py [load] [--rounds 3] [--idle 300]

`patch`: for each history length, writes a session of that many entries in the JSON format of earlier
releases (the server imports it into its database at start; an earlier release reads it as it is), starts
`python optim.py` (Ollama backend pointed nowhere: no model), then times PATCH /api/params, each followed by an
undo (timed apart) so the history keeps its length (the PATCH replaces the undone entry). The servers run side by
side and are sampled in turn, so a busy machine slows every level alike. The server keeps at most
MAX_HISTORY (500) entries, so 1000 means 1000 edits made, 500 kept. Prints p50/p99 side by side with the ratio.
`--repo DIR` runs the server of another checkout (e.g. `git archive <rev> | tar -x -C DIR`) for a before/after.

`load`: starts the server with the tiny LLaVA-OneVision + LoRA (built offline into a temporary folder), measures
GET /api/params sequentially while idle, then while the model worker starts and loads (POST /api/vlm/load;
torch/transformers imports and weight loading compete for the same CPUs), unloading between rounds. Prints
p50/p99 side by side with the ratio.
"""
from __future__ import annotations

import argparse
import json
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


def start_server(adapter: Path | None, data_dir: Path, log_path: Path, repo: Path = REPO) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port), "OPTIM_DATA_DIR": str(data_dir),
           "CAD_WARMUP": "0", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if adapter is None:  # no model at all
        env.update({"VLM_BACKEND": "ollama", "OLLAMA_URL": "http://127.0.0.1:9"})
    else:
        env.update({"VLM_BACKEND": "finetuned", "FINETUNED_MODEL_PATH": str(adapter), "VLM_DTYPE": "float32",
                    "VLM_KEEP_ALIVE": "-1"})
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, str(repo / "optim.py")], cwd=repo, env=env, stdout=log,
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


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()


def timed_get(session: requests.Session, url: str) -> float:
    t0 = time.perf_counter()
    r = session.get(url, timeout=30)
    elapsed = time.perf_counter() - t0
    r.raise_for_status()
    return elapsed


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def old_format_session(entries: int, name: str, lo: float, hi: float) -> dict:
    """A rover session of `entries` edits of `name`, as releases before the database wrote it."""
    def value(k: int) -> float:
        return round(lo + (k % 40 + 1) * (hi - lo) / 50, 3)
    es = [{"id": f"bench{k:07d}", "source": {"kind": "user"}, "summary": f"{name} {value(k - 1)} → {value(k)}",
           "changes": {name: {"from": value(k - 1), "to": value(k)}}, "timestamp": 1.7e9 + k} for k in range(entries)]
    return {"format": 1, "model": "rover", "version": entries, "position": entries - 1, "entries": es,
            "values": {name: value(entries - 1)}}


def patch_bench(args) -> int:
    levels = [int(x) for x in args.levels.split(",")]
    repo = Path(args.repo).resolve() if args.repo else REPO
    name, lo, hi = "chassis_length", 80.0, 400.0
    results: dict[int, tuple[list[float], list[float], int]] = {}
    with tempfile.TemporaryDirectory(prefix="optim-latency-") as tmp:
        servers = {}
        try:
            for level in levels:  # one server per history length, all up at once, sampled in turn
                data = Path(tmp) / f"data-{level}"
                (data / "sessions").mkdir(parents=True)
                if level:
                    (data / "sessions" / "rover.json").write_text(json.dumps(old_format_session(level, name, lo, hi)))
                proc, url = start_server(None, data, Path(tmp) / f"server-{level}.log", repo)
                http = requests.Session()
                servers[level] = (proc, url, http, [http.get(url + "/api/params", timeout=30).json()["version"]])
                results[level] = ([], [], 0)
            for k in range(args.warmup + args.samples):
                value = round(lo + 1 + (k % 37) * (hi - lo - 2) / 40, 2)  # never one of the stored values
                for level, (_, url, http, version) in servers.items():
                    t0 = time.perf_counter()
                    r = http.patch(url + "/api/params", json={"version": version[0], "values": {name: value}},
                                   timeout=60)
                    t1 = time.perf_counter()
                    r.raise_for_status()
                    r = http.post(url + "/api/undo", json={"version": version[0] + 1}, timeout=60)
                    t2 = time.perf_counter()
                    r.raise_for_status()
                    version[0] += 2
                    if k >= args.warmup:
                        results[level][0].append(t1 - t0)
                        results[level][1].append(t2 - t1)
            for level, (_, url, http, _) in servers.items():
                kept = len(http.get(url + "/api/history", timeout=30).json()["entries"])
                results[level] = (*results[level][:2], kept)
        finally:
            for proc, *_ in servers.values():
                stop_server(proc)
    ms = 1000.0
    print(f"\nPATCH /api/params latency vs history length ({repo}), {os.cpu_count()} CPUs, {args.samples} samples "
          f"per level (each PATCH followed by an undo; levels sampled in turn)")
    print(f"{'edits':>7}{'kept':>6}{'PATCH p50':>11}{'p99':>9}{'max':>9}{'undo p50':>10}{'p99':>9}   (ms)")
    for level, (p, u, kept) in results.items():
        print(f"{level:>7}{kept:>6}{statistics.median(p) * ms:>11.2f}{pct(p, 0.99) * ms:>9.2f}{max(p) * ms:>9.2f}"
              f"{statistics.median(u) * ms:>10.2f}{pct(u, 0.99) * ms:>9.2f}")
    if len(levels) >= 2:
        (p0, u0, _), (p1, u1, _) = results[levels[0]], results[levels[-1]]
        print(f"{'ratio':>13}{statistics.median(p1) / statistics.median(p0):>10.2f}x{pct(p1, 0.99) / pct(p0, 0.99):>8.2f}x"
              f"{max(p1) / max(p0):>8.2f}x{statistics.median(u1) / statistics.median(u0):>9.2f}x"
              f"{pct(u1, 0.99) / pct(u0, 0.99):>8.2f}x   ({levels[-1]} vs {levels[0]})")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", nargs="?", choices=("load", "patch"), default="load")
    ap.add_argument("--rounds", type=int, default=3, help="load: model loads to sample during")
    ap.add_argument("--idle", type=int, default=300, help="load: idle samples")
    ap.add_argument("--samples", type=int, default=200, help="patch: timed PATCHes per history length")
    ap.add_argument("--warmup", type=int, default=20, help="patch: untimed PATCHes first")
    ap.add_argument("--levels", default="10,1000", help="patch: history lengths (edits made)")
    ap.add_argument("--repo", help="patch: checkout whose server to run (default: this one)")
    args = ap.parse_args()
    if args.mode == "patch":
        return patch_bench(args)
    return load_bench(args)


def load_bench(args) -> int:
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
            stop_server(proc)
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

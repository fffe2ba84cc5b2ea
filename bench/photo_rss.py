"""Web-process memory around concurrent photo asks: RSS before, at the peak and after, side by side.

    .venv/bin/python bench/photo_rss.py [--asks 12] [--width 4000 --height 3000] [--rounds 3]

A real server (`optim.py`, Ollama backend against a local fake engine) gets `--asks` concurrent /api/vlm requests,
each with a different photo-like JPEG. Printed per round: RSS before, the peak seen while they ran, and RSS 1.5 s
after they ended, with the bytes of the images the proposal sets keep (they are held for the training log, bounded
by the store's byte budget). Goal: after <= before x 1.10 + kept images.
"""
from __future__ import annotations

import argparse
import base64
import logging
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.fake_engines import FakeOllama  # noqa: E402
from tests.fixtures_server import start_live_server  # noqa: E402
from tests.test_images import photo_bytes  # noqa: E402

log = logging.getLogger("bench.photo_rss")


def mib(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--asks", type=int, default=12)
    p.add_argument("--width", type=int, default=4000)
    p.add_argument("--height", type=int, default=3000)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    engine = FakeOllama(text='{"summary": "fine", "changes": []}')
    engine.start()
    with tempfile.TemporaryDirectory(prefix="optim-photo-rss-") as tmp:
        server = start_live_server({"VLM_BACKEND": "ollama", "OLLAMA_URL": engine.url, "OLLAMA_MODEL": "llava:latest",
                                    "PRELOAD_MODEL": "0", "VLM_MAX_QUEUE": str(args.asks + 4),
                                    "VLM_PARALLEL": "4", "MAX_UPLOAD_MB": "40", "CAD_WARMUP": "0"},
                                   Path(tmp) / "data")
        try:
            return run(args, server, engine)
        finally:
            server.stop()
            engine.stop()


def run(args, server, engine) -> int:
    photos = [base64.b64encode(photo_bytes(args.width, args.height, seed=i)).decode() for i in range(args.asks)]
    log.info("%d photos of %dx%d, %.1f MB of base64 each", args.asks, args.width, args.height,
             len(photos[0]) / 1e6)

    def ask(i: int) -> int:
        return server.api("POST", "/api/vlm", json={"prompt": f"match this photo ({i})", "images": [photos[i]]},
                          timeout=300).status_code

    process = psutil.Process(server.process.pid)
    assert ask(0) == 200  # warm: imports, connection pools
    ok = True
    print(f"{'round':<7}{'before':>10}{'peak':>10}{'after':>10}{'kept':>10}{'after/before':>14}")
    for round_no in range(1, args.rounds + 1):
        before = process.memory_info().rss
        peak, done = before, threading.Event()

        def watch():
            nonlocal peak
            while not done.wait(0.05):
                peak = max(peak, process.memory_info().rss)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        with ThreadPoolExecutor(args.asks) as pool:
            codes = list(pool.map(ask, range(args.asks)))
        done.set()
        watcher.join()
        time.sleep(1.5)  # what stays, not the peak: the heap is trimmed shortly after large requests end
        after = process.memory_info().rss
        sent = [post["messages"][-1]["images"][0] for post in engine.posts("/api/chat")[-args.asks:]]
        kept = sum(len(base64.b64decode(image)) for image in sent)
        ok &= codes == [200] * args.asks and after <= before * 1.10 + kept
        print(f"{round_no:<7}{mib(before):>10}{mib(peak):>10}{mib(after):>10}{mib(kept):>10}"
              f"{after / before:>13.2f}x")
    print(f"goal after <= before x 1.10 + kept images: {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

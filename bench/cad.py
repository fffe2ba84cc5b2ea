"""Benchmark the rover's CAD pipeline: build, GLB/STL/STEP export and PNG render, cold and cached.

Cold = fresh shapes (process shape cache cleared) and an empty artifact cache; cached = the same request again
(served from the Builder's memory LRU). Run: .venv/bin/python bench/cad.py
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

REPEATS = 3


def timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def main() -> None:
    start = time.perf_counter()
    import cadquery  # noqa: F401  (import cost is reported separately)

    import_seconds = time.perf_counter() - start
    from cad.build import Builder, build_model, clear_process_cache
    from cad.registry import ModelRegistry

    model = ModelRegistry().get("rover")
    values = model.schema.defaults()
    tasks = {
        "build": None,
        "glb": lambda b: b.export(model, {}, "glb"),
        "stl": lambda b: b.export(model, {}, "stl"),
        "step": lambda b: b.export(model, {}, "step"),
        "png iso 384": lambda b: b.render_png(model, {}, "iso", 384),
        "png iso 1024": lambda b: b.render_png(model, {}, "iso", 1024),
    }
    build_model(model.path, values)  # load the script module once; its import is not part of a build
    print(f"cadquery import: {import_seconds:.2f} s")
    print(f"{'task':<14}{'cold s':>9}{'cached s':>11}{'cached/cold':>13}   (best of {REPEATS})")
    for name, task in tasks.items():
        cold, cached = [], []
        for _ in range(REPEATS):
            clear_process_cache()
            if task is None:
                cold.append(timed(lambda: build_model(model.path, values)))
                cached.append(timed(lambda: build_model(model.path, values)))
                continue
            with tempfile.TemporaryDirectory(prefix="optim-bench-") as folder:
                builder = Builder(Path(folder))
                cold.append(timed(lambda: task(builder)))
                cached.append(timed(lambda: task(builder)))
        best_cold, best_cached = min(cold), min(cached)
        print(f"{name:<14}{best_cold:>9.3f}{best_cached:>11.5f}{best_cached / best_cold:>13.4f}")


if __name__ == "__main__":
    main()

"""Fit benchmark: can the numeric optimiser recover hidden parameters of each shipped model from its shape alone?

For every model in cad/models and a few seeded cases: draw hidden numeric parameters (each within +-SPREAD of its
range around the default, ints +-1; bools stay at their defaults), build the target and save it as STEP, then start
from the defaults and run ``cad.optimise.optimise`` on the mesh (voxel) IoU. Reported IoUs are exact B-rep IoUs
(``cad.target.compare_model``, method ``auto``); parameter error is the mean |found - hidden| over the numeric
parameters, as a fraction of each parameter's range. Runs in-process (no build worker).

Run: .venv/bin/python bench/fit.py [--cases 2] [--steps 300] [--models rover,bracket] [--spread 0.2] [--jobs 2]
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SPREAD = 0.2


def hidden_values(schema, rng: random.Random, spread: float) -> dict:
    values = schema.defaults()
    for p in schema:
        if p.type == "float":
            span = (p.max - p.min) * spread
            values[p.name] = round(min(max(p.default + rng.uniform(-span, span), p.min), p.max), 2)
        elif p.type == "int":
            values[p.name] = min(max(p.default + rng.choice((-1, 0, 1)), p.min), p.max)
    return values


def parameter_error(schema, found: dict, hidden: dict) -> float:
    errors = [abs(found[p.name] - hidden[p.name]) / (p.max - p.min) for p in schema if p.type in ("float", "int")]
    return sum(errors) / len(errors)


def run_case(name: str, case: int, hidden: dict, steps: int) -> tuple:
    """One fit: build the hidden target as STEP, optimise from the defaults, measure with the exact IoU."""
    from cad import export
    from cad.build import build_model
    from cad.optimise import VOXEL_STAGES, optimise
    from cad.registry import ModelRegistry
    from cad.target import compare_model

    model = ModelRegistry().get(name)
    with tempfile.TemporaryDirectory(prefix="optim-fit-") as folder:
        target = Path(folder) / f"{name}-{case}.step"
        target.write_bytes(export.step_bytes(build_model(model.path, hidden).assembly))
        start = model.schema.defaults()
        started = time.perf_counter()
        result = optimise(model.schema, start, lambda v, stage: compare_model(
            str(model.path), v, str(target), method="mesh", detail=False, **stage),
            max_steps=steps, stages=VOXEL_STAGES)
        elapsed = time.perf_counter() - started
        before = compare_model(str(model.path), start, str(target))
        after = compare_model(str(model.path), result.values, str(target))
    numeric = sum(p.type in ("float", "int") for p in model.schema)
    return (name, case, numeric, before["iou"], after["iou"], parameter_error(model.schema, result.values, hidden),
            result.steps, elapsed, result.stopped, after["method"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=2, help="cases per model")
    parser.add_argument("--steps", type=int, default=1000, help="optimiser budget (objective evaluations)")
    parser.add_argument("--models", default="", help="comma-separated model names (default: all shipped)")
    parser.add_argument("--spread", type=float, default=SPREAD, help="hidden parameter spread, fraction of range")
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="cases run in parallel processes")
    args = parser.parse_args()

    from cad.registry import ModelRegistry

    registry = ModelRegistry()
    names = [n for n in args.models.split(",") if n] or registry.names()
    rng = random.Random(args.seed)
    cases = [(name, case, hidden_values(registry.get(name).schema, rng, args.spread), args.steps)
             for name in names for case in range(args.cases)]
    started = time.perf_counter()
    print(f"{'model':<14}{'case':>5}{'params':>7}{'IoU before':>12}{'IoU after':>11}{'param err':>11}"
          f"{'steps':>7}{'time s':>8}  stop (IoU method)", flush=True)
    rows = []
    with ProcessPoolExecutor(max_workers=max(args.jobs, 1), mp_context=get_context("spawn")) as pool:
        for row in pool.map(run_case, *zip(*cases)):
            rows.append(row)
            print(f"{row[0]:<14}{row[1]:>5}{row[2]:>7}{row[3]:>12.4f}{row[4]:>11.4f}{row[5]:>11.4f}"
                  f"{row[6]:>7}{row[7]:>8.1f}  {row[8]} ({row[9]})", flush=True)
    print(f"median IoU before {statistics.median(r[3] for r in rows):.4f}, "
          f"after {statistics.median(r[4] for r in rows):.4f}; median parameter error "
          f"{statistics.median(r[5] for r in rows):.4f}; {len(rows)} cases, spread {args.spread}, "
          f"budget {args.steps} steps, wall time {time.perf_counter() - started:.0f} s with {args.jobs} jobs")


if __name__ == "__main__":
    main()

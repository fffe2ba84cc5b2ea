"""Fit benchmark: optim's fit beside scipy Powell and Nelder-Mead on held-out parametric models, same cases and budget.

Cases: seeded random models from ``bench/random_models.py`` (a family the search was never tuned on; size classes
small 0.5-10 mm, medium 10-200 mm, large 0.2-2 m, drawn in turn) plus the shipped models (cad/models), or a user's
scripts with ``--models-dir``; ``--assemblies N`` adds random multi-part models (a random base and 1-3 small named
parts on it, ``generate_assembly``), whose STEP targets have named solids. Every script goes through the real reader (``cad.registry.ModelRegistry``); with
``--scale S`` every length parameter (range, default, hidden value) is multiplied by S first. Per case: hidden
numeric values within +-``--spread`` of each range around the default (ints +-1..2), six significant digits; the
target is the hidden state built and saved as STEP; every solver starts at the defaults with the same budget of
objective evaluations (a build and IoU; a repeated state is answered from a cache and is free for everyone).

Solvers: ``optim`` (``cad.fit.fit`` on its own coarse-to-fine schedule, ``optim_fit``; ``optim-worker`` the same through
one build worker of ``cad.worker_pool``, ``optim-parallel`` through ``--workers`` of them with the fit's batches
evaluated concurrently and its next probe started ahead on an idle worker, as /api/optimise runs it: same states
and answer, ``parallel_identical`` per case says so, ``builds`` counts the probes started ahead and never asked;
``optim-whole`` the serial fit with the whole shape's residuals only, without the per-part blocks a named STEP
assembly adds, ``cad.residual_fields``), ``powell`` and ``nelder-mead``
(``scipy.optimize.minimize`` on the numeric parameters normalised to [0, 1], bounds respected, ints rounded inside
the objective, 1 - IoU minimised on optim's final-stage objective: the ray IoU at 128, or ``--baseline-objective
exact``). Each is stopped at the budget; the answer is the best state it evaluated. Final score for all: the exact
B-rep IoU of the returned state (``cad.target.compare_model``, method ``auto``; ``mesh`` when a boolean fails).

Run: .venv/bin/python bench/fit.py [--random 12] [--shipped bracket,pillow_block|all|none] [--models-dir DIR]
     [--budget 300] [--scale 1] [--jobs 1] [--solvers optim-worker,optim-parallel --workers 2]
     [--out bench-results/fit.json]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.random_models import SIZE_CLASSES, generate, generate_assembly, scale_script, write_model  # noqa: E402

log = logging.getLogger("bench.fit")

SOLVERS = ("optim", "optim-whole", "optim-worker", "optim-parallel", "powell", "nelder-mead")
DEFAULT_SOLVERS = ("optim", "powell", "nelder-mead")
SPREAD = 0.25
FINAL_STAGE = {"resolution": 128, "rays": True}  # optim's last stage (cad.fit.DEFAULT_SCHEDULE[-1].options)
MAX_CALLS_PER_EVALUATION = 20  # a baseline circling on cached states is stopped too
SIMPLEX_STEP = 0.1  # Nelder-Mead's initial simplex, share of each range


FIT = "cad.fit.fit(schedule=DEFAULT_SCHEDULE)"  # what optim_fit calls, for the report


def optim_fit(schema, start: dict, objective, budget: int, submit=None, workers: int = 1) -> tuple:
    """optim's fit on its own schedule: the ONE place that calls it. Returns (values, stopped, trace, wasted): the
    trace is (evaluations, best final-stage score) after each gain; wasted: states started ahead on an idle
    worker and never asked (builds that are not evaluations).
    (Measured before cad/fit landed with ``cad.optimise.optimise(schema, start, objective, max_steps=budget,
    stages=VOXEL_STAGES)``, fields values/steps/stopped.)"""
    from cad.fit import fit

    result = fit(schema, start, objective, max_evaluations=budget, submit=submit, workers=workers)
    return result.values, result.stopped, [list(point) for point in result.trace], result.wasted_builds


# --- cases --------------------------------------------------------------------------------------------------------

def hidden_values(schema, rng: random.Random, spread: float) -> dict:
    """Within +-spread of each range around the default (floats, 6 significant digits), ints +-1..2; bools stay."""
    values = schema.defaults()
    for p in schema:
        if p.type == "float":
            x = p.default + rng.uniform(-spread, spread) * (p.max - p.min)
            values[p.name] = min(max(float(f"{x:.6g}"), p.min), p.max)
        elif p.type == "int":
            moves = [m for m in (-2, -1, 1, 2) if p.min <= p.default + m <= p.max] or [0]
            values[p.name] = p.default + rng.choice(moves)
    return values


def prepare_cases(args, folder: Path) -> list[dict]:
    """Write every case's script into ``folder`` (scaled) and describe the cases (plain, picklable)."""
    from cad.registry import BUILTIN_MODELS_DIR, ModelRegistry

    scripts: list[tuple[str, str, str]] = []  # (case class, name, source at args.scale)
    classes = sorted(SIZE_CLASSES, key=lambda c: SIZE_CLASSES[c])
    for index in range(args.random):
        model = generate(args.seed * 1000 + index, args.scale, classes[index % len(classes)])
        scripts.append((f"random {model.size_class}", model.name, model.source))  # generated at the scale
    for index in range(args.assemblies):  # multi-part: named solids in the STEP target
        model = generate_assembly(args.seed * 1000 + index, args.scale, classes[index % len(classes)])
        scripts.append(("random assembly", model.name, model.source))
    shipped = sorted(p.stem for p in BUILTIN_MODELS_DIR.glob("*.py") if not p.stem.startswith("_"))
    wanted = shipped if args.shipped == "all" else [n for n in args.shipped.split(",") if n and n != "none"]
    for name in wanted:
        if name not in shipped:
            raise SystemExit(f"no shipped model {name!r} (shipped: {', '.join(shipped)})")
        source = (BUILTIN_MODELS_DIR / f"{name}.py").read_text(encoding="utf-8")
        scripts.append(("shipped", f"shipped_{name}", scale_script(source, args.scale)))
    if args.models_dir:
        for path in sorted(Path(args.models_dir).glob("*.py")):
            name = "user_" + re.sub(r"[^a-z0-9_]", "_", path.stem.lower())
            scripts.append(("user", name, scale_script(path.read_text(encoding="utf-8"), args.scale)))
    registry = ModelRegistry([folder])
    cases = []
    for number, (case_class, name, source) in enumerate(scripts):
        (folder / f"{name}.py").write_text(source, encoding="utf-8")
        model = registry.get(name)
        numeric = [p for p in model.schema if p.type in ("float", "int")]
        if len(numeric) < 1:
            log.warning("skipping %s: no numeric parameters", name)
            continue
        rng = random.Random(f"{args.seed}:{name}")
        cases.append({"case": number, "name": name, "class": case_class, "path": str(model.path),
                      "parameters": len(numeric), "hidden": hidden_values(model.schema, rng, args.spread)})
    return cases


# --- objectives ---------------------------------------------------------------------------------------------------

class BudgetSpent(Exception):
    pass


class Evaluations:
    """Counts objective evaluations (distinct states) for one solver, stops it at the budget, keeps its best."""

    def __init__(self, score, budget: int, names: list[str]):
        self.score, self.budget, self.names = score, budget, names
        self.cache: dict[tuple, float] = {}
        self.calls = 0
        self.best_values, self.best = None, -1.0
        self.trace: list[list] = []  # [evaluations, best score] after each gain, as optim's fit reports its own

    def __call__(self, values: dict) -> float:
        key = tuple(values[n] for n in self.names)
        self.calls += 1
        if key in self.cache:
            if self.calls > MAX_CALLS_PER_EVALUATION * self.budget:
                raise BudgetSpent
            return self.cache[key]
        if len(self.cache) >= self.budget:
            raise BudgetSpent
        iou = self.score(values)
        self.cache[key] = iou
        if iou > self.best:
            self.best, self.best_values = iou, dict(values)
            self.trace.append([len(self.cache), iou])
        return iou


def make_score(path: str, target: str, stage: dict | None, method: str = "mesh"):
    """IoU of ``values`` against the target (``stage`` options of compare_model); 0 for a state that fails."""
    from cad.target import compare_model

    failures = {"count": 0}

    def score(values: dict, stage=stage):
        try:
            answer = compare_model(path, values, target, method=method, detail=False, **(stage or {}))
        except Exception as exc:  # noqa: BLE001 - a state that does not build (or an OCC failure) scores 0
            failures["count"] += 1
            log.debug("%s does not score at %s: %s", Path(path).stem, values, exc)
            return 0.0
        return answer

    score.failures = failures
    return score


def run_optim(schema, start, path, target, budget, parts: bool = True):
    """optim's fit on its own schedule; every objective call counts (optim caches repeated states itself).
    ``parts=False``: its least-squares stages see the whole shape only (no per-part blocks)."""
    score = make_score(path, target, None)
    calls = {"count": 0}

    def objective(values: dict, stage):
        calls["count"] += 1
        if not parts and stage and "field" in stage:
            stage = {**stage, "field": {**stage["field"], "parts": False}}
        return score(values, stage)

    values, stopped, trace, _ = optim_fit(schema, start, objective, budget)
    return values, calls["count"], stopped, score.failures["count"], trace


def run_optim_parallel(schema, start, path, target, budget, workers):
    """optim's fit with ``submit`` on a pool of ``workers`` build workers (cad.worker_pool), as /api/optimise runs
    it: each concurrent job with its slot's own affinity key (the path spelt with /./, ``cad.worker_pool.Slots``).
    The workers are started and have read the target before the clock starts (the web process keeps them).
    Returns the values,
    the fit's evaluations, how it stopped, failed builds, wall seconds, the trace and the builds made (the
    evaluations and the states started ahead that were never asked)."""
    from concurrent.futures import ThreadPoolExecutor

    from cad.errors import BuildError
    from cad.worker_pool import Slots, WorkerPool

    pool, calls, failures = WorkerPool(workers), {"count": 0}, {"count": 0}
    folder, _, name = path.rpartition(os.sep)
    keys = [os.sep.join([folder, *(["."] * slot), name]) for slot in range(workers)]

    lock, slots = threading.Lock(), Slots(workers)

    def objective(values: dict, stage):
        with lock:
            calls["count"] += 1
        try:
            with slots.take() as slot:
                return pool.call("compare", path, values, target, method="mesh", detail=False, **(stage or {}),
                                 script=keys[slot])
        except BuildError as exc:
            failures["count"] += 1
            log.debug("%s does not score at %s: %s", Path(path).stem, values, exc)
            return 0.0

    try:
        with ThreadPoolExecutor(workers) as executor:
            # Warm-up, not counted: one job per slot at once, so every worker has started and read the target and
            # each slot's key is on its own worker.
            barrier = threading.Barrier(workers)

            def warm_up(_):
                barrier.wait()
                return objective(start, FINAL_STAGE)

            list(executor.map(warm_up, range(workers)))
            calls["count"] = 0
            started = time.perf_counter()
            values, stopped, trace, wasted = optim_fit(
                schema, start, objective, budget, lambda values, stage: executor.submit(objective, values, stage),
                workers)
            elapsed = time.perf_counter() - started
    finally:
        pool.close()
    return values, calls["count"] - wasted, stopped, failures["count"], elapsed, trace, calls["count"]


def run_scipy(method: str, schema, start, path, target, budget, baseline_objective: str):
    import numpy as np
    from scipy.optimize import minimize

    numeric = [p for p in schema if p.type in ("float", "int")]
    if baseline_objective == "exact":
        raw = make_score(path, target, None, method="exact")
    else:
        raw = make_score(path, target, FINAL_STAGE)
    score = Evaluations(lambda values: _iou(raw(values)), budget, schema.names())

    def state(x) -> dict:
        values = dict(start)
        for p, u in zip(numeric, np.clip(x, 0.0, 1.0)):
            v = p.min + float(u) * (p.max - p.min)
            values[p.name] = int(round(v)) if p.type == "int" else min(max(v, p.min), p.max)
        return values

    x0 = np.array([(start[p.name] - p.min) / (p.max - p.min) for p in numeric], dtype=float)
    options = {"maxfev": MAX_CALLS_PER_EVALUATION * budget, "xtol": 1e-4, "ftol": 1e-6}
    if method == "Nelder-Mead":
        simplex = [x0] + [x0 + np.eye(len(x0))[i] * (SIMPLEX_STEP if x0[i] + SIMPLEX_STEP <= 1 else -SIMPLEX_STEP)
                          for i in range(len(x0))]
        options = {"maxfev": options["maxfev"], "xatol": 1e-4, "fatol": 1e-6, "initial_simplex": np.array(simplex)}
    stopped = "converged"
    try:
        minimize(lambda x: 1.0 - score(state(x)), x0, method=method, bounds=[(0.0, 1.0)] * len(x0),
                 options=options)
    except BudgetSpent:
        stopped = "budget"
    trace = score.trace if baseline_objective == "rays" else []  # comparable with optim's only on its objective
    return score.best_values or dict(start), len(score.cache), stopped, raw.failures["count"], trace


def _iou(answer) -> float:
    return float(answer["iou"] if isinstance(answer, dict) else answer)


def run_case(case: dict, budget: int, solvers: list[str], baseline_objective: str, workers: int = 2) -> dict:
    """One case: build the hidden target as STEP, run every solver from the defaults, score with the exact IoU."""
    from cad import export
    from cad.build import build_model, clear_process_cache
    from cad.registry import ModelRegistry
    from cad.target import compare_model

    path = Path(case["path"])
    schema = ModelRegistry([path.parent]).get(path.stem).schema
    start = schema.defaults()
    numeric = [p for p in schema if p.type in ("float", "int")]
    result = dict(case, budget=budget, solvers={})
    with tempfile.TemporaryDirectory(prefix="optim-fit-") as folder:
        target = str(Path(folder) / f"{path.stem}.step")
        Path(target).write_bytes(export.step_bytes(build_model(path, case["hidden"]).assembly))
        before = compare_model(str(path), start, target, detail=False)
        result["start_iou"] = before["iou"]
        for solver in solvers:
            clear_process_cache()
            started, builds = time.perf_counter(), None
            if solver in ("optim", "optim-whole"):
                values, evaluations, stopped, failures, trace = run_optim(schema, start, str(path), target, budget,
                                                                          parts=solver == "optim")
            elif solver in ("optim-worker", "optim-parallel"):
                values, evaluations, stopped, failures, elapsed, trace, builds = run_optim_parallel(
                    schema, start, str(path), target, budget, workers if solver == "optim-parallel" else 1)
                started = time.perf_counter() - elapsed
            else:
                method = {"powell": "Powell", "nelder-mead": "Nelder-Mead"}[solver]
                values, evaluations, stopped, failures, trace = run_scipy(method, schema, start, str(path), target,
                                                                   budget, baseline_objective)
            elapsed = time.perf_counter() - started
            try:
                after = compare_model(str(path), values, target, detail=False)
            except Exception as exc:  # noqa: BLE001 - a returned state that does not build scores 0
                log.warning("%s/%s: the returned state does not build: %s", case["name"], solver, exc)
                after = {"iou": 0.0, "method": "failed"}
            error = statistics.fmean(abs(values[p.name] - case["hidden"][p.name]) / (p.max - p.min) for p in numeric)
            result["solvers"][solver] = {
                "iou": after["iou"], "iou_method": after["method"], "evaluations": evaluations, "wall_s": elapsed,
                "builds": evaluations if builds is None else builds,
                "stopped": stopped, "failed_evaluations": failures, "parameter_error": error, "values": values,
                "trace": trace}
            log.info("%-22s %-14s IoU %.4f -> %.4f (%s)  %4d evaluations  %6.1f s  %s", case["name"], solver,
                     before["iou"], after["iou"], after["method"], evaluations, elapsed, stopped)
    _evaluations_to_powell(result["solvers"])
    serial = result["solvers"].get("optim-worker") or result["solvers"].get("optim")
    parallel = result["solvers"].get("optim-parallel")
    if serial and parallel:  # the same fit: the same states and answer, only the wall time differs
        result["parallel_identical"] = (serial["values"] == parallel["values"]
                                        and serial["evaluations"] == parallel["evaluations"])
    return result


def _evaluations_to_powell(runs: dict) -> None:
    """Each solver's ``to_powell``: the evaluations it took to first reach the best score Powell ended with (on the
    same objective, the final stage's ray IoU; None when it never did). Powell's own is where it found its best."""
    powell = runs.get("powell")
    if not powell or not powell["trace"]:
        return
    level = powell["trace"][-1][1]
    for run in runs.values():
        run["to_powell"] = next((evaluations for evaluations, score in run["trace"] if score >= level - 1e-12), None)


# --- report -------------------------------------------------------------------------------------------------------

def summarise(results: list[dict], solvers: list[str]) -> dict:
    order = ("random small", "random medium", "random large", "random assembly", "shipped", "user")
    classes = sorted({r["class"] for r in results}, key=order.index)
    summary = {}
    for case_class in classes + ["all"]:
        rows = [r for r in results if case_class in ("all", r["class"])]
        summary[case_class] = {}
        for solver in solvers:
            runs = [r["solvers"][solver] for r in rows]
            ious = [run["iou"] for run in runs]
            summary[case_class][solver] = {
                "cases": len(runs), "median_iou": statistics.median(ious), "worst_iou": min(ious),
                "at_least_0.99": sum(i >= 0.99 for i in ious),
                "median_evaluations": statistics.median(run["evaluations"] for run in runs),
                "median_builds": statistics.median(run.get("builds", run["evaluations"]) for run in runs),
                "median_wall_s": statistics.median(run["wall_s"] for run in runs)}
            reached = [run["to_powell"] for run in runs if run.get("to_powell") is not None]
            if any("to_powell" in run for run in runs):
                summary[case_class][solver].update({"reached_powell": len(reached),
                                                    "median_to_powell": statistics.median(reached) if reached
                                                    else None})
    return summary


def table(summary: dict) -> str:
    lines = [f"{'class':<15}{'solver':<16}{'cases':>6}{'median IoU':>12}{'worst IoU':>11}{'>=0.99':>8}"
             f"{'median evals':>14}{'builds':>8}{'median wall s':>15}{'reach Powell':>14}{'evals to it':>13}"]
    for case_class, by_solver in summary.items():
        for solver, row in by_solver.items():
            line = (f"{case_class:<15}{solver:<16}{row['cases']:>6}{row['median_iou']:>12.4f}"
                    f"{row['worst_iou']:>11.4f}{row['at_least_0.99']:>5}/{row['cases']:<2}"
                    f"{row['median_evaluations']:>14.0f}{row['median_builds']:>8.0f}{row['median_wall_s']:>15.1f}")
            if "reached_powell" in row:  # the evaluations to Powell's final score, median over the cases reached
                to_it = row["median_to_powell"]
                line += f"{row['reached_powell']:>11}/{row['cases']:<2}{'-' if to_it is None else f'{to_it:.0f}':>13}"
            lines.append(line)
    return "\n".join(lines)


def _run_cases(cases: list[dict], args, solvers: list[str], level: int, tqdm) -> list[dict]:
    if args.jobs <= 1:
        return [run_case(case, args.budget, solvers, args.baseline_objective, args.workers)
                for case in tqdm(cases, desc="cases", unit="case")]
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn"),
                             initializer=_worker_init, initargs=(level,)) as pool:
        futures = [pool.submit(run_case, case, args.budget, solvers, args.baseline_objective, args.workers)
                   for case in cases]
        return [future.result() for future in tqdm(as_completed(futures), total=len(futures), desc="cases",
                                                   unit="case")]


def _worker_init(level: int) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(processName)s %(message)s", datefmt="%H:%M:%S")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--random", type=int, default=12, help="random held-out models (size classes in turn)")
    parser.add_argument("--assemblies", type=int, default=0,
                        help="random held-out multi-part models (bench/random_models.generate_assembly)")
    parser.add_argument("--shipped", default="all", help="shipped models: all, none or a comma-separated list")
    parser.add_argument("--models-dir", default="", help="also every *.py model script in this folder")
    parser.add_argument("--budget", type=int, default=300, help="objective evaluations per solver and case")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every length parameter by this")
    parser.add_argument("--spread", type=float, default=SPREAD, help="hidden values: +- this share of each range")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--solvers", default=",".join(DEFAULT_SOLVERS),
                        help=f"comma-separated, of {', '.join(SOLVERS)}")
    parser.add_argument("--workers", type=int, default=2,
                        help="build workers of optim-parallel (the same fit, its batches evaluated concurrently on a "
                             "pool of build workers and its next probe started ahead, as /api/optimise runs it); "
                             "optim-worker: the same on one worker")
    parser.add_argument("--baseline-objective", choices=("rays", "exact"), default="rays",
                        help="the baselines' objective: optim's final stage (ray IoU at 128) or the exact IoU")
    parser.add_argument("--jobs", type=int, default=1, help="cases run in parallel processes")
    parser.add_argument("--out", default="bench-results/fit.json")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    solvers = [s for s in args.solvers.split(",") if s]
    unknown = sorted(set(solvers) - set(SOLVERS))
    if unknown:
        parser.error(f"unknown solver(s): {', '.join(unknown)}")
    level = logging.DEBUG if args.verbose else logging.INFO
    _worker_init(level)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="optim-fit-models-") as folder:
        cases = prepare_cases(args, Path(folder))
        log.info("%d cases, budget %d, scale x%g, %d job(s)", len(cases), args.budget, args.scale, args.jobs)
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        with logging_redirect_tqdm():
            results = _run_cases(cases, args, solvers, level, tqdm)
    results.sort(key=lambda r: r["case"])
    summary = summarise(results, solvers)
    wall = time.perf_counter() - started
    report = {"command": " ".join(["bench/fit.py", *(argv if argv is not None else sys.argv[1:])]),
              "budget": args.budget, "scale": args.scale, "spread": args.spread, "seed": args.seed,
              "baseline_objective": args.baseline_objective, "jobs": args.jobs, "cpus": os.cpu_count(),
              "wall_s": wall, "fit": FIT, "summary": summary, "cases": results}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1), encoding="utf-8")
    print(table(summary))
    print(f"{len(results)} cases, budget {args.budget}, scale x{args.scale:g}, wall {wall:.0f} s with {args.jobs} "
          f"job(s); JSON in {out}")
    return report


if __name__ == "__main__":
    main()

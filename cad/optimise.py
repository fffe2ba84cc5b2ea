"""Numeric refinement of a model's parameters toward a target: scans, least squares and coordinate search on IoU.

Pure Python (no cadquery): the caller passes ``objective(values, stage)``, answering an IoU or a dict with ``iou``
(and ``residuals`` for a least-squares stage); the web layer runs it in the build worker, ``bench/fit.py``
in-process. Every numeric parameter (float and int; bools stay as they are) moves within its schema bounds in
normalised units (0..1 over min..max). A pipeline is a list of stages, each ``(objective options, budget share,
search)`` where the search is ``scan`` (global 1-D scans), ``least_squares`` (Levenberg-Marquardt on the
residuals, cad.least_squares) or ``coordinate``: an adaptive per-parameter step that doubles after a gain and
shrinks otherwise, with pattern moves along helpful joint moves and, once settled, larger single/pair escape
moves. ``optimise`` runs one pipeline, or several from the same start (multi-start) keeping the best. A *step* is
one objective evaluation (a repeated state is answered from a cache and costs nothing). Deterministic for a
deterministic objective.
"""
from __future__ import annotations

import logging
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

from cad.parameter_moves import delta, done, pair_move, pairs, position, shifted, value

log = logging.getLogger(__name__)

INITIAL_STEP = 0.125  # of each parameter's range
MAX_STEP = 0.5
SHRINK = 0.25
GROW = 2.0
FOLLOW_DOUBLINGS = 10  # how far a helpful joint move is pushed on, doubling each time
ESCAPE_SCALES = (1 / 16, 1 / 64)  # of each range: the joint moves tried once the coordinate search has converged
MAX_ESCAPES = 4
ESCAPE_TRIGGER = 1 / 256  # every active step below this share of its range: the search has settled
DEFAULT_MAX_STEPS = 300
MAX_STEPS_LIMIT = 5000
RESIDUAL_CACHE = 8  # residual vectors kept per least-squares stage
# Coarse-to-fine schedules for a voxel objective (cad.target.compare_model(method="mesh", **stage)): each stage is
# (objective options, share of the budget, search).
COORDINATE, LEAST_SQUARES, SCAN = "coordinate", "least_squares", "scan"
SCAN_POINTS = 5
SCAN_SWEEPS = 2
# A scan moves a parameter across its range only for a clear gain: the coarse field cannot see fine features
# (a wall's thickness, a vent's width), and moving those on noise strands them far from the answer.
SCAN_MIN_GAIN = 0.005
# Least squares from coarse to fine: cumulative volume profiles first (they pull a part toward its place from
# anywhere: a length 40 mm short, a lid lifted off), then occupancy fields less and less blurred, then the ray IoU.
# The last stage gets about 40%: thin walls are only resolved there, and it was the one running out of budget.
FIELD_STAGES = [({"field": {"resolution": 64, "cumulative": True}}, 0.2, LEAST_SQUARES),
                ({"field": {"resolution": 48, "blur": 1.5}}, 0.1, LEAST_SQUARES),
                ({"field": {"resolution": 64, "blur": 0.75}}, 0.1, LEAST_SQUARES),
                ({"field": {"resolution": 96, "blur": 0.5}}, 0.2, LEAST_SQUARES),
                ({"resolution": 128, "rays": True}, 1.0, COORDINATE)]
VOXEL_STAGES = FIELD_STAGES  # the default for a voxel objective


@dataclass
class OptimiseResult:
    start_values: dict
    values: dict  # the best complete state found
    start_iou: float
    iou: float
    steps: int  # objective evaluations used
    stopped: str  # "converged" | "budget" | "target_reached" | "cancelled"
    trace: list[tuple[int, float]] = field(default_factory=list)  # (step, best IoU so far) after each improvement

    def changes(self) -> dict:
        """name -> new value for every parameter that moved."""
        return {n: v for n, v in self.values.items() if v != self.start_values.get(n)}


class _Budget(Exception):
    pass


def optimise(schema, start: dict, objective, *, max_steps: int = DEFAULT_MAX_STEPS, progress=None,
             stages=((None, 1.0),), **options) -> OptimiseResult:
    """Run one pipeline of ``stages`` (see ``_pipeline``) or, when ``stages`` is a list of pipelines, each of them
    from ``start`` with an equal share of ``max_steps`` (a multi-start search: each pipeline is stranded on different
    problems), keeping the best final result. Stage indices passed to ``progress`` count across the pipelines.
    """
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or not 1 <= max_steps <= MAX_STEPS_LIMIT:
        raise ValueError(f"max_steps must be a whole number between 1 and {MAX_STEPS_LIMIT}, got {max_steps!r}")
    if not stages or not isinstance(stages[0], list):
        return _pipeline(schema, start, objective, max_steps=max_steps, progress=progress, stages=stages, **options)
    best, used, offset, trace = None, 0, 0, []
    for number, pipeline in enumerate(stages):
        budget = (max_steps - used) // (len(stages) - number)
        if budget < 1:
            break

        def relay(step, iou, stage, offset=offset, used=used):
            if progress is not None:
                progress(used + step, max(iou, best.iou if best else 0.0), offset + stage)

        result = _pipeline(schema, start, objective, max_steps=budget, progress=relay, stages=pipeline, **options)
        trace += [(used + step, iou) for step, iou in result.trace if not best or iou > best.iou]
        used, offset = used + result.steps, offset + len(pipeline)
        if best is None or result.iou > best.iou:
            best = result
        if result.stopped in ("target_reached", "cancelled"):
            break
    return OptimiseResult(start_values=best.start_values, values=best.values, start_iou=best.start_iou, iou=best.iou,
                          steps=used, stopped="cancelled" if result.stopped == "cancelled" else best.stopped,
                          trace=trace)


def stage_count(stages) -> int:
    """How many stages ``optimise`` reports progress for (summed over pipelines)."""
    return sum(len(p) for p in stages) if stages and isinstance(stages[0], list) else len(stages)


def _pipeline(schema, start: dict, objective: Callable[[dict, object], float], *,
             max_steps: int = DEFAULT_MAX_STEPS, progress: Callable[[int, float, int], None] | None = None,
             target_iou: float = 1.0 - 1e-9, parameters: list[str] | None = None,
             stages: list[tuple[object, float]] = ((None, 1.0),), cancel=None) -> OptimiseResult:
    """Maximise ``objective(values, stage)`` (an IoU in 0..1) over the numeric parameters from ``start``.

    ``stages`` is a coarse-to-fine schedule of ``(stage, share of the budget[, search])``: each stage searches from
    the best state of the previous one with ``objective(values, stage)`` (e.g. a blurred IoU first); the last stage
    is the real objective, gets whatever budget is left and starts from the coarse result it scores best.
    ``start`` must be a complete valid state; ``parameters`` optionally limits the search to some names.
    ``progress(step, best_iou, stage_index)`` is called after every evaluation. ``cancel`` (anything with
    ``is_set()``, e.g. a ``threading.Event``) stops the search before the next evaluation; the result is then the
    best state found so far, with ``stopped == "cancelled"``.
    The result holds the best state under the last stage's objective (never worse than ``start``).
    Raises ValueError on a bad parameter name (``optimise`` checks the budget).
    """
    if not stages:
        raise ValueError("at least one stage is needed")
    start = schema.complete(start)
    numeric = [p for p in schema if p.type in ("float", "int")]
    if parameters is not None:
        unknown = sorted(set(parameters) - {p.name for p in numeric})
        if unknown:
            raise ValueError(f"not numeric parameters of this model: {', '.join(unknown)}")
        numeric = [p for p in numeric if p.name in parameters]
    counter = {"steps": 0, "limit": max_steps}
    trace: list[tuple[int, float]] = []
    final_index = len(stages) - 1
    names = schema.names()

    def state_key(values: dict) -> tuple:
        return tuple(values[n] for n in names)

    def check_budget() -> None:
        """Raise _Budget before an evaluation the budget or a cancel does not allow."""
        if counter["steps"] >= counter["limit"]:
            raise _Budget
        if cancel is not None and cancel.is_set():
            counter["cancelled"] = True
            raise _Budget

    def judge(candidate: dict) -> float:
        """The last stage's objective for ``candidate`` (each state once), to check a coarse stage's choice."""
        key = state_key(candidate)
        if key not in judged:
            check_budget()
            judged[key] = _score(objective(dict(candidate), final_stage))
            counter["steps"] += 1
        return judged[key]

    def run_stage(index: int, stage, values: dict, limit: int, search: str) -> tuple[dict, float, bool]:
        """One stage's search (scan, least squares or coordinate) under its objective; returns (best values, best
        score, converged)."""
        cache: dict[tuple, float] = {}
        # Residual fields are large (up to a few MB each): keep only the last few, which is all Levenberg-Marquardt
        # reads back; a rare miss re-evaluates the state (and costs a step).
        residual_cache: OrderedDict[tuple, object] = OrderedDict()
        best = {"score": -1.0}
        counter["limit"] = limit

        def evaluate(candidate: dict, want_residuals: bool = False) -> float:
            key = state_key(candidate)
            if key in cache and not (want_residuals and key not in residual_cache):
                return cache[key]
            check_budget()
            answer = objective(dict(candidate), stage)
            if search == LEAST_SQUARES:
                residual_cache[key] = answer.get("residuals") if isinstance(answer, dict) else None
                while len(residual_cache) > RESIDUAL_CACHE:
                    residual_cache.popitem(last=False)
            score = _score(answer)
            counter["steps"] += 1
            cache[key] = score
            if score > best["score"]:
                best["score"] = score
                if index == final_index:
                    trace.append((counter["steps"], score))
            if progress is not None:
                progress(counter["steps"], best["score"], index)
            return score

        def pair_moves(values: dict, score: float, pinned: dict) -> tuple[dict, float]:
            """Keeps ``kept`` up to date on every improvement: the budget may run out in the middle."""
            by_name = {p.name: p for p in numeric}
            for (first, second), signs in pairs(pinned):
                pair = (by_name[first], by_name[second])
                candidate = shifted(values, pair_move(pair, signs, [steps[p.name] for p in pair]))
                if candidate == values:
                    continue
                candidate_score = evaluate(candidate)
                if candidate_score > score + 1e-12:
                    values, score = follow(values, candidate, candidate_score, pair)
                    kept.update(values=values, score=score)
                    steps[first] = steps[second] = min(steps[first], steps[second]) * GROW
            return values, score

        def escape(values: dict, score: float) -> tuple[dict, float] | None:
            """At convergence, look further than the shrunken steps: single and pair moves of a fixed share of
            each range. Two parameters may trade off across a low barrier (a lid's lift against the box height)
            that only a larger joint move crosses. None when nothing helps."""
            by_name = {p.name: p for p in numeric}
            for scale in ESCAPE_SCALES:
                losses = {}
                for parameter in numeric:
                    for sign in (1, -1):
                        candidate = shifted(values, [(parameter, sign * delta(parameter, scale))])
                        if candidate == values:
                            continue
                        candidate_score = evaluate(candidate)
                        if candidate_score > score + 1e-12:
                            return candidate, candidate_score
                        losses[parameter.name] = max(losses.get(parameter.name, 0.0), score - candidate_score)
                for (first, second), signs in pairs(losses):
                    pair = (by_name[first], by_name[second])
                    candidate = shifted(values, pair_move(pair, signs, [scale, scale]))
                    if candidate == values:
                        continue
                    candidate_score = evaluate(candidate)
                    if candidate_score > score + 1e-12:
                        return follow(values, candidate, candidate_score, pair)
            return None

        def follow(origin: dict, values: dict, score: float, pair: tuple) -> tuple[dict, float]:
            """Keep going, doubling, along a move of several parameters that helped (a pair move, or a whole sweep:
            Hooke-Jeeves' pattern move): they trade off along a valley (a box's height against its lid's lift and
            thickness) that single-parameter steps can only creep along."""
            direction = [position(p, values[p.name]) - position(p, origin[p.name]) for p in pair]
            for attempt in range(FOLLOW_DOUBLINGS):
                direction = [d * (GROW if attempt else 1.0) for d in direction]
                candidate = shifted(values, list(zip(pair, direction)))
                if candidate == values:
                    break
                candidate_score = evaluate(candidate)
                if candidate_score <= score + 1e-12:
                    break
                values, score = candidate, candidate_score
                kept.update(values=values, score=score)
            return values, score

        best_values = dict(values)
        kept = {"values": best_values, "score": -1.0}
        try:
            best_score = evaluate(best_values)
        except _Budget:
            return best_values, -1.0, False
        kept["score"] = best_score
        if search == SCAN:
            return run_scan(best_values, best_score, evaluate, kept)
        if search == LEAST_SQUARES:
            return run_least_squares(best_values, evaluate, residual_cache, kept)
        # Later stages start with finer steps, but an int starts at one unit: a smaller step would count as done.
        steps = {p.name: INITIAL_STEP / (2 ** index) if p.type == "float" else
                 max(INITIAL_STEP / (2 ** index), 1.0 / (p.max - p.min)) for p in numeric}
        escapes = {"left": MAX_ESCAPES}
        direction = {p.name: 1 for p in numeric}

        def moved(values: dict, parameter, sign: int) -> dict:
            return shifted(values, [(parameter, sign * delta(parameter, steps[parameter.name]))])

        try:
            while best_score < target_iou:
                active = [p for p in numeric if not done(p, steps[p.name])]
                # Try escapes once the steps are small, not only at full convergence: a budget spent polishing
                # the fifth decimal of a local optimum is better spent looking past its rim.
                settled = all(steps[p.name] < ESCAPE_TRIGGER for p in active)
                if (not active or settled) and escapes["left"] > 0:
                    escaped = escape(best_values, best_score)
                    if escaped is None:
                        escapes["left"] = 0  # nothing within reach now: polish what we have
                    else:
                        escapes["left"] -= 1
                        best_values, best_score = escaped
                        kept.update(values=best_values, score=best_score)
                        steps.update({p.name: ESCAPE_SCALES[-1] for p in numeric})
                        continue
                if not active:
                    return best_values, best_score, True
                sweep_improved, pinned, sweep_start = False, {}, dict(best_values)
                for parameter in active:
                    name = parameter.name
                    improved, worst_loss = False, 0.0
                    # Ints also try counts two apart: a centred pattern (vents, holes) keeps its middle slot only
                    # when the count keeps its parity, so from seven vents six is worse but five is better.
                    tries = [(sign, 1) for sign in (direction[name], -direction[name])]
                    tries += [(sign, 2) for sign, _ in tries] if parameter.type == "int" else []
                    for sign, units in tries:
                        candidate = moved(best_values, parameter, sign) if units == 1 else shifted(
                            best_values, [(parameter, units * sign / (parameter.max - parameter.min))])
                        if candidate[name] == best_values[name]:
                            continue
                        score = evaluate(candidate)
                        if score > best_score + 1e-12:
                            best_values, best_score, improved = candidate, score, True
                            kept.update(values=best_values, score=best_score)
                            direction[name] = sign
                            break
                        if units == 1:
                            worst_loss = max(worst_loss, best_score - score)
                    sweep_improved |= improved
                    if not improved and worst_loss > 0:
                        pinned[name] = worst_loss
                    steps[name] = min(steps[name] * GROW, MAX_STEP) if improved else steps[name] * SHRINK
                together = [p for p in numeric if best_values[p.name] != sweep_start[p.name]]
                if len(together) > 1:
                    best_values, best_score = follow(sweep_start, best_values, best_score, together)
                if not sweep_improved and len(pinned) > 1:
                    # Stuck on a ridge: no single parameter helps, two moved together may (a box's height and its
                    # lid's lift both place the lid). Try pairs of the parameters that cost most to move alone.
                    best_values, best_score = pair_moves(best_values, best_score, pinned)
        except _Budget:
            return kept["values"], kept["score"], False
        return best_values, best_score, True

    def run_scan(values, score, evaluate, kept) -> tuple[dict, float, bool]:
        """One sweep of global 1-D scans: each parameter tried at SCAN_POINTS spots across its whole range.

        A local search only climbs the hill it starts on; a parameter such as a yaw angle has several. The scan
        puts each parameter on its best hill (given the others, in order) before the local stages refine.
        """
        try:
            for _ in range(SCAN_SWEEPS):  # a second sweep: parameters scanned early saw the later ones unfitted
                changed = False
                for parameter in numeric:
                    spots = {value(parameter, i / (SCAN_POINTS - 1)) for i in range(SCAN_POINTS)}
                    for spot in sorted(spots):
                        candidate = dict(values)
                        candidate[parameter.name] = spot
                        if candidate == values:
                            continue
                        candidate_score = evaluate(candidate)
                        if candidate_score > score + SCAN_MIN_GAIN:
                            values, score, changed = candidate, candidate_score, True
                            kept.update(values=values, score=score)
                if not changed:
                    break
        except _Budget:
            return kept["values"], kept["score"], False
        return values, score, True

    def run_least_squares(values, evaluate, residual_cache, kept) -> tuple[dict, float, bool]:
        """Levenberg-Marquardt over the floats in rounds, with one-unit moves of the ints between them."""
        import numpy as np  # here, not at import: the web process imports this module at start

        from cad.least_squares import fit_with_counts

        def residuals(candidate: dict):
            evaluate(candidate, want_residuals=True)
            key = state_key(candidate)
            residual_cache.move_to_end(key)
            found = residual_cache[key]
            return None if found is None else np.asarray(found, dtype=np.float32)

        def accept(candidate: dict) -> None:
            kept.update(values=candidate, score=evaluate(candidate))

        try:
            values = fit_with_counts([p for p in numeric if p.type == "float"],
                                     [p for p in numeric if p.type == "int"], values, residuals, position, value,
                                     on_accept=accept, confirm=lambda new, old: judge(new) > judge(old))
        except _Budget:
            return kept["values"], kept["score"], False
        return values, evaluate(values), True

    final_stage = stages[final_index][0]
    start_iou = _score(objective(dict(start), final_stage))
    counter["steps"] = 1
    judged = {state_key(start): start_iou}
    trace.append((1, start_iou))
    values = dict(start)
    # The coarse stages' objectives only approximate the last one, and a later coarse stage can lose what an
    # earlier one found (thin walls in a blurred field): each coarse stage's result is scored under the last
    # stage's objective (one step each) and the last stage starts from the best of them.
    checkpoint = (start_iou, dict(start))
    for index, (stage, share, *search) in enumerate(stages):
        final = index == final_index  # the last stage gets whatever budget is left
        if final:
            values = checkpoint[1]
        limit = max_steps if final else min(max_steps, counter["steps"] + max(int(max_steps * share), 1))
        values, iou, converged = run_stage(index, stage, values, limit, search[0] if search else COORDINATE)
        if not final and counter["steps"] < max_steps and not (cancel is not None and cancel.is_set()):
            counter["limit"] = max_steps
            score = judge(values)
            if progress is not None:
                progress(counter["steps"], max(score, checkpoint[0]), index)
            if score > checkpoint[0]:
                checkpoint = (score, dict(values))
    if iou < start_iou:  # the coarse stages led somewhere worse: keep the start
        values, iou = dict(start), start_iou
    stopped = "target_reached" if iou >= target_iou else ("converged" if converged else "budget")
    if counter.get("cancelled") and stopped != "target_reached":
        stopped = "cancelled"
    log.info("optimise: IoU %.4f -> %.4f in %d steps (%s)", start_iou, iou, counter["steps"], stopped)
    return OptimiseResult(start_values=start, values=values, start_iou=start_iou, iou=iou,
                          steps=counter["steps"], stopped=stopped, trace=trace)


def _score(answer) -> float:
    """The objective answers an IoU, or a dict with ``iou`` (and ``residuals`` in a least-squares stage); a score
    that is not a finite number counts as 0."""
    score = float(answer["iou"] if isinstance(answer, dict) else answer)
    return score if math.isfinite(score) else 0.0

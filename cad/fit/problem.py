"""The fitting problem: a model's numeric parameters as a point ``u`` in the unit cube, and a counted objective.

Every move, rounding and tolerance is relative to a parameter (its range or its schema step), never an absolute
number of model units, so a part at 0.01 scale fits like the same part at 100 scale. Pure Python: no numpy here,
the web process imports this package at start.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field

# The search grid of a float: its schema step / STEP_SUBDIVISIONS, or this share of its range without a step. Fine
# enough that IoU cannot tell the difference, coarse enough that a search's last moves are not lost in float
# noise. Coarse stages search on the schema steps (a designer's target is often on them: the bracket then fits
# exactly in 36 evaluations); the last stage on the fine grid (on the steps alone an enclosure with off-grid
# hidden values stopped at IoU 0.91: 1 mm steps against a 2 mm wall), and the answer moves back onto the steps
# wherever that costs no IoU.
UNSTEPPED_RESOLUTION = 1e-4
STEP_SUBDIVISIONS = 100
# Weight of the pull toward the start (per unit of normalised L1 distance): it only breaks near-ties, so that
# parameters that trade off (a lid's lift against the box height) end at the smallest change.
REGULARISATION = 1e-4
RESIDUAL_CACHE = 8  # residual vectors (up to a few MB each) kept per stage; a miss re-evaluates


class OutOfBudget(Exception):
    """The evaluation budget is spent or the fit was cancelled: solvers let it propagate."""


@dataclass(frozen=True)
class Coordinate:
    """One free parameter: its schema entry, the start value and the grids it snaps to."""
    parameter: object
    start: float | int
    resolution: float  # the search grid in model units: step / STEP_SUBDIVISIONS, range share, 1 for an int
    step: float | None = None  # the schema's step grid, where the answer lands when that costs no IoU

    @property
    def low(self):
        return self.parameter.min

    @property
    def span(self):
        return self.parameter.max - self.parameter.min

    @property
    def is_int(self) -> bool:
        return self.parameter.type == "int"

    def value(self, u: float, grid: float | None = None):
        """The value at unit position ``u`` on the search grid (or ``grid``) through the start, within bounds."""
        raw = self.low + min(max(u, 0.0), 1.0) * self.span
        grid = grid or self.resolution
        # The grid goes through the start value, so a parameter that does not need to move stays exactly there.
        # Round half up with a margin: a move of exactly half a grid step must round the same way at every
        # scale (the float error of raw differs by scale), or the same problem takes different paths.
        snapped = self.start + math.floor((raw - self.start) / grid + 0.5 + 1e-9) * grid
        snapped = min(max(snapped, self.parameter.min), self.parameter.max)
        if self.is_int:
            return int(round(snapped))
        return float(f"{snapped:.12g}")  # 40 + 3 * 0.1 is 40.300000000000004: drop the float noise

    def unit(self, value) -> float:
        return (value - self.low) / self.span


class Problem:
    """The free numeric parameters of ``schema`` (floats and ints with a proper range; bools stay fixed)."""

    def __init__(self, schema, start: dict, parameters: list[str] | None = None):
        self.schema = schema
        self.start = schema.complete(start)
        numeric = [p for p in schema if p.type in ("float", "int")]
        if parameters is not None:
            unknown = sorted(set(parameters) - {p.name for p in numeric})
            if unknown:
                raise ValueError(f"not numeric parameters of this model: {', '.join(unknown)}")
            numeric = [p for p in numeric if p.name in parameters]
        self.coordinates = [Coordinate(p, self.start[p.name], _resolution(p),
                                       float(p.step) if p.type == "float" and p.step else None) for p in numeric
                            if p.min is not None and p.max is not None and p.max > p.min]
        self.names = [c.parameter.name for c in self.coordinates]
        self.start_u = self.to_unit(self.start)
        self.held: set[int] = set()  # coordinates no solver may move just now
        self.fine = True  # search on the fine grid (False: on the schema steps, as coarse stages do)

    @contextmanager
    def on_grid(self, grid: str):
        """Snap to the schema steps (``"step"``) or to the fine grid (``"fine"``) inside the block."""
        saved, self.fine = self.fine, grid == "fine"
        try:
            yield
        finally:
            self.fine = saved

    @contextmanager
    def holding(self, index: int):
        """Solvers leave coordinate ``index`` where it is inside the block."""
        self.held.add(index)
        try:
            yield
        finally:
            self.held.discard(index)

    def __len__(self) -> int:
        return len(self.coordinates)

    def float_indices(self) -> list[int]:
        return [i for i, c in enumerate(self.coordinates) if not c.is_int and i not in self.held]

    def int_indices(self) -> list[int]:
        return [i for i, c in enumerate(self.coordinates) if c.is_int]

    def to_values(self, u) -> dict:
        values = dict(self.start)
        values.update({c.parameter.name: c.value(x, None if self.fine else c.step)
                       for c, x in zip(self.coordinates, u)})
        return values

    def to_unit(self, values: dict) -> tuple:
        return tuple(c.unit(values[c.parameter.name]) for c in self.coordinates)

    def snap(self, u) -> tuple:
        """``u`` moved onto the grid (the unit position of the values it stands for)."""
        return self.to_unit(self.to_values(u))

    def on_steps(self, u, indices) -> tuple:
        """``u`` with the coordinates ``indices`` moved to their schema step grid (through the start)."""
        values = self.to_values(u)
        for index in indices:
            coordinate = self.coordinates[index]
            if coordinate.step:
                values[coordinate.parameter.name] = coordinate.value(u[index], coordinate.step)
        return self.to_unit(values)

    def key(self, u) -> tuple:
        values = self.to_values(u)
        return tuple(values[n] for n in self.names)

    def distance(self, u) -> float:
        """Normalised L1 distance from the start: what the regulariser charges for."""
        return sum(abs(a - b) for a, b in zip(self.snap(u), self.start_u))

    def resolution(self, index: int) -> float:
        """The smallest move of coordinate ``index`` that changes its value, in unit positions."""
        coordinate = self.coordinates[index]
        grid = coordinate.resolution if self.fine or not coordinate.step else coordinate.step
        return grid / coordinate.span


def _resolution(parameter) -> float:
    if parameter.type == "int":
        return max(int(parameter.step or 1), 1)
    if parameter.step:
        return float(parameter.step) / STEP_SUBDIVISIONS
    return (parameter.max - parameter.min) * UNSTEPPED_RESOLUTION


def finite_score(answer) -> float:
    """The objective answers an IoU, or a dict with ``iou`` (and ``residuals``); a non-finite score counts as 0."""
    score = float(answer["iou"] if isinstance(answer, dict) else answer)
    return score if math.isfinite(score) else 0.0


@dataclass
class Counter:
    """Evaluations shared by every stage: the budget, the cancel token and progress reports."""
    budget: int
    cancel: object = None
    evaluations: int = 0
    cancelled: bool = False
    target_reached: bool = False
    limits: list = field(default_factory=list)  # nested ceilings (a stage's share, a refit's allowance)

    def charge(self) -> None:
        self.grant(1)
        self.evaluations += 1

    def grant(self, wanted: int) -> int:
        """How many of ``wanted`` evaluations may run now (at least one; the caller counts each as it lands);
        raises OutOfBudget when none may (cancelled, target reached, or the innermost ceiling is met)."""
        if self.cancel is not None and self.cancel.is_set():
            self.cancelled = True
        if self.cancelled or self.target_reached or self.evaluations >= self.ceiling():
            raise OutOfBudget
        return min(wanted, self.ceiling() - self.evaluations)

    @contextmanager
    def allowance(self, evaluations: int):
        """At most ``evaluations`` more inside the block (within any outer ceiling)."""
        self.limits.append(self.evaluations + max(evaluations, 0))
        try:
            yield
        finally:
            self.limits.pop()

    def ceiling(self) -> int:
        """The evaluation count at which the innermost allowance (or the budget) ends."""
        return min([self.budget, *self.limits])

    def remaining(self) -> int:
        """Evaluations left under every ceiling."""
        return max(self.ceiling() - self.evaluations, 0)

    @property
    def exhausted(self) -> bool:
        """No evaluation is left under the outer ceilings (as opposed to an inner allowance that ran out)."""
        return self.spent or self.target_reached or self.evaluations >= min([self.budget, *self.limits[:-1]])

    @property
    def spent(self) -> bool:
        return self.cancelled or self.evaluations >= self.budget


@dataclass
class StageObjective:
    """One stage's objective over unit positions: cached scores, the last few residual vectors, and the best
    (regularised) point seen, which is the stage's answer even when the budget ends mid-solve."""
    problem: Problem
    evaluate: object  # values -> IoU | {"iou", "residuals"}
    counter: Counter
    on_evaluation: object = None  # called after every real evaluation
    workers: object = None  # cad.fit.workers.Workers: states evaluated concurrently; None: one by one, here
    stage: int = 0  # the stage's index (what ``workers`` keys states started ahead by) and its objective options
    options: object = None
    target: float | None = None  # an IoU that ends the whole fit (the final objective only)
    scores: dict = field(default_factory=dict)
    residual_cache: OrderedDict = field(default_factory=OrderedDict)
    best_u: tuple = ()
    best_score: float = -math.inf
    best_iou: float = -math.inf  # plain IoU, for progress reports
    trackers: list = field(default_factory=list)
    jacobian: object = None  # the last finite-difference Jacobian a least-squares solve measured (warm refits)
    jacobian_indices: tuple = ()  # the coordinate of each of its columns

    @property
    def chunk(self) -> int:
        return 1 if self.workers is None else self.workers.count

    def iou(self, u, want_residuals: bool = False, ahead=()) -> float:
        key = self.problem.key(u)
        if key not in self.scores or (want_residuals and key not in self.residual_cache):
            self.evaluate_batch([u], want_residuals, ahead)
        return self.scores[key]

    def evaluate_batch(self, us, want_residuals: bool = False, ahead=()) -> dict:
        """Evaluate the distinct states among ``us`` that the cache cannot answer, as one batch: they go to the
        build workers (concurrently) in chunks of one per worker, and are recorded in the order of ``us``
        whatever order they finish in, so a fit is the same serial or parallel. The budget is exact: past the
        ceiling only the first states run, then OutOfBudget; a cancel is seen before each chunk. ``ahead``: the
        states the search is likely to ask next, started on a worker left idle (counted only once asked).
        Returns key -> residuals (or None) of the states evaluated here."""
        pending, seen = [], set()
        for u in us:
            key = self.problem.key(u)
            if key in seen or (key in self.scores and not (want_residuals and key not in self.residual_cache)):
                continue
            seen.add(key)
            pending.append((key, u))
        fresh: dict = {}
        if not pending:
            return fresh
        granted = self.counter.grant(len(pending))
        for begin in range(0, granted, self.chunk):
            if begin and self.counter.cancel is not None and self.counter.cancel.is_set():
                self.counter.cancelled = True  # a cancel stops the batch between chunks (a reached target
                raise OutOfBudget  # does not: what a batch evaluates must not depend on the chunk size)
            chunk = pending[begin:min(begin + self.chunk, granted)]
            if self.workers is None:
                answers = [self.evaluate(self.problem.to_values(u)) for _, u in chunk]
            else:
                # States ahead only with the batch's last chunk, and only if budget is left to ask for them.
                look_ahead = begin + self.chunk >= granted and granted < self.counter.remaining()
                answers = self.workers.answers(self.stage, self.options, [(key, self.problem.to_values(u))
                                                                          for key, u in chunk],
                                               self.unevaluated(ahead) if look_ahead else ())
            for (key, u), answer in zip(chunk, answers):
                fresh[key] = self.record(key, u, answer)
        if granted < len(pending):
            raise OutOfBudget
        return fresh

    def unevaluated(self, us) -> list:
        """(key, values) of the states among ``us`` this stage has not evaluated (what may be started ahead)."""
        keys = [self.problem.key(u) for u in us]
        return [(key, self.problem.to_values(u)) for key, u in zip(keys, us) if key not in self.scores]

    def record(self, key, u, answer):
        """Count one evaluation's answer; returns its residuals (or None)."""
        self.counter.evaluations += 1
        residuals = answer.get("residuals") if isinstance(answer, dict) else None
        self.residual_cache[key] = residuals
        self.residual_cache.move_to_end(key)
        while len(self.residual_cache) > RESIDUAL_CACHE:
            self.residual_cache.popitem(last=False)
        self.scores[key] = score = finite_score(answer)
        regularised = score - REGULARISATION * self.problem.distance(u)
        for tracker in [self, *self.trackers]:
            tracker.offer(self.problem.snap(u), regularised)
        self.best_iou = max(self.best_iou, score)
        if self.target is not None and score >= self.target:
            self.counter.target_reached = True
        if self.on_evaluation is not None:
            self.on_evaluation()
        return residuals

    def scores_of(self, us) -> list[float]:
        """``score(u)`` for every u, the uncached ones evaluated as one batch (see ``evaluate_batch``)."""
        self.evaluate_batch(us)
        return [self.score(u) for u in us]

    def residuals_of(self, us) -> list:
        """``residuals(u)`` for every u, the missing ones evaluated as one batch (see ``evaluate_batch``)."""
        known = {}
        for u in us:
            key = self.problem.key(u)
            if key in self.residual_cache:
                self.residual_cache.move_to_end(key)
                known[key] = self.residual_cache[key]
        known.update(self.evaluate_batch([u for u in us if self.problem.key(u) not in known], want_residuals=True))
        return [known[self.problem.key(u)] for u in us]

    def offer(self, u, score) -> None:
        if score > self.best_score:
            self.best_u, self.best_score = u, score

    @contextmanager
    def tracking(self):
        """A Best that sees only the evaluations inside the block (a refit's own answer)."""
        tracker = Best()
        self.trackers.append(tracker)
        try:
            yield tracker
        finally:
            self.trackers.remove(tracker)

    def score(self, u, ahead=()) -> float:
        """What solvers maximise: the IoU less a tiny pull toward the start (ties go to the smaller change).
        ``ahead``: states the solver may ask next, started on an idle worker meanwhile (see evaluate_batch)."""
        return self.iou(u, ahead=ahead) - REGULARISATION * self.problem.distance(u)

    def residuals(self, u, ahead=()):
        """The residual vector at ``u`` (None where the state does not build or the stage gives none); ``ahead``
        as for ``score``."""
        self.iou(u, want_residuals=True, ahead=ahead)
        key = self.problem.key(u)
        self.residual_cache.move_to_end(key)
        return self.residual_cache[key]


@dataclass
class Best:
    best_u: tuple = ()
    best_score: float = -math.inf

    def offer(self, u, score) -> None:
        if score > self.best_score:
            self.best_u, self.best_score = u, score

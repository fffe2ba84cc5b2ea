"""``fit``: the coarse-to-fine schedule over a Problem, the integer strategy, the revert pass and the result.

Each stage searches from the previous stage's answer under its own objective; a coarse stage's answer is then
scored under the last stage's (real) objective, and the last stage starts from the best of them. One evaluation
is one call of the objective; a repeated state is answered from a cache and costs nothing. Deterministic for a
deterministic objective.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

from cad.fit.integers import NEIGHBOURS, improve, refit_within
from cad.fit.problem import Counter, OutOfBudget, Problem, StageObjective
from cad.fit.schedule import DEFAULT_SCHEDULE
from cad.fit.solvers import get as get_solver
from cad.fit.solvers import get_warm_refit
from cad.fit.workers import Workers

log = logging.getLogger(__name__)

MAX_EVALUATIONS_LIMIT = 5000
TARGET_IOU = 1.0 - 1e-9
# The revert pass refits the other floats with a pattern search of this first step (of each range) and allowance.
REVERT_STEP = 1 / 32
REVERT_REFIT_PER_FLOAT = 12
REVERT_ROUNDS = 3
# A moved parameter is tried back with a refit of the others only where, to first order (the last least-squares
# Jacobian), they can take up at least this share of what putting it back costs: a refit that cannot is wasted
# (on a random 6-parameter part whose every parameter had to move, 211 of the fit's 553 evaluations).
TAKE_UP_SHARE = 0.75


@dataclass
class FitResult:
    start_values: dict
    values: dict  # the best complete state found
    start_iou: float
    iou: float
    evaluations: int
    stopped: str  # "converged" | "budget" | "target_reached" | "cancelled"
    trace: list[tuple[int, float]] = field(default_factory=list)  # (evaluations, best IoU) after each gain
    wasted_builds: int = 0  # states started ahead on an idle worker that the search never asked for

    def changes(self) -> dict:
        """name -> new value for every parameter that moved."""
        return {n: v for n, v in self.values.items() if v != self.start_values.get(n)}


def fit(schema, start: dict, objective, *, max_evaluations: int, progress=None, cancel=None,
        parameters: list[str] | None = None, extra_starts=(), schedule=DEFAULT_SCHEDULE, submit=None,
        workers: int = 1, on_best=None) -> FitResult:
    """Maximise ``objective(values, stage.options)`` (an IoU, or a dict with ``iou`` and ``residuals``) over the
    numeric parameters of ``schema`` (or the ``parameters`` among them) from ``start``.

    ``extra_starts`` are other states to start from (a VLM's proposal; only the fitted parameters are taken from
    them): the search starts from the one the real objective scores best; distances are still from ``start``.
    ``progress(evaluations, best_iou, stage_index)`` follows every evaluation with the best IoU under the last
    stage's objective so far; ``on_best(values, best_iou)`` each time the running stage's best state changes
    (with the real objective's best IoU so far; the UI draws that state as a ghost). ``cancel`` (anything with
    ``is_set()``) stops before the next evaluation; the result is the best state so far. Raises ValueError on a
    bad budget, schedule or name.

    ``submit(values, stage.options) -> concurrent.futures.Future`` of the answer, when given with ``workers``
    > 1, evaluates on that many workers (``cad.fit.workers``): the batches of independent states the solvers ask
    for (least squares' finite-difference columns, the pattern search's pair moves two at a time) go ``workers``
    at a time (a cancel is seen between such chunks), and while the search waits for one state an idle worker
    starts the one it would ask next on a miss. The batches do not depend on ``workers`` or on the order
    evaluations finish in, and a state started ahead counts only once asked: with or without ``submit`` the fit
    makes the same evaluations and returns the same answer (``FitResult.wasted_builds``: states started ahead
    and never asked).
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a whole number of at least 1, got {workers!r}")
    if isinstance(max_evaluations, bool) or not isinstance(max_evaluations, int) \
            or not 1 <= max_evaluations <= MAX_EVALUATIONS_LIMIT:
        raise ValueError(f"max_evaluations must be a whole number between 1 and {MAX_EVALUATIONS_LIMIT}, "
                         f"got {max_evaluations!r}")
    if not schedule:
        raise ValueError("the schedule needs at least one stage")
    problem = Problem(schema, start, parameters)
    pool = Workers(submit, workers, cancel) if submit is not None and workers > 1 else None
    run = _Run(problem, objective, tuple(schedule), Counter(max_evaluations, cancel), progress, pool, on_best)
    try:
        return run.execute([schema.complete({**problem.start, **extra}) for extra in extra_starts])
    finally:
        if pool is not None:
            pool.close()


class _Run:
    def __init__(self, problem, objective, schedule, counter, progress, workers=None, on_best=None):
        self.problem, self.objective, self.schedule = problem, objective, schedule
        self.on_best, self.searching, self.shown_u = on_best, None, None
        self.workers = workers
        self.counter, self.progress = counter, progress
        self.stage_index = 0
        self.trace: list[tuple[int, float]] = []
        self.final = self.stage_objective(len(schedule) - 1, target=TARGET_IOU)
        self.answer = None  # set once the answer has been moved onto the step grid; else final.best_u
        self.residual_stage = None  # the last coarse stage with a Jacobian (least squares): it gates the revert

    def stage_objective(self, index, target=None) -> StageObjective:
        options = self.schedule[index].options
        return StageObjective(self.problem, lambda values: self.objective(values, options), self.counter,
                              on_evaluation=self.report, target=target, workers=self.workers, stage=index,
                              options=options)

    def report(self) -> None:
        best = self.final.best_iou
        if best > (self.trace[-1][1] if self.trace else -1.0):
            self.trace.append((self.counter.evaluations, best))
        # The state the search holds best now: the running stage's (a coarse stage scores its own field, and
        # the real objective only sees its answer at the end of the stage), reported with the real best IoU.
        u = (self.searching or self.final).best_u
        if self.on_best is not None and u and u != self.shown_u:
            self.shown_u = u
            self.on_best(self.problem.to_values(u), max(best, 0.0))
        if self.progress is not None:
            self.progress(self.counter.evaluations, max(best, 0.0), self.stage_index)

    def execute(self, extra_starts) -> FitResult:
        start_u = self.problem.start_u
        converged = False
        try:
            start_iou = self.final.iou(start_u)
            checkpoint = max(((self.final.score(u), u) for u in
                              [start_u, *(self.problem.to_unit(v) for v in extra_starts)]), key=lambda t: t[0])[1]
            converged = self.stages(checkpoint)
            with self.counter.allowance(self.counter.remaining() - self.step_reserve()):
                converged = self.revert_and_polish() and converged
            self.answer = self.onto_steps(self.final.best_u)
        except OutOfBudget:
            start_iou = self.final.scores.get(self.problem.key(start_u), 0.0)
        return self.result(start_iou, converged)

    def stages(self, checkpoint) -> bool:
        """Run every stage; True when the last one converged."""
        u, last, converged = checkpoint, len(self.schedule) - 1, True
        for index, stage in enumerate(self.schedule):
            self.stage_index = index
            if not converged and stage.options_after_cut is not None:
                stage = replace(stage, solver_options={**stage.solver_options, **stage.options_after_cut})
            if index == last:
                allowance = self.counter.remaining() - self.step_reserve()
                return self.solve_stage(stage, self.final, checkpoint, allowance)
            share = max(int(self.counter.budget * stage.share), 1)
            objective = self.stage_objective(index)
            converged = self.solve_stage(stage, objective, u, share)
            if objective.jacobian is not None:
                self.residual_stage = objective
            u = objective.best_u or u
            if self.final.score(u) > self.final.score(checkpoint):
                checkpoint = u
            log.debug("fit stage %d (%s): %d evaluations so far, real IoU %.4f", index, stage.solver,
                      self.counter.evaluations, self.final.best_iou)
        return False

    def solve_stage(self, stage, objective, u, allowance) -> bool:
        """The stage's solver, then the integer strategy, until neither moves; True when that happened within the
        stage's allowance (the result is ``objective.best_u`` either way)."""
        solve = get_solver(stage.solver)
        self.searching = objective

        def refit(candidate):
            return solve(self.problem, objective, candidate, allowance, **stage.solver_options)

        warm = get_warm_refit(stage.solver)
        warm_refit = None if warm is None else (lambda candidate: warm(self.problem, objective, candidate, allowance))
        confirm = None if objective is self.final else (
            lambda new, old: self.final.score(new) > self.final.score(old))
        with self.counter.allowance(allowance), self.problem.on_grid(stage.grid):
            try:
                u, score = refit(u)
                while True:
                    u, score, moved = improve(self.problem, objective, refit, u, score, confirm=confirm,
                                              warm_refit=warm_refit, refit_neighbours=stage.refit_ints,
                                              every_value=stage.every_int_value)
                    if not moved:
                        return True
                    u, score = refit(u)
            except OutOfBudget:
                if self.counter.spent or self.counter.target_reached:
                    raise
                return False

    def step_reserve(self) -> int:
        """Evaluations kept back for moving the answer onto the step grid."""
        return min(2 * len(self.problem.float_indices()) + 1, self.counter.budget // 20)

    def revert_and_polish(self) -> bool:
        """Revert rounds, each followed by a polish of the last stage; True unless the allowance ran out."""
        try:
            for _ in range(REVERT_ROUNDS):
                if not self.revert():
                    return True
                # A partner took up a reverted change: polish the new point (which may move another a little).
                if not self.solve_stage(self.schedule[-1], self.final, self.final.best_u, self.counter.remaining()):
                    return False
        except OutOfBudget:
            if self.counter.spent or self.counter.target_reached:
                raise
            return False
        return True

    def revert(self) -> bool:
        """Put back every parameter whose move does not raise the real score: alone first, then with a short
        refit of the floats (a trade-off partner takes up the change). Ties go to the start. True when a refit
        changed the answer."""
        u = self.final.best_u
        for index in range(len(self.problem)):
            if u[index] == self.problem.start_u[index]:
                continue
            candidate = list(u)
            candidate[index] = self.problem.start_u[index]
            self.final.score(tuple(candidate))
            u = self.final.best_u
        solve, before = get_solver("pattern"), u
        for index in range(len(self.problem)):
            if u[index] == self.problem.start_u[index] or not self.may_be_taken_up(index, u):
                continue
            candidate = list(u)
            candidate[index] = self.problem.start_u[index]
            with self.problem.holding(index):
                refit_within(self.problem, self.final,
                             lambda c: solve(self.problem, self.final, c, 0, initial_step=REVERT_STEP),
                             tuple(candidate), per_float=REVERT_REFIT_PER_FLOAT)
            u = self.final.best_u
        return u != before

    def may_be_taken_up(self, index, u) -> bool:
        """Whether the other floats might take up putting coordinate ``index`` back (``TAKE_UP_SHARE``); True
        where no Jacobian says otherwise (no least-squares stage, a state without residuals). An int within the
        integer strategy's neighbour moves of its start was already tried there, with its floats refitted."""
        if self.problem.coordinates[index].is_int:
            units = round(abs(u[index] - self.problem.start_u[index]) / self.problem.resolution(index))
            return units > max(NEIGHBOURS)
        stage = self.residual_stage
        if stage is None or index not in stage.jacobian_indices:
            return True
        residuals = stage.residuals(u)
        if residuals is None:
            return True
        from cad.fit.solvers.least_squares import share_taken_up

        share = share_taken_up(stage.jacobian, residuals, stage.jacobian_indices.index(index),
                               self.problem.start_u[index] - u[index])
        return share >= TAKE_UP_SHARE

    def onto_steps(self, u) -> tuple:
        """The answer on the schema step grid wherever that costs no real IoU: every float at once, else one by
        one. (Ties go to the grid; the regulariser is not asked, a step is worth a hair of distance.)"""
        moved = [i for i in self.problem.float_indices() if u[i] != self.problem.start_u[i]]
        groups = [moved] + ([[i] for i in moved] if len(moved) > 1 else [])
        try:
            for group in groups:
                candidate = self.problem.on_steps(u, group)
                if candidate != u and self.final.iou(candidate) >= self.final.iou(u):
                    u = candidate
                    if group is moved:
                        break
        except OutOfBudget:
            pass
        return u

    def result(self, start_iou, converged) -> FitResult:
        answer = self.answer or self.final.best_u
        values = self.problem.to_values(answer) if answer else dict(self.problem.start)
        iou = self.final.scores.get(self.problem.key(answer), start_iou) if answer else start_iou
        if self.counter.target_reached:
            stopped = "target_reached"
        elif self.counter.cancelled:
            stopped = "cancelled"
        else:
            stopped = "converged" if converged else "budget"
        log.info("fit: IoU %.4f -> %.4f in %d evaluations (%s)", start_iou, iou, self.counter.evaluations, stopped)
        return FitResult(start_values=dict(self.problem.start), values=values, start_iou=start_iou, iou=iou,
                         evaluations=self.counter.evaluations, stopped=stopped, trace=list(self.trace),
                         wasted_builds=0 if self.workers is None else self.workers.wasted)

"""Levenberg-Marquardt over the float coordinates, for stages whose objective gives residuals.

The objective gives a residual vector per state (``cad.residual_fields.occupancy_residuals``: blurred occupancy of the
model minus the target's, or cumulative volume profiles). The Jacobian comes from one forward difference per
coordinate, so one iteration costs ``n + 1`` to ``n + 5`` evaluations (1 to 5 while a kept Jacobian still predicts
its steps well: chord steps) and moves every coordinate at once: coupled parameters (a box's height and its lid's
lift) move together, which a coordinate search does only by slow zig-zags. Each iteration moves no coordinate more
than a share of its range (a trust region). numpy is imported here only: the package imports this module when a
stage first needs it.
"""
from __future__ import annotations

import math

import numpy as np

DIFFERENCE_STEP = 0.01  # of each range
MIN_DIFFERENCE_STEP = 1 / 1024
MAX_MOVE = 0.05  # largest move of one coordinate per iteration, of its range (a trust region)
MIN_IMPROVEMENT = 1e-4  # relative drop of the squared residual below which an iteration counts as stalled
# A step that gains at least this share of what the linear model predicted keeps its Jacobian for the next step (a
# chord step: one evaluation instead of n + 1). Far from the answer the trust region cuts every step short and the
# next one goes the same way; on 8 held-out random parts this took a fifth of the fit's evaluations off.
CHORD_AGREEMENT = 0.5
MAX_ITERATIONS = 100
WARM_REFIT_STEPS = 3  # Gauss-Newton steps of a warm refit, one evaluation each (more where damping must grow)
WARM_REFIT_MOVE = 0.15  # of each range per step: a count change can move a spacing a long way


def solve(problem, objective, start_u, budget, *, max_iterations: int = MAX_ITERATIONS, max_move: float = MAX_MOVE,
          stall_share_of_start: float = 0.0, stall_iterations: int = 2):
    """Minimise |residuals|^2 from ``start_u``; returns (u, score) once it stalls: ``stall_iterations`` iterations
    in a row that lower the cost by less than MIN_IMPROVEMENT of it, or by less than ``stall_share_of_start`` of
    the cost it started from (a coarse stage: the crawl along a direction its residuals barely see, a hole's size
    in a volume profile, is left to the finer stages that do see it). Without residuals (the state does not build,
    or the stage gives none) it returns the start."""
    fit = _LevenbergMarquardt(problem, objective, max_move)
    u = fit.run(problem.snap(start_u), max_iterations, stall_share_of_start, stall_iterations)
    return u, objective.score(u)


def refit(problem, objective, start_u, budget):
    """The floats refitted for a changed int at ``start_u`` by damped Gauss-Newton steps on the last Jacobian the
    solve measured (no new differences: a few evaluations, not ``n + 1`` per iteration); (u, score)."""
    fit = _LevenbergMarquardt(problem, objective, WARM_REFIT_MOVE)
    u = problem.snap(start_u)
    current, jacobian = fit.residuals(u), objective.jacobian
    if current is None or jacobian is None or objective.jacobian_indices != tuple(fit.indices) \
            or jacobian.shape[0] != len(current):
        return u, objective.score(u)
    cost, damping = float(current @ current), 1e-3
    for _ in range(WARM_REFIT_STEPS):
        candidate, trial, damping = fit.damped_step(u, current, cost, jacobian, damping)
        if candidate is None:
            break
        u, current, cost = candidate, trial, float(trial @ trial)
    return u, objective.score(u)


def share_taken_up(jacobian, residuals, column: int, move: float) -> float:
    """To first order, the share of what moving coordinate ``column`` by ``move`` (unit positions) costs that the
    other coordinates can take back: 1 - (best compensated cost - cost) / (cost of the move alone - cost).
    About 1 where a trade-off partner exists (a lid's lift for the box height); near 0 where none can help (the
    fields of separate features do not overlap, so their columns are orthogonal). 0 too where the move alone does
    not raise the cost to first order: the residuals then disagree with the objective that refused the move, and
    predict nothing about a partner."""
    jacobian, residuals = np.asarray(jacobian, dtype=np.float64), np.asarray(residuals, dtype=np.float64)
    alone = residuals + jacobian[:, column] * move
    cost, cost_alone = float(residuals @ residuals), float(alone @ alone)
    if cost_alone <= cost:
        return 0.0
    others = np.delete(jacobian, column, axis=1)
    if others.shape[1] == 0:
        return 0.0
    compensation, *_ = np.linalg.lstsq(others, -alone, rcond=None)
    compensated = alone + others @ compensation
    return 1.0 - (float(compensated @ compensated) - cost) / (cost_alone - cost)


class _LevenbergMarquardt:
    def __init__(self, problem, objective, max_move):
        self.problem, self.objective, self.max_move = problem, objective, max_move
        self.indices = problem.float_indices()

    def residuals(self, u, ahead=()):
        found = self.objective.residuals(u, ahead)
        return None if found is None else np.asarray(found, dtype=np.float32)

    def run(self, u, max_iterations, stall_share_of_start=0.0, stall_iterations=2):
        # (Broyden's rank-one updates instead of a new difference Jacobian per iteration were tried: cheaper per
        # iteration, but on the enclosure they stalled at a cost eight times higher. Chord steps keep a Jacobian
        # only while its steps do what it predicts, and measure afresh before judging a stall.)
        current = self.residuals(u)
        if current is None or not self.indices:
            return u
        cost, damping, stalled, difference_step = float(current @ current), 1e-3, 0, DIFFERENCE_STEP
        floor = cost * stall_share_of_start
        jacobian, chord = None, False
        for _ in range(max_iterations):
            if stalled >= stall_iterations:
                break
            if not chord:
                jacobian = self.objective.jacobian = self.jacobian(u, current, difference_step)
                self.objective.jacobian_indices = tuple(self.indices)
            candidate, trial, damping = self.damped_step(u, current, cost, jacobian, damping)
            if candidate is None:
                if chord:
                    chord = False  # the old slope no longer leads anywhere: measure it here
                    continue
                if difference_step / 4 < MIN_DIFFERENCE_STEP:
                    break
                # Near a sharp optimum (a thin wall in a barely blurred field) a difference over 1% of the range
                # is a secant across the bottom, not the slope: difference over shorter steps and try again.
                difference_step, damping = difference_step / 4, 1e-3
                continue
            trial_cost = float(trial @ trial)
            small = cost - trial_cost < max(cost * MIN_IMPROVEMENT, floor)
            if chord and small:
                chord = False  # a stale slope's short step says nothing of a stall: measure afresh and see
            else:
                stalled = stalled + 1 if small else 0
                chord = not small and self.agrees(u, candidate, current, cost, trial_cost, jacobian)
            u, current, cost = candidate, trial, trial_cost
        return u

    def agrees(self, u, candidate, current, cost, trial_cost, jacobian) -> bool:
        """Whether the step from ``u`` gained at least CHORD_AGREEMENT of what ``jacobian`` predicted."""
        delta = np.array([candidate[i] - u[i] for i in self.indices], dtype=np.float32)
        linear = current + jacobian @ delta
        predicted = cost - float(linear @ linear)
        return predicted > 0 and (cost - trial_cost) / predicted >= CHORD_AGREEMENT

    def jacobian(self, u, current, step):
        """One forward difference per coordinate (backward at the top of its range, or where the forward state
        gives no residuals). The columns are independent: each direction is one batch (parallel evaluations)."""
        jacobian = np.zeros((len(current), len(self.indices)), dtype=np.float32)
        first = {index: 1 if u[index] + step <= 1 else -1 for index in self.indices}
        pending = list(enumerate(self.indices))
        for attempt in (0, 1):
            probes = []
            for column, index in pending:
                sign = first[index] if attempt == 0 else -first[index]
                candidate = self.moved(u, {index: sign * step})
                probes.append((column, index, candidate, candidate[index] - u[index]))
            measured = [probe for probe in probes if probe[3] != 0]
            shifted_all = self.objective.residuals_of([probe[2] for probe in measured])
            done = set()
            for (column, _, _, moved), shifted in zip(measured, shifted_all):
                if shifted is not None:
                    jacobian[:, column] = (np.asarray(shifted, dtype=np.float32) - current) / moved
                    done.add(column)
            del shifted_all
            pending = [(column, index) for column, index in pending if column not in done]
            if not pending:
                break
        return jacobian

    def moved(self, u, deltas: dict) -> tuple:
        x = list(u)
        for index, amount in deltas.items():
            x[index] = min(max(x[index] + amount, 0.0), 1.0)
        return self.problem.snap(x)

    def damped_step(self, u, current, cost, jacobian, damping):
        """Try Levenberg steps of growing damping until one lowers the cost: (u, residuals, next damping), or
        Nones and the damping when no step within the trust region helps."""
        normal = (jacobian.T @ jacobian).astype(np.float64)
        gradient = (jacobian.T @ current).astype(np.float64)
        # Levenberg's damping (the same for every coordinate), not Marquardt's (scaled by each one's curvature):
        # a parameter with little effect (a fillet, a hole) has a noisy, tiny column, and Marquardt would let it
        # take huge steps while the trust region freezes the ones that matter.
        scale = max(float(np.diag(normal).max()), 1e-12)
        identity = np.eye(len(self.indices))

        def step_for(damped):
            return np.linalg.solve(normal + damped * scale * identity, -gradient)

        def candidate_at(damped):
            damped, delta = self.trust_region(step_for, damped)
            return damped, self.moved(u, {i: float(d) for i, d in zip(self.indices, delta)})

        for attempt in range(5):
            try:
                damping, candidate = candidate_at(damping)
            except np.linalg.LinAlgError:
                damping *= 10
                continue
            if candidate == u:
                break
            trial = self.residuals(candidate, self.on_miss(candidate_at, damping * 4) if attempt < 4 else ())
            if trial is not None and float(trial @ trial) < cost:
                return candidate, trial, max(damping / 3, 1e-7)
            damping *= 4
        return None, None, damping

    @staticmethod
    def on_miss(candidate_at, damping) -> list:
        """The state the next try would ask for if this one does not lower the cost (started ahead)."""
        try:
            return [candidate_at(damping)[1]]
        except np.linalg.LinAlgError:
            return []

    def trust_region(self, step_for, damping):
        """The least damping (from ``damping`` up) whose step moves no coordinate more than max_move, found by
        bisection in log space: scaling a step down instead would keep a wild direction."""
        delta = step_for(damping)
        if float(np.abs(delta).max()) <= self.max_move:
            return damping, delta
        low, high = damping, damping
        while float(np.abs(step_for(high)).max()) > self.max_move and high < 1e12:
            low, high = high, high * 4
        for _ in range(8):
            middle = math.sqrt(low * high)
            low, high = (middle, high) if float(np.abs(step_for(middle)).max()) > self.max_move else (low, middle)
        delta = step_for(high)
        return high, delta * min(1.0, self.max_move / max(float(np.abs(delta).max()), 1e-12))

"""Levenberg-Marquardt over a model's float parameters, for the optimiser's coarse stages.

The objective gives a residual vector per state (``cad.target.occupancy_residuals``: blurred occupancy of the
model minus the target's, or cumulative volume profiles). The Jacobian comes from one forward difference per
parameter, so one iteration costs ``n + 1`` to ``n + 5`` evaluations and moves every parameter at once: coupled
parameters (a box's height and its lid's lift) move together, which a coordinate search does only by slow
zig-zags. Each iteration moves no parameter more than a share of its range (a trust region). Pure numpy, no
cadquery.
"""
from __future__ import annotations

import logging
import math
from typing import Callable

import numpy as np

log = logging.getLogger(__name__)

DIFFERENCE_STEP = 0.01  # of each parameter's range
MIN_DIFFERENCE_STEP = 1 / 1024
MAX_MOVE = 0.05  # largest move of one parameter per iteration, of its range (a trust region)
ROUND = 6  # Levenberg-Marquardt iterations between tries of the int parameters
ROUND_PROGRESS = 1e-3  # relative drop of the squared residual over a round that is worth another round
INT_REFIT_ITERATIONS = 3
INT_REFIT_MOVE = 0.15  # of each range per refit iteration: a count change can move a spacing a long way
MIN_IMPROVEMENT = 1e-4  # relative drop of the squared residual below which an iteration counts as stalled


def _finite_difference_jacobian(parameters, values, x, current, residuals, value, position, step):
    """One forward difference per parameter (backward at the top of its range)."""
    jacobian = np.zeros((len(current), len(parameters)), dtype=np.float32)
    for column, parameter in enumerate(parameters):
        for sign in ((1, -1) if x[column] + step <= 1 else (-1, 1)):
            candidate = dict(values)
            candidate[parameter.name] = value(parameter, x[column] + sign * step)
            moved = position(parameter, candidate[parameter.name]) - x[column]
            if moved == 0:
                continue
            shifted = residuals(candidate)
            if shifted is not None:
                jacobian[:, column] = (shifted - current) / moved
                break
    return jacobian


def levenberg_marquardt(parameters: list, values: dict, residuals: Callable[[dict], np.ndarray | None],
                        position: Callable, value: Callable, *, difference_step: float = DIFFERENCE_STEP,
                        on_accept: Callable[[dict], None] | None = None, max_iterations: int = 100,
                        max_move: float = MAX_MOVE) -> dict:
    """Minimise ``|residuals(values)|^2`` over ``parameters`` (floats) in their normalised 0..1 positions.

    ``residuals`` returns None where a state cannot be evaluated (it does not build); ``position(p, v)`` and
    ``value(p, u)`` convert between values and positions. ``on_accept(values)`` is told every improvement (the
    caller's budget may end the search by raising from ``residuals``). ``max_move`` bounds each parameter's move
    per iteration (a share of its range). Returns the best values found.
    """
    # (Broyden's rank-one updates instead of a new difference Jacobian per iteration were tried: cheaper per
    # iteration, but on the enclosure they stalled at a cost eight times higher.)
    current = residuals(values)
    if current is None or not parameters:
        return values
    cost = float(current @ current)
    damping = 1e-3
    stalled = 0
    for _ in range(max_iterations):
        if stalled >= 2:
            break
        x = np.array([position(p, values[p.name]) for p in parameters])
        jacobian = _finite_difference_jacobian(parameters, values, x, current, residuals, value, position,
                                               difference_step)
        candidate, trial, damping = _damped_step(parameters, values, x, current, cost, jacobian, damping,
                                                 residuals, value, position, max_move)
        if candidate is None:
            if difference_step / 4 < MIN_DIFFERENCE_STEP:
                break
            # Near a sharp optimum (a thin wall in a barely blurred field) a difference over 1% of the range is a
            # secant across the bottom, not the slope: difference over shorter steps and try again.
            difference_step /= 4
            damping = 1e-3
            continue
        trial_cost = float(trial @ trial)
        stalled = stalled + 1 if trial_cost > cost * (1 - MIN_IMPROVEMENT) else 0
        values, current, cost = candidate, trial, trial_cost
        if on_accept is not None:
            on_accept(values)
    return values


def _damped_step(parameters, values, x, current, cost, jacobian, damping, residuals, value, position, max_move):
    """Try Levenberg steps of growing damping until one lowers the cost.

    Returns (values, residuals, damping to start from next time), or Nones (and the damping) when no step within
    the trust region helps.
    """
    normal = (jacobian.T @ jacobian).astype(np.float64)
    gradient = (jacobian.T @ current).astype(np.float64)
    # Levenberg's damping (the same for every parameter, in normalised units), not Marquardt's (scaled by each
    # parameter's own curvature): a parameter with little effect (a fillet, a hole) has a noisy, tiny column,
    # and Marquardt would let it take huge steps while the trust region freezes the ones that matter.
    scale = max(float(np.diag(normal).max()), 1e-12)
    identity = np.eye(len(parameters))
    for _ in range(5):
        try:
            solve = lambda damped: np.linalg.solve(normal + damped * scale * identity, -gradient)
            delta = solve(damping)
            if float(np.abs(delta).max()) > max_move:
                # A trust region: the least damping at which no parameter moves more than max_move (scaling
                # the step down instead would keep a wild direction), found by bisection in log space.
                low, high = damping, damping
                while float(np.abs(solve(high)).max()) > max_move and high < 1e12:
                    low, high = high, high * 4
                for _ in range(8):
                    middle = math.sqrt(low * high)
                    low, high = (middle, high) if float(np.abs(solve(middle)).max()) > max_move else (low, middle)
                damping, delta = high, solve(high)
        except np.linalg.LinAlgError:
            damping *= 10
            continue
        delta *= min(1.0, max_move / max(float(np.abs(delta).max()), 1e-12))
        candidate = dict(values)
        for parameter, u in zip(parameters, np.clip(x + delta, 0.0, 1.0)):
            candidate[parameter.name] = value(parameter, float(u))
        if candidate == values:
            break
        trial = residuals(candidate)
        trial_cost = float(trial @ trial) if trial is not None else float("inf")
        if trial_cost < cost:
            return candidate, trial, max(damping / 3, 1e-7)
        damping *= 4
    return None, None, damping


def fit_with_counts(floats: list, ints: list, values: dict, residuals: Callable[[dict], np.ndarray | None],
                    position: Callable, value: Callable, *, on_accept: Callable[[dict], None],
                    confirm: Callable[[dict, dict], bool]) -> dict:
    """Rounds of ``levenberg_marquardt`` over ``floats``, with one-unit moves of each of ``ints`` between rounds,
    until neither helps. A new count is compared with the floats refitted a little for it, and is taken only if
    ``confirm(new values, current values)`` agrees as well (the caller's check under its real objective)."""

    def cost(candidate: dict) -> float:
        found = residuals(candidate)
        return float(found @ found) if found is not None else float("inf")

    while True:
        # A few iterations at a time, then the counts: a stage that runs out of budget mid-descent would otherwise
        # never try a count (three wheels against two).
        round_start = cost(values)
        values = levenberg_marquardt(floats, values, residuals, position, value, on_accept=on_accept,
                                     max_iterations=ROUND)
        best_cost = cost(values)
        improved = best_cost < round_start * (1 - ROUND_PROGRESS)
        for parameter in ints:
            for sign in (1, -1):
                candidate = dict(values)
                candidate[parameter.name] = min(max(values[parameter.name] + sign, parameter.min), parameter.max)
                if candidate == values:
                    continue
                # A count changes what the floats should be (three wheels vs two, a closer spacing): compare the
                # new count with its floats refitted a little, not with the old floats.
                candidate_cost = cost(candidate)
                if candidate_cost >= best_cost:
                    candidate = levenberg_marquardt(floats, candidate, residuals, position, value,
                                                    max_iterations=INT_REFIT_ITERATIONS, max_move=INT_REFIT_MOVE)
                    candidate_cost = cost(candidate)
                # A coarse field can prefer a count on noise (eight narrow vents for five wide ones).
                if candidate_cost < best_cost and confirm(candidate, values):
                    values, best_cost, improved = candidate, candidate_cost, True
                    on_accept(values)
                    break
        if not improved:
            return values

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

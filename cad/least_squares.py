"""Levenberg-Marquardt over a model's float parameters, for the optimiser's coarse stages.

The objective gives a residual vector per state (``cad.target.occupancy_residuals``: blurred occupancy of the
model minus the target's). The Jacobian comes from one forward difference per parameter, so one iteration costs
``n + 1`` to ``n + 5`` evaluations and moves every parameter at once: coupled parameters (a box's height and its
lid's lift) move together, which a coordinate search does only by slow zig-zags. Pure numpy, no cadquery.
"""
from __future__ import annotations

import logging
from typing import Callable

import numpy as np

log = logging.getLogger(__name__)

DIFFERENCE_STEP = 0.01  # of each parameter's range
MAX_MOVE = 0.05  # largest move of one parameter per iteration, of its range (a trust region)
MIN_IMPROVEMENT = 1e-4  # relative drop of the squared residual below which an iteration counts as stalled


def levenberg_marquardt(parameters: list, values: dict, residuals: Callable[[dict], np.ndarray | None],
                        position: Callable, value: Callable, *, difference_step: float = DIFFERENCE_STEP,
                        on_accept: Callable[[dict], None] | None = None, max_iterations: int = 100) -> dict:
    """Minimise ``|residuals(values)|^2`` over ``parameters`` (floats) in their normalised 0..1 positions.

    ``residuals`` returns None where a state cannot be evaluated (it does not build); ``position(p, v)`` and
    ``value(p, u)`` convert between values and positions. ``on_accept(values)`` is told every improvement (the
    caller's budget may end the search by raising from ``residuals``). Returns the best values found.
    """
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
        jacobian = np.zeros((len(current), len(parameters)), dtype=np.float32)
        for column, parameter in enumerate(parameters):
            for sign in ((1, -1) if x[column] + difference_step <= 1 else (-1, 1)):
                candidate = dict(values)
                candidate[parameter.name] = value(parameter, x[column] + sign * difference_step)
                moved = position(parameter, candidate[parameter.name]) - x[column]
                if moved == 0:
                    continue
                shifted = residuals(candidate)
                if shifted is not None:
                    jacobian[:, column] = (shifted - current) / moved
                    break
        normal = (jacobian.T @ jacobian).astype(np.float64)
        gradient = (jacobian.T @ current).astype(np.float64)
        scale = np.diag(normal).copy()
        scale[scale <= 0] = max(float(scale.max()), 1e-12) * 1e-6  # parameters with no effect stay put
        improved = False
        for _ in range(5):
            try:
                delta = np.linalg.solve(normal + damping * np.diag(scale), -gradient)
            except np.linalg.LinAlgError:
                damping *= 10
                continue
            delta *= min(1.0, MAX_MOVE / max(float(np.abs(delta).max()), 1e-12))
            candidate = dict(values)
            for parameter, u in zip(parameters, np.clip(x + delta, 0.0, 1.0)):
                candidate[parameter.name] = value(parameter, float(u))
            if candidate == values:
                break
            trial = residuals(candidate)
            trial_cost = float(trial @ trial) if trial is not None else float("inf")
            if trial_cost < cost:
                stalled = stalled + 1 if trial_cost > cost * (1 - MIN_IMPROVEMENT) else 0
                values, current, cost, improved = candidate, trial, trial_cost, True
                damping = max(damping / 3, 1e-7)
                if on_accept is not None:
                    on_accept(values)
                break
            damping *= 4
        if not improved:
            break
    return values

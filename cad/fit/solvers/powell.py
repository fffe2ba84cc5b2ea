"""The library baseline: scipy's bounded Powell over the float coordinates in [0, 1].

A strong off-the-shelf reference (see the stack notes: held-out fits at a 1000-evaluation budget). scipy is
imported here only: the package imports this module when a stage first needs it.
"""
from __future__ import annotations

from scipy.optimize import minimize

from cad.fit.problem import OutOfBudget


def solve(problem, objective, start_u, budget, *, xtol: float = 1e-4):
    """Maximise ``objective.score`` with Powell from ``start_u``; returns (u, score)."""
    indices = problem.float_indices()
    start = problem.snap(start_u)
    if not indices:
        return start, objective.score(start)

    def place(x) -> tuple:
        u = list(start)
        for index, value in zip(indices, x):
            u[index] = min(max(float(value), 0.0), 1.0)
        return problem.snap(u)

    # Powell's line searches land between grid points; the objective sees the snapped state (cached), so the
    # function is piecewise constant at the grid's scale and xtol should not go far below it.
    result = minimize(lambda x: -objective.score(place(x)), [start[i] for i in indices], method="Powell",
                      bounds=[(0.0, 1.0)] * len(indices),
                      options={"xtol": xtol, "ftol": 1e-9, "maxfev": max(budget, 1)})
    if objective.counter.spent:
        raise OutOfBudget
    u = place(result.x)
    return u, objective.score(u)

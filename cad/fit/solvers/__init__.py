"""Solvers behind one interface: ``solve(problem, objective, start_u, budget, **options) -> (u, score)``.

A solver may also offer ``refit`` (same signature), a cheap warm-started refit after an int moved.
``objective`` is a ``cad.fit.problem.StageObjective`` (``score(u)``, ``residuals(u)``); a solver moves only the
float coordinates (ints are the integer strategy's), raises ``OutOfBudget`` from the objective when the budget
or a cancel ends it, and returns normally when it has converged. Modules load on first use: least squares needs
numpy and Powell scipy, which the web process must not pay for at import.
"""
from __future__ import annotations

import importlib

SOLVERS = {"least_squares": "cad.fit.solvers.least_squares", "pattern": "cad.fit.solvers.pattern",
           "powell": "cad.fit.solvers.powell"}


def get(name: str):
    """The ``solve`` function of solver ``name``."""
    return _module(name).solve


def get_warm_refit(name: str):
    """Solver ``name``'s cheap ``refit(problem, objective, u, budget) -> (u, score)`` for a changed int, reusing
    what its last solve measured; None where it has none (the integer strategy then runs a short ``solve``)."""
    return getattr(_module(name), "refit", None)


def _module(name: str):
    if name not in SOLVERS:
        raise ValueError(f"unknown solver {name!r} (known: {', '.join(SOLVERS)})")
    return importlib.import_module(SOLVERS[name])

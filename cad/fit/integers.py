"""The one integer strategy: neighbour moves of each int (+-1, +-2) with a short warm-started refit of the floats.

A count changes what the floats should be (three wheels instead of two want a longer chassis, seven vents a
closer spacing), so a neighbour is compared with its floats refitted a little, not with the old floats; +-2 keeps
a centred pattern's parity (from seven vents, six loses its middle slot where five keeps it).
"""
from __future__ import annotations

from cad.fit.problem import OutOfBudget

NEIGHBOURS = (1, -1, 2, -2)
# An int with at most this many values also tries every value beyond its neighbours (plain moves, where a stage
# asks for it): a count can sit in a basin its neighbours cannot leave, ten holes on a circle where the target
# has five (the ten include the five, so nine and eight are worse; found on held-out seed 3, IoU 0.993).
FEW_VALUES = 8
REFIT_PER_FLOAT = 6  # evaluations of a count's refit per float coordinate (plus REFIT_BASE)
REFIT_BASE = 4
REFIT_SHARE_DIVISOR = 16  # a refit takes at most this fraction (1/16) of the evaluations the stage has left
WARM_REFIT_EVALUATIONS = 8  # allowance of a solver's own warm refit (least squares: a few Gauss-Newton steps)


def improve(problem, objective, refit, u, score, *, confirm=None, warm_refit=None, refit_neighbours=True,
            every_value=False):
    """Take neighbour moves of the ints from ``u`` while one raises ``objective.score``; returns (u, score, moved).

    ``refit(u) -> (u, score)`` is the stage's solver (its allowance is set here); ``warm_refit``, when given, a
    cheaper one that reuses what the solver measured. ``confirm(new_u, old_u)`` may veto a move (a coarse stage's
    field can prefer a count on noise: the real objective has the last word). ``refit_neighbours=False``: plain
    neighbour moves only (where earlier stages already refitted every neighbour). ``every_value``: an int with
    at most FEW_VALUES values then also tries its other values (plain moves) when no neighbour gains.
    """
    if not refit_neighbours:
        refit = warm_refit = None
    moved = False
    improved = True
    while improved:
        improved = False
        for index in problem.int_indices():
            found = _best_neighbour(problem, objective, refit, warm_refit, u, score, index)
            if found is None and every_value:
                found = _best_other_value(problem, objective, u, score, index)
            if found is not None and (confirm is None or confirm(found[0], u)):
                u, score = found
                improved = moved = True
    return u, score, moved


def _best_neighbour(problem, objective, refit, warm_refit, u, score, index):
    """The first neighbour of int ``index`` that beats ``score`` (refitted where the plain move does not)."""
    for units in NEIGHBOURS:
        candidate = _moved(problem, u, index, units)
        if candidate == u:
            continue
        plain = objective.score(candidate)
        if plain > score:
            return candidate, plain
        if warm_refit is not None:
            refitted = refit_within(problem, objective, warm_refit, candidate, allowance=WARM_REFIT_EVALUATIONS)
        elif refit is not None:
            refitted = refit_within(problem, objective, refit, candidate)
        else:
            continue  # plain moves only
        if refitted is not None and refitted[1] > score:
            return refitted
    return None


def _best_other_value(problem, objective, u, score, index):
    """The best plain move of int ``index`` to a value beyond its neighbours that beats ``score`` (or None), where
    it has at most FEW_VALUES values."""
    unit = problem.resolution(index)
    values = round(1 / unit) + 1
    if values > FEW_VALUES:
        return None
    here = round(u[index] / unit)
    best = None
    for offset in range(-here, values - here):
        if abs(offset) <= max(NEIGHBOURS):
            continue
        candidate = _moved(problem, u, index, offset)
        if candidate == u:
            continue
        found = objective.score(candidate)
        if found > (score if best is None else best[1]):
            best = (candidate, found)
    return best


def _moved(problem, u, index, units: int) -> tuple:
    """``u`` with int ``index`` moved by ``units`` whole steps (within its range, on the grid)."""
    candidate = list(u)
    candidate[index] = min(max(u[index] + units * problem.resolution(index), 0.0), 1.0)
    return problem.snap(candidate)


def refit_within(problem, objective, refit, u, per_float: int = REFIT_PER_FLOAT, allowance: int | None = None):
    """``refit(u)`` within a short allowance; its best point (or None). Only the outer budget ending propagates."""
    floats = problem.float_indices()
    if allowance is None:
        # A refit may take a share of what the stage has left (the neighbours of every int may each need one),
        # and is skipped when that share could not even move every float once.
        allowance = min(per_float * len(floats) + REFIT_BASE, objective.counter.remaining() // REFIT_SHARE_DIVISOR)
        if allowance < len(floats) + 2:
            return None
    if not floats:
        return None
    with objective.counter.allowance(allowance), objective.tracking() as best:
        try:
            return refit(u)
        except OutOfBudget:
            if objective.counter.exhausted:
                raise
    return (best.best_u, best.best_score) if best.best_u else None

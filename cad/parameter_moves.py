"""Moves of model parameters in normalised units (0..1 over each schema range), shared by the optimiser's searches.

Floats are rounded to FLOAT_DECIMALS and ints to whole units, both clamped to their bounds, so a move always gives
a valid state.
"""
from __future__ import annotations

import itertools

FLOAT_DECIMALS = 3
MIN_STEP = 1.0 / 1024
PAIR_CANDIDATES = 5  # ridge escape: pairs among this many most constrained parameters


def shifted(base: dict, moves) -> dict:
    """``base`` with each ``(parameter, delta)`` of ``moves`` moved by ``delta`` of its range (clamped, rounded)."""
    candidate = dict(base)
    for parameter, amount in moves:
        candidate[parameter.name] = value(parameter, position(parameter, base[parameter.name]) + amount)
    return candidate


def pair_move(pair, signs, sizes) -> list:
    """(parameter, delta) moves of a pair by ``sizes`` (shares of each range), with ``signs``.

    Two floats in the same unit move by the same amount in that unit (the smaller of the two sizes): they often
    add up to one position (a box's height plus its lid's lift place the lid), and equal shares of different
    ranges would move that position and lose what the pair move was meant to gain."""
    first, second = pair
    if first.type == second.type == "float" and first.unit and first.unit == second.unit:
        amount = min(size * (p.max - p.min) for p, size in zip(pair, sizes))
        return [(p, sign * amount / (p.max - p.min)) for p, sign in zip(pair, signs)]
    return [(p, sign * delta(p, size)) for p, sign, size in zip(pair, signs, sizes)]


def pairs(losses: dict):
    """((first, second), (sign, sign)) for every pair of the PAIR_CANDIDATES names that lost most moved alone."""
    names = sorted(losses, key=lambda n: (-losses[n], n))[:PAIR_CANDIDATES]
    for pair in itertools.combinations(names, 2):
        for signs in itertools.product((1, -1), repeat=2):
            yield pair, signs


def value(parameter, u: float):
    u = min(max(u, 0.0), 1.0)
    raw = parameter.min + u * (parameter.max - parameter.min)
    if parameter.type == "int":
        return int(min(max(round(raw), parameter.min), parameter.max))
    return float(min(max(round(raw, FLOAT_DECIMALS), parameter.min), parameter.max))


def position(parameter, value) -> float:
    return (value - parameter.min) / (parameter.max - parameter.min)


def delta(parameter, step: float) -> float:
    if parameter.type == "int":  # at least one whole unit
        return max(step, 1.0 / (parameter.max - parameter.min))
    return step


def done(parameter, step: float) -> bool:
    if parameter.type == "int":
        return step * (parameter.max - parameter.min) < 0.25  # a one-unit move failed at least twice
    return step < MIN_STEP

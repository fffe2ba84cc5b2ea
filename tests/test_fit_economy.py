"""What keeps the default schedule's evaluation count down: coarse stages that stop crawling, least squares that keeps
its Jacobian while it predicts well, a last stage without refits of a count or ridge moves, and the target's ray
crossings measured once."""
import math

import numpy as np
import pytest

import cad.voxel as voxel
from cad.fit import DEFAULT_SCHEDULE, SINGLE_STAGE, Stage, fit
from tests.test_fit_search import ENCLOSURE, ROVER, Schema, number

LM_NAMES = ["chassis_length", "chassis_width"]


def unit(values, name):
    return (values[name] - ROVER[name].min) / (ROVER[name].max - ROVER[name].min)


def strong_and_weak(values, stage):
    # chassis_length matters a lot, chassis_width hardly: once the first fits, the second crawls in the trust region.
    residuals = np.array([10 * (unit(values, LM_NAMES[0]) - 0.8), 0.1 * (unit(values, LM_NAMES[1]) - 0.75)],
                         dtype=np.float32)
    return {"iou": 1 / (1 + float(residuals @ residuals)), "residuals": residuals}


def least_squares_solve(objective, start, **options):
    """One least-squares solve on its own (no revert pass around it): (values, evaluations)."""
    from cad.fit.problem import Counter, Problem, StageObjective
    from cad.fit.solvers import least_squares

    problem = Problem(ROVER, start, LM_NAMES)
    stage = StageObjective(problem, lambda values: objective(values, None), Counter(400))
    u, _ = least_squares.solve(problem, stage, problem.start_u, 400, **options)
    return problem.to_values(u), stage.counter.evaluations


def test_a_coarse_stage_stops_once_what_it_gains_is_a_small_share_of_where_it_started():
    full, full_n = least_squares_solve(strong_and_weak, ROVER.defaults())
    coarse, coarse_n = least_squares_solve(strong_and_weak, ROVER.defaults(), stall_share_of_start=1e-3)
    assert unit(full, LM_NAMES[0]) == pytest.approx(0.8, abs=2e-3)
    assert unit(coarse, LM_NAMES[0]) == pytest.approx(0.8, abs=2e-3)
    assert unit(full, LM_NAMES[1]) == pytest.approx(0.75, abs=2e-2)  # the full solve crawls all the way
    assert abs(unit(coarse, LM_NAMES[1]) - 0.75) > 0.05  # the coarse one leaves that to a finer stage
    assert coarse_n < full_n
    # The default schedule stops its first coarse stages so (one stalled iteration is enough); its least-blurred
    # field stage converges fully, off the steps, and so does the last stage (the real objective).
    assert all(stage.solver_options.get("stall_share_of_start") for stage in DEFAULT_SCHEDULE[:-2])
    assert all(stage.solver_options.get("stall_iterations") == 1 for stage in DEFAULT_SCHEDULE[:-2])
    assert not any(stage.solver_options.get("stall_share_of_start") for stage in DEFAULT_SCHEDULE[-2:])
    assert DEFAULT_SCHEDULE[-2].solver == "least_squares" and DEFAULT_SCHEDULE[-2].grid == "fine"


def far_and_straight(values, stage):
    # Linear residuals whose answer is 0.4 of each range away: the trust region (a twentieth of a range per
    # iteration) cuts every step short, and every next step goes the same way.
    residuals = np.array([3 * (unit(values, LM_NAMES[0]) - 0.9) + (unit(values, LM_NAMES[1]) - 0.1),
                          unit(values, LM_NAMES[1]) - 0.1], dtype=np.float32)
    return {"iou": 1 / (1 + float(residuals @ residuals)), "residuals": residuals}


def test_least_squares_keeps_its_jacobian_while_the_steps_do_what_it_predicts(monkeypatch):
    from cad.fit.solvers import least_squares

    start = ROVER.complete({"chassis_length": ROVER["chassis_length"].min + 0.5 * (ROVER["chassis_length"].max
                                                                                   - ROVER["chassis_length"].min),
                            "chassis_width": ROVER["chassis_width"].min + 0.5 * (ROVER["chassis_width"].max
                                                                                 - ROVER["chassis_width"].min)})
    values, evaluations = least_squares_solve(far_and_straight, start)
    monkeypatch.setattr(least_squares, "CHORD_AGREEMENT", math.inf)  # a new difference Jacobian every iteration
    every_step, measured_every_step = least_squares_solve(far_and_straight, start)
    for answer in (values, every_step):
        assert unit(answer, LM_NAMES[0]) == pytest.approx(0.9, abs=2e-3)
        assert unit(answer, LM_NAMES[1]) == pytest.approx(0.1, abs=2e-3)
    # At least 8 trust-region steps: with a Jacobian measured before each, 3 evaluations a step.
    assert measured_every_step >= 24 and evaluations < measured_every_step / 2


def vents(values, stage):
    filled = values["vents"] * values["vent_width"]
    return 0.95 - abs(filled - 30.0) / 30.0 - 0.01 * abs(values["vents"] - 5)


def test_a_stage_that_does_not_refit_counts_tries_each_neighbour_as_a_plain_move():
    schema = Schema([number("vents", 1, 12, 3, kind="int"), number("vent_width", 1, 15, 10.0, step=0.05)])
    refitted = fit(schema, schema.defaults(), vents, max_evaluations=400, schedule=SINGLE_STAGE)
    plain = fit(schema, schema.defaults(), vents, max_evaluations=400,
                schedule=[Stage(None, 1.0, "pattern", refit_ints=False)])
    assert refitted.values["vents"] == 5  # only a count with its width refitted shows the gain
    assert plain.values["vents"] == 3 and plain.values["vent_width"] == pytest.approx(10.0)
    assert plain.evaluations < refitted.evaluations / 2
    assert DEFAULT_SCHEDULE[-1].refit_ints is False and all(s.refit_ints for s in DEFAULT_SCHEDULE[:-1])


def ridge(values, stage):
    lid = values["height"] + values["lid_lift"]
    return 1.0 - 0.1 * abs(lid - 64.46) - 0.01 * abs(values["height"] - 58.47)


def test_without_pair_moves_the_pattern_search_does_not_slide_along_a_ridge():
    start = ENCLOSURE.complete({"height": 61.28, "lid_lift": 3.18})
    runs = {flag: fit(ENCLOSURE, start, ridge, max_evaluations=400, parameters=["height", "lid_lift"],
                      schedule=[Stage(None, 1.0, "pattern", {"pair_moves": flag})]) for flag in (True, False)}
    assert runs[True].values["height"] == pytest.approx(58.47)
    assert runs[False].values["height"] == pytest.approx(61.28)  # stuck where each move alone loses
    assert runs[False].evaluations < runs[True].evaluations
    assert DEFAULT_SCHEDULE[-1].solver_options.get("pair_moves") is False


def box(lo, hi):
    """A closed, outward-oriented box mesh."""
    (x0, y0, z0), (x1, y1, z1) = lo, hi
    vertices = np.array([[x, y, z] for x in (x0, x1) for y in (y0, y1) for z in (z0, z1)], dtype=float)
    faces = [(0, 1, 3), (0, 3, 2), (4, 6, 7), (4, 7, 5), (0, 4, 5), (0, 5, 1), (2, 3, 7), (2, 7, 6),
             (0, 2, 6), (0, 6, 4), (1, 5, 7), (1, 7, 3)]
    return vertices, voxel.oriented(vertices, np.array(faces, dtype=np.int64))


@pytest.mark.parametrize("scale", [0.01, 1.0, 100.0])
def test_the_targets_ray_crossings_are_measured_once_and_give_the_same_iou(monkeypatch, scale):
    target = box(np.array([0, 0, 0]) * scale, np.array([40, 20, 10]) * scale)
    models = [box(np.array(lo) * scale, np.array(hi) * scale) for lo, hi in
              (((1, 1, 0), (41, 19, 11)), ((-5, 2, 1), (30, 25, 12)), ((0, 0, 0), (40, 20, 10)),
               ((10, -3, -2), (70, 18, 9)))]  # inside, across and beyond the target's box
    uncached = [voxel.mesh_iou(m, target, 128, rays=True)["iou"] for m in models]
    calls = []
    measure = voxel.anchored_crossings
    monkeypatch.setattr(voxel, "anchored_crossings", lambda *a: calls.append(a[-1]) or measure(*a))
    cache: dict = {}
    cached = [voxel.mesh_iou(m, target, 128, rays=True, cache=cache)["iou"] for m in models]
    assert cached == uncached  # the very same numbers: the target's rays come from its own anchored box either way
    assert sorted(calls) == [0, 1, 2]  # once per axis for all four models
    exact = [box_iou(lo, hi) for lo, hi in (((1, 1, 0), (41, 19, 11)), ((-5, 2, 1), (30, 25, 12)),
                                            ((0, 0, 0), (40, 20, 10)), ((10, -3, -2), (70, 18, 9)))]
    assert uncached == pytest.approx(exact, abs=1e-2)


def box_iou(lo, hi, goal=((0, 0, 0), (40, 20, 10))) -> float:
    inner = np.prod(np.clip(np.minimum(hi, goal[1]) - np.maximum(lo, goal[0]), 0, None))
    volume = lambda a, b: np.prod(np.subtract(b, a))
    return float(inner / (volume(lo, hi) + volume(*goal) - inner))

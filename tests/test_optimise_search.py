"""The optimiser's search strategies on their own: partial-volume fields, least squares, scans, multi-start."""
import math

import numpy as np
import pytest

from cad.least_squares import levenberg_marquardt
from cad.optimise import COORDINATE, LEAST_SQUARES, SCAN, optimise, stage_count
from cad.registry import ModelRegistry
from cad.voxel import Grid, fractional_occupancy
from tests.test_target_optimise import box_mesh

ROVER = ModelRegistry().get("rover").schema
GRID = Grid([-20, -20, -20], [20, 20, 20], h=1.0, anchor=np.array([-20.0, -20.0, -20.0]))


def test_fractional_occupancy_measures_volume_and_follows_a_face_continuously():
    sums = []
    for length in (10.0, 10.1, 10.2, 10.3, 10.4):
        occupancy = fractional_occupancy(*box_mesh((0, 0, 0), (length, 6, 4)), GRID)
        assert occupancy.min() >= 0 and occupancy.max() <= 1
        sums.append(float(occupancy.sum()))
    assert sums[0] == pytest.approx(240, rel=1e-3)
    # A face moving by a tenth of a cell changes the field (a plain voxelisation would not move at all) ...
    assert all(b > a for a, b in zip(sums, sums[1:]))
    # ... and overlapping parts count once, as in the union.
    twice = fractional_occupancy(*_merged(box_mesh((0, 0, 0), (10, 6, 4)), box_mesh((5, 0, 0), (15, 6, 4))), GRID)
    assert float(twice.sum()) == pytest.approx(15 * 6 * 4, rel=1e-3)


def _merged(first, second):
    return np.concatenate([first[0], second[0]]), np.concatenate([first[1], second[1] + len(first[0])])


def test_least_squares_moves_coupled_parameters_together():
    # Two parameters that only matter through their sum and (weakly) their difference: a narrow valley.
    names = ["chassis_length", "chassis_width"]
    parameters = [ROVER[n] for n in names]
    position = lambda p, v: (v - p.min) / (p.max - p.min)
    value = lambda p, u: float(p.min + min(max(u, 0.0), 1.0) * (p.max - p.min))
    goal = {"chassis_length": 0.7, "chassis_width": 0.2}
    calls = []

    def residuals(values):
        calls.append(values)
        a, b = (position(ROVER[n], values[n]) for n in names)
        return np.array([30 * (a + b - 0.9), a - b - 0.5], dtype=np.float32)

    found = levenberg_marquardt(parameters, ROVER.defaults(), residuals, position, value)
    for name in names:
        assert position(ROVER[name], found[name]) == pytest.approx(goal[name], abs=1e-3)
    assert len(calls) < 60  # a coordinate search zig-zags down such a valley for hundreds of steps


def _bumpy(values, stage=None):
    """A yaw-like objective: a low hill at the default (0 deg) and the real peak far away at 120 deg."""
    yaw = values["rover_yaw"]
    return 0.5 * math.exp(-(yaw / 20) ** 2) + math.exp(-((yaw - 120) / 40) ** 2)


def test_a_global_scan_finds_the_far_peak_a_local_search_misses():
    local = optimise(ROVER, ROVER.defaults(), _bumpy, max_steps=200, parameters=["rover_yaw"])
    assert abs(local.values["rover_yaw"]) < 5 and local.iou < 0.6  # stuck on the hill it started on
    stages = [(None, 0.3, SCAN), (None, 1.0, COORDINATE)]
    scanned = optimise(ROVER, ROVER.defaults(), _bumpy, max_steps=200, parameters=["rover_yaw"], stages=stages)
    assert scanned.values["rover_yaw"] == pytest.approx(120, abs=0.5) and scanned.iou > 0.999


def test_multi_start_keeps_the_better_pipeline_and_reports_progress_across_both():
    local_only = [(None, 1.0, COORDINATE)]
    with_scan = [(None, 0.3, SCAN), (None, 1.0, COORDINATE)]
    stages_seen, steps_seen = set(), []

    def progress(step, iou, stage):
        stages_seen.add(stage)
        steps_seen.append(step)

    result = optimise(ROVER, ROVER.defaults(), _bumpy, max_steps=300, parameters=["rover_yaw"],
                      stages=[local_only, with_scan], progress=progress)
    assert stage_count([local_only, with_scan]) == 3 and stages_seen == {0, 1, 2}
    assert result.values["rover_yaw"] == pytest.approx(120, abs=0.5) and result.steps <= 300
    assert steps_seen == sorted(steps_seen)  # one step count across both pipelines


def test_least_squares_stage_uses_the_objectives_residuals_and_ints_get_refitted():
    # A field-like objective: the residual says how far chassis_length is from a goal that depends on the wheel count.
    def objective(values, stage):
        goal = 150.0 + 40.0 * values["wheels_per_side"]
        miss = (values["chassis_length"] - goal) / 320.0
        count_miss = values["wheels_per_side"] - 2
        residuals = np.array([miss, 0.05 * count_miss], dtype=np.float32)
        return {"iou": 1 / (1 + float(residuals @ residuals) * 100), "residuals": residuals}

    stages = [({"field": {}}, 1.0, LEAST_SQUARES)]
    result = optimise(ROVER, ROVER.defaults(), objective, max_steps=300,
                      parameters=["chassis_length", "wheels_per_side"], stages=stages)
    assert result.values["wheels_per_side"] == 2
    assert result.values["chassis_length"] == pytest.approx(230.0, abs=0.5)


def test_a_weak_noisy_parameter_does_not_freeze_the_one_that_matters():
    # chassis_length explains the residual; chassis_chamfer barely changes it (a fillet, a hole) but its column
    # lines up with a large residual it cannot fix. Scaled by its own tiny curvature it would want a huge step and,
    # under the trust region, hold every other parameter to a crawl.
    parameters = [ROVER["chassis_length"], ROVER["chassis_chamfer"]]
    position = lambda p, v: (v - p.min) / (p.max - p.min)
    value = lambda p, u: float(p.min + min(max(u, 0.0), 1.0) * (p.max - p.min))

    def residuals(values):
        length, chamfer = (position(p, values[p.name]) for p in parameters)
        return np.array([length - 0.85, 0.3 + 1e-3 * chamfer], dtype=np.float32)

    start = ROVER.defaults()
    found = levenberg_marquardt(parameters, start, residuals, position, value, max_iterations=8)
    moved = position(ROVER["chassis_length"], found["chassis_length"]) - position(ROVER["chassis_length"],
                                                                                   start["chassis_length"])
    assert moved >= 0.3  # eight iterations of at most 0.05 each: it took (nearly) full steps
    assert abs(position(ROVER["chassis_chamfer"], found["chassis_chamfer"])
               - position(ROVER["chassis_chamfer"], start["chassis_chamfer"])) <= 0.4


def test_least_squares_keeps_only_a_few_residual_fields_alive():
    # Fields are megabytes each: the optimiser must not hold one per evaluation for a whole stage.
    import weakref

    alive, most = [], [0]

    def objective(values, stage):
        field = np.full(1000, (values["chassis_length"] - 300.0) / 320.0, dtype=np.float32)
        field[:10] = (values["chassis_width"] - 100.0) / 240.0
        alive.append(weakref.ref(field))
        most[0] = max(most[0], sum(ref() is not None for ref in alive))
        return {"iou": 1 / (1 + float(field @ field)), "residuals": field}

    result = optimise(ROVER, ROVER.defaults(), objective, max_steps=200,
                      parameters=["chassis_length", "chassis_width"], stages=[({"field": {}}, 1.0, LEAST_SQUARES)])
    assert result.values["chassis_length"] == pytest.approx(300.0, abs=1.0)
    assert len(alive) > 20 and most[0] <= 12


def test_pair_moves_keep_a_sum_of_lengths_fixed_across_different_ranges():
    # An enclosure's lid sits at height + lid_lift: the IoU punishes moving it hard and rewards the right box
    # height a little. Only a joint move of equal millimetres (not equal shares of 130 mm and 100 mm) gains.
    enclosure = ModelRegistry().get("enclosure").schema

    def objective(values, stage):
        lid = values["height"] + values["lid_lift"]
        return 1.0 - 0.1 * abs(lid - 64.46) - 0.01 * abs(values["height"] - 58.47)

    start = enclosure.complete({"height": 61.28, "lid_lift": 3.18})
    result = optimise(enclosure, start, objective, max_steps=400, parameters=["height", "lid_lift"],
                      stages=[(None, 1.0, COORDINATE)])
    assert result.values["height"] == pytest.approx(58.47, abs=0.2)
    assert result.values["height"] + result.values["lid_lift"] == pytest.approx(64.46, abs=0.05)


def test_the_last_stage_starts_from_the_coarse_result_that_scores_best_under_its_objective():
    # The coarse stage drags chassis_length to its maximum; under the real objective that is worse than the start,
    # whose hill (a narrow peak at 230 mm) the last stage must then climb.
    def objective(values, stage):
        length = values["chassis_length"]
        return length / 400.0 if stage == "coarse" else math.exp(-((length - 230.0) / 8.0) ** 2)

    stages = [("coarse", 0.3, COORDINATE), ("real", 1.0, COORDINATE)]
    result = optimise(ROVER, ROVER.defaults(), objective, max_steps=300, parameters=["chassis_length"],
                      stages=stages)
    assert result.values["chassis_length"] == pytest.approx(230.0, abs=0.5) and result.iou > 0.99


def test_a_coarse_stage_changes_a_count_only_if_the_real_objective_agrees():
    # The coarse residual prefers four wheels a side (noise in a blurred field); the real objective prefers three.
    coarse_counts = []

    def objective(values, stage):
        if stage == "coarse":
            coarse_counts.append(values["wheels_per_side"])
        length_miss = (values["chassis_length"] - 250.0) / 320.0
        if stage == "real":
            return 1.0 - abs(length_miss) - 0.1 * abs(values["wheels_per_side"] - 3)
        residuals = np.array([length_miss, 0.01 * (values["wheels_per_side"] - 4)], dtype=np.float32)
        return {"iou": 1 / (1 + float(residuals @ residuals)), "residuals": residuals}

    stages = [("coarse", 0.7, LEAST_SQUARES), ("real", 1.0, COORDINATE)]
    result = optimise(ROVER, ROVER.defaults(), objective, max_steps=300,
                      parameters=["chassis_length", "wheels_per_side"], stages=stages)
    assert result.values["wheels_per_side"] == 3
    assert result.values["chassis_length"] == pytest.approx(250.0, abs=0.5)
    assert coarse_counts.count(4) == 1  # tried once and turned down: the descent went on with three


def test_a_late_stage_still_moves_the_counts():
    # Later stages start with finer steps; an int's step must still be a whole unit, or it counts as done at once
    # and waits for the escapes, which a busy search (here a length still climbing) does not reach in its budget.
    def objective(values, stage):
        if stage != "real":
            return 0.5
        return 1.0 - 0.1 * abs(values["wheels_per_side"] - 1) - 0.2 * abs(values["chassis_length"] - 400) / 320

    stages = [("coarse", 0.05, COORDINATE), ("finer", 0.05, COORDINATE), ("finest", 0.05, COORDINATE),
              ("real", 1.0, COORDINATE)]
    result = optimise(ROVER, ROVER.defaults(), objective, max_steps=14,
                      parameters=["chassis_length", "wheels_per_side"], stages=stages)
    assert ROVER.defaults()["wheels_per_side"] == 3 and result.values["wheels_per_side"] == 1

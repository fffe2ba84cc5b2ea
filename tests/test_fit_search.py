"""cad.fit.fit on synthetic objectives: invariance, the step grid, the start's pull, counts, budget, cancel."""
import math
import threading
import weakref

import numpy as np
import pytest

from cad.fit import SINGLE_STAGE, Stage, fit
from cad.fit.problem import Problem
from cad.registry import ModelRegistry
from cad.schema import Parameter, Schema

ROVER = ModelRegistry().get("rover").schema
ENCLOSURE = ModelRegistry().get("enclosure").schema


def number(name, low, high, default, step=None, kind="float"):
    return Parameter(name, name, "mm", kind, low, high, step, default, "g", "")


def box_iou(size, goal) -> float:
    """IoU of two boxes sharing a corner: scale-free, as a shape comparison is."""
    inner = math.prod(min(a, b) for a, b in zip(size, goal))
    return inner / (math.prod(size) + math.prod(goal) - inner)


def box_problem(scale: float):
    schema = Schema([number("length", 10 * scale, 200 * scale, 80 * scale),
                     number("width", 5 * scale, 120 * scale, 40 * scale),
                     number("height", 2 * scale, 60 * scale, 10 * scale)])
    goal = (123.4567 * scale, 33.3333 * scale, 17.7777 * scale)
    return schema, lambda values, stage: box_iou([values["length"], values["width"], values["height"]], goal)


@pytest.mark.parametrize("solver", ["pattern", "powell"])
def test_the_same_problem_at_a_hundredth_and_a_hundred_times_the_scale_gives_the_same_answer(solver):
    answers = []
    for scale in (0.01, 100.0):
        schema, objective = box_problem(scale)
        result = fit(schema, schema.defaults(), objective, max_evaluations=600,
                     schedule=[Stage(None, 1.0, solver)])
        answers.append((Problem(schema, schema.defaults()).to_unit(result.values), result.iou, result.evaluations))
    (small_u, small_iou, small_n), (large_u, large_iou, large_n) = answers
    assert small_u == pytest.approx(large_u, abs=1e-9) and small_n == large_n
    assert small_iou == pytest.approx(large_iou, abs=1e-9) and small_iou > 0.999


def test_the_answer_lands_on_the_step_grid_where_the_objective_cannot_tell_and_off_it_where_it_can():
    schema = Schema([number("length", 30, 200, 80.0, step=0.5), number("width", 15, 120, 40.0, step=1)])
    sharp = lambda values, stage: box_iou([values["length"], values["width"], 1], [123.3, 61.7, 1])
    result = fit(schema, schema.defaults(), sharp, max_evaluations=400, schedule=SINGLE_STAGE)
    assert result.values == {"length": 123.3, "width": 61.7}  # the step (0.5, 1) would cap the IoU
    # An IoU blind below the steps (as a coarse voxel IoU is): the answer moves onto the step grid.
    blind = lambda values, stage: sharp({"length": round(values["length"] * 2) / 2,
                                         "width": float(round(values["width"]))}, stage)
    result = fit(schema, schema.defaults(), blind, max_evaluations=400, schedule=SINGLE_STAGE)
    assert result.values == {"length": 123.5, "width": 62.0} and result.iou == blind(result.values, None)


def test_a_parameter_that_need_not_move_stays_exactly_at_its_start():
    # The coarse field is a little noisy in the width (as a blurred voxel field is); the real objective does not
    # care about it at all. Today's answer was width 40 -> 40.002.
    schema = Schema([number("length", 30, 200, 80.0), number("width", 15, 120, 40.0)])

    def objective(values, stage):
        miss = (values["length"] - 123.4) / 170
        if stage == "real":
            return 1.0 - abs(miss) - 0.001
        noise = 1e-3 * math.sin(values["width"] * 7.0)
        residuals = np.array([miss, noise], dtype=np.float32)
        return {"iou": 1 / (1 + float(residuals @ residuals)), "residuals": residuals}

    schedule = [Stage("coarse", 0.5, "least_squares"), Stage("real", 1.0)]
    result = fit(schema, schema.defaults(), objective, max_evaluations=300, schedule=schedule)
    assert result.values["width"] == 40.0 and set(result.changes()) == {"length"}
    assert result.values["length"] == pytest.approx(123.4, abs=0.05)


def test_parameters_that_trade_off_end_at_the_smallest_change():
    # Only lid + lift matters; lift has a small range, so changing it is the larger change in its own terms.
    schema = Schema([number("lift", 0, 10, 5.0), number("height", 0, 100, 50.0)])

    def objective(values, stage):
        return 0.9 * math.exp(-((values["height"] + values["lift"] - 60.0) / 5.0) ** 2)

    result = fit(schema, schema.defaults(), objective, max_evaluations=400, schedule=SINGLE_STAGE)
    assert result.values == {"lift": 5.0, "height": 55.0}


def test_a_ridge_of_two_lengths_is_followed_with_the_sum_kept():
    # An enclosure's lid sits at height + lid_lift: moving either alone costs a lot, the right height gains a
    # little. Only a joint move, balanced by what each costs alone, gains.
    def objective(values, stage):
        lid = values["height"] + values["lid_lift"]
        return 1.0 - 0.1 * abs(lid - 64.46) - 0.01 * abs(values["height"] - 58.47)

    start = ENCLOSURE.complete({"height": 61.28, "lid_lift": 3.18})
    result = fit(ENCLOSURE, start, objective, max_evaluations=400, parameters=["height", "lid_lift"],
                 schedule=SINGLE_STAGE)
    assert result.values["height"] == pytest.approx(58.47)
    assert result.values["height"] + result.values["lid_lift"] == pytest.approx(64.46, abs=1e-9)


def test_the_integer_strategy_solves_a_count_whose_floats_must_follow():
    # Vents: count * width must fill 30 mm; five vents is right. A count moved alone overfills (a loss), so only
    # a neighbour with the width refitted shows the gain.
    schema = Schema([number("vents", 1, 12, 3, kind="int"), number("vent_width", 1, 15, 10.0, step=0.05)])

    def objective(values, stage):
        filled = values["vents"] * values["vent_width"]
        return 0.95 - abs(filled - 30.0) / 30.0 - 0.01 * abs(values["vents"] - 5)

    result = fit(schema, schema.defaults(), objective, max_evaluations=400, schedule=SINGLE_STAGE)
    assert result.values["vents"] == 5 and result.values["vent_width"] == pytest.approx(6.0)


def test_a_count_in_a_basin_its_neighbours_cannot_leave_is_found_among_its_few_values():
    # Ten holes on a circle where the target has five at the same angles: the ten include the five, so nine and
    # eight (and every count near ten) score worse; only five itself is right.
    schema = Schema([number("holes", 5, 10, 10, kind="int"), number("circle", 40, 120, 80.0, step=0.1)])

    def objective(values, stage):
        extra = 0.0 if values["holes"] == 5 else 0.02 if values["holes"] == 10 else 0.05
        return 1.0 - extra - abs(values["circle"] - 90.0) / 400

    def last_stage(every_int_value):
        return [Stage(None, 1.0, "pattern", {"pair_moves": False}, refit_ints=False,
                      every_int_value=every_int_value)]

    found = fit(schema, schema.defaults(), objective, max_evaluations=300, schedule=last_stage(True))
    assert found.values == {"holes": 5, "circle": 90.0}
    stuck = fit(schema, schema.defaults(), objective, max_evaluations=300, schedule=last_stage(False))
    assert stuck.values["holes"] == 10  # the neighbours alone stay in the basin
    # an int with many values is not swept: from 40 of 1..40 (every count above nine scoring as ten) it stays
    wide = Schema([number("holes", 1, 40, 40, kind="int"), number("circle", 40, 120, 80.0, step=0.1)])

    def wide_objective(values, stage):
        return objective({**values, "holes": 10 if values["holes"] > 9 else values["holes"]}, stage)

    assert fit(wide, wide.defaults(), wide_objective, max_evaluations=300,
               schedule=last_stage(True)).values["holes"] == 40


def test_least_squares_uses_the_residuals_and_ints_get_refitted():
    def objective(values, stage):
        goal = 150.0 + 40.0 * values["wheels_per_side"]
        residuals = np.array([(values["chassis_length"] - goal) / 320.0, 0.05 * (values["wheels_per_side"] - 2)],
                             dtype=np.float32)
        return {"iou": 1 / (1 + float(residuals @ residuals) * 100), "residuals": residuals}

    result = fit(ROVER, ROVER.defaults(), objective, max_evaluations=300,
                 parameters=["chassis_length", "wheels_per_side"], schedule=[Stage({"field": {}}, 1.0,
                                                                                   "least_squares")])
    assert result.values["wheels_per_side"] == 2 and result.values["chassis_length"] == 230.0


def test_least_squares_moves_coupled_parameters_together_in_few_evaluations():
    names = ["chassis_length", "chassis_width"]
    unit = lambda values, n: (values[n] - ROVER[n].min) / (ROVER[n].max - ROVER[n].min)

    def objective(values, stage):
        a, b = unit(values, names[0]), unit(values, names[1])
        residuals = np.array([30 * (a + b - 0.9), a - b - 0.5], dtype=np.float32)
        return {"iou": 1 / (1 + float(residuals @ residuals)), "residuals": residuals}

    result = fit(ROVER, ROVER.defaults(), objective, max_evaluations=500, parameters=names,
                 schedule=[Stage(None, 1.0, "least_squares")])
    assert unit(result.values, names[0]) == pytest.approx(0.7, abs=5e-3)
    assert unit(result.values, names[1]) == pytest.approx(0.2, abs=5e-3)
    assert result.evaluations < 60  # a coordinate search zig-zags down such a valley for hundreds


def test_least_squares_keeps_only_a_few_residual_fields_alive(monkeypatch):
    from cad.fit.solvers import least_squares

    # A new Jacobian every iteration, so that many fields pass through (chord steps would take only 15).
    monkeypatch.setattr(least_squares, "CHORD_AGREEMENT", math.inf)
    alive, most = [], [0]

    def objective(values, stage):
        field = np.full(1000, (values["chassis_length"] - 300.0) / 320.0, dtype=np.float32)
        field[:10] = (values["chassis_width"] - 100.0) / 240.0
        alive.append(weakref.ref(field))
        most[0] = max(most[0], sum(ref() is not None for ref in alive))
        return {"iou": 1 / (1 + float(field @ field)), "residuals": field}

    result = fit(ROVER, ROVER.defaults(), objective, max_evaluations=200,
                 parameters=["chassis_length", "chassis_width"], schedule=[Stage({"field": {}}, 1.0, "least_squares")])
    assert result.values["chassis_length"] == pytest.approx(300.0, abs=1.0)
    assert len(alive) > 20 and most[0] <= 12


def test_the_last_stage_starts_from_the_coarse_result_it_scores_best():
    # The coarse stage drags the length to its maximum, worse under the real objective than the start.
    def objective(values, stage):
        length = values["chassis_length"]
        return length / 400.0 if stage == "coarse" else math.exp(-((length - 230.0) / 8.0) ** 2)

    result = fit(ROVER, ROVER.defaults(), objective, max_evaluations=300, parameters=["chassis_length"],
                 schedule=[Stage("coarse", 0.3), Stage("real", 1.0)])
    assert result.values["chassis_length"] == 230.0 and result.iou > 0.99


def test_a_coarse_stage_changes_a_count_only_if_the_real_objective_agrees():
    def objective(values, stage):
        length_miss = (values["chassis_length"] - 250.0) / 320.0
        if stage == "real":
            return 0.99 - abs(length_miss) - 0.1 * abs(values["wheels_per_side"] - 3)
        residuals = np.array([length_miss, 0.01 * (values["wheels_per_side"] - 4)], dtype=np.float32)
        return {"iou": 1 / (1 + float(residuals @ residuals)), "residuals": residuals}

    result = fit(ROVER, ROVER.defaults(), objective, max_evaluations=300,
                 parameters=["chassis_length", "wheels_per_side"],
                 schedule=[Stage("coarse", 0.7, "least_squares"), Stage("real", 1.0)])
    assert result.values["wheels_per_side"] == 3 and result.values["chassis_length"] == 250.0


def test_progress_reports_the_real_iou_never_a_coarse_stages_score():
    # The UI shows this number as "IoU": a coarse field scoring 0.99 must not appear as the fit's IoU.
    real = lambda values: 0.98 * math.exp(-((values["chassis_length"] - 300.0) / 60.0) ** 2)
    reports = []

    def objective(values, stage):
        if stage == "coarse":
            return {"iou": 0.99, "residuals": np.array([(values["chassis_length"] - 300.0) / 320], np.float32)}
        return real(values)

    result = fit(ROVER, ROVER.defaults(), objective, max_evaluations=100, parameters=["chassis_length"],
                 schedule=[Stage("coarse", 0.5, "least_squares"), Stage("real", 1.0)],
                 progress=lambda n, iou, stage: reports.append((n, iou, stage)))
    assert reports[0][1] == pytest.approx(result.start_iou) and result.start_iou < 0.5
    assert all(iou <= result.iou + 1e-12 for _, iou, _ in reports) and reports[-1][1] == result.iou
    assert [n for n, _, _ in reports] == list(range(1, result.evaluations + 1))  # one report per evaluation
    assert all(b[1] >= a[1] for a, b in zip(reports, reports[1:])) and {s for _, _, s in reports} == {0, 1}


def test_an_extra_start_is_kept_when_it_scores_better():
    # A yaw-like objective: a low hill at the start (0 deg), the peak far away; a VLM proposed 100 deg.
    bumpy = lambda values, stage: (0.5 * math.exp(-(values["rover_yaw"] / 20) ** 2)
                                   + 0.99 * math.exp(-((values["rover_yaw"] - 120) / 40) ** 2))
    local = fit(ROVER, ROVER.defaults(), bumpy, max_evaluations=200, parameters=["rover_yaw"],
                schedule=SINGLE_STAGE)
    assert abs(local.values["rover_yaw"]) < 5
    both = fit(ROVER, ROVER.defaults(), bumpy, max_evaluations=200, parameters=["rover_yaw"],
               schedule=SINGLE_STAGE, extra_starts=[{"rover_yaw": 100.0}])
    assert both.values["rover_yaw"] == 120.0 and both.start_values["rover_yaw"] == 0.0
    assert both.start_iou == local.start_iou and both.changes() == {"rover_yaw": 120.0}


def test_bounds_ints_budget_and_determinism():
    goal = {"chassis_length": 301.0, "wheels_per_side": 4, "pan_tilt_z": 250.0}

    def objective(values, stage):
        distance = sum(abs(values[n] - g) / (ROVER[n].max - ROVER[n].min) for n, g in goal.items())
        return 0.99 * math.exp(-5 * distance)  # pan_tilt_z's optimum is its upper bound

    run = lambda: fit(ROVER, ROVER.defaults(), objective, max_evaluations=400, parameters=list(goal),
                      schedule=SINGLE_STAGE)
    result = run()
    assert result.values == {**ROVER.defaults(), **goal} and result.stopped == "converged"
    assert result.evaluations <= 400 and run().values == result.values and run().trace == result.trace
    short = fit(ROVER, ROVER.defaults(), objective, max_evaluations=5, parameters=list(goal))
    assert short.evaluations == 5 and short.stopped == "budget" and short.iou >= short.start_iou
    for bad in (0, 5001, 2.5, True):
        with pytest.raises(ValueError):
            fit(ROVER, ROVER.defaults(), objective, max_evaluations=bad)
    with pytest.raises(ValueError, match="show_sensor_fork"):
        fit(ROVER, ROVER.defaults(), objective, max_evaluations=10, parameters=["show_sensor_fork"])


def test_cancel_stops_before_the_next_evaluation_and_keeps_the_best_state():
    cancel, calls = threading.Event(), []
    score = lambda values: math.exp(-abs(values["chassis_length"] - 301.3) / 50)

    def objective(values, stage):
        calls.append(values)
        if len(calls) == 8:
            cancel.set()  # e.g. DELETE /api/optimise arriving during the 8th evaluation
        return score(values)

    result = fit(ROVER, ROVER.defaults(), objective, max_evaluations=400, parameters=["chassis_length"],
                 cancel=cancel, schedule=SINGLE_STAGE)
    assert result.stopped == "cancelled" and result.evaluations == len(calls) == 8
    assert result.iou == max(score(v) for v in calls) > result.start_iou and score(result.values) == result.iou


def test_a_count_among_many_floats_is_refitted_from_the_last_jacobian():
    # Twelve floats, one count: the count's neighbour only helps with the length refitted for it. A refit that
    # re-measured every float would not fit in the budget; Gauss-Newton steps on the measured Jacobian do.
    names = [p.name for p in ROVER if p.type == "float"][:12]
    assert "chassis_length" in names and "axle_spacing" in names
    goal = {n: ROVER.defaults()[n] for n in names}

    def objective(values, stage):
        spread = {n: (values[n] - goal[n]) / (ROVER[n].max - ROVER[n].min) for n in names}
        spread["chassis_length"] = (values["chassis_length"] - (20 + 80 * values["wheels_per_side"])) / 320
        residuals = np.array([*spread.values(), 0.02 * (values["wheels_per_side"] - 4)], dtype=np.float32)
        return {"iou": 1 / (1 + float(residuals @ residuals) * 100), "residuals": residuals}

    start = ROVER.complete({"chassis_length": 260.0})  # right for three wheels a side
    result = fit(ROVER, start, objective, max_evaluations=150, parameters=[*names, "wheels_per_side"],
                 schedule=[Stage({"field": {}}, 1.0, "least_squares")])
    assert result.values["wheels_per_side"] == 4 and result.values["chassis_length"] == pytest.approx(340, abs=1)
    assert set(result.changes()) == {"wheels_per_side", "chassis_length"}


def _residual_fit(objective, schema, budget=600):
    schedule = [Stage({"field": {}}, 0.5, "least_squares"), Stage(None, 1.0, "pattern", {"initial_step": 1 / 128})]
    return fit(schema, schema.defaults(), objective, max_evaluations=budget, schedule=schedule)


def box_residuals(goal):
    """Residuals and IoU of a box against ``goal``: each length's misfit is its own residual."""
    def objective(values, stage):
        size = [values["length"], values["width"], values["height"]]
        residuals = np.array([(a - b) / 100.0 for a, b in zip(size, goal)], dtype=np.float32)
        return {"iou": box_iou(size, goal), "residuals": residuals} if stage else box_iou(size, goal)
    return objective


def test_the_revert_pass_spends_no_refits_where_no_other_parameter_could_take_a_change_up(monkeypatch):
    # Three independent lengths, all of which had to move: putting any back costs what no other can make good,
    # so the least-squares Jacobian says so and the revert's refits are skipped; the answer is the same.
    schema, _ = box_problem(1.0)
    objective = box_residuals((123.4567, 33.3333, 17.7777))
    gated = _residual_fit(objective, schema)
    monkeypatch.setattr("cad.fit.fitting.TAKE_UP_SHARE", -math.inf)  # every moved parameter refitted back
    every = _residual_fit(objective, schema)
    assert gated.values == every.values and gated.iou == every.iou > 0.999
    assert gated.evaluations < 0.8 * every.evaluations, (gated.evaluations, every.evaluations)


def test_a_trade_off_partner_still_takes_up_a_reverted_change_after_a_least_squares_stage():
    # Only height + lift matters (a lid on a box): the Jacobian's columns are parallel, so the revert pass tries
    # putting one back with the other refitted, and the answer is the smallest change.
    schema = Schema([number("lift", 0, 10, 5.0), number("height", 0, 100, 50.0)])

    def objective(values, stage):
        misfit = (values["height"] + values["lift"] - 60.0) / 100.0
        iou = 0.9 * math.exp(-(misfit * 20.0) ** 2)
        return {"iou": iou, "residuals": np.array([misfit], dtype=np.float32)} if stage else iou

    result = _residual_fit(objective, schema)
    assert result.values == {"lift": 5.0, "height": 55.0}


def test_a_parameter_without_effect_costs_a_few_probes_not_a_descent_to_the_finest_grid():
    # Moves both ways that change the score by less than the tolerance end that coordinate: finer steps could
    # not gain more: one probe each way in the search (and in the revert pass's refit, and its range ends). It
    # shrank through six step sizes before, two evaluations each: 14 distinct values.
    schema = Schema([number("length", 10, 200, 80.0), number("engraving_depth", 0, 2, 1.0)])
    probed = []

    def objective(values, stage):
        if values["engraving_depth"] != 1.0:
            probed.append(values["engraving_depth"])
        return box_iou([values["length"], 1, 1], [123.4567, 1, 1])

    result = fit(schema, schema.defaults(), objective, max_evaluations=300, schedule=SINGLE_STAGE)
    assert result.values["engraving_depth"] == 1.0 and result.values["length"] == pytest.approx(123.4567, rel=1e-3)
    assert len(set(probed)) <= 6, sorted(set(probed))


def test_share_taken_up_reads_partners_from_the_jacobian():
    from cad.fit.solvers.least_squares import share_taken_up

    residuals = np.zeros(4)
    parallel = np.array([[1.0, 2.0], [0.5, 1.0], [0.0, 0.0], [0.0, 0.0]])  # a lid's lift and the box height
    separate = np.array([[1.0, 0.0], [0.5, 0.0], [0.0, 1.0], [0.0, 0.3]])  # two features' fields do not overlap
    assert share_taken_up(parallel, residuals, 0, 0.1) == pytest.approx(1.0)
    assert share_taken_up(separate, residuals, 0, 0.1) == pytest.approx(0.0)
    # Putting it back alone would lower the cost to first order: the residuals cannot be trusted to name a partner.
    assert share_taken_up(parallel, np.array([-0.2, -0.1, 0.0, 0.0]), 0, 0.1) == 0.0

"""cad.fit with objective_many: the batches evaluated concurrently give the serial fit's states, answer and count."""
import math
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from cad.fit import SINGLE_STAGE, Stage, fit
from cad.registry import ModelRegistry

ROVER = ModelRegistry().get("rover").schema
NAMES = ["chassis_length", "chassis_width", "axle_spacing", "wheels_per_side"]
GOAL = {"chassis_length": 301.3, "chassis_width": 141.7, "axle_spacing": 0.0, "wheels_per_side": 3}
SCHEDULE = [Stage({"field": {}}, 0.5, "least_squares"), Stage("real", 1.0, "pattern", {"initial_step": 1 / 16})]


def misses(values):
    return [(values[n] - GOAL[n]) / (ROVER[n].max - ROVER[n].min) for n in NAMES]


def objective(values, stage):
    if stage == "real":
        return 0.99 * math.exp(-4 * sum(abs(m) for m in misses(values)))
    residuals = np.array(misses(values), dtype=np.float32)
    return {"iou": 1 / (1 + 50 * float(residuals @ residuals)), "residuals": residuals}


def run(parallel: bool, budget=300, cancel=None, log=None, workers=3):
    seen = log if log is not None else []
    lock = threading.Lock()
    rng = random.Random(7)

    def counted(values, stage):
        with lock:
            seen.append((stage, tuple(values[n] for n in NAMES)))
            delay = rng.random() * 0.002
        time.sleep(delay)  # finish in a shuffled order
        return objective(values, stage)

    executor = ThreadPoolExecutor(workers)
    many = (lambda batch, stage: list(executor.map(lambda v: counted(v, stage), batch))) if parallel else None
    try:
        return fit(ROVER, ROVER.defaults(), counted, max_evaluations=budget, parameters=NAMES, schedule=SCHEDULE,
                   objective_many=many, workers=workers if parallel else 1, cancel=cancel), seen
    finally:
        executor.shutdown()


def test_parallel_and_serial_fits_are_identical():
    (serial, serial_seen), batches = run(False), []
    for _ in range(2):
        parallel, parallel_seen = run(True)
        assert parallel.values == serial.values and parallel.iou == serial.iou
        assert parallel.evaluations == serial.evaluations == len(serial_seen) == len(parallel_seen)
        assert parallel.trace == serial.trace and parallel.stopped == serial.stopped
        assert sorted(parallel_seen, key=repr) == sorted(serial_seen, key=repr)  # the same states, any order
    assert serial.iou > serial.start_iou


def test_objective_many_gets_batches_and_the_budget_stays_exact():
    sizes = []

    def many(batch, stage):
        sizes.append(len(batch))
        return [objective(v, stage) for v in batch]

    for budget in (1, 7, 23, 61):
        result = fit(ROVER, ROVER.defaults(), objective, max_evaluations=budget, parameters=NAMES,
                     schedule=SCHEDULE, objective_many=many, workers=2)
        serial = fit(ROVER, ROVER.defaults(), objective, max_evaluations=budget, parameters=NAMES,
                     schedule=SCHEDULE)
        assert result.evaluations == serial.evaluations <= budget and result.values == serial.values
    assert max(sizes) == 2  # chunks of the worker count


def test_cancel_stops_a_parallel_fit_between_chunks():
    cancel, log = threading.Event(), []

    class Cancel:
        def is_set(self):
            if len(log) >= 10:
                cancel.set()
            return cancel.is_set()

    result, seen = run(True, cancel=Cancel(), log=log, workers=2)
    assert result.stopped == "cancelled" and result.evaluations == len(seen) and 10 <= len(seen) <= 11


def test_a_bad_worker_count_is_refused():
    with pytest.raises(ValueError, match="workers"):
        fit(ROVER, ROVER.defaults(), objective, max_evaluations=10, schedule=SINGLE_STAGE, workers=0)


def test_a_reached_target_ends_serial_and_parallel_fits_at_the_same_count():
    def hit(values, stage):
        miss = abs(values["chassis_length"] - 300)
        return 1.0 if miss < 30 else 0.9 - miss / 1000

    def many(batch, stage):
        return [hit(v, stage) for v in batch]

    runs = [fit(ROVER, ROVER.defaults(), hit, max_evaluations=100, parameters=NAMES[:3], schedule=SINGLE_STAGE,
                objective_many=many if workers > 1 else None, workers=workers) for workers in (1, 2, 3)]
    assert {(r.stopped, r.evaluations, tuple(r.values.items())) for r in runs} == {
        (runs[0].stopped, runs[0].evaluations, tuple(runs[0].values.items()))}
    assert runs[0].stopped == "target_reached"

"""cad.fit with submit: the batches evaluated concurrently, and states started ahead on idle workers, give the
serial fit's states, answer and count."""
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
    submit = (lambda values, stage: executor.submit(counted, values, stage)) if parallel else None
    try:
        return fit(ROVER, ROVER.defaults(), counted, max_evaluations=budget, parameters=NAMES, schedule=SCHEDULE,
                   submit=submit, workers=workers if parallel else 1, cancel=cancel), seen
    finally:
        executor.shutdown()


def test_parallel_and_serial_fits_are_identical():
    (serial, serial_seen), batches = run(False), []
    for _ in range(2):
        parallel, parallel_seen = run(True)
        assert parallel.values == serial.values and parallel.iou == serial.iou
        assert parallel.evaluations == serial.evaluations == len(serial_seen)
        assert parallel.trace == serial.trace and parallel.stopped == serial.stopped
        # the same states, any order, and the ones started ahead that the search never asked for
        assert len(parallel_seen) == parallel.evaluations + parallel.wasted_builds
        serial_states, parallel_states = [repr(state) for state in serial_seen], [repr(s) for s in parallel_seen]
        assert set(serial_states) <= set(parallel_states) and len(set(parallel_states)) == len(parallel_states)
        assert serial.wasted_builds == 0
    assert serial.iou > serial.start_iou


def overlap_counting(workers: int):
    """(submit, most): an objective on ``workers`` threads that records the most evaluations running at once."""
    lock, running, most = threading.Lock(), [0], [0]
    executor = ThreadPoolExecutor(workers)

    def timed(values, stage):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.003)
        with lock:
            running[0] -= 1
        return objective(values, stage)

    return executor, (lambda values, stage: executor.submit(timed, values, stage)), most


def test_at_most_one_state_runs_per_worker_and_the_budget_stays_exact():
    executor, submit, most = overlap_counting(2)
    with executor:
        for budget in (1, 7, 23, 61):
            result = fit(ROVER, ROVER.defaults(), objective, max_evaluations=budget, parameters=NAMES,
                         schedule=SCHEDULE, submit=submit, workers=2)
            serial = fit(ROVER, ROVER.defaults(), objective, max_evaluations=budget, parameters=NAMES,
                         schedule=SCHEDULE)
            assert result.evaluations == serial.evaluations <= budget and result.values == serial.values
    assert most[0] == 2


def test_a_pattern_search_keeps_the_idle_worker_busy_with_its_next_probe():
    # No batches in this schedule (no differences, no pair moves): every overlap is a probe started ahead.
    schedule = [Stage("real", 1.0, "pattern", {"initial_step": 1 / 16, "pair_moves": False})]
    executor, submit, most = overlap_counting(2)
    with executor:
        result = fit(ROVER, ROVER.defaults(), objective, max_evaluations=200, parameters=NAMES[:3],
                     schedule=schedule, submit=submit, workers=2)
    serial = fit(ROVER, ROVER.defaults(), objective, max_evaluations=200, parameters=NAMES[:3], schedule=schedule)
    assert most[0] == 2 and result.values == serial.values and result.evaluations == serial.evaluations
    # most probes miss near the end, so most states started ahead are asked for: few builds are wasted
    assert 0 < result.wasted_builds < result.evaluations / 3


def test_cancel_stops_a_parallel_fit_between_chunks():
    cancel, log = threading.Event(), []

    class Cancel:
        def is_set(self):
            if len(log) >= 10:
                cancel.set()
            return cancel.is_set()

    result, seen = run(True, cancel=Cancel(), log=log, workers=2)
    # it stops within a chunk (and a state started ahead) of the cancel; every build is accounted for
    assert result.stopped == "cancelled" and 10 <= len(seen) <= 12
    assert result.evaluations + result.wasted_builds == len(seen)


def test_a_bad_worker_count_is_refused():
    with pytest.raises(ValueError, match="workers"):
        fit(ROVER, ROVER.defaults(), objective, max_evaluations=10, schedule=SINGLE_STAGE, workers=0)


def test_a_reached_target_ends_serial_and_parallel_fits_at_the_same_count():
    def hit(values, stage):
        miss = abs(values["chassis_length"] - 300)
        return 1.0 if miss < 30 else 0.9 - miss / 1000

    executor = ThreadPoolExecutor(3)
    with executor:
        runs = [fit(ROVER, ROVER.defaults(), hit, max_evaluations=100, parameters=NAMES[:3], schedule=SINGLE_STAGE,
                    submit=lambda values, stage: executor.submit(hit, values, stage), workers=workers)
                for workers in (1, 2, 3)]
    assert {(r.stopped, r.evaluations, tuple(r.values.items())) for r in runs} == {
        (runs[0].stopped, runs[0].evaluations, tuple(runs[0].values.items()))}
    assert runs[0].stopped == "target_reached"


def test_a_lone_job_always_runs_as_slot_0_and_overlapping_jobs_get_their_own():
    # The optimiser's affinity keys follow the slots: serial stretches must keep slot 0's key on one worker and
    # leave slot 1's for the worker that is free when two jobs overlap.
    from cad.worker_pool import Slots

    slots, seen, inside = Slots(2), [], threading.Barrier(2)
    for _ in range(3):
        with slots.take() as slot:
            seen.append(slot)
    assert seen == [0, 0, 0]

    def overlapping(_):
        with slots.take() as slot:
            inside.wait(timeout=5)  # both held at once
            return slot

    with ThreadPoolExecutor(2) as executor:
        assert sorted(executor.map(overlapping, range(2))) == [0, 1]
    with slots.take() as first, slots.take() as second:
        assert (first, second) == (0, 1)
        with pytest.raises(RuntimeError, match="slots"), slots.take():
            pass

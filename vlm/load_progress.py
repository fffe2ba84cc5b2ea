"""Honest load progress for the fine-tuned worker: phases with their own shares, and an ETA from the last load.

The worker reports which phase it is in (and, while reading weights, how far); the parent turns that into one
bar. Each phase's share is its measured time in the last load of the same model (persisted per model in the
data dir), or a typical time until one was measured: the torch/transformers import, 75-85 % of a small model's
load, is a phase of its own instead of a bar stuck at 100 %. Inside a phase without its own progress (imports,
building) the bar moves with the time spent against the time it took last time, and never past 95 % of the phase.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Callable

from vlm.dataset import atomic_write

log = logging.getLogger(__name__)

STARTING, READING, IMPORTING, BUILDING, ADAPTER = (
    "starting worker", "reading weights", "importing libraries", "building model", "loading adapter")
PHASES = (STARTING, READING, IMPORTING, BUILDING, ADAPTER)  # the order the worker runs them in
# Seconds, for weighting the bar before a load of this model was measured (small model, CPU, these machines).
TYPICAL_S = {STARTING: 0.3, READING: 0.5, IMPORTING: 6.0, BUILDING: 1.5, ADAPTER: 0.5}
WITHIN_PHASE_CAP = 0.95  # a phase without progress of its own is never shown as done before it is

Report = Callable[..., None]  # report(fraction, phase, eta_s=None)


class LoadTimings:
    """Per-model phase durations of the last load, in one small JSON file written atomically."""

    def __init__(self, path: Path | None):
        self.path = Path(path) if path else None
        self._lock = threading.Lock()

    def get(self, key: str) -> dict[str, float] | None:
        if self.path is None:
            return None
        try:
            entry = json.loads(self.path.read_text()).get(key)
        except (OSError, ValueError, AttributeError):
            return None
        if not isinstance(entry, dict):
            return None
        return {k: float(v) for k, v in entry.items() if k in PHASES and isinstance(v, (int, float))}

    def put(self, key: str, durations: dict[str, float]) -> None:
        if self.path is None:
            return
        with self._lock:
            try:
                data = json.loads(self.path.read_text())
                data = data if isinstance(data, dict) else {}
            except (OSError, ValueError):
                data = {}
            data[key] = {**(data.get(key) or {}), **{k: round(v, 4) for k, v in durations.items()}}
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(self.path, json.dumps(data, indent=1, sort_keys=True).encode("utf-8"))
            except OSError as exc:  # progress is a nicety: a read-only data dir must not fail a load
                log.warning("could not save load timings to %s: %s", self.path, exc)


class LoadProgress:
    """One load's bar. `enter(phase, within)` on each worker report, `tick()` between them, `finish()` at ready
    (returns the measured durations)."""

    def __init__(self, report: Report, *, last: dict[str, float] | None, skip: set[str] = frozenset(),
                 clock: Callable[[], float] = time.monotonic):
        self.report = report
        self.clock = clock
        self.measured_before = last is not None
        self.phases = [p for p in PHASES if p not in skip]
        expected = {**TYPICAL_S, **(last or {})}
        self.expected = {p: max(0.01, expected[p]) for p in self.phases}
        self.durations: dict[str, float] = {}
        self.phase = self.phases[0]
        self.within = 0.0
        self.started = self.phase_started = clock()

    def enter(self, phase: str, within: float = 0.0) -> None:
        now = self.clock()
        if phase != self.phase and phase in self.expected:
            self.durations[self.phase] = self.durations.get(self.phase, 0.0) + now - self.phase_started
            order = self.phases.index(phase)
            for skipped in self.phases[self.phases.index(self.phase) + 1:order]:
                self.durations.setdefault(skipped, 0.0)  # the worker went past it (nothing to do)
            self.phase, self.phase_started, self.within = phase, now, 0.0
        self.within = max(self.within, min(1.0, float(within)))
        self.tick()

    def tick(self) -> None:
        now = self.clock()
        expected_now = self.expected[self.phase]
        by_time = min(WITHIN_PHASE_CAP, (now - self.phase_started) / expected_now)
        within = max(self.within, by_time)  # the worker's own count (bytes read) may reach the phase's end
        order = self.phases.index(self.phase)
        total = sum(self.expected.values())
        done = sum(self.expected[p] for p in self.phases[:order]) + expected_now * within
        eta = None
        if self.measured_before:  # an ETA only from a measurement, never from the typical guesses
            eta = expected_now * (1 - within) + sum(self.expected[p] for p in self.phases[order + 1:])
        self.report(min(done / total, 0.99), self.phase, eta_s=eta)

    def finish(self) -> dict[str, float]:
        self.durations[self.phase] = self.durations.get(self.phase, 0.0) + self.clock() - self.phase_started
        self.report(1.0, "ready", eta_s=0.0)
        return dict(self.durations)

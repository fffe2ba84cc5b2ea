"""The model's states and what `ModelManager.status()` (GET /api/vlm/status) says about them: a load's progress
with its elapsed time and ETA, and the backend's facts split into memory, dtype and the engine's own.

No locking here: `vlm.lifecycle.ModelManager` calls these under its lock. The fine-tuned worker's phase bar that
feeds a load's progress is `vlm.load_progress`.
"""
from __future__ import annotations

from typing import Callable

UNLOADED, LOADING, READY, FAILED = "unloaded", "loading", "ready", "failed"
NO_ETA = object()  # a backend that reports no ETA of its own: the ETA is extrapolated from the fraction
# backend facts shown elsewhere in the status; the rest (reachable, loaded, expires_at, pid...) is "engine"
_NOT_ENGINE_FACTS = {"model", "adapter", "rss_bytes", "gpu_bytes", "dtype", "dtype_reason"}


class LoadReport:
    """The progress of the latest load: fraction and phase as the backend reports them, when it started and
    ended, and the backend's own ETA (from a measured load of the same model) when it gives one."""

    def __init__(self, clock: Callable[[], float]):
        self.clock = clock
        self.fraction, self.phase = 0.0, ""
        self._eta: tuple[float, float | None] | None = None  # (clock when reported, seconds left then)
        self.started: float | None = None
        self.finished: float | None = None

    def start(self) -> None:
        self.fraction, self.phase = 0.0, "starting"
        self._eta = None
        self.started, self.finished = self.clock(), None

    def update(self, fraction: float, phase: str, eta_s: float | None | object = NO_ETA) -> None:
        """eta_s: the backend's own estimate; None means "unknown" (no measured load yet), not "guess one"."""
        self.fraction, self.phase = max(0.0, min(1.0, float(fraction))), phase
        self._eta = None if eta_s is NO_ETA else (self.clock(), eta_s)

    def finish(self, ready: bool) -> None:
        if ready:
            self.fraction, self.phase = 1.0, "ready"
        self.finished = self.clock()

    def status(self, state: str) -> dict:
        now = self.clock()
        fraction, phase = self.fraction, self.phase
        elapsed = eta = None
        if self.started is not None:
            elapsed = (self.finished or now) - self.started
            if state == LOADING and self._eta is not None:  # the backend's, from a measured load
                reported_at, left = self._eta
                eta = None if left is None else max(0.0, left - (now - reported_at))
            elif state == LOADING and fraction > 0.02:
                eta = elapsed * (1 - fraction) / fraction
            elif state == READY:
                eta = 0.0
        if state == UNLOADED:
            fraction, phase = 0.0, ""
        return {"fraction": round(fraction, 4), "phase": phase,
                "elapsed_s": None if elapsed is None else round(elapsed, 2),
                "eta_s": None if eta is None else round(eta, 2)}


def backend_facts(backend_status: dict, facts_age) -> dict:
    """The backend's status as the manager's status shows it."""
    return {
        "model": backend_status.get("model"),
        "adapter": backend_status.get("adapter"),
        "memory": {"rss_bytes": backend_status.get("rss_bytes"), "gpu_bytes": backend_status.get("gpu_bytes")},
        "dtype": backend_status.get("dtype"),
        "dtype_reason": backend_status.get("dtype_reason"),
        "engine": {**{k: v for k, v in backend_status.items() if k not in _NOT_ENGINE_FACTS}, "age_s": facts_age},
    }

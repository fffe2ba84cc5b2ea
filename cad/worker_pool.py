"""A small pool of build workers (``CAD_BUILD_WORKERS``, default 2): one hanging or slow model script holds one
worker, the other models keep building and rendering on the rest.

Each job goes to a free worker, preferring the one that last ran the same script (it keeps the built shapes, so
GLB, PNG and STL of one state build once): a job waits up to ``AFFINITY_WAIT_S`` for that worker before taking
another free one. Workers start on first use, so a pool of 2 costs one cadquery import until two jobs overlap.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager

from cad.worker import DEFAULT_TIMEOUT_S, WorkerClient

log = logging.getLogger(__name__)

DEFAULT_WORKERS = 2
AFFINITY_WAIT_S = 1.0
_AFFINITY_ITEMS = 256


def pool_size() -> int:
    raw = os.environ.get("CAD_BUILD_WORKERS", "").strip()
    try:
        return max(int(raw), 1) if raw else DEFAULT_WORKERS
    except ValueError:
        log.warning("CAD_BUILD_WORKERS=%r is not a whole number; using %d", raw, DEFAULT_WORKERS)
        return DEFAULT_WORKERS


class Slots:
    """The lowest free one of ``count`` slot numbers, held inside a ``with slots.take() as slot`` block. A caller
    that runs jobs of one script concurrently gives each slot its own affinity key: a job alone then always runs
    as slot 0, and slot 1's key meets the pool first while slot 0's worker is busy, so it settles on another one
    (a key per thread instead would bind both keys to one worker during serial stretches, and each overlap after
    would wait ``AFFINITY_WAIT_S`` for it)."""

    def __init__(self, count: int):
        self._free, self._lock = list(range(count)), threading.Lock()

    @contextmanager
    def take(self):
        with self._lock:
            if not self._free:
                raise RuntimeError("more concurrent jobs than slots")
            slot = min(self._free)
            self._free.remove(slot)
        try:
            yield slot
        finally:
            with self._lock:
                self._free.append(slot)


class WorkerPool:
    """``WorkerClient``'s interface (call, close, pid, restarts) over several workers. Thread-safe."""

    def __init__(self, size: int | None = None, role: str = "build"):
        self.clients = [WorkerClient(role) for _ in range(size or pool_size())]
        self._cond = threading.Condition()
        self._busy: set[int] = set()
        self._affinity: OrderedDict[str, int] = OrderedDict()

    @property
    def pids(self) -> list[int]:
        return [pid for pid in (c.pid for c in self.clients) if pid is not None]

    @property
    def pid(self) -> int | None:
        """The first running worker's pid (None when none runs)."""
        pids = self.pids
        return pids[0] if pids else None

    @property
    def starts(self) -> int:
        return sum(c.starts for c in self.clients)

    @property
    def restarts(self) -> int:
        return sum(c.restarts for c in self.clients)

    def call(self, job: str, *args, timeout_s: float = DEFAULT_TIMEOUT_S, script: str = "<worker>",
             affinity: str | None = None, **kwargs):
        """Run `job` on a free worker, preferably the one that last ran the same `affinity` key (default: the
        script). Callers that run several jobs of one script at once on purpose give each its own key."""
        if job == "clear":  # every running worker forgets its shapes
            for client in self.clients:
                if client.pid is not None:
                    client.call("clear")
            return None
        if job == "stats":
            running = [c for c in self.clients if c.pid is not None] or self.clients[:1]
            answers = [c.call("stats") for c in running]
            return {"pid": answers[0]["pid"], "pids": [a["pid"] for a in answers],
                    "builds": sum(a["builds"] for a in answers)}
        closes = [client.closes for client in self.clients]  # a close while it waits for a worker stops it too
        index = self._acquire(affinity or script)
        try:
            return self.clients[index].call(job, *args, timeout_s=timeout_s, script=script,
                                            waited_since=closes[index], **kwargs)
        finally:
            self._release(index)

    def close(self) -> None:
        for client in self.clients:
            client.close()

    def _acquire(self, script: str) -> int:
        deadline = time.monotonic() + AFFINITY_WAIT_S
        with self._cond:
            while True:
                free = [i for i in range(len(self.clients)) if i not in self._busy]
                preferred = self._affinity.get(script)
                if preferred in free:
                    index = preferred
                elif free and (preferred is None or time.monotonic() >= deadline):
                    running = [i for i in free if self.clients[i].pid is not None]
                    index = (running or free)[0]
                else:
                    remaining = deadline - time.monotonic()
                    self._cond.wait(timeout=remaining if remaining > 0 and free else None)
                    continue
                self._busy.add(index)
                self._affinity[script] = index
                self._affinity.move_to_end(script)
                while len(self._affinity) > _AFFINITY_ITEMS:
                    self._affinity.popitem(last=False)
                return index

    def _release(self, index: int) -> None:
        with self._cond:
            self._busy.discard(index)
            self._cond.notify_all()

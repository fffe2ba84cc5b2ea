"""A pool of CAD build processes for batch work (synthetic data, benchmarks), each job with real limits.

Random parameter states find geometry that a designer would not pick: four overlapping holes made one OCC boolean
take 24 GB until the kernel killed it. Every process here has an address-space limit (OCC then raises
Standard_OutOfMemory, which surfaces as an ordinary BuildError) and every job a time limit; a job that still
kills its process is reported as failed and the pool carries on (pebble's ProcessPool: one future per job, a
crashed or timed-out worker is replaced).
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import resource
from concurrent.futures import TimeoutError as FutureTimeout

from pebble import ProcessExpired, ProcessPool

log = logging.getLogger(__name__)

DEFAULT_MEMORY_BYTES = 8 << 30  # of address space: cadquery with VTK maps about 2-3 GB before building anything
DEFAULT_TIMEOUT_S = 120.0


def _limit_memory(limit: int) -> None:
    if limit > 0:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


class JobFailed(Exception):
    """A job ran out of time, or its process died (out of memory past the limit, a crash in the CAD kernel)."""


class CadPool:
    """`with CadPool(workers) as pool: future = pool.submit(fn, *args); value = pool.result(future)`."""

    def __init__(self, workers: int = 0, *, timeout_s: float = DEFAULT_TIMEOUT_S,
                 memory_bytes: int = DEFAULT_MEMORY_BYTES):
        self.workers = workers or os.cpu_count() or 1
        self.timeout_s = timeout_s
        # spawned, not forked: a caller that has imported torch would hand every worker its mappings (and the
        # address-space limit would then be spent before the first build)
        self._pool = ProcessPool(max_workers=self.workers, initializer=_limit_memory, initargs=(memory_bytes,),
                                 context=multiprocessing.get_context("spawn"))

    def submit(self, fn, *args, **kwargs):
        return self._pool.schedule(fn, args=args, kwargs=kwargs, timeout=self.timeout_s)

    def result(self, future):
        """The job's value; raises JobFailed when it timed out or its process died, or the job's own exception."""
        try:
            return future.result()
        except FutureTimeout:
            raise JobFailed(f"the job took over {self.timeout_s:g} s and was stopped") from None
        except ProcessExpired as exc:
            raise JobFailed(f"the build process died (exit code {exc.exitcode}), likely out of memory") from None

    def close(self) -> None:
        self._pool.close()
        self._pool.join()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *rest):
        if exc_type is not None:
            self._pool.stop()
        self.close()

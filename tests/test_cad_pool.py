"""cad.pool: build processes with real limits. A job past its memory or time limit is a clear failure and the
pool carries on with the next job."""
from __future__ import annotations

import time

import pytest

from cad.pool import CadPool, JobFailed


def allocate(megabytes: int) -> int:
    return len(bytearray(megabytes << 20))


def sleep_for(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def test_a_job_past_its_memory_limit_fails_and_the_next_job_runs():
    with CadPool(1, memory_bytes=1 << 30, timeout_s=60) as pool:
        with pytest.raises(MemoryError):
            pool.result(pool.submit(allocate, 2048))  # 2 GiB under a 1 GiB address-space limit
        assert pool.result(pool.submit(allocate, 8)) == 8 << 20


def test_a_job_past_its_time_limit_is_stopped_and_the_next_job_runs():
    with CadPool(1, timeout_s=1.0) as pool:
        started = time.monotonic()
        with pytest.raises(JobFailed, match="took over 1 s"):
            pool.result(pool.submit(sleep_for, 30))
        assert time.monotonic() - started < 10
        assert pool.result(pool.submit(sleep_for, 0.01)) == 0.01

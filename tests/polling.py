"""Waiting in tests for something that happens in another thread or process."""
from __future__ import annotations

import time


def wait_until(predicate, timeout: float, step: float = 0.05):
    """The predicate's first truthy value within `timeout` seconds, else its value at the deadline."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return predicate()

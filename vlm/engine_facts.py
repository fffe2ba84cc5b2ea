"""What the engine says about itself (reachable, model loaded, memory), fetched off the caller's thread.

`/api/vlm/status` is polled every second and read by every answer; asking a remote engine inline made each of them
wait out a hung engine's read timeout (5 s). Here one background refresh at a time asks the backend; readers get
the last facts with their age at once, and wait a moment only when no facts for the current state exist yet (a
healthy engine answers in milliseconds, so a poll right after a load still shows fresh facts).
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

log = logging.getLogger(__name__)

FRESH_FOR_S = 1.0  # facts younger than this are served without asking again (the UI polls once a second)
FIRST_FACTS_WAIT_S = 0.3  # after a state change, how long a reader waits for the first facts before going without


class EngineFacts:
    def __init__(self, fetch: Callable[[], dict], *, fresh_for_s: float = FRESH_FOR_S,
                 first_facts_wait_s: float = FIRST_FACTS_WAIT_S, on_refresh: Callable[[dict], None] | None = None):
        self._fetch = fetch
        self.fresh_for_s = fresh_for_s
        self.first_facts_wait_s = first_facts_wait_s
        self.on_refresh = on_refresh  # called in the refresh thread with new facts (the manager reconciles state)
        self._lock = threading.Lock()
        self._facts: dict = {}
        self._fetched_at: float | None = None
        self._generation = 0  # bumped by invalidate(): facts fetched before it are stale
        self._facts_generation = -1
        self._refreshing: threading.Thread | None = None
        self._done = threading.Condition(self._lock)

    def invalidate(self) -> None:
        """The model's state changed: facts fetched before now no longer describe it."""
        with self._lock:
            self._generation += 1

    def get(self) -> tuple[dict, float | None]:
        """(facts, age in seconds; None when there are none yet). Never waits longer than first_facts_wait_s."""
        with self._lock:
            now = time.monotonic()
            current = self._facts_generation == self._generation
            fresh = current and self._fetched_at is not None and now - self._fetched_at < self.fresh_for_s
            if not fresh:
                self._start_refresh_locked()
            if not current and self.first_facts_wait_s > 0:
                wanted = self._generation
                self._done.wait_for(lambda: self._facts_generation >= wanted, self.first_facts_wait_s)
            age = None if self._fetched_at is None else round(time.monotonic() - self._fetched_at, 3)
            return dict(self._facts), age

    def _start_refresh_locked(self) -> None:
        if self._refreshing is not None and self._refreshing.is_alive():
            return  # one question to the engine at a time: a hung engine gets no pile of threads
        thread = threading.Thread(target=self._refresh, args=(self._generation,), daemon=True, name="vlm-facts")
        self._refreshing = thread
        thread.start()

    def _refresh(self, generation: int) -> None:
        try:
            facts = self._fetch() or {}
        except Exception:  # noqa: BLE001 - status must always answer; the log has the reason
            log.exception("backend status failed")
            facts = {}
        with self._lock:
            self._facts, self._fetched_at = facts, time.monotonic()
            self._facts_generation = generation
            self._done.notify_all()
            current = generation == self._generation
            if not current:  # the state changed while asking: ask again for facts about the new state
                self._refreshing = None
                self._start_refresh_locked()
        if current and self.on_refresh is not None:
            try:
                self.on_refresh(facts)
            except Exception:  # noqa: BLE001
                log.exception("engine facts observer failed")

"""`Scheduler`: the one owner of model work between HTTP requests and the `ModelManager` (Ollama's server/sched.go).

Every generation is a `Job` with a cancel token. `submit()` admits a job or answers busy at once: at most
`parallel` jobs run (the backend's `max_parallel`: 1 for the fine-tuned worker, VLM_PARALLEL for remote engines)
and at most `max_queue` wait (VLM_MAX_QUEUE). So a burst of asks holds a bounded number of the web server's
threads and the rest of the API (edits, status) keeps its threads; a full queue is a 503 `busy` with a
Retry-After estimated from recent generation times. A cancel (Stop, a closed stream, DELETE /api/optimise,
shutdown) takes a waiting job off the queue at once and makes a running one stop its engine (the token travels
in the `GenerateRequest`). No torch here.
"""
from __future__ import annotations

import collections
import contextlib
import logging
import math
import threading
import time

from .backend import BackendError, CancelToken, GenerateRequest, GenerateResult, GenerationCancelled, TokenCallback

log = logging.getLogger(__name__)

DEFAULT_RETRY_AFTER_S = 5.0  # before any generation has been timed
MAX_RETRY_AFTER_S = 120


class Busy(BackendError):
    """The queue is full: come back after `retry_after_s` (sent as the Retry-After header)."""

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message, code="busy", status=503)
        self.retry_after_s = retry_after_s


class Job:
    """One admitted generation. `run()` (in the caller's thread) waits for a slot and generates."""

    def __init__(self, scheduler: "Scheduler", request: GenerateRequest):
        self.scheduler = scheduler
        self.request = request
        self.token: CancelToken = request.cancel
        self.state = "queued"  # queued -> running -> finished

    def run(self, on_token: TokenCallback | None = None) -> GenerateResult:
        return self.scheduler._run(self, [self.request], on_token)[0]

    def run_samples(self, requests: list[GenerateRequest], on_token: TokenCallback | None = None
                    ) -> list[GenerateResult]:
        """Several generations in this job's one slot, one after another (a vote's samples: vlm.voting); the
        job's cancel ends them all; tokens stream from the first only."""
        for request in requests:
            request.cancel = self.token
        return self.scheduler._run(self, requests, on_token)

    def cancel(self) -> None:
        self.token.set()

    def discard(self) -> None:
        """Give the place back when the job will never run (the request failed before running it)."""
        self.scheduler._leave(self)


class Scheduler:
    def __init__(self, manager, *, max_queue: int = 8):
        if max_queue < 0:
            raise ValueError("max_queue must be 0 or more")
        self.manager = manager
        self.max_queue = int(max_queue)
        self._cond = threading.Condition(threading.Lock())
        self._waiting: collections.deque[Job] = collections.deque()
        self._running: set[Job] = set()
        self._durations: collections.deque[float] = collections.deque(maxlen=20)
        self._closed = False
        self.busy_count = 0

    @property
    def parallel(self) -> int:
        return max(1, int(getattr(self.manager.backend, "max_parallel", 1) or 1))

    # ------------------------------------------------------------ admission
    def submit(self, request: GenerateRequest) -> Job:
        """Admit a job (it then holds a place until it finishes) or raise `Busy` at once."""
        if request.cancel is None:
            request.cancel = CancelToken()
        with self._cond:
            if self._closed:
                raise BackendError("the server is shutting down", code="shutting_down", status=503)
            if len(self._running) + len(self._waiting) >= self.parallel + self.max_queue:
                self.busy_count += 1
                retry = self._retry_after_locked()
                raise Busy(f"the model is busy: {len(self._running)} running and {len(self._waiting)} waiting "
                           f"(VLM_MAX_QUEUE={self.max_queue}); try again in about {retry} s", retry)
            job = Job(self, request)
            self._waiting.append(job)
            return job

    def _retry_after_locked(self) -> int:
        """Seconds until a place is likely free: the queue ahead divided among the slots, at the recent mean."""
        mean = sum(self._durations) / len(self._durations) if self._durations else DEFAULT_RETRY_AFTER_S
        ahead = (len(self._waiting) + 1) / self.parallel
        return int(min(MAX_RETRY_AFTER_S, max(1, math.ceil(mean * ahead))))

    # ------------------------------------------------------------ running
    def _run(self, job: Job, requests: list[GenerateRequest], on_token: TokenCallback | None
             ) -> list[GenerateResult]:
        if job.state != "queued":
            raise RuntimeError(f"a job runs once (this one is {job.state})")
        forget = job.token.on_cancel(self._wake)
        try:
            with self._cond:
                while True:
                    if job.token.is_set() or self._closed:
                        self._leave_locked(job)
                        raise GenerationCancelled("cancelled while waiting for the model")
                    if self._waiting and self._waiting[0] is job and len(self._running) < self.parallel:
                        self._waiting.popleft()
                        self._running.add(job)
                        job.state = "running"
                        break
                    self._cond.wait()
            started = time.monotonic()
            try:
                results = [self.manager.generate(request, on_token if i == 0 else None)
                           for i, request in enumerate(requests)]
            except BaseException:
                if job.token.is_set():  # the asker is gone; whatever the engine said is moot
                    log.info("generation cancelled after %.2f s", time.monotonic() - started)
                raise
            with self._cond:
                self._durations.append(time.monotonic() - started)
            return results
        finally:
            forget()
            self._leave(job)

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _leave(self, job: Job) -> None:
        with self._cond:
            self._leave_locked(job)

    def _leave_locked(self, job: Job) -> None:
        if job in self._running:
            self._running.discard(job)
        with contextlib.suppress(ValueError):
            self._waiting.remove(job)
        job.state = "finished"
        self._cond.notify_all()

    def generate(self, request: GenerateRequest, on_token: TokenCallback | None = None) -> GenerateResult:
        """Submit and run in one call (busy raises at once)."""
        return self.submit(request).run(on_token)

    # ------------------------------------------------------------ status and shutdown
    def stats(self) -> dict:
        with self._cond:
            return {"running": len(self._running), "waiting": len(self._waiting), "parallel": self.parallel,
                    "max_queue": self.max_queue, "busy_answers": self.busy_count}

    def close(self) -> None:
        """Cancel every job: waiting ones leave at once, running ones stop their engines."""
        with self._cond:
            self._closed = True
            jobs = list(self._waiting) + list(self._running)
            self._cond.notify_all()
        for job in jobs:
            job.cancel()


class GenerationGate:
    """Up to `limit()` generations at once (shared), or one exclusive holder: unload, adapter switch and
    keep-alive expiry wait for the generations in flight, and new generations wait for them."""

    def __init__(self, limit):
        self._limit = limit
        self._cond = threading.Condition(threading.Lock())
        self._shared = 0
        self._exclusive = False
        self._exclusive_waiting = 0

    @contextlib.contextmanager
    def shared(self):
        with self._cond:
            while self._exclusive or self._exclusive_waiting or self._shared >= max(1, self._limit()):
                self._cond.wait()
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self):
        with self._cond:
            self._exclusive_waiting += 1
            try:
                while self._exclusive or self._shared:
                    self._cond.wait()
            finally:
                self._exclusive_waiting -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()

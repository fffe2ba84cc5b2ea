"""`ModelManager`: the one owner of model state (the shape of Ollama's server/sched.go).

States: unloaded -> loading -> ready; failed (with a reason) -> loading again after a cooldown; any -> unloaded.
One load at a time (concurrent callers wait for the same load), up to the backend's `max_parallel` generations at
once (unload and adapter switches wait for them), and a keep-alive timer that unloads an idle model (keep_alive_s:
0 = right after each request, -1 = never). Which requests get to generate, and when, is `vlm.scheduler`'s job;
a request's cancel token also ends its wait for a load. No torch here: the backend decides where the model runs.
The state names, a load's progress and ETA, and how the backend's facts are shown in the status are
`vlm.model_status`.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from .backend import Backend, BackendError, CancelToken, GenerateRequest, GenerateResult, GenerationCancelled, \
    TokenCallback
from .engine_facts import EngineFacts
from .model_status import FAILED, LOADING, NO_ETA, READY, UNLOADED, LoadReport, backend_facts
from .scheduler import GenerationGate

log = logging.getLogger(__name__)


class ModelManager:
    def __init__(self, backend: Backend, *, keep_alive_s: float = 300, load_timeout_s: float = 900,
                 failure_cooldown_s: float = 5, clock: Callable[[], float] = time.monotonic,
                 rewarm_after_idle: bool = False):
        self.backend = backend
        self.keep_alive_s = keep_alive_s
        # VLM_PREWARM: after a keep-alive unload, pre-warm a fresh worker (libraries, no weights, no GPU memory), so
        # the next load after an idle spell costs what the first did, not a cold import
        self.rewarm_after_idle = rewarm_after_idle
        self.load_timeout_s = load_timeout_s
        self.failure_cooldown_s = failure_cooldown_s
        self.clock = clock
        self.on_state_change: list[Callable[[str, dict], None]] = []
        self.load_count = 0
        self._cond = threading.Condition(threading.Lock())
        # generations share the backend up to its max_parallel; unload/switch/keep-alive take it alone
        self._gate = GenerationGate(lambda: getattr(self.backend, "max_parallel", 1))
        self._identity: dict | None = None  # the backend's identity as loaded (cache key); None: do not cache
        self._state = UNLOADED
        self._error: str | None = None
        self._retry_after: float | None = None  # set after a failed load: no new load before this clock value
        self._epoch = 0  # bumped by every load and unload; a load whose epoch moved on is stale
        self._load = LoadReport(lambda: self.clock())  # the latest load's progress, elapsed time and ETA
        self._active = 0  # requests between arrival and the end of their generation
        self._last_used: float | None = None
        self._timer: threading.Timer | None = None
        self._unload_at: float | None = None
        self._closed = False
        # Backend facts (an HTTP round trip for remote engines) are fetched in the background: a hung engine
        # never stalls a status call. A state change invalidates them; fresh ones can correct the state.
        self._facts = EngineFacts(self.backend.status, on_refresh=self._reconcile)

    # ------------------------------------------------------------ state
    @property
    def state(self) -> str:
        return self._state

    def _set_state(self, state: str, error: str | None = None) -> None:
        """Caller holds self._cond."""
        self._state, self._error = state, error
        self._facts.invalidate()
        self._cond.notify_all()
        callbacks = list(self.on_state_change)
        if callbacks:
            threading.Thread(target=self._notify, args=(callbacks, state, error), daemon=True).start()

    @staticmethod
    def _notify(callbacks, state, error) -> None:
        for callback in callbacks:
            try:
                callback(state, {"error": error})
            except Exception:  # noqa: BLE001 - an observer must not break the manager
                log.exception("on_state_change callback failed")

    # ------------------------------------------------------------ loading
    def start_load(self) -> bool:
        """Start a background load unless one is running, the model is ready, or a failure is cooling down.
        Returns True when this call started a load."""
        with self._cond:
            return self._start_load_locked()

    def _start_load_locked(self) -> bool:
        if self._closed:
            raise BackendError("the model manager is shut down", code="model_unavailable")
        if self._state in (LOADING, READY):
            return False
        if self._state == FAILED and self._retry_after is not None and self.clock() < self._retry_after:
            return False
        self._epoch += 1
        self.load_count += 1
        self._load.start()
        self._set_state(LOADING)
        self._identity = None
        epoch = self._epoch
        threading.Thread(target=self._run_load, args=(epoch,), daemon=True, name=f"vlm-load-{epoch}").start()
        if self.load_timeout_s and self.load_timeout_s > 0:
            watchdog = threading.Timer(self.load_timeout_s, self._load_timed_out, args=(epoch,))
            watchdog.daemon = True
            watchdog.start()
        return True

    def _run_load(self, epoch: int) -> None:
        def progress(fraction: float, phase: str, eta_s: float | None | object = NO_ETA) -> None:
            with self._cond:
                if self._epoch == epoch and self._state == LOADING:
                    self._load.update(fraction, phase, eta_s)

        identity_before = self._backend_identity()
        try:
            self.backend.load(progress)
        except Exception as exc:  # noqa: BLE001 - every failure becomes the state's reason
            reason = exc.message if isinstance(exc, BackendError) else f"{type(exc).__name__}: {exc}"
            with self._cond:
                if self._epoch == epoch and self._state == LOADING:
                    log.warning("model load failed: %s", reason)
                    self._load.finish(ready=False)
                    self._retry_after = self.clock() + self.failure_cooldown_s
                    self._set_state(FAILED, reason)
            return
        with self._cond:
            stale = self._epoch != epoch or self._state != LOADING
            # a newer load already replaced this one's worker in the backend: leave that one alone
            newer_load_running = stale and self._state == LOADING
            if not stale:
                # files rewritten during the load: which version was read is unknown, so nothing is cached
                self._identity = identity_before if identity_before == self._backend_identity() else None
                self._load.finish(ready=True)
                self._retry_after = None
                self._set_state(READY)
                self._arm_keep_alive_locked()
        if stale and not newer_load_running:  # unloaded (or timed out) while loading: do not keep a model nobody owns
            self.backend.unload()

    def _load_timed_out(self, epoch: int) -> None:
        with self._cond:
            if self._epoch != epoch or self._state != LOADING:
                return
            self._epoch += 1
            self._load.finish(ready=False)
            self._retry_after = self.clock() + self.failure_cooldown_s
            self._set_state(FAILED, f"the model did not load within {self.load_timeout_s:g} s")
        self.backend.unload()

    def ensure_ready(self, timeout: float | None = None, cancel: CancelToken | None = None) -> None:
        """Start the load if needed and wait for it. Giving up here (timeout, cancel) does not abort the load."""
        deadline = None if timeout is None else time.monotonic() + timeout
        forget = cancel.on_cancel(self._wake) if cancel is not None else None
        try:
            self._wait_ready_locked(deadline, cancel)
        finally:
            if forget is not None:
                forget()

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _wait_ready_locked(self, deadline: float | None, cancel: CancelToken | None) -> None:
        with self._cond:
            self._start_load_locked()
            while self._state == LOADING:
                if cancel is not None and cancel.is_set():
                    raise GenerationCancelled("cancelled while the model was loading")
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    fraction, phase = self._load.fraction, self._load.phase
                    raise BackendError(f"the model is still loading ({phase or 'starting'}, {fraction:.0%})",
                                       code="model_loading_timeout", status=503)
                self._cond.wait(left)
            if self._state == READY:
                return
            if self._state == FAILED:
                raise BackendError(self._error or "the model failed to load", code="model_failed", status=503)
            raise BackendError("the model was unloaded while loading", code="model_unavailable", status=503)

    # ------------------------------------------------------------ generation
    def generate(self, request: GenerateRequest, on_token: TokenCallback | None = None) -> GenerateResult:
        with self._cond:
            self._active += 1
            self._cancel_keep_alive_locked()
        try:
            while True:
                if request.cancel is not None and request.cancel.is_set():
                    raise GenerationCancelled()
                self.ensure_ready(timeout=self.load_timeout_s if self.load_timeout_s > 0 else None,
                                  cancel=request.cancel)
                with self._gate.shared():
                    with self._cond:
                        if self._state != READY:
                            continue  # unloaded between ensure_ready and the gate: load again
                    if not self.backend.is_alive():
                        self._mark_lost("the model worker is no longer running")
                        continue
                    return self._generate_locked(request, on_token)
        finally:
            with self._cond:
                self._active -= 1
                self._last_used = self.clock()
                if self._state == READY:
                    self._arm_keep_alive_locked()

    def _generate_locked(self, request: GenerateRequest, on_token: TokenCallback | None) -> GenerateResult:
        try:
            return self.backend.generate(request, on_token)
        except BackendError as exc:
            if not self.backend.is_alive():
                self._mark_lost(exc.message)
            raise

    def _mark_lost(self, reason: str) -> None:
        """The loaded model is gone (crash, kill): failed now, but the next request reloads at once."""
        with self._cond:
            if self._state == READY:
                log.warning("model lost: %s", reason)
                self._retry_after = None
                self._set_state(FAILED, reason)
        self.backend.unload()

    # ------------------------------------------------------------ adapters
    @property
    def supports_adapters(self) -> bool:
        return callable(getattr(self.backend, "switch_adapter", None))

    def switch_adapter(self, adapter_path) -> dict:
        """Switch the LoRA adapter without reloading the base: at once when the model is ready (after the
        generation in flight), otherwise remembered for the next load (a load in progress is waited for first).
        On failure the previous adapter stays active."""
        if not self.supports_adapters:
            raise BackendError(f"the {self.backend.name} backend serves a fixed model; switching adapters needs "
                               "the fine-tuned backend (VLM_BACKEND=finetuned)", code="adapters_unsupported",
                               status=409)
        deadline = time.monotonic() + self.load_timeout_s if self.load_timeout_s > 0 else None
        while True:
            with self._cond:
                while self._state == LOADING:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise BackendError("the model is still loading; try switching again when it is ready",
                                           code="model_loading_timeout", status=503)
                    self._cond.wait(left)
            with self._gate.exclusive():
                with self._cond:
                    if self._state == LOADING:
                        continue  # a load started meanwhile: wait for it, then switch
                    if self._state != READY:
                        # Under the lock a load cannot start in between: the next load uses this adapter.
                        info = self.backend.switch_adapter(adapter_path, live=False)
                        self._retry_after = None  # a new adapter is worth a load at once, even after a failure
                        self._facts.invalidate()
                        return info
                identity = self._backend_identity(adapter_path)
                try:
                    info = self.backend.switch_adapter(adapter_path)
                except BackendError as exc:
                    if not self.backend.is_alive():
                        self._mark_lost(exc.message)
                    raise
                with self._cond:
                    self._identity = identity if identity == self._backend_identity() else None
                    self._facts.invalidate()
                    if self._state == READY and self._active == 0:
                        self._arm_keep_alive_locked()
                return info

    # ------------------------------------------------------------ keep-alive and unloading
    def _cancel_keep_alive_locked(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._unload_at = None, None

    def _arm_keep_alive_locked(self) -> None:
        self._cancel_keep_alive_locked()
        if self.keep_alive_s is None or self.keep_alive_s < 0 or self._active > 0:
            return
        self._unload_at = self.clock() + self.keep_alive_s
        timer = threading.Timer(self.keep_alive_s, self._keep_alive_expired)
        timer.daemon = True
        self._timer = timer
        timer.start()

    def _keep_alive_expired(self) -> None:
        with self._gate.exclusive():
            with self._cond:
                if self._timer is None or threading.current_thread() is not self._timer:
                    return  # re-armed or cancelled meanwhile
                if self._active > 0 or self._state != READY:
                    return
                self._timer, self._unload_at = None, None
                self._epoch += 1
            log.info("keep-alive of %s s expired: unloading the model", self.keep_alive_s)
            self.backend.unload()
            with self._cond:  # only now: "unloaded" means the memory is back
                self._set_state(UNLOADED)
                rewarm = self.rewarm_after_idle and not self._closed and self._state == UNLOADED
            if rewarm and callable(getattr(self.backend, "prewarm", None)):
                try:
                    self.backend.prewarm()
                except Exception:  # noqa: BLE001 - an optimisation: the next load imports by itself then
                    log.exception("VLM pre-warm after the keep-alive unload failed")

    def unload(self) -> None:
        """Unload now (also abandons a load in progress). A generation in flight finishes first."""
        with self._cond:
            self._cancel_keep_alive_locked()
            self._epoch += 1
            loading = self._state == LOADING
            if loading:  # the load thread sees the new epoch and drops what it loaded
                self._set_state(UNLOADED)
        if loading:
            self.backend.unload()
            return
        with self._gate.exclusive():
            with self._cond:
                self._cancel_keep_alive_locked()
            self.backend.unload()
            with self._cond:
                if self._state != LOADING:  # a load started meanwhile owns the state now
                    self._set_state(UNLOADED)

    def shutdown(self) -> None:
        self.backend.cancel()
        self.unload()
        with self._cond:
            self._closed = True

    # ------------------------------------------------------------ identity (response cache)
    def _backend_identity(self, adapter_path=None) -> dict | None:
        try:
            identity = dict(self.backend.identity())
        except Exception:  # noqa: BLE001 - an identity we cannot read means "do not cache"
            log.exception("backend identity failed")
            return None
        if adapter_path is not None:  # what the identity will be once this adapter is active
            from .cache import content_fingerprint

            identity.update(adapter=str(adapter_path), adapter_content=content_fingerprint(adapter_path))
        return identity

    def cache_identity(self) -> dict | None:
        """What answers may be cached under: the identity as loaded when ready; the one a load would read now
        when unloaded (a lookup only: `ResponseCache` users store after generating, by then loaded); None while
        failed or loading, so nothing stale is served and nothing is stored."""
        with self._cond:
            state, loaded = self._state, self._identity
        if state == READY:
            return loaded
        if state == UNLOADED:
            return self._backend_identity()
        return None

    # ------------------------------------------------------------ status
    def _reconcile(self, facts: dict) -> None:
        """Remote engines report whether they hold the model: believe them over our own idea of "ready"."""
        if "reachable" not in facts:
            return  # the fine-tuned worker: is_alive() already tells a crash
        with self._cond:
            if self._state != READY or self._active > 0:
                return  # a generation in flight finds out by itself (and Ollama reloads on a chat)
            if facts.get("reachable") and facts.get("loaded"):
                return
            if facts.get("reachable"):  # evicted (Ollama's keep-alive, memory pressure): the next ask loads again
                log.info("the engine no longer holds %s: marking it unloaded", facts.get("model"))
                self._cancel_keep_alive_locked()
                self._epoch += 1
                self._set_state(UNLOADED)
                return
            # not backend.unload(): asking a hung engine to unload would hold this thread for its read timeout
            reason = f"the engine is not reachable: {facts.get('error') or 'no answer'}"
            log.warning("model lost: %s", reason)
            self._cancel_keep_alive_locked()
            self._retry_after = None  # the next request tries a load at once
            self._set_state(FAILED, reason)

    def status(self) -> dict:
        backend_status, facts_age = self._facts.get()
        with self._cond:
            unload_in = None
            if self._unload_at is not None and self._state == READY:
                unload_in = max(0.0, self._unload_at - self.clock())
            return {
                "backend": self.backend.name,
                "state": self._state,
                "progress": self._load.status(self._state),
                **backend_facts(backend_status, facts_age),
                "error": self._error,
                "keep_alive_s": self.keep_alive_s,
                "unload_in_s": None if unload_in is None else round(unload_in, 2),
                "load_count": self.load_count,
            }

"""The fine-tuned LLaVA-OneVision + LoRA backend. The model lives in a child process (`vlm.worker`), started,
spoken to and ended through `vlm.worker_process`; this module is what the commands mean: load, generate, cancel,
switch adapters, status.

This module never imports torch, transformers or peft: the web process stays light, and ending the
worker returns all of the model's memory, CUDA context included.
"""
from __future__ import annotations

import base64
import inspect
import itertools
import json
import logging
import queue
import sys
import time
from pathlib import Path

from .backend import Backend, BackendError, GenerateRequest, GenerateResult, GenerationCancelled, ProgressCallback, \
    TokenCallback
from .cache import content_fingerprint
from .load_progress import ADAPTER, IMPORTING, LoadProgress, LoadTimings
from .worker_process import EXIT as _EXIT, WorkerProcess, exit_message

log = logging.getLogger(__name__)

CANCEL_GRACE_S = 5.0
SWITCH_TIMEOUT_S = 300.0
_ADAPTER_ERROR_STATUS = {"not_found": 422, "bad_adapter": 422, "base_mismatch": 422}
SHUTDOWN_GRACE_S = 5.0
_CANCELLED = "__cancelled__"  # put on the event queue by a request's cancel token, to wake its wait
CANCEL_RESEND_S = 0.2
PROGRESS_TICK_S = 0.25  # how often the bar moves during a phase that reports nothing (imports, building)


def _with_eta(progress: ProgressCallback):
    """The manager's callback takes an ETA; a plain (fraction, phase) one (tests, benches) gets it dropped."""
    try:
        params = inspect.signature(progress).parameters
    except (TypeError, ValueError):
        params = {}
    if "eta_s" in params or any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return progress
    return lambda fraction, phase, eta_s=None: progress(fraction, phase)


def _base_named_by(adapter_path: Path | None) -> str | None:
    """The base model an adapter's adapter_config.json names (what the worker loads when VLM_BASE_MODEL is unset)."""
    try:
        return json.loads((adapter_path / "adapter_config.json").read_text()).get("base_model_name_or_path")
    except (TypeError, OSError, ValueError, AttributeError):
        return None


class FinetunedBackend(Backend):
    name = "finetuned"

    def __init__(self, adapter_path: Path | None, base_model: str | None = None, *, dtype: str = "auto",
                 device_map: str = "auto", python: str = sys.executable, env: dict | None = None,
                 default_base_model: str | None = None, cancel_grace_s: float = CANCEL_GRACE_S,
                 load_timings_path: Path | None = None):
        self.adapter_path = Path(adapter_path) if adapter_path else None
        self.base_model = base_model
        self.dtype = dtype
        self.device_map = device_map
        self.python = python
        self.env = dict(env or {})
        self.default_base_model = default_base_model
        self.cancel_grace_s = cancel_grace_s
        self._worker: WorkerProcess | None = None
        self._info: dict = {}
        self._ready = False
        self._ids = itertools.count(1)
        self._current_id: str | None = None
        self._last_gpu_bytes = 0
        self._prewarm: str | None = None  # "importing" / "done" for a worker started by prewarm(), until it loads
        self.prewarm_info: dict = {}
        self.load_timings = LoadTimings(load_timings_path)  # per model: the last load's phase durations (ETA)

    # ------------------------------------------------------------ the worker process
    def _worker_running(self) -> bool:
        worker = self._worker
        return worker is not None and worker.running()

    def _send(self, **msg) -> None:
        worker = self._worker
        if worker is None:
            raise BackendError(exit_message(None), code="model_crashed")
        worker.send(**msg)

    def _kill(self) -> None:
        worker, self._worker = self._worker, None
        self._ready = False
        self._prewarm = None
        if worker is not None:
            worker.kill()

    # ------------------------------------------------------------ Backend
    # ------------------------------------------------------------ pre-warm (VLM_PREWARM)
    def prewarm(self) -> None:
        """Start the worker and import torch/transformers/peft in it now, without weights; for a local base
        folder it also dry-runs the build and makes the processor (vlm.worker_prewarm): the next load skips all of
        that (most of a small model's load). A load started meanwhile waits for it in the worker."""
        if self._worker_running():
            return
        self._worker = worker = WorkerProcess(self.python, self.env)
        self._prewarm = "importing"
        worker.send(op="prewarm", base=self.base_model, adapter=str(self.adapter_path) if self.adapter_path else None,
                    dtype=self.dtype, default_base=self.default_base_model)
        log.info("pre-warming model worker pid %s (imports and a dry build on the meta device, no weights)", worker.pid)

    def wait_prewarmed(self, timeout: float | None = None) -> bool:
        """True once a pre-warmed worker has its libraries imported (benches and tests wait for it)."""
        worker = self._worker
        return self._prewarm is not None and worker is not None and worker.prewarmed.wait(timeout)

    def _load_timings_key(self) -> str:
        base = self.base_model or _base_named_by(self.adapter_path) or self.default_base_model
        return f"{base}|{self.adapter_path}|{self.dtype}"

    def load(self, progress: ProgressCallback) -> None:
        if self._ready and self.is_alive():
            return
        prewarm = self._prewarm if self._worker_running() else None
        if prewarm is None:
            self._kill()
            self._worker = WorkerProcess(self.python, self.env)
        worker = self._worker
        events = worker.events
        key = self._load_timings_key()
        bar = LoadProgress(_with_eta(progress), last=self.load_timings.get(key),
                           skip=set() if self.adapter_path else {ADAPTER})
        if prewarm is not None:
            bar.enter(IMPORTING)  # a pre-warm still importing, or done: the worker's next report says
        bar.tick()
        try:
            self._send(op="load", base=self.base_model,
                       adapter=str(self.adapter_path) if self.adapter_path else None, dtype=self.dtype,
                       device_map=self.device_map, default_base=self.default_base_model)
            while True:
                try:
                    event = events.get(timeout=PROGRESS_TICK_S)
                except queue.Empty:
                    bar.tick()  # phases without progress of their own move with the time spent
                    continue
                kind = event.get("event")
                if kind == "progress":
                    bar.enter(str(event.get("phase") or ""), float(event.get("fraction") or 0.0))
                elif kind == "prewarmed":
                    self._prewarm = "done"
                    self.prewarm_info = event.get("info") or {}
                elif kind == "ready":
                    self._info = event.get("info") or {}
                    self._ready = True
                    durations = bar.finish()
                    if prewarm is not None:  # its import was paid before the load: not this model's import time
                        durations.pop(IMPORTING, None)
                    self._info["load_phases_s"] = {k: round(v, 4) for k, v in durations.items()}
                    self._info["prewarmed"] = prewarm is not None
                    self.load_timings.put(key, durations)
                    log.info("model ready in worker pid %s: %s", worker.pid, self._info)
                    return
                elif kind == "error":
                    raise BackendError(event.get("message") or "the model failed to load",
                                       code=event.get("code") or "load_failed")
                elif kind == _EXIT:
                    tail = worker.last_stderr()
                    raise BackendError(f"the model worker exited while loading (exit code {event['code']})"
                                       + (f": {tail}" if tail else ""), code="model_crashed")
        except BaseException:
            if self._worker is worker:
                self._kill()
            raise

    def generate(self, request: GenerateRequest, on_token: TokenCallback | None = None) -> GenerateResult:
        worker = self._worker
        if not self._ready or worker is None:
            raise BackendError("the model is not loaded", code="model_unavailable")
        req_id = f"r{next(self._ids)}"
        events = worker.events
        self._current_id = req_id
        started = time.monotonic()
        deadline = started + request.timeout_s if request.timeout_s else None
        token = request.cancel
        # The cancel wakes this loop at once; the loop tells the worker (its stopping criteria end generate()).
        forget = token.on_cancel(lambda: events.put({"event": _CANCELLED, "id": req_id})) if token else None
        cancel_sent_at = None
        cancel_started = None
        try:
            self._send(op="generate", id=req_id, system=request.system, prompt=request.prompt,
                       images=[base64.b64encode(b).decode("ascii") for b in request.images],
                       max_new_tokens=request.max_new_tokens, temperature=request.temperature, seed=request.seed,
                       json_schema=request.json_schema)
            while True:
                now = time.monotonic()
                wait = None if deadline is None else deadline - now
                if token is not None and token.is_set():
                    cancel_started = cancel_started or now
                    if cancel_sent_at is None or now - cancel_sent_at >= CANCEL_RESEND_S:
                        # Sent again until the worker answers: a cancel that arrives before the worker has taken
                        # up this request (still on its queue) does not match its current id and is dropped.
                        self._send_quietly(op="cancel", id=req_id)
                        cancel_sent_at = now
                    if now - cancel_started > self.cancel_grace_s:
                        log.warning("model worker did not stop within %.1f s of a cancel; killing it",
                                    self.cancel_grace_s)
                        self._kill()
                        raise GenerationCancelled("generation was cancelled (the worker was restarted)")
                    wait = CANCEL_RESEND_S
                elif wait is not None and wait <= 0:
                    self._cancel_after_timeout(req_id, request.timeout_s, events)
                try:
                    event = events.get(timeout=wait)
                except queue.Empty:
                    continue  # the deadline and cancel checks above handle it
                result = self._handle(event, req_id, on_token)
                if result is not None:
                    result.timings.setdefault("total", round(time.monotonic() - started, 4))
                    return result
        finally:
            if forget is not None:
                forget()
            self._current_id = None

    def _send_quietly(self, **msg) -> None:
        try:
            self._send(**msg)
        except BackendError:  # the worker is gone; its exit event ends the wait
            pass

    def _handle(self, event: dict, req_id: str, on_token: TokenCallback | None) -> GenerateResult | None:
        kind = event.get("event")
        if kind == _EXIT:
            self._ready = False
            raise BackendError(f"the model worker exited unexpectedly (exit code {event['code']})",
                               code="model_crashed")
        if event.get("id") != req_id:
            return None  # a late event of an earlier, abandoned request
        if kind == "token":
            if on_token is not None:
                on_token(event.get("text") or "")
        elif kind == "done":
            return GenerateResult(text=event.get("text") or "", model=self._model_label(),
                                  prompt_tokens=event.get("prompt_tokens"),
                                  completion_tokens=event.get("completion_tokens"),
                                  timings=dict(event.get("timings") or {}),
                                  finish_reason=event.get("finish_reason"))
        elif kind == "error":
            if event.get("code") == "cancelled":
                raise GenerationCancelled()
            raise BackendError(event.get("message") or "generation failed", code=event.get("code") or "generate_failed")
        return None

    def _cancel_after_timeout(self, req_id: str, timeout_s: float, events: queue.Queue) -> None:
        """Ask the worker to stop; a worker that does not answer within the grace period is killed."""
        message = f"the model did not answer within {timeout_s:g} s"
        try:
            self._send(op="cancel", id=req_id)
        except BackendError:
            pass
        grace_end = time.monotonic() + self.cancel_grace_s
        while (left := grace_end - time.monotonic()) > 0:
            try:
                event = events.get(timeout=left)
            except queue.Empty:
                break
            if event.get("event") == _EXIT:
                self._ready = False
                break
            if event.get("id") == req_id and event.get("event") in {"done", "error"}:
                raise BackendError(message, code="model_timeout", status=504)
        log.warning("model worker did not stop within %.1f s of a cancel; killing it", self.cancel_grace_s)
        self._kill()
        raise BackendError(message + " (the worker was restarted)", code="model_timeout", status=504)

    def switch_adapter(self, adapter_path: Path, *, live: bool = True, timeout_s: float = SWITCH_TIMEOUT_S) -> dict:
        """Make adapter_path the active LoRA adapter without reloading the base model. When no model is loaded
        (or live=False) it is only remembered for the next load. The caller serialises this with generate
        (ModelManager does). On failure the previous adapter stays active and a BackendError says why."""
        path = Path(adapter_path)
        worker = self._worker
        if not live or worker is None or not self.is_alive():
            self.adapter_path = path
            return {"adapter": str(path), "applied": "next_load"}
        req_id = f"a{next(self._ids)}"
        events = worker.events
        deadline = time.monotonic() + timeout_s
        worker.send(op="set_adapter", id=req_id, adapter=str(path))
        while True:
            try:
                event = events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self._kill()  # the worker's adapter state is unknown now: a fresh load is the safe way on
                raise BackendError(f"switching to adapter {path} took over {timeout_s:g} s; the model was unloaded",
                                   code="model_timeout", status=504) from None
            kind = event.get("event")
            if kind == _EXIT:
                self._ready = False
                raise BackendError(f"the model worker exited while switching adapters (exit code {event['code']})",
                                   code="model_crashed")
            if event.get("id") != req_id:
                continue  # a late event of an earlier, abandoned request
            if kind == "adapter_set":
                self.adapter_path = path
                self._info["adapter"] = str(path)
                log.info("worker pid %s switched to adapter %s", worker.pid, path)
                return {**(event.get("info") or {}), "applied": "now"}
            if kind == "error":
                code = event.get("code") or "bad_adapter"
                raise BackendError(event.get("message") or "the adapter could not be loaded", code=code,
                                   status=_ADAPTER_ERROR_STATUS.get(code, 503))

    def identity(self) -> dict:
        """The base and the adapter's content (size+mtime of its files): a retrained adapter is a new identity."""
        base = self.base_model or _base_named_by(self.adapter_path) or self.default_base_model
        return {"backend": self.name, "base": base, "base_content": content_fingerprint(base),
                "adapter": str(self.adapter_path) if self.adapter_path else None,
                "adapter_content": content_fingerprint(self.adapter_path)}

    def cancel(self) -> None:
        req_id = self._current_id
        if req_id is not None:
            try:
                self._send(op="cancel", id=req_id)
            except BackendError:
                pass

    def unload(self) -> None:
        """End the worker: shutdown, then kill after a grace period. Safe while a load is in progress."""
        worker = self._worker
        self._ready = False
        if worker is None:
            return
        worker.shutdown(SHUTDOWN_GRACE_S)
        if self._worker is worker:
            self._kill()
        else:  # a new worker took its place meanwhile: end only this one
            worker.kill()
        log.info("model worker pid %s ended", worker.pid)

    def is_alive(self) -> bool:
        return self._ready and self._worker_running()

    def _model_label(self) -> str:
        return str(self._info.get("model") or self.base_model or "")

    def status(self) -> dict:
        worker = self._worker
        alive = worker is not None and worker.running()
        rss = gpu = None
        if alive:
            rss = worker.rss_bytes()
            gpu = self._ask_gpu_bytes(worker)
        return {
            "model": self._info.get("model") or self.base_model,
            "adapter": str(self.adapter_path) if self.adapter_path else None,
            "pid": worker.pid if alive else None,
            "rss_bytes": rss,
            "gpu_bytes": gpu,
            "prewarmed": self._prewarm is not None or bool(self._info.get("prewarmed")),
            "dtype": self._info.get("dtype") if self._ready else None,
            "dtype_reason": self._info.get("dtype_reason") if self._ready else None,
            "device": self._info.get("device") if self._ready else None,
        }

    def _ask_gpu_bytes(self, worker: WorkerProcess) -> int:
        if not self._ready:
            return self._last_gpu_bytes
        reply = worker.ask_status()
        if reply is not None:
            self._last_gpu_bytes = int(reply.get("gpu_bytes") or 0)
        return self._last_gpu_bytes

    @property
    def info(self) -> dict:
        """What the worker reported at ready: model, adapter, dtype, device, param_count, load timings."""
        return dict(self._info)

    @property
    def pid(self) -> int | None:
        worker = self._worker
        return worker.pid if worker is not None and worker.running() else None

"""``POST /api/optimise``: improve the parameters toward the model's target, then apply the best state as ONE undoable
history entry; ``DELETE /api/optimise``: cancel the running one. Routes on ``targets_api.bp``.

A run is: the measured comparison of the current state; with ``use_vlm``, one VLM proposal (web/optimise_vlm.py),
kept only when it raises the IoU; then the numeric fit (``cad.fit``) from the current state and from the proposal,
keeping the better. One run per model at a time; its cancel token is set by DELETE, by a streaming client that goes
away and by server shutdown, and reaches the VLM's engine too (web/optimise_vlm.py passes it with the request).
A cancelled run still applies its best state so far when that beats the start.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from flask import Response, current_app, jsonify, stream_with_context

from cad.errors import BuildError, EmptyGeometry
from cad.fit import DEFAULT_SCHEDULE, MAX_EVALUATIONS_LIMIT, fit
from cad.session import VersionConflict
from cad.worker import BuildTimeout
from cad.worker_pool import Slots
from vlm.backend import CancelToken

from .cad_api import entry_json, state_json
from .errors import ApiError, build_timeout_message
from .contract import DEFAULT_OPTIMISE_STEPS, MAX_OPTIMISE_STEPS, OptimiseRequest, validate  # noqa: F401
from .optimise_vlm import ask_vlm
from .parse import json_body, model_name
from .services import services
from .sse import relay
from .targets_api import _state, _target_path, bp

log = logging.getLogger(__name__)

# The request's limits are in web/contract/requests.py; the largest budget must fit the fit's own limit.
assert MAX_OPTIMISE_STEPS <= MAX_EVALUATIONS_LIMIT
BEST_EVENT_EVERY_S = 1.0  # "best" events: the page rebuilds a ghost of each, so not one per improvement


def _prepare() -> dict:
    req = validate(OptimiseRequest, json_body(required=False))
    svc = services()
    model = svc.registry.get(model_name(req))
    max_steps, use_vlm, stream, version = req.max_steps, req.use_vlm, req.stream, req.version
    session = svc.sessions.get(model.name)
    snapshot = session.snapshot()
    if version is not None and version != snapshot["version"]:
        raise VersionConflict(f"the design changed since you loaded it (your version {version}, current "
                              f"{snapshot['version']}); reload to see the latest state",
                              current_version=snapshot["version"])
    # The search stays inside the session's ranges (narrowed by the user where they were), so its answer applies.
    return {"model": model, "schema": session.schema, "path": _target_path(model.name), "max_steps": max_steps,
            "snapshot": snapshot,
            "use_vlm": use_vlm, "stream": stream, "cancel": CancelToken()}


def _claim(ctx: dict) -> None:
    state, name = _state(), ctx["model"].name
    with state.lock:
        if name in state.running:
            raise ApiError(409, "optimise_running", f"an optimisation of {name!r} is already running; cancel it "
                                                    "with DELETE /api/optimise or wait for it")
        state.running[name] = ctx["cancel"]


def _release(ctx: dict) -> None:
    state = _state()
    with state.lock:
        if state.running.get(ctx["model"].name) is ctx["cancel"]:
            del state.running[ctx["model"].name]


def _stop_if_shutting_down(svc) -> None:
    """After shutdown nothing may build again (it would start a new worker) or change a session."""
    if svc.shut_down:
        raise ApiError(503, "shutting_down", "the server is shutting down; the design is unchanged")


def _search_start(svc, model, path, values: dict) -> tuple[dict, dict, dict]:
    """(comparison of the current state, values the search starts from, their comparison)."""
    try:
        before = svc.builder.compare(model, values, path)
        return before, values, before
    except EmptyGeometry as exc:  # nothing overlaps nothing: IoU 0
        before = {"iou": 0.0, "method": "empty", "empty_geometry": exc.message}
    # Around an empty state every small move is empty too (no slope to follow): search from the script's defaults
    # instead, when they build.
    try:
        defaults = model.schema.defaults()
        return before, defaults, svc.builder.compare(model, defaults, path)
    except BuildTimeout:
        raise
    except BuildError as exc:
        log.info("optimise: the defaults of %s do not build either: %s", model.name, exc)
        return before, values, before


def _run(ctx: dict, progress=None, on_vlm=None, on_best=None) -> dict:
    """The whole run (the caller holds the model's claim). Raises BuildTimeout, BuildError, VersionConflict."""
    svc = services()
    model, path, snapshot, cancel = ctx["model"], ctx["path"], ctx["snapshot"], ctx["cancel"]
    started = time.perf_counter()
    before, search_start, best = _search_start(svc, model, path, snapshot["values"])
    best_values, extra_starts = search_start, []
    _stop_if_shutting_down(svc)
    vlm = {"vlm_used": False, "vlm_proposed": {}, "vlm_iou": None, "vlm_accepted": False, "vlm_summary": None}
    if ctx["use_vlm"] and before["method"] == "empty":
        vlm["vlm_note"] = "the VLM was not asked: the current state has no geometry to compare"
    elif ctx["use_vlm"]:
        vlm, found = ask_vlm(svc, model, path, snapshot["values"], before, cancel)
        if found is not None:
            best_values, best = model.schema.complete({**snapshot["values"], **vlm["vlm_proposed"]}), found
            extra_starts = [best_values]  # the fit starts from the current state and from the proposal
        if on_vlm is not None:
            on_vlm(vlm)

    _stop_if_shutting_down(svc)
    with _Evaluator(svc, model, path) as evaluator:
        if progress is not None:
            progress = _with_eta(progress, ctx["max_steps"])
        result = fit(ctx["schema"], search_start, evaluator.objective, max_evaluations=ctx["max_steps"],
                     schedule=DEFAULT_SCHEDULE, progress=progress, cancel=cancel, extra_starts=extra_starts,
                     submit=evaluator.submit, workers=evaluator.workers, on_best=on_best)
    _stop_if_shutting_down(svc)
    if result.values != best_values:
        # The search scores voxels; the state kept is the one the real comparison (exact where possible) prefers.
        after = svc.builder.compare(model, result.values, path)
        if after["iou"] > best["iou"]:
            best_values, best = result.values, after
    changes = {n: v for n, v in best_values.items() if v != snapshot["values"].get(n)}
    entry = None
    if changes and best["iou"] > before["iou"]:
        how = "VLM proposal + numeric refinement" if vlm["vlm_accepted"] else "numeric refinement"
        entry = svc.sessions.get(model.name).apply(
            changes, source={"kind": "optimise"}, expected_version=snapshot["version"],
            summary=f"optimise toward target ({how}): IoU {before['iou']:.3f} → {best['iou']:.3f}")
    log.info("optimise of %s %s after %d steps: IoU %.4f -> %.4f (%s)", model.name, result.stopped,
             result.evaluations, before["iou"], best["iou"], "applied" if entry else "nothing applied")
    answer = state_json(model.name, entry=entry_json(model.name, entry) if entry else None)
    answer["optimise"] = {
        "iou_before": before["iou"], "iou_after": best["iou"] if entry else before["iou"],
        "method": best["method"], "applied": entry is not None, "steps": result.evaluations,
        "max_steps": ctx["max_steps"], "stopped": result.stopped, "proposed": changes,
        "search_iou_before": result.start_iou, "search_iou_after": result.iou,
        "elapsed_s": round(time.perf_counter() - started, 2), **vlm}
    return answer


def _with_eta(progress, max_steps: int):
    """``progress`` with ``eta_s``: seconds left at the measured time per evaluation (since the fit started, so
    it counts the parallel workers) for the budget left; an upper bound, the fit may converge sooner."""
    started = time.perf_counter()

    def report(step: int, iou: float, stage: int) -> None:
        per_step = (time.perf_counter() - started) / step if step > 0 else None
        progress(step, iou, stage, None if per_step is None else round(per_step * max(max_steps - step, 0), 1))

    return report


class _Evaluator:
    """The fit's objective over the build workers: ``objective`` for one state here, ``submit`` for one on a
    thread of its own, at most ``workers`` (the pool's size) at once; None with one worker.

    Each concurrent job calls the pool with its slot's own affinity key (``WorkerPool.call(affinity=...)``,
    ``cad.worker_pool.Slots``): the pool would otherwise hold a second job of the same script back for the
    worker that ran the first (``cad.worker_pool.AFFINITY_WAIT_S``), which serialises the fit.
    """

    def __init__(self, svc, model, path):
        self.svc, self.model, self.path = svc, model, path
        self.workers = max(len(getattr(svc.builder.worker, "clients", ())), 1)
        self._executor, self._slots = None, Slots(self.workers)
        self.submit = None

    def __enter__(self):
        if self.workers > 1:
            self._executor = ThreadPoolExecutor(max_workers=self.workers,
                                                thread_name_prefix=f"optimise-{self.model.name}")
            self.submit = self._submit
        return self

    def __exit__(self, *exc) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    def _script_key(self, slot: int) -> dict:
        """The pool's affinity key of a slot (slot 0: the script's own, which previews and exports share)."""
        if self.workers == 1:
            return {}  # a single WorkerClient has no affinity to choose
        script = str(self.model.path)
        return {"affinity": script if slot == 0 else f"{script}#optimise-slot-{slot}"}

    def objective(self, values: dict, stage) -> dict | float:
        return self._compare(values, stage, self._script_key(0))

    def _submit(self, values: dict, stage):
        def job():
            with self._slots.take() as slot:
                return self._compare(values, stage, self._script_key(slot))

        return self._executor.submit(job)

    def _compare(self, values: dict, stage, affinity: dict) -> dict | float:
        # The whole answer: least-squares stages read its residuals, the others its iou. (What Builder.compare
        # sends, with the slot's affinity key.) A job that starts after shutdown began (one the fit started ahead,
        # or queued behind it) must not start a new worker: it fails as the run does.
        _stop_if_shutting_down(self.svc)
        builder = self.svc.builder
        try:
            return builder.worker.call("compare", str(self.model.path), self.model.schema.complete(values),
                                       str(self.path), method="mesh", detail=False, **(stage or {}),
                                       timeout_s=builder.timeout_s, script=str(self.model.path), **affinity)
        except BuildTimeout:
            raise
        except BuildError as exc:  # this combination does not build: treat it as no overlap, search on
            log.info("optimise: %s does not build at %s: %s", self.model.name, values, exc)
            return 0.0


@bp.post("/optimise")
def post_optimise():
    ctx = _prepare()
    _claim(ctx)
    if not ctx["stream"]:
        try:
            return jsonify(_run(ctx))
        finally:
            _release(ctx)
    try:
        events = _start(ctx)
    except BaseException:
        _release(ctx)
        raise
    return Response(stream_with_context(_relay(events, ctx["cancel"])), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@bp.delete("/optimise")
def cancel_optimise():
    name = services().registry.get(model_name()).name
    state = _state()
    with state.lock:
        cancel = state.running.get(name)
    if cancel is None:
        raise ApiError(404, "not_running", f"no optimisation of {name!r} is running")
    cancel.set()
    return jsonify({"model": name, "cancelling": True}), 202


def _error_event(exc: BaseException) -> dict:
    if isinstance(exc, (ApiError, VersionConflict)):
        return {"error": exc.code, "message": exc.message}
    if isinstance(exc, BuildTimeout):
        return {"error": "cad_build_timeout", "message": build_timeout_message(exc)}
    if isinstance(exc, BuildError):
        return {"error": "cad_build_failed", "message": str(exc), "line": exc.line}
    log.error("optimise failed", exc_info=exc)  # the client gets a clean error event, the log the traceback
    return {"error": "internal_error", "message": "optimise failed; see the server log"}


def _start(ctx: dict) -> queue.Queue:
    """Start the run in a thread (it finishes even if nobody reads the stream); its events go to the queue:
    ``vlm`` (use_vlm only), ``progress`` {step, iou, stage, stages, max_steps, eta_s}, ``best`` {values, changes,
    iou} (the best state so far, at most every BEST_EVENT_EVERY_S), then ``done`` or ``error``."""
    events: queue.Queue = queue.Queue()
    app = current_app._get_current_object()
    stages = len(DEFAULT_SCHEDULE)

    def progress(step: int, iou: float, stage: int, eta_s: float | None = None) -> None:
        events.put(("progress", {"step": step, "iou": iou, "stage": stage, "stages": stages,
                                 "max_steps": ctx["max_steps"], "eta_s": eta_s}))

    last_best = [0.0]

    def on_best(values: dict, iou: float) -> None:
        now = time.perf_counter()
        if now - last_best[0] < BEST_EVENT_EVERY_S:
            return
        last_best[0] = now
        start = ctx["snapshot"]["values"]
        events.put(("best", {"values": values, "iou": iou,
                             "changes": {n: v for n, v in values.items() if v != start.get(n)}}))

    def on_vlm(report: dict) -> None:
        events.put(("vlm", {k[4:]: v for k, v in report.items()}))  # vlm_iou -> iou, ...

    def work():
        with app.app_context():
            try:
                events.put(("done", _run(ctx, progress, on_vlm, on_best)))
            except Exception as exc:  # noqa: BLE001 - every failure becomes an error event
                events.put(("error", _error_event(exc)))
            finally:
                _release(ctx)

    threading.Thread(target=work, name=f"optimise-{ctx['model'].name}", daemon=True).start()
    return events


def _relay(events: queue.Queue, cancel: CancelToken):
    finished = False
    try:
        yield from relay(events, 1.0)
        finished = True
    finally:
        if not finished:  # the client went away: stop the run (its best state so far is still applied)
            cancel.set()

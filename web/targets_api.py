"""Target shapes and optimisation toward them: upload/inspect/delete a STEP or STL target per model, its GLB ghost,
and ``POST /api/optimise`` (numeric refinement of the parameters on IoU, applied as one undoable history entry).

Geometry runs in the build worker (``Builder.compare/target_info/target_glb``); this module parses, validates,
caches small answers and serialises.
"""
from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import OrderedDict

from flask import Blueprint, Response, current_app, jsonify, request, stream_with_context

from cad.errors import BuildError
from cad.optimise import MAX_STEPS_LIMIT, VOXEL_STAGES, optimise
from cad.session import VersionConflict
from cad.target import TargetError, TargetStore
from cad.worker import BuildTimeout

from .cad_api import _file_response, entry_json, state_json
from .errors import ApiError
from .parse import expected_version, json_body, model_name
from .services import services

log = logging.getLogger(__name__)
bp = Blueprint("targets_api", __name__, url_prefix="/api")

MAX_TARGET_BYTES = 20 * 1024 * 1024
DEFAULT_OPTIMISE_STEPS = 300
MAX_OPTIMISE_STEPS = 2000
assert MAX_OPTIMISE_STEPS <= MAX_STEPS_LIMIT


class TargetsState:
    """Per-app target store, small caches of comparisons and ghost GLBs, and one optimisation per model at a time."""

    def __init__(self, data_dir):
        self.store = TargetStore(data_dir)
        self.lock = threading.Lock()
        self.comparisons: OrderedDict[tuple, dict] = OrderedDict()
        self.ghosts: OrderedDict[tuple, bytes] = OrderedDict()
        self.running: set[str] = set()

    def remember(self, cache: OrderedDict, key, value, limit: int = 16):
        with self.lock:
            cache[key] = value
            cache.move_to_end(key)
            while len(cache) > limit:
                cache.popitem(last=False)
        return value


def _state() -> TargetsState:
    extensions = current_app.extensions
    if "optim_targets" not in extensions:
        extensions.setdefault("optim_targets", TargetsState(services().config.data_dir))
    return extensions["optim_targets"]


@bp.errorhandler(TargetError)
def _target_error(e: TargetError):
    return jsonify({"error": "invalid_target", "message": str(e)}), 422


def _stamp(path) -> tuple:
    stat = path.stat()
    return (str(path), stat.st_mtime_ns, stat.st_size)


def _target_path(name: str):
    path = _state().store.path(name)
    if path is None:
        raise ApiError(404, "no_target", f"model {name!r} has no target; upload one with PUT /api/target")
    return path


def _upload_bytes() -> bytes:
    request.max_content_length = MAX_TARGET_BYTES  # targets may be larger than other request bodies
    if request.mimetype == "multipart/form-data":
        upload = request.files.get("target")
        if upload is None:
            raise ApiError(400, "missing_target", "send the file in a multipart field named 'target'")
        data = upload.read(MAX_TARGET_BYTES + 1)
    else:
        data = request.get_data(cache=False)
    if len(data) > MAX_TARGET_BYTES:
        raise ApiError(413, "too_large", f"the target file is larger than the {MAX_TARGET_BYTES // 2**20} MB limit")
    if not data.strip():
        raise ApiError(400, "missing_target", "the request has no target file (STEP or STL) in its body")
    return data


def _comparison(name: str, path) -> dict:
    svc = services()
    model = svc.registry.get(name)
    values = svc.sessions.get(name).snapshot()["values"]
    key = (svc.builder.state_key(model, values), *_stamp(path))
    state = _state()
    with state.lock:
        cached = state.comparisons.get(key)
    if cached is not None:
        return cached
    return state.remember(state.comparisons, key, svc.builder.compare(model, values, path))


def _target_json(name: str, path, info: dict | None = None) -> dict:
    svc = services()
    info = info or svc.builder.target_info(path)
    answer = {"model": name, **info, "size_bytes": path.stat().st_size, "modified": path.stat().st_mtime,
              "version": svc.sessions.get(name).snapshot()["version"]}
    try:
        answer["comparison"] = _comparison(name, path)
    except BuildError as exc:  # the target is fine; the model's current state does not build
        answer["comparison"], answer["comparison_error"] = None, str(exc)
    return answer


@bp.put("/target")
def put_target():
    name = model_name()
    model = services().registry.get(name)  # unknown model: 404 before the body is read
    data = _upload_bytes()
    path, info = _state().store.save(model.name, data, check=services().builder.target_info)
    return jsonify(_target_json(model.name, path, info)), 201


@bp.get("/target")
def get_target():
    name = services().registry.get(model_name()).name
    return jsonify(_target_json(name, _target_path(name)))


@bp.get("/target.glb")
def target_glb():
    name = services().registry.get(model_name()).name
    path = _target_path(name)
    state, key = _state(), _stamp(path)
    with state.lock:
        data = state.ghosts.get(key)
    if data is None:
        data = state.remember(state.ghosts, key, services().builder.target_glb(path), limit=4)
    return _file_response(data, "model/gltf-binary")


@bp.delete("/target")
def delete_target():
    name = services().registry.get(model_name()).name
    if not _state().store.delete(name):
        raise ApiError(404, "no_target", f"model {name!r} has no target")
    return jsonify({"model": name, "deleted": True})


# --- optimise ------------------------------------------------------------------------------------------------------

def _flag(body: dict, key: str) -> bool:
    value = body.get(key, False)
    if not isinstance(value, bool):
        raise ApiError(400, f"bad_{key}", f"{key} must be true or false")
    return value


def _prepare_optimise() -> dict:
    body = json_body(required=False)
    name = model_name(body)
    svc = services()
    model = svc.registry.get(name)
    max_steps = body.get("max_steps", DEFAULT_OPTIMISE_STEPS)
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or not 1 <= max_steps <= MAX_OPTIMISE_STEPS:
        raise ApiError(400, "bad_max_steps", f"max_steps must be a whole number between 1 and {MAX_OPTIMISE_STEPS}")
    version = expected_version(body)
    session = svc.sessions.get(model.name)
    snapshot = session.snapshot()
    if version is not None and version != snapshot["version"]:
        raise VersionConflict(f"the design changed since you loaded it (your version {version}, current "
                              f"{snapshot['version']}); reload to see the latest state",
                              current_version=snapshot["version"])
    return {"model": model, "path": _target_path(model.name), "max_steps": max_steps, "snapshot": snapshot,
            "use_vlm": _flag(body, "use_vlm"), "stream": _flag(body, "stream")}


def _run_optimise(ctx: dict, progress=None) -> dict:
    svc, state = services(), _state()
    model, path, snapshot = ctx["model"], ctx["path"], ctx["snapshot"]
    with state.lock:
        if model.name in state.running:
            raise ApiError(409, "optimise_running", f"an optimisation of {model.name!r} is already running")
        state.running.add(model.name)
    try:
        started = time.perf_counter()
        before = svc.builder.compare(model, snapshot["values"], path)

        def objective(values: dict, stage: dict) -> float:
            try:
                return svc.builder.compare(model, values, path, method="mesh", detail=False, **stage)["iou"]
            except BuildTimeout:
                raise
            except BuildError as exc:  # this combination does not build: treat it as no overlap, search on
                log.info("optimise: %s does not build at %s: %s", model.name, values, exc)
                return 0.0

        result = optimise(model.schema, snapshot["values"], objective, max_steps=ctx["max_steps"],
                          stages=VOXEL_STAGES, progress=progress)
        after = svc.builder.compare(model, result.values, path) if result.changes() else before
        entry = None
        if result.changes() and after["iou"] > before["iou"]:
            entry = svc.sessions.get(model.name).apply(
                result.changes(), source={"kind": "optimise"}, expected_version=snapshot["version"],
                summary=f"optimise toward target: IoU {before['iou']:.3f} → {after['iou']:.3f}")
        answer = state_json(model.name, entry=entry_json(model.name, entry) if entry else None)
        answer.update(optimise={
            "iou_before": before["iou"], "iou_after": after["iou"] if entry else before["iou"],
            "method": after["method"], "applied": entry is not None, "steps": result.steps,
            "max_steps": ctx["max_steps"], "stopped": result.stopped, "proposed": result.changes(),
            "search_iou_before": result.start_iou, "search_iou_after": result.iou,
            "elapsed_s": round(time.perf_counter() - started, 2),
            "vlm_used": False, **({"vlm_note": "VLM proposals are not part of optimise yet; the numeric "
                                                "refinement ran alone"} if ctx["use_vlm"] else {})})
        return answer
    finally:
        with state.lock:
            state.running.discard(model.name)


@bp.post("/optimise")
def post_optimise():
    ctx = _prepare_optimise()
    if not ctx["stream"]:
        return jsonify(_run_optimise(ctx))
    return Response(stream_with_context(_stream(ctx)), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


def _stream(ctx: dict):
    """Run the optimisation in a thread; relay `progress` {step, iou, stage, stages, max_steps}, then done/error."""
    events: queue.Queue = queue.Queue()
    app = current_app._get_current_object()
    stages = len(VOXEL_STAGES)

    def progress(step: int, iou: float, stage: int) -> None:
        events.put(("progress", {"step": step, "iou": iou, "stage": stage, "stages": stages,
                                 "max_steps": ctx["max_steps"]}))

    def work():
        with app.app_context():
            try:
                events.put(("done", _run_optimise(ctx, progress)))
            except (ApiError, VersionConflict) as exc:
                events.put(("error", {"error": exc.code, "message": exc.message}))
            except BuildError as exc:
                events.put(("error", {"error": "cad_build_failed", "message": str(exc), "line": exc.line}))
            except Exception:  # the client gets a clean error event, the log gets the traceback
                log.exception("optimise failed")
                events.put(("error", {"error": "internal_error", "message": "optimise failed; see the server log"}))

    threading.Thread(target=work, name="optimise", daemon=True).start()
    while True:
        try:
            event, data = events.get(timeout=1.0)
        except queue.Empty:
            yield ": keep-alive\n\n"
            continue
        yield _sse(event, data)
        if event in ("done", "error"):
            return

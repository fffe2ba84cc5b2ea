"""Target shapes: upload/inspect/delete a STEP or STL target per model and its GLB ghost. Optimisation toward the
target (``/api/optimise``) is in web/optimise_api.py, on this blueprint.

Geometry runs in the build worker (``Builder.compare/target_info/target_glb``); this module parses, validates,
caches small answers and serialises.
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict

from flask import Blueprint, current_app, jsonify, request

from cad.errors import BuildError
from cad.target import TargetError
from cad.target_store import TargetNotSaved, TargetStore

from .cad_api import _file_response
from .contract import MAX_TARGET_BYTES
from .errors import ApiError
from .parse import model_name
from .security import expensive
from .services import services

log = logging.getLogger(__name__)
bp = Blueprint("targets_api", __name__, url_prefix="/api")


class TargetsState:
    """Per-app target store, small caches of comparisons and ghost GLBs, and one optimisation per model at a time."""

    def __init__(self, data_dir):
        self.store = TargetStore(data_dir)
        self.lock = threading.Lock()
        self.comparisons: OrderedDict[tuple, dict] = OrderedDict()
        self.ghosts: OrderedDict[tuple, bytes] = OrderedDict()
        self.running: dict[str, threading.Event] = {}  # model name -> the cancel event of its optimisation

    def cancel_all(self) -> None:
        with self.lock:
            for cancel in self.running.values():
                cancel.set()

    def remember(self, cache: OrderedDict, key, value, limit: int = 16):
        with self.lock:
            cache[key] = value
            cache.move_to_end(key)
            while len(cache) > limit:
                cache.popitem(last=False)
        return value


_STATE_LOCK = threading.Lock()


def _state() -> TargetsState:
    extensions = current_app.extensions
    if "optim_targets" not in extensions:
        with _STATE_LOCK:
            if "optim_targets" not in extensions:
                state = TargetsState(services().config.data_dir)
                services().shutdown_hooks.append(state.cancel_all)  # a server going down stops its optimisations
                extensions["optim_targets"] = state
    return extensions["optim_targets"]


@bp.errorhandler(TargetError)
def _target_error(e: TargetError):
    return jsonify({"error": "invalid_target", "message": str(e)}), 422


@bp.errorhandler(TargetNotSaved)
def _target_not_saved(e: TargetNotSaved):
    log.error("%s", e)  # the operator has to act (disk space, permissions); the client only learns it failed
    return jsonify({"error": e.code, "message": str(e)}), e.status


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
@expensive
def get_target():
    name = services().registry.get(model_name()).name
    return jsonify(_target_json(name, _target_path(name)))


@bp.get("/target.glb")
@expensive
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


# POST/DELETE /api/optimise live in web/optimise_api.py on this blueprint (kept apart for size); importing it
# registers them. At the end of the module: optimise_api imports the helpers above.
from . import optimise_api  # noqa: E402,F401

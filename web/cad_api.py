"""CAD and design-session endpoints: schema and values, edits, undo/redo/reset, history, exports, renders."""
from __future__ import annotations

import hashlib

from flask import Blueprint, Response, jsonify, request

from .errors import ApiError
from .parse import choice_arg, download_arg, expected_version, int_arg, json_body, model_name
from .security import expensive
from .services import services

bp = Blueprint("cad_api", __name__, url_prefix="/api")

EXPORT_TYPES = {"glb": "model/gltf-binary", "stl": "model/stl", "step": "model/step"}
VIEWS = ("front", "side", "top", "iso")
# Every render is a job for the one build worker: 24 renders at 2048 px kept it busy for 70 s (issue 17), and the
# cost grows with the square of the size. 1024 is the largest the UI asks for (its PNG download).
MIN_RENDER_SIZE, MAX_RENDER_SIZE = 64, 1024


def state_json(name: str, **extra) -> dict:
    svc = services()
    model = svc.registry.get(name)
    session = svc.sessions.get(name)
    snap = extra.pop("snapshot", None) or session.snapshot()
    return {"model": model.name, "title": model.title, "version": snap["version"],
            "schema": session.schema.to_json(), "derived": [d.to_json() for d in model.derived],
            "values": snap["values"], "can_undo": snap["can_undo"], "can_redo": snap["can_redo"], **extra}


@bp.get("/models")
def list_models():
    reg = services().registry
    return jsonify({"models": reg.list(), "default": reg.default_name, "scripts": reg.scripts()})


@bp.put("/params/range")
def put_range():
    """Narrow one parameter's range for this session: {"parameter", "min", "max", "version"?, "model"?}."""
    body = json_body()
    name = model_name(body)
    parameter = body.get("parameter")
    if not isinstance(parameter, str) or "min" not in body or "max" not in body:
        raise ApiError(400, "bad_range", 'send {"parameter": name, "min": low, "max": high, "version": N}')
    return _set_range(name, parameter, body["min"], body["max"], body)


@bp.delete("/params/range")
def delete_range():
    """Back to the script's range: ?parameter=name (and model, version)."""
    body = json_body(required=False)
    name = model_name(body)
    parameter = body.get("parameter", request.args.get("parameter"))
    if not isinstance(parameter, str):
        raise ApiError(400, "bad_range", "say which parameter: ?parameter=name")
    return _set_range(name, parameter, None, None, body)


def _set_range(name: str, parameter: str, low, high, body: dict):
    if (low is None) != (high is None):
        raise ApiError(400, "bad_range", "min and max must both be numbers")
    session = services().sessions.get(name)
    with session.lock:
        entry = session.set_range(parameter, low, high, expected_version(body))
        return jsonify(state_json(name, entry=entry_json(name, entry), snapshot=session.snapshot()))


@bp.get("/params")
def get_params():
    return jsonify(state_json(model_name()))


@bp.patch("/params")
def patch_params():
    body = json_body()
    name = model_name(body)
    values = body.get("values")
    if not isinstance(values, dict) or not values:
        raise ApiError(400, "missing_values", 'send {"values": {"parameter": value, ...}, "version": N}')
    session = services().sessions.get(name)
    with session.lock:  # the answer shows the state this edit produced, not a later one
        entry = session.apply(values, source={"kind": "user"}, expected_version=expected_version(body))
        return jsonify(state_json(name, entry=entry_json(name, entry), snapshot=session.snapshot()))


def entry_json(name: str, entry) -> dict | None:
    if entry is None:
        return None
    return services().sessions.get(name).entry_json(entry.id)


def _history_step(action: str):
    body = json_body(required=False)
    name = model_name(body)
    session = services().sessions.get(name)
    with session.lock:
        getattr(session, action)(expected_version(body))
        return jsonify(state_json(name, snapshot=session.snapshot()))


@bp.post("/undo")
def undo():
    return _history_step("undo")


@bp.post("/redo")
def redo():
    return _history_step("redo")


@bp.post("/reset")
def reset():
    body = json_body(required=False)
    name = model_name(body)
    session = services().sessions.get(name)
    with session.lock:
        entry = session.reset(expected_version(body))
        return jsonify(state_json(name, entry=entry_json(name, entry), snapshot=session.snapshot()))


@bp.get("/history")
def history():
    return jsonify(services().sessions.get(model_name()).history())


def _current(name: str):
    svc = services()
    return svc.registry.get(name), svc.sessions.get(name).snapshot()


def _file_response(data: bytes, mimetype: str, filename: str | None = None) -> Response:
    etag = hashlib.sha256(data).hexdigest()[:32]
    if request.if_none_match and etag in request.if_none_match:
        return Response(status=304)
    resp = Response(data, mimetype=mimetype)
    resp.set_etag(etag)
    resp.headers["Cache-Control"] = "no-cache"
    if filename:
        resp.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return resp


@bp.get("/model.<fmt>")
@expensive
def export_model(fmt: str):
    if fmt not in EXPORT_TYPES:
        raise ApiError(404, "unknown_format", f"no export format {fmt!r}; use one of {', '.join(EXPORT_TYPES)}")
    name = model_name()
    model, snap = _current(name)
    download = download_arg()
    data = services().builder.export(model, snap["values"], fmt)
    return _file_response(data, EXPORT_TYPES[fmt], f"{model.name}-v{snap['version']}.{fmt}" if download else None)


@bp.get("/render.png")
@expensive
def render_png():
    view = choice_arg("view", "iso", VIEWS)
    size = int_arg("size", 512, MIN_RENDER_SIZE, MAX_RENDER_SIZE)
    download = download_arg()
    name = model_name()
    model, snap = _current(name)
    data = services().builder.render_png(model, snap["values"], view, size)
    return _file_response(data, "image/png", f"{model.name}-{view}.png" if download else None)

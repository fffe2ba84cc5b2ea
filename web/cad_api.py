"""CAD and design-session endpoints: schema and values, edits, undo/redo/reset, history, exports, renders."""
from __future__ import annotations

import hashlib

from flask import Blueprint, Response, jsonify, request

from .contract import (MAX_RENDER_SIZE, MIN_RENDER_SIZE, VIEWS, DownloadQuery, EditRequest,  # noqa: F401
                       ModelQuery, PreviewRequest, RangeQuery, RangeRequest, RangeResetRequest, RenderQuery, VersionBody, validate,
                       validate_query)
from .errors import ApiError
from .parse import json_body, model_name
from .security import expensive
from .services import services

bp = Blueprint("cad_api", __name__, url_prefix="/api")

EXPORT_TYPES = {"glb": "model/gltf-binary", "stl": "model/stl", "step": "model/step"}
# Request bodies and query strings are validated against the contract's models (web/contract/requests.py, where
# the limits are: renders at most 1024 px, since 24 renders at 2048 px kept the one build worker busy for 70 s).


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
    req = validate(RangeRequest, json_body())
    return _set_range(model_name(req), req.parameter, req.min, req.max, req.version)


@bp.delete("/params/range")
def delete_range():
    """Back to the script's range: ?parameter=name (and model, version)."""
    req = validate(RangeResetRequest, json_body(required=False))
    parameter = req.parameter if req.parameter is not None else validate_query(RangeQuery, request.args).parameter
    if parameter is None:
        raise ApiError(400, "bad_range", "say which parameter: ?parameter=name")
    return _set_range(model_name(req), parameter, None, None, req.version)


def _set_range(name: str, parameter: str, low, high, version: int | None):
    if (low is None) != (high is None):
        raise ApiError(400, "bad_range", "min and max must both be numbers")
    session = services().sessions.get(name)
    with session.lock:
        entry = session.set_range(parameter, low, high, version)
        return jsonify(state_json(name, entry=entry_json(name, entry), snapshot=session.snapshot()))


@bp.get("/params")
def get_params():
    return jsonify(state_json(model_name()))


@bp.patch("/params")
def patch_params():
    req = validate(EditRequest, json_body())
    name = model_name(req)
    session = services().sessions.get(name)
    with session.lock:  # the answer shows the state this edit produced, not a later one
        entry = session.apply(req.values, source={"kind": "user"}, expected_version=req.version)
        return jsonify(state_json(name, entry=entry_json(name, entry), snapshot=session.snapshot()))


def entry_json(name: str, entry) -> dict | None:
    if entry is None:
        return None
    return services().sessions.get(name).entry_json(entry.id)


def _history_step(action: str):
    req = validate(VersionBody, json_body(required=False))
    name = model_name(req)
    session = services().sessions.get(name)
    with session.lock:
        getattr(session, action)(req.version)
        return jsonify(state_json(name, snapshot=session.snapshot()))


@bp.post("/undo")
def undo():
    return _history_step("undo")


@bp.post("/redo")
def redo():
    return _history_step("redo")


@bp.post("/reset")
def reset():
    req = validate(VersionBody, json_body(required=False))
    name = model_name(req)
    session = services().sessions.get(name)
    with session.lock:
        entry = session.reset(req.version)
        return jsonify(state_json(name, entry=entry_json(name, entry), snapshot=session.snapshot()))


@bp.get("/history")
def history():
    return jsonify(services().sessions.get(model_name()).history())


def _entry_index(text: str) -> int:
    """A history index from the URL (``-1`` included, which Flask's int converter refuses)."""
    try:
        return int(text)
    except ValueError:
        raise ApiError(404, "no_such_entry", f"{text!r} is not a history entry number (entries are numbered from "
                                             f"0, as GET /api/history lists them; -1 is the start)") from None


@bp.get("/history/<index>")
def history_state(index: str):
    """What the design was right after entry ``index``: the history row's preview (nothing is written)."""
    index = _entry_index(index)
    name = model_name()
    session = services().sessions.get(name)
    with session.lock:
        snap, values = session.snapshot(), session.values_at(index)
    changes = {n: {"from": snap["values"].get(n), "to": v} for n, v in values.items() if snap["values"].get(n) != v}
    return jsonify({"model": name, "version": snap["version"], "index": index, "values": values, "changes": changes})


@bp.post("/history/<index>/restore")
def restore(index: str):
    req = validate(VersionBody, json_body(required=False))  # a malformed body is 400 whatever the entry
    index = _entry_index(index)
    name = model_name(req)
    session = services().sessions.get(name)
    with session.lock:
        entry = session.restore(index, req.version)
        return jsonify(state_json(name, entry=entry_json(name, entry), snapshot=session.snapshot()))


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
    query = validate_query(DownloadQuery, request.args)
    name = model_name()
    model, snap = _current(name)
    download = query.download in {"1", "true"}
    data = services().builder.export(model, snap["values"], fmt)
    return _file_response(data, EXPORT_TYPES[fmt], f"{model.name}-v{snap['version']}.{fmt}" if download else None)


def _preview_states():
    """(model, snapshot, the values previewed) of a preview request: the current values with the body's `values`
    over them, validated like an edit (the session's ranges; 422 names the parameter). Nothing is written."""
    validate_query(ModelQuery, request.args)
    req = validate(PreviewRequest, json_body(required=False))
    name = model_name(req)
    svc = services()
    session = svc.sessions.get(name)
    snap = session.snapshot()
    changes = session.schema.validate(req.values or {})
    return svc.registry.get(name), session.schema, snap, {**snap["values"], **changes}


@bp.post("/preview.glb")
def preview_glb():
    """The GLB of the current values with the body's `values` over them, e.g. the proposals ticked in the table:
    built in the build pool under its timeout, and never written to the session (no history entry, no new
    version)."""
    model, _, snap, values = _preview_states()
    resp = _file_response(services().builder.export(model, values, "glb"), EXPORT_TYPES["glb"])
    resp.headers["X-Base-Version"] = str(snap["version"])  # the design the values were laid over
    return resp


@bp.post("/preview/diff")
def preview_diff():
    """Bounding-box size and volume before (the current values) and after (the body's `values` over them), measured
    on the B-rep in the build pool (cad.measure); the session is not written."""
    model, schema, snap, values = _preview_states()
    builder = services().builder
    before, after = builder.measure(model, snap["values"]), builder.measure(model, values)
    keep = ("min", "max", "size", "volume", "volume_method")
    change = after["volume"] - before["volume"]
    relative = change / before["volume"] if before["volume"] else None
    return jsonify({"model": model.name, "base_version": snap["version"], "units": schema.length_unit(),
                    "before": {k: before[k] for k in keep}, "after": {k: after[k] for k in keep},
                    "size_change": [a - b for a, b in zip(after["size"], before["size"])],
                    "volume_change": change, "volume_relative": relative})


@bp.get("/render.png")
@expensive
def render_png():
    query = validate_query(RenderQuery, request.args)
    name = model_name()
    model, snap = _current(name)
    data = services().builder.render_png(model, snap["values"], query.view, query.size)
    download = query.download in {"1", "true"}
    return _file_response(data, "image/png", f"{model.name}-{query.view}.png" if download else None)

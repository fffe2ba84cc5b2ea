"""`GET /api/openapi.json`: the HTTP contract of docs/api.md as an OpenAPI 3.0 document (a plain dict).

Kept by hand next to docs/api.md; tests/test_security.py checks that every endpoint listed there is described
here, and tests/test_fuzz.py checks that answers match the schemas.
"""
from __future__ import annotations

import re

from flask import Blueprint, Flask, current_app, jsonify

from .cad_api import MAX_RENDER_SIZE, MIN_RENDER_SIZE

bp = Blueprint("openapi", __name__, url_prefix="/api")

VERSION = "1.0.0"


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict) -> dict:
    return {"content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict:
    return {"description": description, **_json(_ref("Error"))}


def _ok(description: str, schema: dict | None = None) -> dict:
    return {"description": description, **(_json(schema) if schema else {})}


NUMBER_OR_BOOL = {"oneOf": [{"type": "number"}, {"type": "boolean"}]}
NULLABLE_NUMBER = {"type": "number", "nullable": True}
VERSION_BODY = {"type": "object", "properties": {"version": {"type": "integer"}, "model": {"type": "string"}}}
MODEL_PARAM = {"name": "model", "in": "query", "required": False, "description": "CAD model (default rover)",
               "schema": {"type": "string", "maxLength": 100}}
COMMON_ERRORS = {"400": _error("bad request or malformed JSON (also: nested deeper than 32 levels)"),
                 "404": _error("unknown model"), "413": _error("request body larger than MAX_UPLOAD_MB")}
# Every operation can meet the request guards (web/security.py); added to each one below.
GUARD_ERRORS = {"401": _error("OPTIM_TOKEN is set and the request has no valid token (unauthorized); /api/* only"),
                "403": _error("Host not allowed (host_not_allowed), or a cross-site write or expensive GET "
                              "(cross_origin)")}
WRITE_ERRORS = {**COMMON_ERRORS, "409": _error("version conflict, or nothing to undo/redo"),
                "422": _error("invalid parameter value"), "503": _error("the session could not be saved")}
VLM_ERRORS = {**COMMON_ERRORS, "422": _error("unreadable image"), "502": _error("the engine refused the request"),
              "503": _error("model unavailable, or busy: the queue is full (VLM_MAX_QUEUE); "
                                    "retry after the Retry-After header's seconds"),
              "504": _error("model timeout")}

SCHEMAS: dict = {
    "Error": {"type": "object", "required": ["error", "message"],
              "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
              "additionalProperties": True},
    "Param": {"type": "object", "required": ["name", "label", "unit", "type", "min", "max", "step", "default",
                                             "group", "description"],
              "properties": {"name": {"type": "string"}, "label": {"type": "string"},
                             "unit": {"type": "string", "nullable": True},
                             "type": {"type": "string", "enum": ["float", "int", "bool"]},
                             "min": NULLABLE_NUMBER, "max": NULLABLE_NUMBER, "step": NULLABLE_NUMBER,
                             "default": NUMBER_OR_BOOL, "group": {"type": "string", "nullable": True},
                             "description": {"type": "string", "nullable": True},
                             "inferred": {"type": "boolean"}, "range_override": {"type": "boolean"},
                             "script_min": NULLABLE_NUMBER, "script_max": NULLABLE_NUMBER}},
    "Values": {"type": "object", "additionalProperties": NUMBER_OR_BOOL},
    "Entry": {"type": "object", "required": ["id", "index", "source", "summary", "changes", "timestamp"],
              "properties": {"id": {"type": "string"}, "index": {"type": "integer"},
                             "source": {"type": "object", "required": ["kind"], "properties": {
                                 "kind": {"type": "string", "enum": ["user", "vlm", "reset", "optimise"]},
                                 "proposal_id": {"type": "string"}}},
                             "summary": {"type": "string"},
                             "changes": {"type": "object", "additionalProperties": {
                                 "type": "object", "properties": {"from": {}, "to": {}}}},
                             "timestamp": {"type": "number"}}},
    "State": {"type": "object", "required": ["model", "version", "schema", "values", "can_undo", "can_redo"],
              "properties": {"model": {"type": "string"}, "title": {"type": "string"},
                             "version": {"type": "integer", "minimum": 0},
                             "schema": {"type": "array", "items": _ref("Param")}, "values": _ref("Values"),
                             "can_undo": {"type": "boolean"}, "can_redo": {"type": "boolean"},
                             "derived": {"type": "array", "items": {"type": "object", "properties": {
                                 "name": {"type": "string"}, "expression": {"type": "string"},
                                 "line": {"type": "integer"}, "uses": {"type": "array",
                                                                       "items": {"type": "string"}}}}},
                             "entry": {"allOf": [_ref("Entry")], "nullable": True}}},
    "History": {"type": "object", "required": ["version", "position", "can_undo", "can_redo", "entries"],
                "properties": {"model": {"type": "string"}, "version": {"type": "integer"},
                               "position": {"type": "integer", "minimum": -1},
                               "can_undo": {"type": "boolean"}, "can_redo": {"type": "boolean"},
                               "entries": {"type": "array", "items": _ref("Entry")}}},
    "Models": {"type": "object", "required": ["models", "default"], "properties": {
        "models": {"type": "array", "items": {"type": "object", "required": ["name", "title", "description"],
                                              "properties": {"name": {"type": "string"},
                                                             "title": {"type": "string"},
                                                             "description": {"type": "string"}}}},
        "default": {"type": "string"},
        "scripts": {"type": "array", "items": {"type": "object", "required": ["name", "file", "status", "error"],
                    "properties": {"name": {"type": "string"}, "file": {"type": "string"},
                                   "origin": {"type": "string", "enum": ["shipped", "user"]},
                                   "status": {"type": "string", "enum": ["ok", "error", "invalid_name", "shadowed"]},
                                   "error": {"type": "string", "nullable": True}}}}}},
    "VlmStatus": {"type": "object", "required": ["backend", "state", "progress", "memory", "error"], "properties": {
        "backend": {"type": "string"}, "model": {"type": "string", "nullable": True},
        "adapter": {"type": "string", "nullable": True},
        "state": {"type": "string", "enum": ["unloaded", "loading", "ready", "failed"]},
        "progress": {"type": "object", "properties": {"fraction": {"type": "number"}, "phase": {"type": "string"},
                                                      "elapsed_s": NULLABLE_NUMBER, "eta_s": NULLABLE_NUMBER}},
        "memory": {"type": "object", "properties": {"rss_bytes": {"type": "integer", "nullable": True},
                                                    "gpu_bytes": {"type": "integer", "nullable": True}}},
        "error": {"type": "string", "nullable": True}, "keep_alive_s": NULLABLE_NUMBER,
        "unload_in_s": NULLABLE_NUMBER, "load_count": {"type": "integer"},
        "dtype": {"type": "string", "nullable": True}, "dtype_reason": {"type": "string", "nullable": True},
        "engine": {"type": "object", "additionalProperties": True, "properties": {
            "reachable": {"type": "boolean"}, "loaded": {"type": "boolean"},
            "expires_at": {"type": "string"}, "size_vram": {"type": "integer"}, "age_s": NULLABLE_NUMBER}}}},
    "VlmRequest": {"type": "object", "required": ["prompt"], "properties": {
        "prompt": {"type": "string", "minLength": 1, "maxLength": 4000},
        "images": {"type": "array", "maxItems": 4,
                   "items": {"type": "string", "description": "base64 or a data: URL (PNG, JPEG, WEBP, GIF, BMP)"}},
        "include_render": {"type": "boolean"}, "max_new_tokens": {"type": "integer", "minimum": 1, "maximum": 2048},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2}, "stream": {"type": "boolean"},
        "model": {"type": "string"}}},
    "Proposal": {"type": "object", "required": ["parameter", "value", "valid"], "properties": {
        "parameter": {"type": "string"}, "value": {}, "current": {}, "reason": {"type": "string", "nullable": True},
        "valid": {"type": "boolean"}, "error": {"type": "string"}}},
    "VlmAnswer": {"type": "object", "required": ["id", "backend", "text", "proposals", "timings"], "properties": {
        "id": {"type": "string"}, "backend": {"type": "string"}, "model": {"type": "string", "nullable": True},
        "text": {"type": "string"}, "summary": {"type": "string", "nullable": True},
        "proposals": {"type": "array", "items": _ref("Proposal")},
        "timings": {"type": "object", "additionalProperties": {"type": "number"}}, "cached": {"type": "boolean"}}},
    "ApplyRequest": {"type": "object", "properties": {
        "version": {"type": "integer"},
        "parameters": {"type": "array", "items": {"type": "string"},
                       "description": "proposals to apply as proposed (default: every valid one not in values)"},
        "values": {"type": "object", "additionalProperties": {},
                   "description": "your own values: corrections of proposed ones or parameters the model did not "
                                  "mention; validated like an edit, and logged as the example's target"},
        "overwrite": {"type": "boolean", "description": "apply even over parameters edited since the answer"}}},
}


def _file(mime: str, description: str, params: list[dict], unprocessable: str = "the model script failed") -> dict:
    return {"get": {"summary": description, "parameters": params,
                    "responses": {"200": {"description": description, "content": {mime: {"schema": {
                        "type": "string", "format": "binary"}}}}, "304": {"description": "unchanged (ETag)"},
                        **COMMON_ERRORS, "422": _error(unprocessable),
                        "504": _error("the model script ran past CAD_BUILD_TIMEOUT (cad_build_timeout)")}}}


def _history_step(what: str) -> dict:
    return {"post": {"summary": what, "parameters": [MODEL_PARAM],
                     "requestBody": {"required": False, **_json(VERSION_BODY)},
                     "responses": {"200": _ok("the new state", _ref("State")), **WRITE_ERRORS}}}


DOWNLOAD = {"name": "download", "in": "query", "required": False, "description": "1 or true: as an attachment",
            "schema": {"type": "string", "enum": ["0", "1", "false", "true"]}}
PATHS: dict = {
    "/healthz": {"get": {"summary": "liveness", "responses": {"200": _ok("alive", {
        "type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}})}}},
    "/api/models": {"get": {"summary": "CAD models", "responses": {"200": _ok("models", _ref("Models"))}}},
    "/api/params": {
        "get": {"summary": "schema, values and version", "parameters": [MODEL_PARAM],
                "responses": {"200": _ok("state", _ref("State")), **COMMON_ERRORS}},
        "patch": {"summary": "validated partial update, one history entry", "parameters": [MODEL_PARAM],
                  "requestBody": {"required": True, **_json({
                      "type": "object", "required": ["values"],
                      "properties": {"version": {"type": "integer"}, "model": {"type": "string"},
                                     "values": {**SCHEMAS["Values"], "minProperties": 1}}})},
                  "responses": {"200": _ok("state with the new entry", _ref("State")), **WRITE_ERRORS}}},
    "/api/params/range": {
        "put": {"summary": "narrow one parameter's range for this session (clamps the value as one entry)",
                "parameters": [MODEL_PARAM],
                "requestBody": {"required": True, **_json({
                    "type": "object", "required": ["parameter", "min", "max"],
                    "properties": {"parameter": {"type": "string"}, "min": {"type": "number"},
                                   "max": {"type": "number"}, "version": {"type": "integer"},
                                   "model": {"type": "string"}}})},
                "responses": {"200": _ok("state", _ref("State")), **WRITE_ERRORS}},
        "delete": {"summary": "back to the script's range",
                   "parameters": [MODEL_PARAM, {"name": "parameter", "in": "query", "required": False,
                                                "schema": {"type": "string"}}],
                   "requestBody": {"required": False, **_json({
                       "type": "object", "properties": {"parameter": {"type": "string"},
                                                        "version": {"type": "integer"},
                                                        "model": {"type": "string"}}})},
                   "responses": {"200": _ok("state", _ref("State")), **WRITE_ERRORS}}},
    "/api/undo": _history_step("undo the current entry"),
    "/api/redo": _history_step("redo the next entry"),
    "/api/reset": _history_step("back to defaults (undoable)"),
    "/api/history": {"get": {"summary": "history entries", "parameters": [MODEL_PARAM],
                             "responses": {"200": _ok("history", _ref("History")), **COMMON_ERRORS}}},
    "/api/model.glb": _file("model/gltf-binary", "GLB of the current design", [MODEL_PARAM, DOWNLOAD]),
    "/api/model.stl": _file("model/stl", "STL of the current design", [MODEL_PARAM, DOWNLOAD]),
    "/api/model.step": _file("model/step", "STEP of the current design", [MODEL_PARAM, DOWNLOAD]),
    "/api/render.png": _file("image/png", "PNG render", [
        MODEL_PARAM, DOWNLOAD,
        {"name": "view", "in": "query", "required": False,
         "schema": {"type": "string", "enum": ["front", "side", "top", "iso"]}},
        {"name": "size", "in": "query", "required": False, "schema": {
            "type": "integer", "minimum": MIN_RENDER_SIZE, "maximum": MAX_RENDER_SIZE, "default": 512}}],
        unprocessable="the model script failed, or size is outside the range (bad_size)"),
    "/api/vlm": {"post": {
        "summary": "ask the model for proposals (SSE with stream=true)",
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": _ref("VlmRequest")},
            "multipart/form-data": {"schema": {"type": "object", "required": ["prompt"], "properties": {
                "prompt": {"type": "string"}, "images": {"type": "array", "items": {
                    "type": "string", "format": "binary"}}, "include_render": {"type": "string"},
                "max_new_tokens": {"type": "string"}, "temperature": {"type": "string"},
                "stream": {"type": "string"}}}}}},
        "responses": {"200": {"description": "proposals (JSON), or an event stream when stream=true", "content": {
            "application/json": {"schema": _ref("VlmAnswer")},
            "text/event-stream": {"schema": {"type": "string"}}}}, **VLM_ERRORS}}},
    "/api/vlm/status": {"get": {"summary": "model state", "responses": {"200": _ok("status", _ref("VlmStatus"))}}},
    "/api/vlm/load": {"post": {"summary": "start loading in the background",
                               "responses": {"202": _ok("status", _ref("VlmStatus")),
                                             "503": _error("the model manager is shut down")}}},
    "/api/vlm/unload": {"post": {"summary": "unload now",
                                 "responses": {"200": _ok("status", _ref("VlmStatus"))}}},
    "/api/proposals/{proposal_id}/apply": {"post": {
        "summary": "apply a proposal set (or a subset) as one undoable entry",
        "parameters": [{"name": "proposal_id", "in": "path", "required": True, "schema": {"type": "string"}}],
        "requestBody": {"required": False, **_json(_ref("ApplyRequest"))},
        "responses": {"200": _ok("state with the new entry (null when nothing changed) and `applied`",
                                 _ref("State")), **WRITE_ERRORS,
                      "404": _error("unknown or expired proposal set"),
                      "409": _error("stale version, or stale_proposal: parameters edited since the answer")}}},
    "/api/proposals/{proposal_id}/reject": {"post": {
        "summary": "reject a proposal set (logged as a rejected answer; as 'no change' only with nothing_should_change)",
        "parameters": [{"name": "proposal_id", "in": "path", "required": True, "schema": {"type": "string"}}],
        "requestBody": {"required": False, **_json({"type": "object", "properties": {
            "reason": {"type": "string", "maxLength": 1000}, "nothing_should_change": {"type": "boolean"}}})},
        "responses": {"200": _ok("rejected", {"type": "object", "required": ["id", "rejected"], "properties": {
            "id": {"type": "string"}, "rejected": {"type": "boolean"},
            "recorded_as": {"type": "string", "enum": ["rejected", "no_change"]}}}), **COMMON_ERRORS,
            "404": _error("unknown or expired proposal set")}}},
    "/api/vlm/adapters": {"get": {"summary": "LoRA adapters under runs/", "responses": {"200": _ok("adapters", {
        "type": "object", "required": ["adapters"], "properties": {
            "active": {"type": "string", "nullable": True}, "switchable": {"type": "boolean"},
            "adapters": {"type": "array", "items": {"type": "object", "required": ["name"]}}}})}}},
    "/api/vlm/adapter": {"post": {
        "summary": "switch the active adapter (fine-tuned backend)",
        "requestBody": {"required": True, **_json({"type": "object", "required": ["name"], "properties": {
            "name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"}}})},
        "responses": {"200": _ok("switched", {"type": "object"}), **COMMON_ERRORS,
                      "404": _error("unknown adapter"), "409": _error("the backend cannot switch adapters"),
                      "422": _error("invalid or corrupt adapter"), "503": _error("model unavailable")}}},
    "/api/openapi.json": {"get": {"summary": "this document", "responses": {"200": _ok("OpenAPI 3.0 document", {
        "type": "object"})}}},
}

_TARGET = {"type": "object", "required": ["model", "format", "kind", "volume", "bbox"], "properties": {
    "model": {"type": "string"}, "format": {"type": "string", "enum": ["step", "stl"]},
    "kind": {"type": "string", "enum": ["solid", "mesh"]}, "volume": {"type": "number"}, "bbox": {"type": "object"},
    "triangles": {"type": "integer"}, "size_bytes": {"type": "integer"}, "version": {"type": "integer"},
    "comparison": {"type": "object", "nullable": True}}}
_OPTIMISE_REPORT = {"type": "object", "required": [
    "iou_before", "iou_after", "method", "applied", "steps", "max_steps", "stopped", "proposed", "vlm_used",
    "vlm_proposed", "vlm_iou", "vlm_accepted"], "properties": {
    "iou_before": {"type": "number"}, "iou_after": {"type": "number"}, "method": {"type": "string"},
    "applied": {"type": "boolean"}, "steps": {"type": "integer"}, "max_steps": {"type": "integer"},
    "stopped": {"type": "string", "enum": ["converged", "budget", "target_reached", "cancelled"]},
    "proposed": _ref("Values"), "search_iou_before": {"type": "number"}, "search_iou_after": {"type": "number"},
    "elapsed_s": {"type": "number"}, "vlm_used": {"type": "boolean"}, "vlm_proposed": _ref("Values"),
    "vlm_iou": NULLABLE_NUMBER, "vlm_accepted": {"type": "boolean"},
    "vlm_summary": {"type": "string", "nullable": True}, "vlm_note": {"type": "string"}}}
STORAGE_ERRORS = {"503": _error("the data dir is not writable (target_not_saved); nothing changed"),
                  "507": _error("the disk is full (insufficient_storage); nothing changed")}
TARGET_PATHS = {
    "/api/target": {
        "put": {"summary": "attach a STEP or STL target (raw body or multipart field 'target', <= 20 MB)",
                "parameters": [MODEL_PARAM],
                "requestBody": {"required": True, "content": {
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                    "multipart/form-data": {"schema": {"type": "object", "required": ["target"], "properties": {
                        "target": {"type": "string", "format": "binary"}}}}}},
                "responses": {"201": _ok("the stored target", _TARGET), **COMMON_ERRORS,
                              "413": _error("larger than 20 MB"), "422": _error("not a readable STEP or STL"),
                              **STORAGE_ERRORS}},
        "get": {"summary": "target metadata and its comparison with the current state", "parameters": [MODEL_PARAM],
                "responses": {"200": _ok("target", _TARGET), **COMMON_ERRORS, "404": _error("no target")}},
        "delete": {"summary": "remove the target", "parameters": [MODEL_PARAM],
                   "responses": {"200": _ok("deleted", {"type": "object"}), **COMMON_ERRORS,
                                 "404": _error("no target"), **STORAGE_ERRORS}}},
    "/api/target.glb": _file("model/gltf-binary", "the target as GLB (metres, Y up)", [MODEL_PARAM]),
    "/api/optimise": {
        "post": {
            "summary": "VLM proposal (use_vlm) then numeric refinement toward the target, applied as one history "
                       "entry (SSE with stream=true: vlm, progress, done | error)",
            "parameters": [MODEL_PARAM],
            "requestBody": {"required": False, **_json({"type": "object", "properties": {
                "version": {"type": "integer"}, "max_steps": {"type": "integer", "minimum": 1, "maximum": 2000},
                "use_vlm": {"type": "boolean"}, "stream": {"type": "boolean"}}})},
            "responses": {"200": {"description": "state + entry + optimise report, or an event stream", "content": {
                "application/json": {"schema": {"type": "object", "required": ["version", "values", "optimise"],
                                                "properties": {"optimise": _OPTIMISE_REPORT}}},
                "text/event-stream": {"schema": {"type": "string"}}}}, **WRITE_ERRORS,
                "404": _error("no target"), "409": _error("version conflict, or an optimisation already runs"),
                "504": _error("a model script ran past CAD_BUILD_TIMEOUT (cad_build_timeout)")}},
        "delete": {
            "summary": "cancel the model's running optimisation (its best state so far is still applied if better)",
            "parameters": [MODEL_PARAM],
            "responses": {"202": _ok("cancelling", {"type": "object", "required": ["model", "cancelling"],
                                                    "properties": {"model": {"type": "string"},
                                                                   "cancelling": {"type": "boolean"}}}),
                          **COMMON_ERRORS, "404": _error("unknown model, or no optimisation running (not_running)")}}},
}
PATHS.update(TARGET_PATHS)
for _item in PATHS.values():
    for _method, _op in _item.items():
        for _status, _answer in GUARD_ERRORS.items():
            _op["responses"].setdefault(_status, _answer)


def _rule_key(path: str) -> str:
    return re.sub(r"<(?:\w+:)?\w+>|\{\w+\}", "{}", path)


def spec(app: Flask | None = None) -> dict:
    """The document; with `app`, only the paths that app really serves (blueprints are optional)."""
    paths = PATHS
    if app is not None:
        rules = {_rule_key(r.rule) for r in app.url_map.iter_rules()}
        paths = {p: ops for p, ops in PATHS.items()
                 if _rule_key(p) in rules or (p.startswith("/api/model.") and "/api/model.{}" in rules)}
    return {
        "openapi": "3.0.3",
        "info": {"title": "optim", "version": VERSION,
                 "description": "CAD-optimisation assistant. Every error is {error, message, ...extra}."},
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {"schemas": SCHEMAS, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer", "description": "only when the server sets OPTIM_TOKEN"}}},
        "security": [{}, {"bearer": []}],
    }


@bp.get("/openapi.json")
def openapi_json():
    return jsonify(spec(current_app))

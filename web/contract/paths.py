"""The operations of the API: for each route, its request models, answers and errors. The document generator
(web/contract/spec.py) turns this table into OpenAPI paths; the schemas come from the pydantic models."""
from __future__ import annotations

import re

from . import requests as rq
from . import responses as rs
from .requests import ref


def operation_id(method: str, path: str) -> str:
    """`patch_api_params`, `post_api_proposals_proposal_id_apply`: one per operation, from its method and path."""
    return "_".join([method, *re.findall(r"[A-Za-z0-9]+", path)]) if path != "/" else f"{method}_page"


def json_of(schema: dict) -> dict:
    return {"content": {"application/json": {"schema": schema}}}


def error(description: str) -> dict:
    return {"description": description, **json_of(ref("Error"))}


def ok(description: str, schema: dict | None = None) -> dict:
    return {"description": description, **(json_of(schema) if schema else {})}


COMMON_ERRORS = {"400": error("bad request or malformed JSON (also: nested deeper than 32 levels)"),
                 "404": error("unknown model"), "413": error("request body larger than MAX_UPLOAD_MB")}
GUARD_ERRORS = {"401": error("OPTIM_TOKEN is set and the request has no valid token (unauthorized); /api/* only"),
                "403": error("Host not allowed (host_not_allowed), or a cross-site write or expensive GET "
                             "(cross_origin)")}
WRITE_ERRORS = {**COMMON_ERRORS, "409": error("version conflict, or nothing to undo/redo"),
                "422": error("invalid parameter value"), "503": error("the session could not be saved")}
VLM_ERRORS = {**COMMON_ERRORS, "422": error("prompt too long, or an unreadable image"),
              "502": error("the engine refused the request"),
              "503": error("model unavailable, or busy: the queue is full (VLM_MAX_QUEUE); retry after the "
                           "Retry-After header's seconds"), "504": error("model timeout")}
STORAGE_ERRORS = {"503": error("the data dir is not writable (target_not_saved); nothing changed"),
                  "507": error("the disk is full (insufficient_storage); nothing changed")}
PREVIEW_ERRORS = {**COMMON_ERRORS, "422": error("a value is not valid for the parameter it names (invalid_parameter, "
                                                "with `parameter`), or the model script failed for these values"),
                  "504": error("the model script ran past CAD_BUILD_TIMEOUT (cad_build_timeout)")}
TRAIN_JOB_SCHEMA = {
    "type": "object", "required": ["name", "state", "phase", "step"], "properties": {
        "name": {"type": "string"}, "state": {"enum": ["running", "finished", "failed", "cancelled"]},
        "phase": {"type": "string", "description": "starting, training, validating, then the state"},
        "step": {"type": "integer"}, "total_steps": {"type": ["integer", "null"]},
        "loss": {"type": ["number", "null"]}, "eta_s": {"type": ["number", "null"]},
        "elapsed_s": {"type": "number"}, "examples": {"type": "integer"}, "base": {"type": "string"},
        "error": {"type": "string", "description": "failed: the exit code and the end of the log"}}}
TRAIN_JOB = {"type": "object", "required": ["job"], "properties": {"job": TRAIN_JOB_SCHEMA}}
PROPOSAL_ID = {"name": "proposal_id", "in": "path", "required": True, "schema": {"type": "string"}}
STATE = ok("state (with `entry` where the request made one)", ref("State"))


def op(summary: str, ok_status: str = "200", answer: dict | None = None, *, body: type | None = None,
       body_required: bool = False, query: type | None = rq.ModelQuery, errors: dict | None = None,
       params: list | None = None, content: dict | None = None) -> dict:
    """One operation. `body`: a request model (JSON); `query`: a query model; `content`: other request media."""
    operation = {"summary": summary, "x-query-model": query, "parameters": list(params or []),
                 "responses": {ok_status: answer or ok(summary), **(errors or {})}}
    if body is not None or content:
        media = {"application/json": {"schema": ref(body.__name__)}} if body is not None else {}
        operation["requestBody"] = {"required": body_required, "content": {**media, **(content or {})}}
    return operation


def binary(mime: str, description: str, query: type = rq.DownloadQuery,
           unprocessable: str = "the model script failed") -> dict:
    return {"get": op(description, answer={"description": description, "content": {mime: {"schema": {
        "type": "string", "format": "binary"}}}}, query=query, errors={
        "304": {"description": "unchanged (ETag)"}, **COMMON_ERRORS, "422": error(unprocessable),
        "504": error("the model script ran past CAD_BUILD_TIMEOUT (cad_build_timeout)")})}


HISTORY_INDEX = {"name": "index", "in": "path", "required": True, "schema": {"type": "integer", "minimum": -1},
                 "description": "as GET /api/history numbers the entries; -1: the state before the oldest kept"}


def history_step(what: str) -> dict:
    return {"post": op(what, answer=STATE, body=rq.VersionBody, errors=WRITE_ERRORS)}


def event_stream(*events: str) -> dict:
    """text/event-stream: in OpenAPI 3.1 the schema describes each event (a name and its JSON data, as text)."""
    return {"text/event-stream": {"schema": {"type": "object", "required": ["event", "data"], "properties": {
        "event": {"enum": list(events)}, "data": {"type": "string", "contentMediaType": "application/json"}}}}}


def _vlm_form() -> dict:
    fields = rq.VlmRequest.model_json_schema()["properties"]
    props = {k: v for k, v in fields.items() if k not in ("images", "camera")}  # camera: JSON bodies only
    props["images"] = {"type": "array", "maxItems": rq.MAX_IMAGES, "items": {"type": "string", "format": "binary"}}
    return {"multipart/form-data": {"schema": {"type": "object", "required": ["prompt"], "properties": props}}}


def _target_upload() -> dict:
    return {"application/octet-stream": {"schema": {"type": "string", "format": "binary", "minLength": 1}},
            "multipart/form-data": {"schema": {"type": "object", "required": ["target"], "properties": {
                "target": {"type": "string", "format": "binary", "minLength": 1}}}}}


def cad_paths() -> dict:
    return {
        "/": {"get": op("the single page (HTML)", query=None, answer={"description": "the page", "content": {
            "text/html": {"schema": {"type": "string"}}}})},
        "/static/{filename}": {"get": op("static files of the page", query=None, params=[
            {"name": "filename", "in": "path", "required": True, "schema": {"type": "string"}}],
            answer={"description": "the file"}, errors={"404": error("no such file")})},
        "/healthz": {"get": op("liveness", query=None, answer=ok("alive", {
            "type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}}))},
        "/api/models": {"get": op("CAD models", query=None, answer=ok("models", ref("Models")))},
        "/api/models/{name}/openapi.json": {"get": op(
            "this document with the parameters of CAD model {name} (names, types, ranges of ParameterValues)",
            query=None, params=[{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
            answer=ok("OpenAPI 3.1 document", {"type": "object"}), errors={"404": error("unknown model")})},
        "/api/params": {
            "get": op("schema, values and version", answer=STATE, errors=COMMON_ERRORS),
            "patch": op("validated partial update, one history entry", answer=STATE, body=rq.EditRequest,
                        body_required=True, errors=WRITE_ERRORS)},
        "/api/params/range": {
            "put": op("narrow one parameter's range for this session (clamps the value as one entry)",
                      answer=STATE, body=rq.RangeRequest, body_required=True, errors=WRITE_ERRORS),
            "delete": op("back to the script's range (?parameter=name)", answer=STATE, body=rq.VersionBody,
                         query=rq.RangeQuery, errors=WRITE_ERRORS)},
        "/api/undo": history_step("undo the current entry"),
        "/api/redo": history_step("redo the next entry"),
        "/api/reset": history_step("back to defaults (undoable)"),
        "/api/history": {"get": op("history entries", answer=ok("history", ref("History")), errors=COMMON_ERRORS)},
        "/api/history/{index}": {"get": op(
            "the values right after history entry {index} (-1: the start) and what restoring them would change; "
            "nothing is written", params=[HISTORY_INDEX], answer=ok("that state", ref("HistoryState")),
            errors={**COMMON_ERRORS, "404": error("unknown model, or no such history entry (no_such_entry)")})},
        "/api/history/{index}/restore": {"post": op(
            "back (or forward) to the state after entry {index} as ONE new undoable entry (source kind restore; "
            "entry null when the design is already in that state)", params=[HISTORY_INDEX], answer=STATE,
            body=rq.VersionBody, errors={**WRITE_ERRORS, "404": error("unknown model, or no such history entry")})},
        "/api/model.glb": binary("model/gltf-binary", "GLB of the current design"),
        "/api/model.stl": binary("model/stl", "STL of the current design"),
        "/api/model.step": binary("model/step", "STEP of the current design"),
        "/api/preview.glb": {"post": op(
            "GLB of the current design with the given values over it (a proposal before it is applied); the "
            "session is not changed (no history entry, no new version)", body=rq.PreviewRequest, query=rq.ModelQuery,
            answer={"description": "the previewed design as GLB", "headers": {"X-Base-Version": {
                "description": "the session version the values were laid over", "schema": {"type": "integer"}}},
                "content": {"model/gltf-binary": {"schema": {"type": "string", "format": "binary"}}}},
            errors=PREVIEW_ERRORS)},
        "/api/preview/diff": {"post": op(
            "bounding-box size and volume of the current design and of the one the given values would make (the "
            "preview's before/after), measured on the B-rep; the session is not changed", body=rq.PreviewRequest,
            query=rq.ModelQuery, answer=ok("before, after and the change", ref("PreviewDiff")), errors=PREVIEW_ERRORS)},
        "/api/render.png": binary("image/png", "PNG render", rq.RenderQuery,
                                  "the model script failed, or size is outside the range (bad_size)"),
        "/api/openapi.json": {"get": op("this document (generated from web/contract)", query=None,
                                        answer=ok("OpenAPI 3.1 document", {"type": "object"}))},
    }


def vlm_paths() -> dict:
    return {
        "/api/vlm": {"post": op(
            "ask the model for proposals (SSE with stream=true)", body=rq.VlmRequest, body_required=True,
            query=None, content=_vlm_form(), errors=VLM_ERRORS, answer={
                "description": "proposals (JSON), or an event stream when stream=true", "content": {
                    "application/json": {"schema": ref("VlmAnswer")},
                    **event_stream("token", "status", "done", "error")}, "links": {
                    verb: {"operationId": operation_id("post", f"/api/proposals/{{proposal_id}}/{verb}"),
                           "parameters": {"path.proposal_id": "$response.body#/id"},
                           "description": f"{verb} the proposals of this answer"} for verb in ("apply", "reject")}})},
        "/api/vlm/status": {"get": op("model state", query=None, answer=ok("status", ref("VlmStatus")))},
        "/api/vlm/load": {"post": op("start loading in the background", "202", ok("status", ref("VlmStatus")),
                                     query=None, errors={"503": error("the model manager is shut down")})},
        "/api/vlm/unload": {"post": op("unload now", query=None, answer=ok("status", ref("VlmStatus")))},
        "/api/proposals/{proposal_id}/apply": {"post": op(
            "apply a proposal set (or a subset) as one undoable entry", body=rq.ApplyRequest, query=None,
            params=[PROPOSAL_ID], answer=ok("state with the new entry (null when nothing changed) and `applied`",
                                            ref("State")),
            errors={**WRITE_ERRORS, "404": error("unknown or expired proposal set"),
                    "409": error("stale version, or stale_proposal: parameters edited since the answer"),
                    "422": error("invalid values, or a selection that is not a valid proposal (bad_selection)")})},
        "/api/proposals/{proposal_id}/reject": {"post": op(
            "reject a proposal set (logged as a rejected answer; as 'no change' only with nothing_should_change)",
            body=rq.RejectRequest, query=None, params=[PROPOSAL_ID], answer=ok("rejected", ref("Rejected")),
            errors={**COMMON_ERRORS, "404": error("unknown or expired proposal set"),
                    "503": error("the decision could not be saved")})},
        "/api/vlm/adapters": {"get": op("LoRA adapters under runs/", query=None, answer=ok("adapters", {
            "type": "object", "required": ["adapters"], "properties": {
                "active": {"type": ["string", "null"]}, "switchable": {"type": "boolean"},
                "adapters": {"type": "array", "items": {"type": "object", "required": ["name"]}}}}))},
        "/api/vlm/adapter": {"post": op(
            "switch the active adapter (fine-tuned backend)", body=rq.AdapterRequest, body_required=True,
            query=None, answer=ok("switched", {"type": "object"}),
            errors={**COMMON_ERRORS, "404": error("unknown adapter"),
                    "409": error("the backend cannot switch adapters"),
                    "422": error("invalid or corrupt adapter"), "503": error("model unavailable")})},
        "/api/vlm/train": {
            "post": op("train a new adapter runs/NAME on the logged examples, in a child process", "202",
                       ok("started", TRAIN_JOB), body=rq.TrainRequest, body_required=True, query=None,
                       errors={**COMMON_ERRORS, "409": error("a training is running (training_running), runs/NAME "
                                                             "holds an adapter (adapter_exists), or the backend is "
                                                             "not the fine-tuned one (training_unsupported)"),
                               "422": error("invalid adapter name, or no training examples yet")}),
            "get": op("the latest training job (null when none ran)", query=None, answer=ok("job", {
                "type": "object", "required": ["job"], "properties": {"job": {"oneOf": [TRAIN_JOB_SCHEMA,
                                                                                          {"type": "null"}]}}})),
            "delete": op("cancel the running training", query=None, answer=ok("cancelled", TRAIN_JOB),
                         errors={"409": error("no training is running (no_training)")})},
    }


def target_paths() -> dict:
    return {
        "/api/target": {
            "put": op(f"attach a STEP or STL target (raw body or multipart field 'target', <= {rq.MAX_TARGET_MB} MB)",
                      "201",
                      ok("the stored target", ref("Target")), content=_target_upload(), body_required=True,
                      errors={**COMMON_ERRORS, "413": error(f"larger than {rq.MAX_TARGET_MB} MB"),
                              "422": error("not a readable STEP or STL"), **STORAGE_ERRORS}),
            "get": op("target metadata and its comparison with the current state", answer=ok("target", ref("Target")),
                      errors={**COMMON_ERRORS, "404": error("no target"), "422": error("the target cannot be read"),
                              "504": error("a build ran past CAD_BUILD_TIMEOUT")}),
            "delete": op("remove the target", answer=ok("deleted", {"type": "object"}),
                         errors={**COMMON_ERRORS, "404": error("no target"), **STORAGE_ERRORS})},
        "/api/target.glb": binary("model/gltf-binary", "the target as GLB (metres, Y up)", rq.ModelQuery),
        "/api/optimise": {
            "post": op("VLM proposal (use_vlm) then numeric refinement toward the target, applied as one history "
                       "entry (SSE with stream=true: vlm, progress, done | error)", body=rq.OptimiseRequest,
                       answer={"description": "state + entry + optimise report, or an event stream", "content": {
                           "application/json": {"schema": ref("Optimised")},
                           **event_stream("vlm", "progress", "done", "error")}},
                       errors={**WRITE_ERRORS, "404": error("no target"),
                               "409": error("version conflict, or an optimisation already runs"),
                               "504": error("a model script ran past CAD_BUILD_TIMEOUT (cad_build_timeout)")}),
            "delete": op("cancel the model's running optimisation (its best state so far is still applied if "
                         "better)", "202", ok("cancelling", {"type": "object", "required": ["model", "cancelling"],
                                                             "properties": {"model": {"type": "string"},
                                                                            "cancelling": {"type": "boolean"}}}),
                         errors={**COMMON_ERRORS, "404": error("unknown model, or no optimisation running "
                                                               "(not_running)")})},
    }


# RangeResetRequest validates DELETE /api/params/range's body but is not documented: the spec names ?parameter=.
REQUEST_MODELS = [rq.VersionBody, rq.EditRequest, rq.RangeRequest, rq.VlmRequest, rq.PreviewRequest,
                  rq.ApplyRequest, rq.RejectRequest, rq.AdapterRequest, rq.TrainRequest, rq.OptimiseRequest]
RESPONSE_MODELS = rs.RESPONSES


def all_paths() -> dict:
    paths = {**cad_paths(), **vlm_paths(), **target_paths()}
    for path, item in paths.items():
        for method, operation in item.items():
            operation["operationId"] = operation_id(method, path)
            for status, answer in GUARD_ERRORS.items():
                operation["responses"].setdefault(status, answer)
    return paths

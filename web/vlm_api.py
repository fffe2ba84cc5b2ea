"""VLM endpoints: ask for proposals (JSON or SSE stream), model status/load/unload, apply proposals."""
from __future__ import annotations

import logging
import queue
import threading
import time

from flask import Blueprint, Response, current_app, jsonify, request, stream_with_context

from vlm.backend import BackendError, GenerateRequest
from vlm.dataset import MAX_REASON_CHARS, DatasetLog
from vlm.images import MAX_IMAGES, ImageError, decode_base64_image, normalise_image
from vlm.prompts import build_prompt, proposal_json_schema
from vlm.proposals import ProposalSelectionError, parse_model_output

from .cad_api import entry_json, state_json
from .errors import ApiError
from .parse import expected_version, json_body, model_name
from .services import services
from .sse import relay, sse

log = logging.getLogger(__name__)
bp = Blueprint("vlm_api", __name__, url_prefix="/api")

MAX_PROMPT_CHARS = 4000
MAX_NEW_TOKENS = 2048
RENDER_VIEW, RENDER_SIZE = "iso", 384


def _flag(value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in {"1", "true", "yes", "on"}:
        return True
    if value in (None, "", 0) or (isinstance(value, str) and value.lower() in {"0", "false", "no", "off"}):
        return False
    raise ApiError(400, "bad_flag", f"expected true or false, got {value!r}")


def _number(body: dict, key: str, default, lo, hi, kind=float):
    value = body.get(key, default)
    if isinstance(value, str) and request.mimetype == "multipart/form-data":
        try:
            value = kind(value)
        except ValueError:
            raise ApiError(400, f"bad_{key}", f"{key} must be a number between {lo} and {hi}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not float(value).is_integer()):
        raise ApiError(400, f"bad_{key}", f"{key} must be {'an integer' if kind is int else 'a number'} between {lo} and {hi}")
    if not lo <= value <= hi:
        raise ApiError(400, f"bad_{key}", f"{key} must be between {lo} and {hi}, got {value}")
    return kind(value)


def _read_request() -> tuple[dict, list[bytes]]:
    """The body as a dict plus the raw image bytes, from JSON or multipart."""
    if request.mimetype == "multipart/form-data":
        body = {k: v for k, v in request.form.items()}
        raw_images = [f.read() for f in request.files.getlist("images") if f]
        if len(raw_images) > MAX_IMAGES:
            raise ApiError(400, "too_many_images", f"send at most {MAX_IMAGES} images")
        return body, raw_images
    body = json_body()
    images = body.get("images") or []
    if not isinstance(images, list):
        raise ApiError(400, "bad_images", "images must be a list of base64 strings or data URLs")
    if len(images) > MAX_IMAGES:
        raise ApiError(400, "too_many_images", f"send at most {MAX_IMAGES} images")
    try:
        return body, [decode_base64_image(item, i) for i, item in enumerate(images)]
    except ImageError as exc:
        raise ApiError(400, "bad_image", str(exc)) from None


def _prepare():
    """Validate everything before any model work: returns what the generation needs."""
    svc = services()
    body, raw_images = _read_request()
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ApiError(400, "missing_prompt", "prompt must be a non-empty string saying what you want changed")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ApiError(413, "prompt_too_long", f"prompt is {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}")
    try:
        images = [normalise_image(data, i, max_pixels=svc.config.max_image_pixels) for i, data in enumerate(raw_images)]
    except ImageError as exc:
        raise ApiError(422, "bad_image", str(exc)) from None
    include_render = _flag(body.get("include_render", False))
    stream = _flag(body.get("stream", False))
    max_new_tokens = _number(body, "max_new_tokens", 512, 1, MAX_NEW_TOKENS, int)
    temperature = _number(body, "temperature", 0.0, 0.0, 2.0, float)
    name = model_name(body)
    model = svc.registry.get(name)
    snap = svc.sessions.get(name).snapshot()
    if include_render:
        images.insert(0, svc.builder.render_png(model, snap["values"], RENDER_VIEW, RENDER_SIZE))
    schema = model.schema.to_json()
    system, user = build_prompt(schema, snap["values"], prompt.strip(), model_title=model.title,
                                has_images=len(images) > (1 if include_render else 0), has_render=include_render)
    gen = GenerateRequest(system=system, prompt=user, images=images, max_new_tokens=max_new_tokens,
                          temperature=temperature, json_schema=proposal_json_schema(schema),
                          timeout_s=svc.config.generate_timeout_s)
    return {"model": model, "schema": schema, "snapshot": snap, "request": gen, "stream": stream, "prompt": prompt,
            "include_render": include_render}


def _cache_key(ctx) -> str:
    svc = services()
    st = svc.manager.status()
    gen = ctx["request"]
    return svc.responses.key(backend=st.get("backend"), model=st.get("model"), adapter=st.get("adapter"),
                             system=gen.system, prompt=gen.prompt, images=gen.images,
                             max_new_tokens=gen.max_new_tokens, temperature=gen.temperature)


def _answer(ctx, text: str, *, model: str | None, timings: dict, cached: bool) -> dict:
    svc = services()
    snap = ctx["snapshot"]
    t0 = time.perf_counter()
    parsed = parse_model_output(text, ctx["schema"], snap["values"])
    timings = {**timings, "parse_s": round(time.perf_counter() - t0, 4)}
    status = svc.manager.status()
    gen = ctx["request"]
    # What the model saw and said, kept with the set so an apply/reject can be logged as a training example.
    renders = 1 if ctx["include_render"] else 0  # the render is the first image (vlm.prompts' contract)
    roles = ["render"] * renders + ["reference"] * (len(gen.images) - renders)
    meta = {"prompt": ctx["prompt"], "system": gen.system, "user": gen.prompt, "images": list(gen.images),
            "image_roles": roles, "text": text, "backend": status.get("backend"),
            "model": model or status.get("model"), "adapter": status.get("adapter")}
    proposal_id = svc.proposals.add(ctx["model"].name, snap["version"], parsed, meta)
    return {"id": proposal_id, "backend": status.get("backend"), "model": model or status.get("model"),
            "adapter": status.get("adapter"), "cad_model": ctx["model"].name, "base_version": snap["version"],
            "text": text, "summary": parsed.summary, "parse_error": parsed.parse_error, "warnings": parsed.warnings,
            "proposals": [p.to_json() for p in parsed.proposals], "timings": timings, "cached": cached}


def _run(ctx, on_token=None) -> dict:
    svc = services()
    gen = ctx["request"]
    key = _cache_key(ctx) if gen.deterministic else None
    hit = svc.responses.get(key) if key else None
    if hit is not None:
        if on_token:
            on_token(hit["text"])
        return _answer(ctx, hit["text"], model=hit["model"], timings={"total_s": 0.0}, cached=True)
    t0 = time.perf_counter()
    result = svc.manager.generate(gen, on_token=on_token)
    timings = {**result.timings, "total_s": round(time.perf_counter() - t0, 4)}
    if key and _cache_key(ctx) == key:  # not when the adapter was switched meanwhile
        svc.responses.put(key, {"text": result.text, "model": result.model})
    return _answer(ctx, result.text, model=result.model, timings=timings, cached=False)


@bp.post("/vlm")
def ask_vlm():
    ctx = _prepare()
    if not ctx["stream"]:
        return jsonify(_run(ctx))
    return Response(stream_with_context(_stream(ctx)), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _stream(ctx):
    """Run the request in a thread and relay its progress: load status while waiting, tokens, then done/error."""
    svc = services()
    events: queue.Queue = queue.Queue()
    app = current_app._get_current_object()

    def work():
        with app.app_context():
            try:
                events.put(("done", _run(ctx, on_token=lambda text: events.put(("token", {"text": text})))))
            except BackendError as exc:
                events.put(("error", {"error": exc.code, "message": exc.message}))
            except Exception:  # the client gets a clean error event, the log gets the traceback
                log.exception("VLM request failed")
                events.put(("error", {"error": "internal_error", "message": "the request failed; see the server log"}))

    threading.Thread(target=work, name="vlm-request", daemon=True).start()
    last_status = None

    def status_change() -> str | None:
        """While waiting: the model's load state and progress, when they changed and it is not ready yet."""
        nonlocal last_status
        st = svc.manager.status()
        brief = {"state": st["state"], "progress": st.get("progress")}
        if brief == last_status or st["state"] == "ready":
            return None
        last_status = brief
        return sse("status", brief)

    yield from relay(events, 0.5, status_change)


@bp.get("/vlm/status")
def vlm_status():
    return jsonify(services().manager.status())


@bp.post("/vlm/load")
def vlm_load():
    manager = services().manager
    manager.start_load()
    return jsonify(manager.status()), 202


@bp.post("/vlm/unload")
def vlm_unload():
    manager = services().manager
    manager.unload()
    return jsonify(manager.status())


@bp.post("/proposals/<proposal_id>/apply")
def apply_proposals(proposal_id: str):
    svc = services()
    body = json_body(required=False)
    ps = svc.proposals.get(proposal_id)
    if ps is None:
        raise ApiError(404, "unknown_proposal", f"no proposal set {proposal_id!r} (it may have expired; ask again)")
    names = body.get("parameters")
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
        raise ApiError(400, "bad_parameters", "parameters must be a list of parameter names")
    try:
        values = svc.proposals.select(ps, names)
    except ProposalSelectionError as exc:
        raise ApiError(422, "bad_selection", str(exc)) from None
    if not values:
        raise ApiError(422, "nothing_to_apply", "this proposal set has no valid changes to apply")
    entry = svc.sessions.get(ps.model_name).apply(
        values, source={"kind": "vlm", "proposal_id": proposal_id}, expected_version=expected_version(body),
        summary=(ps.summary or "")[:200] or None)
    _record_decision(ps, "applied", values)
    return jsonify(state_json(ps.model_name, entry=entry_json(ps.model_name, entry)))


@bp.post("/proposals/<proposal_id>/reject")
def reject_proposals(proposal_id: str):
    body = json_body(required=False)
    ps = services().proposals.get(proposal_id)
    if ps is None:
        raise ApiError(404, "unknown_proposal", f"no proposal set {proposal_id!r} (it may have expired; ask again)")
    reason = body.get("reason")
    if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON_CHARS):
        raise ApiError(400, "bad_reason", f"reason must be a string of at most {MAX_REASON_CHARS} characters")
    _record_decision(ps, "rejected", reject_reason=reason)
    return jsonify({"id": proposal_id, "rejected": True})


def _record_decision(ps, outcome: str, accepted: dict | None = None, reject_reason: str | None = None) -> None:
    """Log the decision as a training example. The user's action has succeeded: a logging failure only logs."""
    config = services().config
    if not config.record_dataset:
        return
    try:
        folder = config.dataset_dir or config.data_dir / "dataset"
        DatasetLog(folder).record_proposal_set(ps, outcome, accepted, reject_reason)
    except Exception:  # noqa: BLE001
        log.exception("could not record proposal set %s in the training dataset", ps.id)

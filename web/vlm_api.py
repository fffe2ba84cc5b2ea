"""VLM endpoints: ask for proposals (JSON or SSE stream), model status/load/unload, apply proposals."""
from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from dataclasses import asdict

from flask import Blueprint, Response, current_app, jsonify, request, stream_with_context

from vlm.backend import BackendError, GenerateRequest
from vlm.decisions import chosen_values, overwritten_edits
from vlm.images import MAX_IMAGES, ImageError, decode_base64_image, normalise_image
from vlm.prompts import build_prompt, proposal_json_schema
from vlm.proposals import ProposalSelectionError, parse_model_output

from .cad_api import entry_json, state_json
from .contract import (MAX_NEW_TOKENS, MAX_PROMPT_CHARS, ApplyRequest, RejectRequest, VlmRequest,  # noqa: F401
                       validate, validate_form)
from .errors import ApiError
from .parse import json_body, model_name
from .services import services
from .sse import relay, sse

log = logging.getLogger(__name__)
bp = Blueprint("vlm_api", __name__, url_prefix="/api")

RENDER_VIEW, RENDER_SIZE = "iso", 384
STREAM_IDLE_S = 0.2  # a keep-alive at least this often: a closed stream is noticed within a few of them
DISCONNECT_POLL_S = 0.25


def _read_request() -> tuple[VlmRequest, list[bytes]]:
    """The validated request plus the raw image bytes, from JSON or multipart (form fields are text: "true",
    "512"; they are read as the types the contract declares, web/contract/validate.py)."""
    if request.mimetype == "multipart/form-data":
        if "images" in request.form:
            raise ApiError(400, "bad_images", "images must be files (multipart file parts named 'images')")
        raw_images = [f.read() for f in request.files.getlist("images") if f]
        if len(raw_images) > MAX_IMAGES:
            raise ApiError(400, "too_many_images", f"send at most {MAX_IMAGES} images")
        return validate_form(VlmRequest, request.form), raw_images
    req = validate(VlmRequest, json_body())
    try:
        return req, [decode_base64_image(item, i) for i, item in enumerate(req.images or [])]
    except ImageError as exc:
        raise ApiError(400, "bad_image", str(exc)) from None


def _prepare():
    """Validate everything before any model work: returns what the generation needs."""
    svc = services()
    req, raw_images = _read_request()
    prompt = req.prompt
    try:
        images = [normalise_image(data, i, max_pixels=svc.config.max_image_pixels) for i, data in enumerate(raw_images)]
    except ImageError as exc:
        raise ApiError(422, "bad_image", str(exc)) from None
    include_render, stream = req.include_render, req.stream
    max_new_tokens, temperature = req.max_new_tokens, req.temperature
    name = model_name(req)
    model = svc.registry.get(name)
    snap = svc.sessions.get(name).snapshot()
    if include_render:
        images.insert(0, _design_render(model, snap["values"], req.camera))
    schema = svc.sessions.get(name).schema.to_json()  # with this session's narrowed ranges
    system, user = build_prompt(schema, snap["values"], prompt.strip(), model_title=model.title,
                                has_images=len(images) > (1 if include_render else 0), has_render=include_render)
    gen = GenerateRequest(system=system, prompt=user, images=images, max_new_tokens=max_new_tokens,
                          temperature=temperature, json_schema=proposal_json_schema(schema),
                          timeout_s=svc.config.generate_timeout_s)
    return {"model": model, "schema": schema, "snapshot": snap, "request": gen, "stream": stream, "prompt": prompt,
            "include_render": include_render, "voting": svc.config.voting(temperature)}


def _design_render(model, values: dict, camera) -> bytes:
    """The render the model sees: from the viewer's camera when the request sends it, else the fixed iso view;
    drawn in the build worker under its timeout."""
    try:
        return services().builder.render_png(model, values, RENDER_VIEW, RENDER_SIZE,
                                             camera=None if camera is None else camera.model_dump())
    except ValueError as exc:
        raise ApiError(422, "bad_camera", str(exc)) from None


def _cache_key(ctx) -> str | None:
    """The answer's cache key under the model as loaded (base and adapter content), or None: not cacheable (sampled,
    or the model is failed or loading)."""
    svc = services()
    gen = ctx["request"]
    voting = ctx["voting"]
    # a vote's samples are seeded: the same request gets the same votes, so its merged answer is cacheable too
    identity = svc.manager.cache_identity() if gen.deterministic or voting.votes > 1 else None
    if identity is None:
        return None
    return svc.responses.key(backend=identity.get("backend"), model=identity, adapter=identity.get("adapter_content"),
                             system=gen.system, prompt=gen.prompt, images=gen.images,
                             max_new_tokens=gen.max_new_tokens, temperature=0.0,
                             json_schema=gen.json_schema, extra={"voting": asdict(voting)} if voting.votes > 1 else None)


def _answer(ctx, text: str, *, model: str | None, timings: dict, cached: bool, finish_reason: str | None) -> dict:
    svc = services()
    snap = ctx["snapshot"]
    t0 = time.perf_counter()
    parsed = parse_model_output(text, ctx["schema"], snap["values"],
                                cut_off_at=ctx["request"].max_new_tokens if finish_reason == "length" else None)
    timings = {**timings, "parse_s": round(time.perf_counter() - t0, 4)}
    status = svc.manager.status()
    gen = ctx["request"]
    # What the model saw and said, kept with the set so an apply/reject can be logged as a training example.
    renders = 1 if ctx["include_render"] else 0  # the render is the first image (vlm.prompts' contract)
    roles = ["render"] * renders + ["reference"] * (len(gen.images) - renders)
    meta = {"prompt": ctx["prompt"], "system": gen.system, "user": gen.prompt, "images": list(gen.images),
            "image_roles": roles, "text": text, "values": dict(snap["values"]), "backend": status.get("backend"),
            "model": model or status.get("model"), "adapter": status.get("adapter")}
    proposal_id = svc.proposals.add(ctx["model"].name, snap["version"], parsed, meta)
    return {"id": proposal_id, "backend": status.get("backend"), "model": model or status.get("model"),
            "adapter": status.get("adapter"), "cad_model": ctx["model"].name, "base_version": snap["version"],
            "text": text, "summary": parsed.summary, "parse_error": parsed.parse_error, "warnings": parsed.warnings,
            "proposals": [p.to_json() for p in parsed.proposals], "timings": timings, "cached": cached,
            "finish_reason": finish_reason}


def _cached_answer(ctx, hit: dict, on_token=None) -> dict:
    if on_token:
        on_token(hit["text"])
    return _answer(ctx, hit["text"], model=hit["model"], timings={"total_s": 0.0}, cached=True,
                   finish_reason=hit.get("finish_reason"))


def _generate(ctx, job, key: str | None, on_token=None) -> dict:
    """Run the admitted job and read its answer; only an answer that parsed is cached, and only under the key
    the model still has (not when the adapter was switched or reloaded meanwhile)."""
    svc = services()
    t0 = time.perf_counter()
    result = ctx["voting"].answer(lambda samples: job.run_samples(samples, on_token), ctx["request"], ctx["schema"],
                                  ctx["snapshot"]["values"])
    timings = {**result.timings, "total_s": round(time.perf_counter() - t0, 4)}
    answer = _answer(ctx, result.text, model=result.model, timings=timings, cached=False,
                     finish_reason=result.finish_reason)
    if key and answer["parse_error"] is None and _cache_key(ctx) == key:
        svc.responses.put(key, {"text": result.text, "model": result.model, "finish_reason": result.finish_reason})
    return answer


@contextlib.contextmanager
def _cancel_on_disconnect(job):
    """Cancel the job when the client of a non-streamed request hangs up. waitress reports it only when it reads
    ahead on the connection (channel_request_lookahead > 0); without that the job runs to its end."""
    disconnected = request.environ.get("waitress.client_disconnected")
    if disconnected is None:
        yield
        return
    finished = threading.Event()

    def watch():
        while not finished.wait(DISCONNECT_POLL_S):
            if disconnected():
                log.info("the client went away; cancelling its VLM request")
                job.cancel()
                return

    threading.Thread(target=watch, name="vlm-disconnect-watch", daemon=True).start()
    try:
        yield
    finally:
        finished.set()


@bp.post("/vlm")
def ask_vlm():
    svc = services()
    ctx = _prepare()
    key = _cache_key(ctx)
    hit = svc.responses.get(key) if key else None
    if hit is not None:
        if not ctx["stream"]:
            return jsonify(_cached_answer(ctx, hit))
        return _event_stream(_stream(ctx, lambda on_token: _cached_answer(ctx, hit, on_token)))
    job = svc.scheduler.submit(ctx["request"])  # a full queue is 503 busy here, before any waiting
    if not ctx["stream"]:
        with _cancel_on_disconnect(job):
            return jsonify(_generate(ctx, job, key))
    try:
        response = _event_stream(_stream(ctx, lambda on_token: _generate(ctx, job, key, on_token)))
    except BaseException:
        job.discard()
        raise
    # Stop in the UI aborts the fetch: waitress closes the response when a write finds the client gone
    response.call_on_close(job.cancel)
    return response


def _event_stream(events) -> Response:
    return Response(stream_with_context(events), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _stream(ctx, produce):
    """Run `produce(on_token)` in a thread started now (so an admitted job always runs, and ends when cancelled),
    and relay its progress: load status while waiting, tokens, then done/error. The relay writes at least every
    STREAM_IDLE_S, which is how a client that went away is noticed."""
    svc = services()
    events: queue.Queue = queue.Queue()
    app = current_app._get_current_object()

    def work():
        with app.app_context():
            try:
                events.put(("done", produce(lambda text: events.put(("token", {"text": text})))))
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

    def relayed():
        yield from relay(events, STREAM_IDLE_S, status_change)

    return relayed()


@bp.get("/vlm/status")
def vlm_status():
    svc = services()
    return jsonify({**svc.manager.status(), "queue": svc.scheduler.stats()})


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


def _proposal_set(proposal_id: str):
    ps = services().proposals.get(proposal_id)
    if ps is None:
        raise ApiError(404, "unknown_proposal", f"no proposal set {proposal_id!r} (it may have expired; ask again)")
    return ps


@bp.post("/proposals/<proposal_id>/apply")
def apply_proposals(proposal_id: str):
    """Apply proposed values, the designer's corrections and additions (`values`) as one undoable entry; what was
    applied is logged as the example's target. Applying values already in place changes and records nothing."""
    svc = services()
    body = json_body(required=False)
    ps = _proposal_set(proposal_id)
    req = validate(ApplyRequest, body)
    names, values, overwrite = req.parameters, req.values, req.overwrite
    session = svc.sessions.get(ps.model_name)
    try:
        chosen = chosen_values(ps, session.schema, parameters=names, values=values)
    except ProposalSelectionError as exc:
        raise ApiError(422, "bad_selection", str(exc)) from None
    with session.lock:
        stale = overwritten_edits(ps, session.values, chosen)
        if stale and not overwrite:
            raise ApiError(409, "stale_proposal", f"{', '.join(stale)} changed after the model answered; applying "
                           "would replace your newer edit. Ask again, or send \"overwrite\": true to apply anyway",
                           parameters=stale, current_version=session.version)
        entry = session.apply(chosen, source={"kind": "vlm", "proposal_id": proposal_id},
                              expected_version=req.version, summary=(ps.summary or "")[:200] or None)
        snapshot = session.snapshot()
    if entry is not None:  # a no-op apply teaches nothing and is not logged
        svc.record_decision(ps, "applied", applied=chosen)
    return jsonify(state_json(ps.model_name, snapshot=snapshot, entry=entry_json(ps.model_name, entry),
                              applied={n: c["to"] for n, c in (entry.changes.items() if entry else [])}))


@bp.post("/proposals/<proposal_id>/reject")
def reject_proposals(proposal_id: str):
    """Keep the answer as a rejected one (preference data). Only with `nothing_should_change` does it also become
    a "no change" training target."""
    body = json_body(required=False)
    ps = _proposal_set(proposal_id)
    req = validate(RejectRequest, body)
    outcome = "no_change" if req.nothing_should_change else "rejected"
    services().record_decision(ps, outcome, reject_reason=req.reason)
    return jsonify({"id": proposal_id, "rejected": True, "recorded_as": outcome})

"""The VLM step of ``POST /api/optimise``: ask the active model for parameter values that match the target better.

The prompt is /api/vlm's (``vlm.prompts.build_prompt``) with the measured comparison as the request and two
renders attached (the current state, then the target, from the same direction); the answer is read by
``vlm.proposals.parse_model_output`` like any proposal, so nothing the model writes is executed and every value is
checked against the schema. The proposal is kept only when its IoU beats the current state's. A VLM that is not usable (fails to load, times out, answers nothing valid) becomes a
``vlm_note``; the caller's numeric refinement runs either way.
"""
from __future__ import annotations

import logging
import secrets
import time

from cad.errors import BuildError, ParameterError
from cad.target import TargetError
from vlm.backend import BackendError, CancelToken, GenerateRequest, GenerationCancelled
from vlm.prompts import build_prompt, describe_comparison, proposal_json_schema
from vlm.proposals import ProposalSet, parse_model_output

log = logging.getLogger(__name__)

RENDER_VIEW, RENDER_SIZE = "iso", 384  # as /api/vlm's include_render
MAX_NEW_TOKENS = 512


def _generate(svc, request: GenerateRequest, schema: list[dict], values: dict) -> str | None:
    """The model's text through the scheduler (with VLM_VOTES > 1 the vote of that many samples, as an ask gets),
    or None when the run was cancelled first (its token is the request's, so a cancel also stops the engine's
    work)."""
    voting = svc.config.voting(request.temperature)
    try:
        return voting.answer(svc.scheduler.submit(request).run_samples, request, schema, values).text
    except GenerationCancelled:
        if request.cancel is not None and request.cancel.is_set():
            return None
        raise


def _record(svc, model, request: GenerateRequest, text: str, parsed, values: dict, proposed: dict,
            iou_before: float, iou_proposal: float | None) -> None:
    """Log the proposal as a training example labelled by whether it raised the IoU (vlm.dataset, "optimise")."""
    status = svc.manager.status()
    meta = {"system": request.system, "user": request.prompt, "images": list(request.images),
            "image_roles": ["render", "reference"][:len(request.images)], "text": text, "values": dict(values),
            "prompt": "optimise toward the target", "backend": status.get("backend"), "model": status.get("model"),
            "adapter": status.get("adapter")}
    ps = ProposalSet("optimise-" + secrets.token_hex(6), model.name, -1, list(parsed.proposals), parsed.summary,
                     time.time(), meta)
    raised = iou_proposal is not None and iou_proposal > iou_before
    svc.record_decision(ps, "optimise", applied=proposed,
                        extra={"raised_iou": raised, "iou_before": iou_before, "iou_proposal": iou_proposal})


def ask_vlm(svc, model, target_path, values: dict, comparison: dict,
            cancel: CancelToken | None = None) -> tuple[dict, dict | None]:
    """(report, comparison of the accepted proposal or None). ``report`` holds ``vlm_used`` (the model answered),
    ``vlm_proposed`` (name -> value, the valid changes), ``vlm_iou`` (their IoU, or None), ``vlm_accepted``,
    ``vlm_summary`` and, when the step gave nothing usable, ``vlm_note``. Never raises for a VLM failure."""
    report = {"vlm_used": False, "vlm_proposed": {}, "vlm_iou": None, "vlm_accepted": False, "vlm_summary": None}
    started = time.perf_counter()
    schema = model.schema.to_json()
    images, request_text = [], describe_comparison(comparison)
    try:
        images.append(svc.builder.render_png(model, values, RENDER_VIEW, RENDER_SIZE))
        images.append(svc.builder.target_png(target_path, RENDER_VIEW, RENDER_SIZE))
        request_text += (" The second image is a render of the target shape from the same direction; each image "
                         "is framed on its own shape, so take sizes from the measurements above.")
    except (BuildError, TargetError) as exc:  # the measurements alone still make a usable prompt
        log.info("optimise: no renders for the VLM (%s)", exc)
        images = []
    system, user = build_prompt(schema, values, request_text, model_title=model.title,
                                has_images=bool(images), has_render=bool(images))
    request = GenerateRequest(system=system, prompt=user, images=images, max_new_tokens=MAX_NEW_TOKENS,
                              temperature=0.0, json_schema=proposal_json_schema(schema),
                              timeout_s=svc.config.generate_timeout_s, cancel=cancel)
    try:
        text = _generate(svc, request, schema, values)
    except BackendError as exc:
        return {**report, "vlm_note": f"the VLM was not usable ({exc.code}): {exc.message}"}, None
    except Exception:  # noqa: BLE001 - a VLM failure must not fail the optimisation
        log.exception("optimise: the VLM request failed")
        return {**report, "vlm_note": "the VLM request failed; see the server log"}, None
    if text is None:
        return {**report, "vlm_note": "cancelled before the VLM answered"}, None
    report["vlm_used"] = True
    parsed = parse_model_output(text, schema, values)
    report["vlm_summary"] = parsed.summary or None
    proposed = {p.parameter: p.value for p in parsed.valid_proposals if p.value != values.get(p.parameter)}
    report["vlm_proposed"] = proposed
    if not proposed:
        rejected = [p.error for p in parsed.proposals if not p.valid and p.error]
        why = parsed.parse_error or (rejected[0] if rejected else "it proposed no change")
        return {**report, "vlm_note": f"the VLM gave no valid proposal: {why}"}, None
    try:
        candidate = model.schema.complete({**values, **proposed})
        found = svc.builder.compare(model, candidate, target_path)
    except (BuildError, ParameterError) as exc:  # a timeout too: the proposal is at fault, not the design
        _record(svc, model, request, text, parsed, values, proposed, comparison["iou"], None)
        return {**report, "vlm_note": f"the VLM's proposal does not build: {exc}"}, None
    report["vlm_iou"] = found["iou"]
    _record(svc, model, request, text, parsed, values, proposed, comparison["iou"], found["iou"])
    log.info("optimise: VLM proposal %s has IoU %.4f (current %.4f), %.1f s", proposed, found["iou"],
             comparison["iou"], time.perf_counter() - started)
    if found["iou"] <= comparison["iou"]:
        return {**report, "vlm_note": f"the VLM's proposal has IoU {found['iou']:.3f}, no better than the current "
                                      f"{comparison['iou']:.3f}; it was not used"}, None
    report["vlm_accepted"] = True
    return report, found

"""Train an adapter from the server's logged examples (`vlm.train_jobs`): start, follow, cancel.

POST /api/vlm/train starts `python -m vlm.train` in a child process on the dataset the UI's decisions fill, for
the base the fine-tuned backend serves; GET /api/vlm/train follows it (phase, step, loss, ETA); DELETE cancels it.
The adapter lands in runs/NAME, where the adapter picker lists it and POST /api/vlm/adapter switches to it.
"""
from __future__ import annotations

import logging

from flask import Blueprint, jsonify

from vlm.dataset import load_examples
from vlm.model_files import resolve_base
from vlm.train_jobs import TrainingRefused
from vlm.worker_errors import WorkerError

from .adapters_api import ADAPTER_NAME
from .config import DEFAULT_BASE_MODEL
from .contract.requests import TrainRequest
from .contract.validate import validate
from .errors import ApiError
from .parse import json_body
from .services import services

log = logging.getLogger(__name__)
bp = Blueprint("training_api", __name__, url_prefix="/api/vlm")


def _training_base(svc) -> str:
    """The base the served adapter was trained on (so the new adapter fits the served model), else the default."""
    status = svc.manager.status()
    configured = svc.config.finetuned_model_path
    adapter = status.get("adapter") or (str(configured) if (configured / "adapter_config.json").is_file() else None)
    try:
        return resolve_base(svc.config.vlm_base_model, adapter, DEFAULT_BASE_MODEL)
    except WorkerError as exc:
        raise ApiError(409, "no_training_base", f"the base model to train on is unknown: {exc}") from None


def _train_examples(svc) -> int:
    try:
        return len(load_examples(svc.dataset_dir, split="train"))
    except (OSError, ValueError):
        return 0


@bp.post("/train")
def start_training():
    svc = services()
    body = validate(TrainRequest, json_body())
    if svc.config.backend != "finetuned":
        raise ApiError(409, "training_unsupported", f"the {svc.config.backend} backend serves a fixed model; "
                       "training an adapter needs the fine-tuned backend (VLM_BACKEND=finetuned)")
    if not ADAPTER_NAME.match(body.name) or ".." in body.name:
        raise ApiError(422, "invalid_adapter_name",
                       "an adapter name is a folder name under runs/ (letters, digits, '.', '_', '-'), not a path")
    try:
        job = svc.training.start(body.name, _training_base(svc), examples=_train_examples(svc),
                                 max_steps=body.max_steps, epochs=body.epochs)
    except TrainingRefused as exc:
        raise ApiError(exc.status, exc.code, exc.message) from None
    return jsonify({"job": job}), 202


@bp.get("/train")
def training_status():
    return jsonify({"job": services().training.status()})


@bp.delete("/train")
def cancel_training():
    job = services().training.cancel()
    if job is None:
        raise ApiError(409, "no_training", "no training is running")
    log.info("training %s cancelled", job["name"])
    return jsonify({"job": job})

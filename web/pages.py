"""The single page and the health check."""
from flask import Blueprint, jsonify, render_template

from .services import services

bp = Blueprint("pages", __name__)


@bp.get("/healthz")
def healthz():
    return jsonify({"status": "ok"})


@bp.get("/")
def index():
    cfg = services().config
    from .targets_api import MAX_TARGET_BYTES

    return render_template("index.html", max_upload_mb=cfg.max_upload_mb, backend=cfg.backend,
                           max_target_mb=MAX_TARGET_BYTES // 2**20)

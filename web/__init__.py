"""The web layer: Flask app factory and blueprints (shape of Flask's tutorial app).

Routes parse and validate, call `cad` / `vlm`, and serialise. Nothing heavy is imported here:
the app answers its first request before cadquery, torch or any model is loaded.
"""
from __future__ import annotations

import logging

from flask import Flask, request

from .config import REPO_ROOT, Config

log = logging.getLogger(__name__)

LARGE_BODY_BYTES = 1 << 20  # photos, target meshes: bodies whose parsing leaves freed arenas behind


def create_app(config: Config | None = None) -> Flask:
    config = config or Config.from_env()
    config.validate()
    app = Flask(__name__, root_path=str(REPO_ROOT), template_folder="templates", static_folder="static")
    app.config["OPTIM"] = config
    app.config["MAX_CONTENT_LENGTH"] = int(config.max_upload_mb * 1024 * 1024)
    app.config["JSON_SORT_KEYS"] = False
    app.json.sort_keys = False

    from .errors import register_error_handlers
    from .security import register_security
    from .services import Services

    app.extensions["optim"] = Services(config)
    register_error_handlers(app)
    register_security(app, config)
    _return_memory_after_large_bodies(app)

    from . import cad_api, openapi, pages, vlm_api

    app.register_blueprint(pages.bp)
    app.register_blueprint(cad_api.bp)
    app.register_blueprint(vlm_api.bp)
    from . import adapters_api

    app.register_blueprint(adapters_api.bp)
    from . import training_api

    app.register_blueprint(training_api.bp)
    from . import targets_api

    app.register_blueprint(targets_api.bp)
    app.register_blueprint(openapi.bp)
    return app


def _return_memory_after_large_bodies(app: Flask) -> None:
    from vlm.images import schedule_heap_trim  # Pillow-free at import; no torch

    @app.teardown_request
    def _trim(_exc):
        if (request.content_length or 0) >= LARGE_BODY_BYTES:
            schedule_heap_trim()

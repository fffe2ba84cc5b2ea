"""`GET /api/openapi.json`: the OpenAPI 3.1 document, generated from the contract (web/contract): request models
(the ones the routes validate with), response models, and the default CAD model's parameters by name, type and
range. `GET /api/models/<name>/openapi.json`: the same document with model `name`'s parameters."""
from __future__ import annotations

from flask import Blueprint, Flask, current_app, jsonify

from .contract.spec import VERSION, document  # noqa: F401

bp = Blueprint("openapi", __name__, url_prefix="/api")


def _parameters(app: Flask, name: str | None) -> tuple[list[dict], str]:
    svc = app.extensions["optim"]
    name = name or svc.registry.default_name
    model = svc.registry.get(name)  # UnknownModel: 404
    return svc.sessions.get(model.name).schema.to_json(), model.name  # with this session's narrowed ranges


def spec(app: Flask | None = None, model: str | None = None) -> dict:
    """The document; with `app`, only the paths that app really serves and its (default) model's parameters."""
    if app is None:
        return document()
    params, name = _parameters(app, model)
    return document(params, name, rules={r.rule for r in app.url_map.iter_rules()},
                    default=app.extensions["optim"].registry.default_name)


@bp.get("/openapi.json")
def openapi_json():
    return jsonify(spec(current_app))


@bp.get("/models/<name>/openapi.json")
def model_openapi_json(name: str):
    return jsonify(spec(current_app, name))

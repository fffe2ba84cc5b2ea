"""Small request-parsing helpers shared by the blueprints. Each raises ApiError with a clear message."""
from __future__ import annotations

import json

from flask import request

from .errors import ApiError


def json_body(*, required: bool = True) -> dict:
    raw = request.get_data(cache=True)
    if not raw.strip():
        if required:
            raise ApiError(400, "missing_body", "this endpoint expects a JSON object in the request body")
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "malformed_json", f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "malformed_json", "the request body must be a JSON object")
    return body


def model_name(body: dict | None = None) -> str:
    from .services import services

    name = request.args.get("model") or (body or {}).get("model") or services().registry.default_name
    if not isinstance(name, str) or len(name) > 100:
        raise ApiError(400, "bad_model", "model must be a model name string")
    return name


def expected_version(body: dict) -> int | None:
    version = body.get("version")
    if version is None:
        return None
    if isinstance(version, bool) or not isinstance(version, int):
        raise ApiError(400, "bad_version", "version must be an integer (the version you last saw)")
    return version


def int_arg(name: str, default: int, lo: int, hi: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"bad_{name}", f"{name} must be an integer between {lo} and {hi}") from None
    if not lo <= value <= hi:
        raise ApiError(400, f"bad_{name}", f"{name} must be between {lo} and {hi}, got {value}")
    return value


def choice_arg(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = request.args.get(name) or default
    if value not in choices:
        raise ApiError(400, f"bad_{name}", f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value

"""Small request-parsing helpers shared by the blueprints. Each raises ApiError with a clear message."""
from __future__ import annotations

import json

from flask import request

from .contract.requests import MAX_MODEL_NAME
from .errors import ApiError

# No request body of this API nests deeper than 3 levels. A much deeper one is refused here, before any code walks
# it: Python's recursion limit is about 1000 frames, and repr(), copies or the JSON encoder would hit it below that.
MAX_JSON_DEPTH = 32


def _too_deep(value, limit: int) -> bool:
    """True when `value` nests more than `limit` lists/objects deep (iterative: no recursion on hostile input)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        for child in children:
            if isinstance(child, (dict, list)):
                if depth + 1 > limit:
                    return True
                stack.append((child, depth + 1))
    return False


def json_body(*, required: bool = True) -> dict:
    raw = request.get_data(cache=True)
    if not raw.strip():
        if required:
            raise ApiError(400, "missing_body", "this endpoint expects a JSON object in the request body")
        return {}
    try:
        body = json.loads(raw)
    except RecursionError:  # the C decoder gives up on ~1000 levels of [[[[...
        raise ApiError(400, "malformed_json", f"the request body nests deeper than {MAX_JSON_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "malformed_json", f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "malformed_json", "the request body must be a JSON object")
    if _too_deep(body, MAX_JSON_DEPTH):
        raise ApiError(400, "malformed_json", f"the request body nests deeper than {MAX_JSON_DEPTH} levels")
    return body


def model_name(body=None) -> str:
    """The CAD model a request names: ?model=, else the body's (a dict, or a contract model with `.model`)."""
    from .services import services

    if body is not None and not isinstance(body, dict):  # validated already (web/contract)
        body = {} if body.model is None else {"model": body.model}
    body = body or {}
    # Checked even when ?model= wins: a body the spec forbids ("model": {}) is refused, not silently ignored.
    if "model" in body and not isinstance(body["model"], str):
        raise ApiError(400, "bad_model", "model must be a model name string")
    query, named = request.args.get("model"), body.get("model")
    if query and named and query != named:
        raise ApiError(400, "bad_model", f"the query names model {query!r} and the body {named!r}; name one")
    name = query or named or services().registry.default_name
    if len(name) > MAX_MODEL_NAME:
        raise ApiError(400, "bad_model", f"model must be a model name string of at most {MAX_MODEL_NAME} characters")
    return name

"""The OpenAPI 3.1 document, generated: paths from web/contract/paths.py, schemas from the pydantic models
(JSON Schema 2020-12, which OpenAPI 3.1 uses as it is), and the CAD model's parameters as ParameterValues /
ParameterName / NumberParameterName, so a client or a fuzzer can form valid edits."""
from __future__ import annotations

import copy
import functools
import re

from pydantic.json_schema import models_json_schema

from .paths import REQUEST_MODELS, RESPONSE_MODELS, all_paths
from .requests import MAX_MODEL_NAME

VERSION = "1.1.0"
NUMBER_OR_BOOL = {"anyOf": [{"type": "number"}, {"type": "boolean"}]}
ANY_MODEL = {"type": "string", "maxLength": MAX_MODEL_NAME,
             "description": "CAD model (default: the server's default model; ?model= wins)"}


def _clean(schema):
    """Drop pydantic's generated titles and `default: null` (the fields are optional, not nullable)."""
    if isinstance(schema, list):
        return [_clean(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    if "x-component" in schema:  # beside it only pydantic's title/default
        return {"$ref": f"#/components/schemas/{schema['x-component']}"}
    out = {}
    for key, value in schema.items():
        if (key == "title" and isinstance(value, str)) or (key == "default" and value is None):
            continue
        if key == "properties" and isinstance(value, dict):
            out[key] = {name: _clean(s) for name, s in value.items()}
        else:
            out[key] = _clean(value)
    return out


@functools.cache
def model_schemas() -> dict:
    """components/schemas of every request and response model."""
    pairs = [(m, "validation") for m in REQUEST_MODELS] + [(m, "serialization") for m in RESPONSE_MODELS]
    _, defs = models_json_schema(pairs, ref_template="#/components/schemas/{model}")
    return _clean(defs["$defs"])


def _parameter_schema(p: dict) -> dict:
    if p["type"] == "bool":
        return {"type": "boolean", "description": p.get("label") or p["name"]}
    schema = {"type": "integer" if p["type"] == "int" else "number",
              "description": " ".join(x for x in (p.get("label"), f"({p['unit']})" if p.get("unit") else "") if x)}
    schema.update({k: p[b] for k, b in (("minimum", "min"), ("maximum", "max")) if p.get(b) is not None})
    return schema


def _range_bounds(p: dict) -> dict:
    """One number parameter's branch of RangeRequest: its name and the script's range for both ends."""
    lo, hi = p.get("script_min", p["min"]), p.get("script_max", p["max"])
    end = {"type": "integer" if p["type"] == "int" else "number", "minimum": lo, "maximum": hi}
    return {"properties": {"parameter": {"const": p["name"]}, "min": end, "max": end}}


def _model_name(model: str, is_default: bool) -> dict:
    if is_default:  # an empty name means the default model too
        return {"type": "string", "enum": [model, ""], "description": f"this document is for CAD model {model!r} "
                "(the default: empty or left out); other models: GET /api/models/{name}/openapi.json"}
    return {"type": "string", "enum": [model], "description": f"this document is for CAD model {model!r}, which "
            "every request names (?model=); other models: GET /api/models/{name}/openapi.json"}


def parameter_schemas(params: list[dict] | None, model: str | None = None, is_default: bool = True) -> dict:
    """The model-specific components: with `params` (Param dicts) the names, types and ranges of that model."""
    if not params:
        return {"ParameterValues": {"type": "object", "additionalProperties": NUMBER_OR_BOOL,
                                    "description": "parameter name: value; GET /api/models/{name}/openapi.json "
                                                   "names a model's parameters"},
                "ParameterName": {"type": "string"}, "NumberParameterName": {"type": "string"}, "ModelName": ANY_MODEL}
    numbers = [p["name"] for p in params if p["type"] != "bool"]
    where = f"of model {model!r} " if model else ""
    out = {"ParameterValues": {"type": "object", "additionalProperties": False,
                               "properties": {p["name"]: _parameter_schema(p) for p in params},
                               "description": f"parameter name: value, {where}(other models: "
                                              "GET /api/models/{name}/openapi.json)"},
           "ParameterName": {"type": "string", "enum": [p["name"] for p in params]},
           "NumberParameterName": {"type": "string", "enum": numbers} if numbers else {"type": "string"}}
    out["ModelName"] = _model_name(model, is_default) if model else ANY_MODEL
    bounded = [_range_bounds(p) for p in params if p["type"] != "bool" and None not in (p["min"], p["max"])]
    if bounded:  # each parameter with its own range ends (min < max is checked by the server: 422)
        out["RangeRequest"] = {**copy.deepcopy(model_schemas()["RangeRequest"]), "oneOf": bounded}
    return out


def _query_parameters(query, model_required: bool = False) -> list[dict]:
    """A query model's fields as query parameters; `model_required`: a document for a model that is not the default
    must name it in every request (?model= wins over a body's)."""
    if query is None:
        return []
    schema = _clean(query.model_json_schema(ref_template="#/components/schemas/{model}"))
    params, required = [], set(schema.get("required", ())) | ({"model"} if model_required else set())
    for name, prop in schema.get("properties", {}).items():
        prop = dict(prop)
        description = prop.pop("description", None)
        params.append({"name": name, "in": "query", "required": name in required, "schema": prop,
                       **({"description": description} if description else {})})
    return params


def _operations(paths: dict, model_required: bool = False) -> dict:
    out = {}
    for path, item in paths.items():
        out[path] = {}
        for method, operation in item.items():
            operation = dict(operation)
            query = operation.pop("x-query-model", None)
            operation["parameters"] = _query_parameters(query, model_required) + operation["parameters"]
            if not operation["parameters"]:
                del operation["parameters"]
            out[path][method] = operation
    return out


def _rule_key(path: str) -> str:
    return re.sub(r"<(?:\w+:)?\w+>|\{\w+\}", "{}", path)


def served(paths: dict, rules: set[str]) -> dict:
    """Only the paths a Flask app really serves (blueprints are optional); `rules`: its url_map rules."""
    keys = {_rule_key(r) for r in rules}
    return {p: ops for p, ops in paths.items()
            if _rule_key(p) in keys or (p.startswith("/api/model.") and "/api/model.{}" in keys)}


def document(params: list[dict] | None = None, model: str | None = None, rules: set[str] | None = None,
             default: str | None = None) -> dict:
    """The document; with `params` and `model`, for that CAD model (`default`: the server's default model)."""
    other = model is not None and model != default
    paths = _operations(all_paths(), model_required=other)
    if rules is not None:
        paths = served(paths, rules)
    return {
        "openapi": "3.1.0",
        "info": {"title": "optim", "version": VERSION,
                 "description": "CAD-optimisation assistant. Every error is {error, message, ...extra}. Generated "
                                "from the request and response models in web/contract."
                                + (f" Parameters: model {model!r}." if model else "")},
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {"schemas": {**copy.deepcopy(model_schemas()), **parameter_schemas(params, model, not other)},
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                                      "description": "only when the server sets OPTIM_TOKEN"}}},
        "security": [{}, {"bearer": []}],
    }

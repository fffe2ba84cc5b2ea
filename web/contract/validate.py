"""Validation of request bodies and query strings against the contract's pydantic models.

A refusal keeps the API's error shape: ``ApiError(status, code, message)``. Each request model names, per field,
the code and human message of a refusal (``Refusal``); pydantic's own wording never reaches a client.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from ..errors import ApiError

M = TypeVar("M", bound=BaseModel)
# pydantic error types for a value of the right type outside its limits (a 422 where the field says so)
RANGE_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "too_long",
                "string_too_long"}
INTEGER_TEXT = re.compile(r"-?[0-9]{1,12}")  # int() would also take " 1_0 " and Arabic-Indic digits


@dataclass(frozen=True)
class Refusal:
    """How a bad value of one field is refused. Messages may use {value!r}, {length} and {lo}, {hi} (the field's
    limits). `range_*`: for a well-typed value outside its limits, when that differs."""
    code: str
    message: str
    status: int = 400
    range_code: str | None = None
    range_message: str | None = None
    range_status: int | None = None


def field_limits(model: type[BaseModel], name: str) -> tuple[Any, Any]:
    """(lower, upper) limit of a field as declared: ge/le, or min_length/max_length."""
    lo = hi = None
    for meta in model.model_fields[name].metadata:
        for attr in ("ge", "gt", "min_length"):
            lo = getattr(meta, attr, None) if lo is None else lo
        for attr in ("le", "lt", "max_length"):
            hi = getattr(meta, attr, None) if hi is None else hi
    return lo, hi


def _refusal(model: type[BaseModel], error: dict) -> ApiError:
    field = str(error["loc"][0]) if error.get("loc") else ""
    refusal: Refusal | None = getattr(model, "refusals", {}).get(field)
    if refusal is None:
        return ApiError(400, f"bad_{field or 'request'}", f"{field or 'the request'}: {error['msg']}")
    value = error.get("input")
    code, message, status = refusal.code, refusal.message, refusal.status
    if error["type"] in RANGE_ERRORS and refusal.range_status is not None:
        code = refusal.range_code or code
        message = refusal.range_message or message
        status = refusal.range_status
    lo, hi = field_limits(model, field) if field in model.model_fields else (None, None)
    length = len(value) if isinstance(value, (str, list, dict)) else None
    return ApiError(status, code, message.format(value=value, length=length, lo=lo, hi=hi))


def validate(model: type[M], data: dict) -> M:
    """`data` as `model`, or ApiError for its first bad field (fields are checked in declaration order)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _refusal(model, exc.errors(include_url=False)[0]) from None


NUMBER_TEXT = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?")  # a JSON number
BOOL_TEXT = {"true": True, "false": False}


def _typed(model: type[BaseModel], name: str, raw: str):
    """A query string or form value (text) typed as its field declares, by the rules of JSON's own text: integers
    as digits, numbers as JSON numbers, booleans as true/false. Anything else stays text and is refused."""
    annotation = model.model_fields[name].annotation
    if annotation is int and not INTEGER_TEXT.fullmatch(raw):
        raise _refusal(model, {"loc": (name,), "type": "int_parsing", "input": raw, "msg": "not an integer"})
    if annotation is int:
        return int(raw)
    if annotation is float and len(raw) <= 400 and NUMBER_TEXT.fullmatch(raw):
        return float(raw)
    if annotation is bool:
        return BOOL_TEXT.get(raw, raw)
    return raw


def _once(model: type[BaseModel], fields, name: str) -> str:
    """The one value of a form field or query parameter: given twice it is a list, which no field here is."""
    values = fields.getlist(name)
    if len(values) > 1:
        raise _refusal(model, {"loc": (name,), "type": "repeated", "input": values, "msg": "given more than once"})
    return values[0]


def validate_form(model: type[M], form) -> M:
    """Multipart form fields (all text) as `model`: "512", "0.5", "true" are read as the declared types."""
    return validate(model, {name: _typed(model, name, _once(model, form, name)) for name in model.model_fields
                            if name in form})


def validate_query(model: type[M], args) -> M:
    """The query string (a MultiDict) as `model`. An empty value is a value (`?view=` is not a view), except for
    `model`, where it means the default model."""
    data = {name: _typed(model, name, _once(model, args, name)) for name in model.model_fields
            if name in args and not (name == "model" and args[name] == "")}
    return validate(model, data)

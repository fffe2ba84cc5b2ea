"""The text sent to the model: a compact parameter table, the request, and the exact answer format.

Kept short on purpose: small local models have limited context and follow short, concrete instructions better.
Image order contract: when the current CAD render is attached it is the FIRST image; reference photos follow.
"""
from __future__ import annotations

from vlm.units import format_number, format_significant

MAX_DESCRIPTION_CHARS = 90
# Bounds on the answer's free text in the schema: a constrained model cannot ramble past them.
MAX_SUMMARY_CHARS, MAX_REASON_CHARS = 300, 120

ANSWER_FORMAT = ('{"summary": "<one or two sentences>", "changes": [{"parameter": "<name from the table>", '
                 '"value": <number, or true/false>, "reason": "<short reason>"}]}')

SYSTEM_TEMPLATE = """You are a CAD design assistant for the parametric model "{title}". You suggest changes to its \
parameters; you never write code.
Answer with ONLY one JSON object, no other text and no code fences:
{fmt}
Rules: use parameter names exactly as in the table; give absolute values in the parameter's unit and within its \
range; whole numbers for integer parameters; change only what the request needs; if nothing should change, \
answer with "changes": []."""


def _range_text(param: dict) -> str:
    kind = param.get("type", "float")
    if kind == "bool":
        return "true/false"
    lo, hi = param.get("min"), param.get("max")
    text = f"{format_number(lo) if lo is not None else '-inf'}..{format_number(hi) if hi is not None else 'inf'}"
    return text + " integer" if kind == "int" else text


def _one_line(text: str, limit: int) -> str:
    text = " ".join(str(text or "").split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def parameter_table(schema: list[dict], values: dict) -> str:
    lines = ["name | unit | range | current | description"]
    for p in schema:
        current = values.get(p["name"], p.get("default"))
        lines.append(" | ".join([p["name"], p.get("unit") or "-", _range_text(p), format_number(current),
                                 _one_line(p.get("description") or p.get("label") or "", MAX_DESCRIPTION_CHARS)]))
    return "\n".join(lines)


def _images_text(has_images: bool, has_render: bool) -> str:
    if has_render and has_images:
        return ("Images: the FIRST image is the current CAD render of the model (it shows the current values); "
                "the other images are reference photos from the user, not the CAD model.")
    if has_render:
        return "Image: the attached image is the current CAD render of the model (it shows the current values)."
    if has_images:
        return "Images: the attached images are reference photos from the user, not the CAD model."
    return ""


def build_prompt(schema: list[dict], values: dict, request: str, *, model_title: str, has_images: bool,
                 has_render: bool) -> tuple[str, str]:
    """(system, user) text for one proposal request. Raises ValueError on an empty request or schema."""
    if not isinstance(request, str) or not request.strip():
        raise ValueError("the request is empty: say what you want to change")
    if not schema:
        raise ValueError("the model has no parameters to change")
    system = SYSTEM_TEMPLATE.format(title=_one_line(model_title, 80), fmt=ANSWER_FORMAT)
    parts = [f"Parameters of {_one_line(model_title, 80)}:", parameter_table(schema, values)]
    images = _images_text(has_images, has_render)
    if images:
        parts.append(images)
    parts.append(f"Request: {request.strip()}")
    parts.append("Answer with the JSON object only.")
    return system, "\n\n".join(parts)


def _value_schema(param: dict) -> dict:
    kind = param.get("type", "float")
    if kind == "bool":
        return {"type": "boolean"}
    out: dict = {"type": "integer" if kind == "int" else "number"}
    if param.get("min") is not None:
        out["minimum"] = param["min"]
    if param.get("max") is not None:
        out["maximum"] = param["max"]
    return out


def proposal_json_schema(schema: list[dict]) -> dict:
    """JSON Schema of the answer, for engines that constrain decoding to it (Ollama's `format`, OpenAI's
    `response_format` with strict): one branch per parameter, so a change names a real parameter and its value has
    the parameter's type and range. `vlm.proposals` still validates every answer (not every engine enforces
    every keyword: llama.cpp's grammar ignores float bounds, for one)."""
    branches = [{
        "type": "object",
        "properties": {"parameter": {"type": "string", "enum": [p["name"]]}, "value": _value_schema(p),
                       "reason": {"type": "string", "maxLength": MAX_REASON_CHARS}},
        "required": ["parameter", "value", "reason"],
        "additionalProperties": False,
    } for p in schema]
    return {
        "type": "object",
        "properties": {"summary": {"type": "string", "maxLength": MAX_SUMMARY_CHARS},
                       "changes": {"type": "array", "items": {"anyOf": branches}, "maxItems": len(schema)}},
        "required": ["summary", "changes"],
        "additionalProperties": False,
    }


def _axes(values, reference: float | None = None, signed: bool = False) -> str:
    return ", ".join(f"{axis} {format_significant(v, reference=reference, signed=signed)}"
                     for axis, v in zip("XYZ", values))


def describe_comparison(comparison: dict) -> str:
    """The request text of optimise's VLM step: what to do, and how far the current state is from the target
    (model minus target, in the model's units) from a ``cad.target.compare_model`` answer.

    Sizes and volumes have three significant digits whatever the part's scale (fixed decimals read "X 0.0" and
    "0 mm^3" for a 0.02 mm plate); differences are written to the precision of the target's own figures.
    """
    unit = comparison.get("units") or "mm"
    lines = ["Change the parameters so that the CAD model matches the target shape as closely as possible.",
             f"Measured now: volumetric IoU with the target {comparison['iou']:.3f} (1 means identical)."]
    bbox, volume = comparison.get("bbox") or {}, comparison.get("volume") or {}
    if bbox:
        target_size = bbox["target"]["size"]
        extent = max((abs(v) for v in target_size), default=0.0) or None
        lines.append(f"Bounding box size: model {_axes(bbox['model']['size'])} {unit}; target {_axes(target_size)} "
                     f"{unit}; difference (model minus target) "
                     f"{_axes(bbox['size_difference'], extent, signed=True)} {unit}.")
        lines.append(f"Bounding box centre offset (model minus target): "
                     f"{_axes(bbox['centre_difference'], extent, signed=True)} {unit}.")
    if volume:
        relative = volume.get("relative")
        share = f" ({relative:+.1%})" if isinstance(relative, (int, float)) else ""
        target = volume.get("target") or None
        lines.append(f"Volume: model {format_significant(volume['model'])} {unit}^3, target "
                     f"{format_significant(volume['target'])} {unit}^3, difference "
                     f"{format_significant(volume['difference'], reference=target, signed=True)} {unit}^3{share}.")
    return " ".join(lines)

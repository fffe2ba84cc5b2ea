"""Task metrics of proposals: does an answer move the design toward what was asked?

Pure functions over the parameter schema (dicts, as in docs/api.md); no model, no CAD. For one example (the values
the model saw, the target values, the model's answer text) `score_answer` reads the answer exactly as the server
does (`vlm.proposals.parse_model_output`), applies its valid proposals and measures; `aggregate` sums a system's
scores. IoU is measured elsewhere (`vlm.eval`, with CAD) and attached to the scores.

Definitions (all over the examples given):
    parse_rate        answers from which a change list was read (an empty list counts: "no change" is an answer)
    valid_rate        valid proposals / proposals read (None when no proposal was read)
    precision         parameters both changed by the applied proposals and changed in the target / changed by the
                      proposals (micro-averaged; None when nothing was changed)
    recall            the same / changed in the target (None when no target changes anything)
    no_change_correct examples whose target changes nothing and whose answer changed nothing / such examples
    error_before      mean over examples of the mean over parameters of |value - target| / (max - min)
                      (bools: 0 or 1), for the values the model saw
    error_after       the same after applying the valid proposals
"""
from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

from vlm.proposals import parse_model_output


@dataclass
class Score:
    parsed: bool
    proposals: int
    valid: int
    predicted: list[str]  # parameters the applied proposals changed
    truth: list[str]  # parameters the target changes
    error_before: float
    error_after: float
    after_values: dict
    parse_error: str | None = None
    truncated: bool = False
    latency_s: float | None = None
    iou_before: float | None = None
    iou_after: float | None = None
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


def _range(param: dict) -> float:
    lo, hi = param.get("min"), param.get("max")
    if lo is None or hi is None or hi <= lo:
        return 1.0
    return float(hi - lo)


def parameter_error(param: dict, value: Any, target: Any) -> float:
    """|value - target| as a share of the parameter's range, capped at 1; bools 0 or 1."""
    if param.get("type") == "bool":
        return 0.0 if bool(value) == bool(target) else 1.0
    return min(1.0, abs(float(value) - float(target)) / _range(param))


def normalised_error(schema: list[dict], values: dict, target_values: dict) -> float:
    """Mean parameter error over every parameter of the schema."""
    errors = [parameter_error(p, values[p["name"]], target_values[p["name"]]) for p in schema]
    return sum(errors) / len(errors) if errors else 0.0


def _differs(param: dict, a: Any, b: Any) -> bool:
    return parameter_error(param, a, b) > 1e-9


def changed_parameters(schema: list[dict], values: dict, other: dict) -> list[str]:
    return [p["name"] for p in schema if _differs(p, values[p["name"]], other[p["name"]])]


def score_answer(text: str, schema: list[dict], values: dict, target_values: dict, *,
                 truncated: bool = False, latency_s: float | None = None) -> Score:
    """Read `text` as the server reads it, apply the valid proposals to `values`, and measure against the target."""
    parsed = parse_model_output(text, schema, values)
    after = dict(values)
    for proposal in parsed.valid_proposals:
        after[proposal.parameter] = proposal.value
    return Score(
        parsed=parsed.parse_error is None, proposals=len(parsed.proposals), valid=len(parsed.valid_proposals),
        predicted=changed_parameters(schema, values, after), truth=changed_parameters(schema, values, target_values),
        error_before=normalised_error(schema, values, target_values),
        error_after=normalised_error(schema, after, target_values), after_values=after,
        parse_error=parsed.parse_error, truncated=truncated, latency_s=latency_s)


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def aggregate(scores: list[Score]) -> dict:
    """A system's figures over its examples (see the module docstring)."""
    n = len(scores)
    proposals = sum(s.proposals for s in scores)
    true_positive = sum(len(set(s.predicted) & set(s.truth)) for s in scores)
    predicted = sum(len(s.predicted) for s in scores)
    truth = sum(len(s.truth) for s in scores)
    no_change = [s for s in scores if not s.truth]
    latencies = [s.latency_s for s in scores if s.latency_s is not None]
    iou_pairs = [(s.iou_before, s.iou_after) for s in scores if s.iou_before is not None and s.iou_after is not None]
    precision, recall = _ratio(true_positive, predicted), _ratio(true_positive, truth)
    out = {
        "examples": n,
        "parse_rate": _ratio(sum(s.parsed for s in scores), n),
        "valid_rate": _ratio(sum(s.valid for s in scores), proposals),
        "truncated": sum(s.truncated for s in scores),
        "precision": precision, "recall": recall,
        "f1": (2 * precision * recall / (precision + recall)) if precision and recall else None,
        "no_change_correct": _ratio(sum(not s.predicted for s in no_change), len(no_change)),
        "error_before": _mean([s.error_before for s in scores]),
        "error_after": _mean([s.error_after for s in scores]),
        "improved": _ratio(sum(s.error_after < s.error_before - 1e-12 for s in scores), n),
        "worsened": _ratio(sum(s.error_after > s.error_before + 1e-12 for s in scores), n),
        "iou_examples": len(iou_pairs),
        "iou_before": _mean([b for b, _ in iou_pairs]), "iou_after": _mean([a for _, a in iou_pairs]),
        "iou_before_median": statistics.median([b for b, _ in iou_pairs]) if iou_pairs else None,
        "iou_after_median": statistics.median([a for _, a in iou_pairs]) if iou_pairs else None,
        "latency_mean_s": _mean(latencies),
        "latency_p95_s": sorted(latencies)[min(len(latencies) - 1, math.ceil(0.95 * len(latencies)) - 1)]
        if latencies else None,
    }
    return out

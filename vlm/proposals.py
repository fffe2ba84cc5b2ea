"""Turn a model's free text into validated parameter-change proposals, and keep proposal sets until applied.

Nothing the model writes is executed: the text is read by `vlm.tolerant_json`, values are interpreted by the
small grammar in `vlm.units`, and every proposal is checked against the parameter schema (a list of dicts, as in
docs/api.md). Rejected proposals carry an `error` and are never applied; values are never clamped.
"""
from __future__ import annotations

import logging
import math
import re
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from vlm.answer_text import choose_blocks, flat_map_items, markdown_items, prose_items, split_reasoning
from vlm.tolerant_json import find_json_values
from vlm.units import BadValue, coerce_value, format_quantity

log = logging.getLogger(__name__)

MAX_TEXT_CHARS = 200_000
MAX_REASON_CHARS = 500
MAX_SUMMARY_CHARS = 2000
EXPECTED_FORMAT = '{"summary": "...", "changes": [{"parameter": "<name>", "value": <number>, "reason": "..."}]}'

_CHANGES_KEYS = ("changes", "proposals", "parameter_changes", "edits", "modifications", "updates")
_PARAM_KEYS = ("parameter", "param", "name", "parameter_name", "key")
_VALUE_KEYS = ("value", "new_value", "proposed_value", "new", "to")
_REASON_KEYS = ("reason", "why", "rationale", "explanation")
_SUMMARY_KEYS = ("summary", "explanation", "analysis", "rationale")


@dataclass
class Proposal:
    parameter: str  # canonical name, or the name as the model wrote it when it matches no parameter
    value: Any
    current: Any
    reason: str
    valid: bool
    error: str | None = None

    def to_json(self) -> dict:
        out = {"parameter": self.parameter, "value": _json_safe(self.value), "current": _json_safe(self.current),
               "reason": self.reason, "valid": self.valid}
        if self.error:
            out["error"] = self.error
        return out


@dataclass
class ParsedAnswer:
    summary: str
    proposals: list[Proposal]
    parse_error: str | None = None
    warnings: list[str] = field(default_factory=list)  # e.g. the answer was cut off but complete changes were read

    @property
    def valid_proposals(self) -> list[Proposal]:
        return [p for p in self.proposals if p.valid]

    def to_json(self) -> dict:
        return {"summary": self.summary, "proposals": [p.to_json() for p in self.proposals],
                "parse_error": self.parse_error, "warnings": list(self.warnings)}


def _json_safe(value: Any) -> Any:
    """Browsers' JSON has no NaN/Infinity; anything odd the model wrote is shown as text."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    return str(value)


# ---------------------------------------------------------------- parameter names
def _normalise(name: str) -> str:
    name = re.sub(r"\([^)]*\)|\[[^\]]*\]", " ", name.lower())  # "Wheel diameter (mm)" -> "wheel diameter"
    return re.sub(r"[^a-z0-9]+", "_", name).strip("_")


def resolve_parameter(raw: str, schema: list[dict]) -> tuple[str | None, str | None]:
    """(canonical name, None) or (None, why not). Matches the exact name, then the name or label ignoring
    case/spaces/hyphens, then a unique substring of at least 3 characters. Never picks between two candidates."""
    names = [p["name"] for p in schema]
    if raw in names:
        return raw, None
    key = _normalise(raw)
    if not key:
        return None, f"{raw!r} is not a parameter of this model"
    for p in schema:
        if key == _normalise(p["name"]) or key == _normalise(str(p.get("label") or "")):
            return p["name"], None
    if len(key) >= 3:
        hits = [p["name"] for p in schema
                if key in _normalise(p["name"]) or key in _normalise(str(p.get("label") or ""))]
        if len(hits) == 1:
            return hits[0], None
        if len(hits) > 1:
            return None, f"{raw!r} is ambiguous: it could be {', '.join(hits[:-1])} or {hits[-1]}"
    return None, f"{raw!r} is not a parameter of this model"


# ---------------------------------------------------------------- finding the changes in the JSON
def _first_key(d: dict, keys: tuple[str, ...]) -> Any:
    lowered = {str(k).lower(): k for k in d}
    for k in keys:
        if k in lowered:
            return d[lowered[k]]
    return None


def _has_key(d: dict, keys: tuple[str, ...]) -> bool:
    return any(str(k).lower() in keys for k in d)


def _looks_like_change(item: Any) -> bool:
    return isinstance(item, dict) and _has_key(item, _PARAM_KEYS) and _has_key(item, _VALUE_KEYS)


def _walk_dicts(value: Any, depth: int = 0):
    """Every dict inside `value`, outermost first (bounded depth; the reader already bounds it too)."""
    if depth > 8:
        return
    if isinstance(value, dict):
        yield value
        children = value.values()
    elif isinstance(value, list):
        children = value
    else:
        return
    for child in children:
        yield from _walk_dicts(child, depth + 1)


def _is_template(container: dict) -> bool:
    """An echo of the format example, e.g. {"parameter": "<name>", ...}: never preferred over a real answer."""
    changes = _first_key(container, _CHANGES_KEYS)
    items = changes if isinstance(changes, list) else []
    names = [_first_key(i, _PARAM_KEYS) for i in items if isinstance(i, dict)]
    return bool(names) and all(isinstance(n, str) and n.strip().startswith("<") for n in names)


def _containers(value: Any) -> list[dict]:
    """Answer objects (with a changes key) inside one JSON value, outermost first, echoes of the format left out
    unless nothing else is there."""
    found = [d for d in _walk_dicts(value) if isinstance(_first_key(d, _CHANGES_KEYS), (list, dict))]
    return [d for d in found if not _is_template(d)] or found


def _structured(text: str, blobs: list, schema: list[dict], warnings: list[str]) -> tuple[str, list] | None:
    """(summary, items) from the JSON in the answer (see vlm.answer_text), or None when it holds no changes."""
    blocks = []
    for blob in blobs:
        containers = _containers(blob.value)
        if containers:
            blocks.append((blob.start, blob.end, containers[0]))
    blocks = [b for b in blocks if not _is_template(b[2])] or blocks  # an echo of the format is not an answer
    if blocks:
        with_changes = [b for b in blocks if _first_key(b[2], _CHANGES_KEYS)] or blocks[-1:]
        chosen, dropped = choose_blocks(text, with_changes)
        if dropped:
            warnings.append("an earlier draft in the answer was ignored; only its final changes were read")
        summaries = [s for s in (_first_key(c, _SUMMARY_KEYS) for c in chosen) if isinstance(s, str) and s.strip()]
        items = [item for c in chosen for item in _change_items(_first_key(c, _CHANGES_KEYS))]
        return (summaries[-1] if summaries else ""), items
    values = [b.value for b in blobs]
    lists = [v for v in values if isinstance(v, list) and v and any(_looks_like_change(i) for i in v)]
    if lists:
        return "", _change_items(lists[-1])
    singles = [v for v in values if _looks_like_change(v)]
    if singles:
        return "", _change_items(singles)
    resolve = lambda name: resolve_parameter(name, schema)[0]  # noqa: E731
    flat = [item for v in values for item in flat_map_items(v, resolve, _SUMMARY_KEYS)]
    if flat:
        summaries = [v.get(k) for v in values if isinstance(v, dict) for k in v if str(k).lower() in _SUMMARY_KEYS]
        return next((x for x in reversed(summaries) if isinstance(x, str)), ""), flat
    return None


def _change_items(changes: Any) -> list[tuple[Any, Any, bool, Any]]:
    """Normalise the changes container to (name, value, has_value, reason) tuples."""
    items = []
    if isinstance(changes, dict):  # {"wheel_diameter": 120} or {"wheel_diameter": {"value": 120, "reason": ...}}
        for name, val in changes.items():
            if isinstance(val, dict) and _has_key(val, _VALUE_KEYS):
                items.append((name, _first_key(val, _VALUE_KEYS), True, _first_key(val, _REASON_KEYS)))
            else:
                items.append((name, val, True, None))
        return items
    for item in changes:
        if isinstance(item, dict):
            has_value = _has_key(item, _VALUE_KEYS)
            items.append((_first_key(item, _PARAM_KEYS), _first_key(item, _VALUE_KEYS), has_value,
                          _first_key(item, _REASON_KEYS)))
        elif isinstance(item, list) and len(item) in (2, 3):  # ["wheel_diameter", 120, "why"]
            items.append((item[0], item[1], True, item[2] if len(item) == 3 else None))
        else:
            items.append((None, item, True, None))
    return items


# ---------------------------------------------------------------- validation
def _validate(name: Any, raw_value: Any, has_value: bool, reason: Any,
              by_name: dict[str, dict], schema: list[dict], values: dict) -> Proposal:
    reason_text = (reason if isinstance(reason, str) else "" if reason is None else str(reason))[:MAX_REASON_CHARS]
    if not isinstance(name, str) or not name.strip():
        return Proposal("", _json_safe(raw_value), None, reason_text, False,
                        "a change without a parameter name was ignored")
    canonical, why = resolve_parameter(name.strip(), schema)
    if canonical is None:
        return Proposal(name.strip(), _json_safe(raw_value), None, reason_text, False, why)
    param = by_name[canonical]
    current = values.get(canonical)
    if not has_value or raw_value is None:
        return Proposal(canonical, None, current, reason_text, False, f"{canonical}: no value given")
    try:
        value = coerce_value(raw_value, param, current)
    except BadValue as exc:
        return Proposal(canonical, _json_safe(raw_value), current, reason_text, False, f"{canonical}: {exc}")
    if param.get("type") != "bool":
        lo, hi = param.get("min"), param.get("max")
        unit = param.get("unit") or ""
        if lo is not None and value < lo:
            return Proposal(canonical, value, current, reason_text, False,
                            f"{canonical}: {format_quantity(value, unit)} is below the minimum "
                            f"{format_quantity(lo, unit)}")
        if hi is not None and value > hi:
            return Proposal(canonical, value, current, reason_text, False,
                            f"{canonical}: {format_quantity(value, unit)} is above the maximum "
                            f"{format_quantity(hi, unit)}")
    return Proposal(canonical, value, current, reason_text, True)


def _read_items(text: str, schema: list[dict], warnings: list[str]) -> tuple[str, list] | str:
    """(summary, items), or the reason no change list could be read."""
    visible, had_reasoning = split_reasoning(text)
    blobs = find_json_values(visible)
    found = _structured(visible, blobs, schema, warnings)
    if found is None and (table := markdown_items(visible)):
        warnings.append("the changes were read from a markdown table")
        found = ("", table)
    if found is None and (prose := prose_items(visible, schema)):
        warnings.append("the values were read from the answer's prose, not JSON: check them before applying")
        found = ("", prose)
    if found is not None:
        if any(b.truncated for b in blobs):
            warnings.append("the answer was cut off before its JSON ended; only complete changes were read")
        return found
    if had_reasoning and find_json_values(text):
        return ("the answer's JSON is only inside its <think> reasoning, which is a draft, not the answer; "
                f"expected {EXPECTED_FORMAT} after it")
    if not blobs:
        return f"the model's answer contains no JSON; expected {EXPECTED_FORMAT}"
    return f"the model's answer has JSON but no list of changes; expected {EXPECTED_FORMAT}"


def parse_model_output(text: str, schema: list[dict], values: dict, *, cut_off_at: int | None = None) -> ParsedAnswer:
    """Read the model's answer into proposals. Never raises on any text; see the module docstring.
    cut_off_at: the max_new_tokens that ended the answer early (finish reason "length"), when it did."""
    if not isinstance(text, str):
        return ParsedAnswer("", [], "the model returned no text")
    warnings: list[str] = []
    if cut_off_at:
        warnings.append(f"the answer was cut off at max_new_tokens ({cut_off_at}); raise max_new_tokens for a "
                        "complete answer")
    if len(text) > MAX_TEXT_CHARS:
        warnings.append(f"the answer was longer than {MAX_TEXT_CHARS} characters; only its start was read")
        text = text[:MAX_TEXT_CHARS]
    found = _read_items(text, schema, warnings)
    if isinstance(found, str):
        if cut_off_at:
            found += f" (the answer was cut off at max_new_tokens={cut_off_at}: raise max_new_tokens)"
        return ParsedAnswer("", [], found, warnings)
    summary, items = found
    by_name = {p["name"]: p for p in schema}
    proposals = [_validate(n, v, has, r, by_name, schema, values) for n, v, has, r in items]
    # Several changes to one parameter: the last one wins, the earlier ones are shown as rejected.
    last_index: dict[str, int] = {}
    for i, p in enumerate(proposals):
        if p.parameter:
            last_index[p.parameter] = i
    for i, p in enumerate(proposals):
        if p.parameter and last_index[p.parameter] != i:
            p.valid = False
            p.error = f"{p.parameter}: duplicate, replaced by a later change to the same parameter"
    return ParsedAnswer(summary.strip()[:MAX_SUMMARY_CHARS], proposals, None, warnings)


# ---------------------------------------------------------------- the proposal store
class ProposalSelectionError(ValueError):
    """The chosen parameters cannot be applied from this proposal set. `parameter` names the culprit if any."""

    def __init__(self, message: str, parameter: str | None = None):
        super().__init__(message)
        self.message = message
        self.parameter = parameter


@dataclass
class ProposalSet:
    id: str
    model_name: str
    base_version: int
    proposals: list[Proposal]
    summary: str
    created: float
    meta: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"id": self.id, "model": self.model_name, "base_version": self.base_version,
                "summary": self.summary, "proposals": [p.to_json() for p in self.proposals],
                "created": self.created}


def select(ps: ProposalSet, names: list[str] | None = None) -> dict[str, Any]:
    """{parameter: value} to apply: every valid proposal, or the chosen ones. Raises ProposalSelectionError."""
    valid = {p.parameter: p.value for p in ps.proposals if p.valid}
    if names is None:
        if not valid:
            raise ProposalSelectionError("this proposal has no valid changes to apply")
        return valid
    if not names:
        raise ProposalSelectionError("no parameters were chosen")
    chosen: dict[str, Any] = {}
    for name in names:
        if name in valid:
            chosen[name] = valid[name]
            continue
        rejected = [p for p in ps.proposals if p.parameter == name]
        if rejected:
            raise ProposalSelectionError(f"the change to {name} was rejected and cannot be applied: "
                                         f"{rejected[-1].error}", parameter=name)
        raise ProposalSelectionError(f"this proposal has no change to {name!r}", parameter=name)
    return chosen


def _meta_bytes(meta: dict) -> int:
    images = meta.get("images") or []
    return sum(len(item[1] if isinstance(item, tuple) else item) for item in images
               if isinstance(item, (bytes, bytearray, tuple)))


class ProposalStore:
    """Thread-safe LRU of proposal sets, so a user can apply a proposal after reviewing it."""

    select = staticmethod(select)

    def __init__(self, max_items: int = 256, max_bytes: int = 256 * 1024 * 1024):
        if max_items < 1:
            raise ValueError("max_items must be at least 1")
        self.max_items = max_items
        self.max_bytes = max_bytes  # image bytes kept in meta (for the training log) are bounded too
        self._items: OrderedDict[str, ProposalSet] = OrderedDict()
        self._sizes: dict[str, int] = {}
        self._bytes = 0
        self._lock = threading.Lock()

    def add(self, model_name: str, base_version: int, answer: ParsedAnswer, meta: dict | None = None) -> str:
        proposal_id = secrets.token_urlsafe(12)
        ps = ProposalSet(proposal_id, model_name, base_version, list(answer.proposals), answer.summary,
                         time.time(), dict(meta or {}))
        size = _meta_bytes(ps.meta)
        with self._lock:
            self._items[proposal_id] = ps
            self._sizes[proposal_id] = size
            self._bytes += size
            while len(self._items) > 1 and (len(self._items) > self.max_items or self._bytes > self.max_bytes):
                evicted, _ = self._items.popitem(last=False)
                self._bytes -= self._sizes.pop(evicted)
                log.debug("proposal set %s evicted", evicted)
        return proposal_id

    def get(self, proposal_id: str) -> ProposalSet | None:
        with self._lock:
            ps = self._items.get(proposal_id)
            if ps is not None:
                self._items.move_to_end(proposal_id)
            return ps

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

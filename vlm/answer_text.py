"""Where the changes are in a model's answer, before any validation: the habits of real models.

- Reasoning: text inside `<think>...</think>` (or an unclosed `<think>`) is a draft, never the answer.
- Several JSON blocks: merged when they complement each other; when a later block is introduced as a revision
  ("final", "corrected", "actually", ...) only the blocks from there on count.
- A flat map of parameter names to values, `{"wheel_diameter": 120}`, is a change list.
- A markdown table with a parameter column and a proposed-value column.
- Prose, "set the wheel diameter to about 12 cm": only when nothing structured was found, only values introduced
  by "to", "=", ":", an arrow or "should be", and flagged so the designer checks them.
Nothing here evaluates text. Each reader returns (summary, items) with items as (name, value, has_value, reason).
"""
from __future__ import annotations

import re
from typing import Any, Callable

Item = tuple[Any, Any, bool, Any]

_THINK = re.compile(r"<think>.*?(?:</think>|\Z)", re.IGNORECASE | re.DOTALL)
_REVISION = re.compile(r"\b(final|corrected|correction|revised|revision|updated|actually|instead|on second "
                       r"thought|wait|fixed)\b", re.IGNORECASE)
_PARAM_HEADERS = ("parameter", "param", "name", "setting", "dimension", "feature")
_VALUE_HEADERS = ("proposed", "proposed value", "new", "new value", "value", "to", "target", "suggested",
                  "recommended", "change", "after")
_REASON_HEADERS = ("reason", "why", "rationale", "notes", "note", "explanation")
_ARROW = re.compile(r"(?:→|->|=>)\s*")
_NUMBER = r"[+-]?(?:\d+(?:[.,]\d+)?|[.,]\d+)"
_PROSE_VALUE = re.compile(
    rf"[\s*_`'\"]*(?:\([^)]{{0,30}}\)\s*)?(?:(?:from\s+{_NUMBER}\s*\w*\s+)|(?:\w+\s+){{0,3}}?)?"
    rf"(?:to|=|:|→|->|should\s+be|be|of)\s*(?:about|around|roughly|approximately|approx\.?|~|≈|circa)?\s*"
    rf"({_NUMBER}\s*(?:mm|cm|m|in|inch|inches|deg|degrees|°|%|rad)?\b|true|false)", re.IGNORECASE)


def split_reasoning(text: str) -> tuple[str, bool]:
    """(the answer without its reasoning, whether reasoning was removed)."""
    visible = _THINK.sub(" ", text)
    return visible, visible != text


def choose_blocks(text: str, blocks: list[tuple[int, int, Any]]) -> tuple[list[Any], bool]:
    """The JSON values that make the answer, from (start, end, value) blocks that hold changes: all of them, or
    those from the last one introduced as a revision on. Returns (values, whether drafts were dropped)."""
    start = 0
    for i in range(1, len(blocks)):
        if _REVISION.search(text[blocks[i - 1][1]:blocks[i][0]]):
            start = i
    return [value for _, _, value in blocks[start:]], start > 0


def flat_map_items(value: Any, resolve: Callable[[str], str | None], skip_keys: tuple[str, ...]) -> list[Item]:
    """`{"wheel_diameter": 120, "summary": ...}` -> items, when every other key names a parameter."""
    if not isinstance(value, dict):
        return []
    keys = [k for k in value if str(k).lower() not in skip_keys]
    if not keys or not all(isinstance(k, str) and resolve(k) for k in keys):
        return []
    return [(k, value[k], True, None) for k in keys if not isinstance(value[k], (dict, list))]


def _cells(line: str) -> list[str]:
    return [c.strip().strip("*`_ ") for c in line.strip().strip("|").split("|")]


def _column(header: list[str], names: tuple[str, ...]) -> int | None:
    lowered = [h.lower() for h in header]
    for name in names:
        if name in lowered:
            return lowered.index(name)
    return None


def markdown_items(text: str) -> list[Item]:
    """Rows of a markdown table whose header has a parameter column and a proposed-value column."""
    lines = [line for line in text.splitlines() if line.strip().startswith("|")]
    items: list[Item] = []
    header: list[str] | None = None
    for line in lines:
        cells = _cells(line)
        if all(re.fullmatch(r":?-{2,}:?", c) for c in cells if c):
            continue
        if header is None or (_column(cells, _PARAM_HEADERS) is not None and
                              _column(cells, _VALUE_HEADERS) is not None):
            header = cells
            continue
        name_col, value_col = _column(header, _PARAM_HEADERS), _column(header, _VALUE_HEADERS)
        if name_col is None or value_col is None or max(name_col, value_col) >= len(cells):
            continue
        value = _ARROW.split(cells[value_col])[-1].strip()
        reason_col = _column(header, _REASON_HEADERS)
        reason = cells[reason_col] if reason_col is not None and reason_col < len(cells) else None
        if cells[name_col] and value:
            items.append((cells[name_col], value, True, reason))
    return items


def prose_items(text: str, schema: list[dict]) -> list[Item]:
    """Values stated next to a parameter's name or label, in order of appearance; the last mention wins later."""
    found: list[tuple[int, Item]] = []
    for param in schema:
        spellings = {param["name"], param["name"].replace("_", " "), str(param.get("label") or "")}
        for spelling in sorted((s for s in spellings if len(s) >= 3), key=len, reverse=True):
            pattern = re.compile(rf"(?<![\w]){re.escape(spelling)}(?![\w])", re.IGNORECASE)
            for mention in pattern.finditer(text):
                match = _PROSE_VALUE.match(text, mention.end())
                if match:
                    found.append((mention.start(), (param["name"], match.group(1).strip(), True, None)))
    found.sort(key=lambda pair: pair[0])
    seen: set[tuple[str, int]] = set()
    items = []
    for pos, item in found:  # a label and the name can both match the same spot: keep one
        if (item[0], pos) not in seen:
            seen.add((item[0], pos))
            items.append(item)
    return items

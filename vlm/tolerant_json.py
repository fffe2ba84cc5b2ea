"""A small, forgiving JSON reader for what language models write. It never evaluates anything.

Accepts, beyond strict JSON: single-quoted strings, unquoted keys, trailing or missing commas, `//`, `/* */` and
`#` comments, Python literals (True/False/None), NaN/Infinity, and bare values such as `120 mm` or `+10%`
(returned as strings for the caller to interpret). Output cut off mid-object is closed where it stops, keeping
the complete parts. Nesting depth, the number of start positions tried and the text rescanned by failed attempts
are bounded, so arbitrary text cannot make it slow or overflow the stack.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

MAX_DEPTH = 32
MAX_START_ATTEMPTS = 1000

_NUMBER_RE = re.compile(r"^-?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")
_LITERALS = {
    "true": True, "false": False, "null": None,
    "True": True, "False": False, "None": None,
    "NaN": float("nan"), "nan": float("nan"),
    "Infinity": float("inf"), "-Infinity": float("-inf"), "inf": float("inf"), "-inf": float("-inf"),
}
_QUOTES = {'"': '"', "'": "'", "\u201c": "\u201d", "\u2018": "\u2019"}
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "/": "/", "\\": "\\", '"': '"', "'": "'"}
_BARE_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_\- .]*")


@dataclass
class Blob:
    """One JSON value found in the text: where it starts and ends, and whether the text ended inside it."""
    value: Any
    start: int
    end: int
    truncated: bool


class _Fail(Exception):
    pass


class _EndOfText(Exception):
    pass


class _Reader:
    def __init__(self, text: str, pos: int):
        self.text = text
        self.pos = pos
        self.n = len(text)

    # -- lexical helpers
    def skip_space(self) -> None:
        text, n = self.text, self.n
        while self.pos < n:
            ch = text[self.pos]
            if ch.isspace():
                self.pos += 1
            elif text.startswith("//", self.pos) or ch == "#":
                end = text.find("\n", self.pos)
                self.pos = n if end < 0 else end + 1
            elif text.startswith("/*", self.pos):
                end = text.find("*/", self.pos + 2)
                self.pos = n if end < 0 else end + 2
            else:
                return

    def peek(self) -> str:
        self.skip_space()
        if self.pos >= self.n:
            raise _EndOfText
        return self.text[self.pos]

    # -- values; each returns (value, truncated)
    def value(self, depth: int) -> tuple[Any, bool]:
        if depth > MAX_DEPTH:
            raise _Fail("nested too deeply")
        ch = self.peek()
        if ch == "{":
            return self.obj(depth + 1)
        if ch == "[":
            return self.array(depth + 1)
        if ch in _QUOTES:
            return self.string(), False
        return self.bare(), False

    def string(self) -> str:
        text = self.text
        closing = _QUOTES[text[self.pos]]
        self.pos += 1
        out: list[str] = []
        while True:
            if self.pos >= self.n:
                raise _EndOfText
            ch = text[self.pos]
            if ch == closing:
                self.pos += 1
                return "".join(out)
            if ch == "\\" and self.pos + 1 < self.n:
                esc = text[self.pos + 1]
                if esc == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", text[self.pos + 2:self.pos + 6]):
                    out.append(chr(int(text[self.pos + 2:self.pos + 6], 16)))
                    self.pos += 6
                    continue
                out.append(_ESCAPES.get(esc, esc))
                self.pos += 2
                continue
            out.append(ch)
            self.pos += 1

    def bare(self) -> Any:
        """An unquoted value: read to the next delimiter and interpret it."""
        start = self.pos
        text = self.text
        while self.pos < self.n and text[self.pos] not in ",}]\n:{[":
            if text.startswith("//", self.pos) or text.startswith("/*", self.pos):
                break
            self.pos += 1
        token = text[start:self.pos].strip()
        if not token:
            raise _Fail("empty value")
        if self.pos >= self.n:
            raise _EndOfText  # the value may have been cut short
        if token in _LITERALS:
            return _LITERALS[token]
        if _NUMBER_RE.match(token):
            if re.fullmatch(r"-?\d+", token) and len(token) < 400:
                return int(token)
            try:
                return float(token)
            except (ValueError, OverflowError):
                return token
        return token

    def key(self) -> str:
        ch = self.peek()
        if ch in _QUOTES:
            return self.string()
        m = _BARE_KEY_RE.match(self.text, self.pos)
        if not m:
            raise _Fail("expected a key")
        self.pos = m.end()
        return m.group(0).strip()

    def obj(self, depth: int) -> tuple[dict, bool]:
        self.pos += 1  # '{'
        result: dict = {}
        try:
            while True:
                ch = self.peek()
                if ch == "}":
                    self.pos += 1
                    return result, False
                if ch == ",":
                    self.pos += 1
                    continue
                key = self.key()
                if self.peek() not in ":=":
                    raise _Fail("expected ':'")
                self.pos += 1
                try:
                    val, truncated = self.value(depth)
                except _EndOfText:
                    return result, True  # the value itself was cut off: drop it
                if truncated:
                    if isinstance(val, (dict, list)):
                        result[key] = val
                    return result, True
                result[key] = val
        except _EndOfText:
            return result, True

    def array(self, depth: int) -> tuple[list, bool]:
        self.pos += 1  # '['
        result: list = []
        try:
            while True:
                ch = self.peek()
                if ch == "]":
                    self.pos += 1
                    return result, False
                if ch == ",":
                    self.pos += 1
                    continue
                try:
                    val, truncated = self.value(depth)
                except _EndOfText:
                    return result, True
                if truncated:
                    if isinstance(val, list):
                        result.append(val)  # a cut-off dict in a list is an incomplete item: drop it
                    return result, True
                result.append(val)
        except _EndOfText:
            return result, True


def find_json_values(text: str) -> list[Blob]:
    """Every top-level object or array in `text`, left to right, not overlapping."""
    blobs: list[Blob] = []
    pos = 0
    attempts = 0
    # Failed attempts rescan text; bound their total so crafted input stays linear-ish (~1 s worst at 200 kB).
    rescan_budget = 4 * len(text) + 10_000
    while attempts < MAX_START_ATTEMPTS and rescan_budget > 0:
        starts = [i for i in (text.find("{", pos), text.find("[", pos)) if i >= 0]
        if not starts:
            break
        start = min(starts)
        attempts += 1
        reader = _Reader(text, start)
        try:
            value, truncated = reader.value(0)
        except (_Fail, _EndOfText):
            rescan_budget -= reader.pos - start
            pos = start + 1
            continue
        blobs.append(Blob(value, start, reader.pos, truncated))
        pos = max(reader.pos, start + 1)
    return blobs

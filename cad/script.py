"""Model scripts: parse a script's parameter schema without running it, and load it to build.

A CAD model is a plain Python file::

    \"\"\"Title on the first line.

    Longer description on the following lines.
    \"\"\"
    import cadquery as cq

    chassis_length: float = 220.0  # mm, 80..400, Chassis, step=1: Length of the chassis plate along X
    wheels_per_side: int = 3       # 1..4, Wheels: Number of wheels on each side
    show_sensor_fork: bool = True  # Sensor fork, label=Show fork: Mount the sensor fork on the head

    def build(p):
        ...  # return a cq.Assembly with one named child per part

Parameters are the module-level annotated assignments whose annotation is ``float``, ``int`` or ``bool`` and whose
name does not start with ``_``. The default is a literal or constant arithmetic on literals (``1.5 / 2``, folded
with ``ast``, never evaluated). The trailing comment is the schema:

* numbers: ``# [unit,] min..max, Group[, step=S][, label=Text][: description]``
  The unit is optional (``# 1..4, Wheels`` or ``# , 1..4, Wheels`` for a count); min/max are literals.
* bool:    ``# Group[, label=Text][: description]``

Everything after the first ``:`` is the description. ``label`` defaults to the name in words ("Chassis length");
``step`` defaults to 1 for ints and to a round fraction (~1/100) of the range for floats.

The script defines a top-level ``build(p)``; ``p`` is a namespace with one typed attribute per parameter (and per
derived value). It returns a cadquery Assembly, Workplane, Shape or Compound.

CQGI-style scripts (no schema comment anywhere; see ``cad.script_cqgi``) are read too: every top-level constant
number or bool is a parameter with an inferred range (``"inferred": true`` in the schema), ``describe_parameter``
gives descriptions and ``show_object`` calls give the parts. Where a schema comment is present it wins.
Assignments computed from parameters (``extrude = length / 2``) are derived values, recomputed at build time.
Running scripts is ``cad.script_run``'s job.
Every problem is reported as ``ScriptError`` with file and line.
"""
from __future__ import annotations

import ast
import hashlib
import io
import math
import re
import threading
import tokenize
from dataclasses import dataclass, field
from pathlib import Path

from cad import script_cqgi as cqgi
from cad.errors import ScriptError
from cad.schema import Parameter, Schema

# CPython 3.11 keeps the AST converter's recursion counter per interpreter, not per thread: two threads
# converting at once (a GC finaliser can switch threads mid-conversion) raise "SystemError: AST constructor
# recursion depth mismatch". Four concurrent first requests hit it in CI; every AST conversion goes through this.
_AST_LOCK = threading.Lock()


def parse_python(source: str, filename: str = "<script>") -> ast.Module:
    """``ast.parse`` made safe to call from several threads at once."""
    with _AST_LOCK:
        return ast.parse(source, filename=filename)


def compile_tree(tree: ast.Module, filename: str):
    """``compile`` of an AST (converted back to C structures, the same shared counter), thread-safe."""
    with _AST_LOCK:
        return compile(tree, filename, "exec")


_RANGE = re.compile(r"^\s*(-?[0-9.eE+-]+)\s*\.\.\s*(-?[0-9.eE+-]+)\s*$")
_OPTION = re.compile(r"^\s*(step|label)\s*=\s*(.+?)\s*$")


@dataclass(frozen=True)
class Derived:
    """A top-level value computed from parameters (``extrude = box_length``): recomputed at build time."""
    name: str
    expression: str
    line: int
    uses: tuple[str, ...]

    def to_json(self) -> dict:
        return {"name": self.name, "expression": self.expression, "line": self.line, "uses": list(self.uses)}


@dataclass(frozen=True)
class ScriptInfo:
    title: str
    description: str
    schema: Schema
    source_hash: str
    kind: str = "build"  # "build": a build(p) function; "cqgi": top-level code that calls show_object/show
    derived: tuple[Derived, ...] = ()
    lines: dict = field(default_factory=dict)  # parameter name -> line of the assignment that defines it


def source_hash(source: str) -> str:
    return hashlib.sha256(source.encode("utf-8")).hexdigest()


def parse_script(path: Path | str) -> ScriptInfo:
    """Read title, description and schema of the script at ``path`` without executing it."""
    path = Path(path)
    try:
        source = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScriptError(str(path), None, f"cannot read script: {exc}") from None
    return parse_source(source, str(path))


def parse_source(source: str, filename: str = "<script>") -> ScriptInfo:
    try:
        tree = parse_python(source, filename)
    except SyntaxError as exc:
        raise ScriptError(filename, exc.lineno, f"syntax error: {exc.msg}") from None
    comments = _comments_by_line(source, filename)
    docstring = ast.get_docstring(tree) or ""
    title, _, description = docstring.strip().partition("\n")
    build = cqgi.has_build(tree)
    if not build and not cqgi.shows_objects(tree):
        raise ScriptError(filename, None, "script must define a top-level function build(p) or call "
                                          "show_object(...) / show(...) with its parts")
    parameters, derived, lines = _collect(tree, comments, filename)
    stem = Path(filename).stem
    return ScriptInfo(title=title.strip() or stem, description=" ".join(description.split()),
                      schema=Schema(parameters), source_hash=source_hash(source),
                      kind="build" if build else "cqgi", derived=tuple(derived), lines=lines)


def _is_schema_comment(kind: str | None, annotation: str | None, comment: str | None) -> bool:
    """A trailing comment is the declared schema when it gives a range (numbers) or is on an annotated bool."""
    if not comment:
        return False
    if kind == "bool":
        return annotation == "bool"
    return ".." in comment.partition(":")[0]


def _collect(tree: ast.Module, comments: dict[int, str], filename: str):
    """Parameters (declared or inferred), derived values and each parameter's line, in script order.

    Declared mode (the script has an annotated parameter with a schema comment): only annotated float/int/bool
    assignments are parameters, as before. Otherwise (CQGI mode) every top-level assignment of a constant
    number or bool is one."""
    items = [a for a in cqgi.assignments(tree) if not a.name.startswith("_")]
    declared_mode = any(a.annotation in cqgi.NUMBER_KINDS and _is_schema_comment(
        a.annotation, a.annotation, comments.get(a.node.end_lineno)) for a in items)
    described = cqgi.descriptions(tree)
    candidates, derived, lines = [], [], {}
    for a in items:
        if a.name in lines or any(d.name == a.name for d in derived):
            if declared_mode and a.annotation in cqgi.NUMBER_KINDS:
                raise ScriptError(filename, a.node.lineno, f"parameter {a.name!r} is defined twice")
            continue  # CQGI: the first assignment is the parameter; later ones are script code
        if a.annotation not in ((*cqgi.NUMBER_KINDS,) if declared_mode else (None, *cqgi.NUMBER_KINDS)):
            continue
        try:
            value = cqgi.fold(a.value)
        except cqgi.NotConstant:
            uses = cqgi.derived_from(a.value, set(lines) | {d.name for d in derived})
            if uses:
                derived.append(Derived(a.name, ast.unparse(a.value), a.node.lineno, tuple(uses)))
            elif a.annotation in cqgi.NUMBER_KINDS and comments.get(a.node.end_lineno):
                raise ScriptError(filename, a.node.lineno, f"parameter {a.name!r}: default must be a literal or "
                                  "constant arithmetic on literals (e.g. 1.5 / 2)")
            continue
        kind = cqgi.literal_kind(value, a.annotation)
        if kind is None:
            continue
        lines[a.name] = a.node.lineno
        candidates.append((a, kind, value))
    scale = cqgi.scale_of([v for _, k, v in candidates if k == "float"])
    parameters = []
    for a, kind, value in candidates:
        comment = comments.get(a.node.end_lineno)
        if _is_schema_comment(kind, a.annotation, comment):
            parameters.append(_parameter(a.node, a.name, kind, value, comment, filename))
        else:
            text = described.get(a.name) or (comment or "")
            parameters.append(_inferred(a.node, a.name, kind, value, text, scale, filename))
    return parameters, derived, lines


def _inferred(node: ast.stmt, name: str, kind: str, default, description: str, scale: float,
              filename: str) -> Parameter:
    """A parameter without a declared range: the range is inferred (``cad.script_cqgi.infer_range``)."""
    label = name.replace("_", " ").capitalize()
    if kind == "bool":
        if not isinstance(default, bool):
            raise ScriptError(filename, node.lineno, f"parameter {name!r}: default must be True or False")
        return Parameter(name, label, "", "bool", None, None, None, default, cqgi.INFERRED_GROUP, description)
    low, high = cqgi.infer_range(kind, default, scale)
    if kind == "int":
        if isinstance(default, float) and not default.is_integer():
            raise ScriptError(filename, node.lineno, f"parameter {name!r}: default must be an int, got {default!r}")
        return Parameter(name, label, "", "int", int(low), int(high), 1, int(default), cqgi.INFERRED_GROUP,
                         description, inferred=True)
    return Parameter(name, label, "", "float", float(low), float(high), _default_step(low, high), float(default),
                     cqgi.INFERRED_GROUP, description, inferred=True)


def _comments_by_line(source: str, filename: str) -> dict[int, str]:
    comments = {}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                comments[tok.start[0]] = tok.string[1:].strip()
    except (tokenize.TokenError, SyntaxError) as exc:
        raise ScriptError(filename, None, f"cannot tokenize script: {exc}") from None
    return comments


def _parameter(node: ast.stmt, name: str, kind: str, default, comment: str | None, filename: str) -> Parameter:
    line = node.lineno

    def fail(message: str) -> ScriptError:
        return ScriptError(filename, line, f"parameter {name!r}: {message}")

    head, _, description = comment.partition(":")
    fields = [f.strip() for f in head.split(",")]
    options: dict[str, str] = {}
    while fields and _OPTION.match(fields[-1]):
        key, value = _OPTION.match(fields.pop()).groups()
        options[key] = value
    label = options.get("label") or name.replace("_", " ").capitalize()
    if kind == "bool":
        groups = [f for f in fields if f]
        if len(groups) != 1:
            raise fail("bool schema comment must be '# Group[, label=Text][: description]'")
        if not isinstance(default, bool):
            raise fail(f"default must be True or False, got {default!r}")
        if "step" in options:
            raise fail("a bool parameter has no step")
        return Parameter(name, label, "", "bool", None, None, None, default, groups[0], description.strip())
    range_index = next((i for i, f in enumerate(fields) if _RANGE.match(f)), None)
    if range_index is None or range_index > 1:
        raise fail("number schema comment must be '# [unit,] min..max, Group[, step=S][, label=Text][: description]'")
    unit = fields[0] if range_index == 1 else ""
    rest = fields[range_index + 1:]
    if len(rest) != 1 or not rest[0]:
        raise fail("expected exactly one group name after the range")
    low, high = (_number(v, fail) for v in _RANGE.match(fields[range_index]).groups())
    if not low < high:
        raise fail(f"range min {low:g} must be below max {high:g}")
    step_text = options.get("step")
    step = _number(step_text, fail) if step_text is not None else None
    if kind == "int":
        if not all(float(v).is_integer() for v in (low, high, step if step is not None else 1)):
            raise fail("int range and step must be whole numbers")
        low, high, step = int(low), int(high), int(step) if step is not None else 1
        if isinstance(default, bool) or not isinstance(default, int):
            raise fail(f"default must be an int, got {default!r}")
    else:
        low, high = float(low), float(high)
        step = float(step) if step is not None else _default_step(low, high)
        if isinstance(default, bool) or not isinstance(default, (int, float)):
            raise fail(f"default must be a number, got {default!r}")
        default = float(default)
    if step <= 0:
        raise fail("step must be positive")
    if not low <= default <= high:
        raise fail(f"default {default} is outside {low}..{high}")
    return Parameter(name, label, unit, kind, low, high, step, default, rest[0], description.strip())


def _number(text: str, fail) -> float:
    try:
        value = float(text)
    except ValueError:
        raise fail(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise fail(f"{text!r} is not a finite number")
    return value


def _default_step(low: float, high: float) -> float:
    return 10.0 ** math.floor(math.log10(high - low)) / 100.0

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
name does not start with ``_``. The default must be a literal. The trailing comment is the schema:

* numbers: ``# [unit,] min..max, Group[, step=S][, label=Text][: description]``
  The unit is optional (``# 1..4, Wheels`` or ``# , 1..4, Wheels`` for a count); min/max are literals.
* bool:    ``# Group[, label=Text][: description]``

Everything after the first ``:`` is the description. ``label`` defaults to the name in words ("Chassis length");
``step`` defaults to 1 for ints and to a round fraction (~1/100) of the range for floats.

The script must define a top-level ``build(p)``; ``p`` is a namespace with one typed attribute per parameter.
Parsing uses ``ast`` and ``tokenize`` only, so listing models and validating values never imports cadquery.
Every problem is reported as ``ScriptError`` with file and line.
"""
from __future__ import annotations

import ast
import hashlib
import importlib.util
import io
import math
import re
import sys
import threading
import tokenize
import traceback
import types
from dataclasses import dataclass
from pathlib import Path

from cad.errors import BuildError, ScriptError
from cad.schema import Parameter, Schema

_RANGE = re.compile(r"^\s*(-?[0-9.eE+-]+)\s*\.\.\s*(-?[0-9.eE+-]+)\s*$")
_OPTION = re.compile(r"^\s*(step|label)\s*=\s*(.+?)\s*$")


@dataclass(frozen=True)
class ScriptInfo:
    title: str
    description: str
    schema: Schema
    source_hash: str


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
        tree = ast.parse(source, filename=filename)
    except SyntaxError as exc:
        raise ScriptError(filename, exc.lineno, f"syntax error: {exc.msg}") from None
    comments = _comments_by_line(source, filename)
    docstring = ast.get_docstring(tree) or ""
    title, _, description = docstring.strip().partition("\n")
    parameters: list[Parameter] = []
    seen: set[str] = set()
    has_build = False
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "build":
            has_build = True
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        name = node.target.id
        kind = node.annotation.id if isinstance(node.annotation, ast.Name) else None
        if kind not in ("float", "int", "bool") or name.startswith("_"):
            continue
        if name in seen:
            raise ScriptError(filename, node.lineno, f"parameter {name!r} is defined twice")
        seen.add(name)
        parameters.append(_parameter(node, name, kind, comments.get(node.end_lineno), filename))
    if not has_build:
        raise ScriptError(filename, None, "script must define a top-level function build(p)")
    stem = Path(filename).stem
    return ScriptInfo(title=title.strip() or stem, description=" ".join(description.split()),
                      schema=Schema(parameters), source_hash=source_hash(source))


def _comments_by_line(source: str, filename: str) -> dict[int, str]:
    comments = {}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                comments[tok.start[0]] = tok.string[1:].strip()
    except (tokenize.TokenError, SyntaxError) as exc:
        raise ScriptError(filename, None, f"cannot tokenize script: {exc}") from None
    return comments


def _parameter(node: ast.AnnAssign, name: str, kind: str, comment: str | None, filename: str) -> Parameter:
    line = node.lineno

    def fail(message: str) -> ScriptError:
        return ScriptError(filename, line, f"parameter {name!r}: {message}")

    if node.value is None:
        raise fail("needs a default value")
    try:
        default = ast.literal_eval(node.value)
    except ValueError:
        raise fail("default must be a literal") from None
    if not comment:
        raise fail("needs a schema comment, e.g. '# mm, 0..100, Group: description'")
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


# --- loading and running (imports whatever the script imports, e.g. cadquery) ---

_modules: dict[tuple[str, str], types.ModuleType] = {}
_modules_lock = threading.Lock()


def load_module(path: Path | str) -> types.ModuleType:
    """Execute the script as a fresh module (cached per path and source hash)."""
    path = Path(path).resolve()
    source = path.read_text(encoding="utf-8")
    key = (str(path), source_hash(source))
    with _modules_lock:
        module = _modules.get(key)
        if module is not None:
            return module
        name = f"_cad_model_{path.stem}_{key[1][:12]}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)  # the designer's own script file; model output is never executed
        except SyntaxError as exc:
            raise ScriptError(str(path), exc.lineno, f"syntax error: {exc.msg}") from None
        except Exception as exc:
            raise BuildError(str(path), _script_line(exc, path), f"script failed to load: {exc!r}") from None
        if not callable(getattr(module, "build", None)):
            raise ScriptError(str(path), None, "script must define a top-level function build(p)")
        sys.modules.pop(name, None)
        _modules[key] = module
        return module


def run_build(path: Path | str, values: dict):
    """Call the script's ``build(p)`` with ``values`` (already validated and complete); return its result."""
    path = Path(path).resolve()
    module = load_module(path)
    try:
        return module.build(types.SimpleNamespace(**values))
    except Exception as exc:
        raise BuildError(str(path), _script_line(exc, path), f"build failed: {exc!r}") from None


def _script_line(exc: BaseException, path: Path) -> int | None:
    """Line of the deepest traceback frame inside the script, so the error points at the user's code."""
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if Path(frame.filename) == path:
            line = frame.lineno
    return line

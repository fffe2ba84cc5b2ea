"""Reading CQGI-style scripts (CadQuery's cqgi.py, CQ-editor, cq-cli) without executing them.

A CQGI script is a plain CadQuery (or build123d) script::

    import cadquery as cq

    length = 80.0          # a parameter: a top-level assignment of a (constant) number or bool
    width: float = 1.5 / 2  # constant arithmetic is folded with ``ast`` (never ``eval``)
    extrude = length        # derived from a parameter: recomputed from the parameters at build time
    describe_parameter(length, "Length of the plate")

    plate = cq.Workplane().box(length, width, extrude)
    show_object(plate, name="plate", options={"color": "steelblue"})

Everything here works on the syntax tree only: nothing from the script is imported or run while it is read.
``cad.script`` combines this with the declared comment format (which wins where present).
"""
from __future__ import annotations

import ast
import math
import operator
from dataclasses import dataclass

NUMBER_KINDS = ("float", "int", "bool")
SHOW_FUNCTIONS = ("show_object", "show")
INFERRED_GROUP = "Parameters"

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_MAX_MAGNITUDE = 1e15
_MAX_EXPONENT = 64
_MAX_NODES = 64
_MATH_CONSTANTS = {"pi": math.pi, "tau": math.tau, "e": math.e}
# Calls a derived value may use (read as names only; they run when the script itself runs at build time).
_DERIVED_CALLS = {"min", "max", "abs", "round", "int", "float", "sqrt", "sin", "cos", "tan", "radians", "degrees"}


class NotConstant(Exception):
    """The expression is not constant arithmetic on number literals."""


def fold(node: ast.AST) -> int | float | bool:
    """Value of ``node`` when it is constant arithmetic on literals (``1.5/2``, ``-3``, ``2**3``, ``math.pi``).

    Walks the tree itself: no ``eval``. Raises NotConstant for anything else, for huge powers or results that
    are not finite numbers."""
    if sum(1 for _ in ast.walk(node)) > _MAX_NODES:
        raise NotConstant("expression is too long")
    return _fold(node)


def _fold(node: ast.AST):
    if isinstance(node, ast.Constant) and isinstance(node.value, (bool, int, float)):
        if not isinstance(node.value, bool) and not (math.isfinite(node.value) and abs(node.value) <= _MAX_MAGNITUDE):
            raise NotConstant("not a finite number of sensible size")
        return node.value
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "math" \
            and node.attr in _MATH_CONSTANTS:
        return _MATH_CONSTANTS[node.attr]
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        operand = _fold(node.operand)
        if isinstance(operand, bool):
            raise NotConstant("arithmetic on a bool")
        return _UNARY[type(node.op)](operand)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _fold(node.left), _fold(node.right)
        if isinstance(left, bool) or isinstance(right, bool):
            raise NotConstant("arithmetic on a bool")
        if isinstance(node.op, ast.Pow) and (abs(right) > _MAX_EXPONENT or abs(left) > _MAX_MAGNITUDE):
            raise NotConstant("power too large")
        try:
            value = _BINARY[type(node.op)](left, right)
        except (ArithmeticError, ValueError) as exc:
            raise NotConstant(str(exc)) from None
        if isinstance(value, complex) or not math.isfinite(value) or abs(value) > _MAX_MAGNITUDE:
            raise NotConstant("result is not a finite number")
        return value
    raise NotConstant(type(node).__name__)


def derived_from(node: ast.AST, known: set[str]) -> list[str] | None:
    """Names of ``known`` values that ``node`` computes from, when it is arithmetic on them (``length / 2``,
    ``max(a, b)``); None when it is anything else (a call into cadquery, a string, ...)."""
    used: list[str] = []
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name):
            if sub.id in known:
                used.append(sub.id)
            elif sub.id not in _DERIVED_CALLS and sub.id != "math":
                return None
        elif isinstance(sub, ast.Call):
            func = sub.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
            if name not in _DERIVED_CALLS or sub.keywords:
                return None
        elif isinstance(sub, ast.Attribute):
            if not (isinstance(sub.value, ast.Name) and sub.value.id == "math"):
                return None
        elif not isinstance(sub, (ast.Constant, ast.BinOp, ast.UnaryOp, ast.operator, ast.unaryop, ast.Load,
                                  ast.IfExp, ast.Compare, ast.cmpop, ast.BoolOp, ast.boolop)):
            return None
    return sorted(set(used)) or None


@dataclass(frozen=True)
class Assignment:
    """One top-level ``name = value`` or ``name: kind = value`` statement."""
    node: ast.stmt
    name: str
    annotation: str | None  # "float" | "int" | "bool" | other annotation text | None
    value: ast.expr


def assignments(tree: ast.Module) -> list[Assignment]:
    found = []
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            annotation = node.annotation.id if isinstance(node.annotation, ast.Name) else ast.unparse(node.annotation)
            found.append(Assignment(node, node.target.id, annotation, node.value))
        elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            found.append(Assignment(node, node.targets[0].id, None, node.value))
    return found


def literal_kind(value, annotation: str | None) -> str | None:
    """Parameter type of a folded value: from the annotation when it names one, else from the literal."""
    if annotation in NUMBER_KINDS:
        return annotation
    if annotation is not None:
        return None  # annotated as something else (str, a tuple ...): not a parameter
    if isinstance(value, bool):
        return "bool"
    return "int" if isinstance(value, int) else "float"


def descriptions(tree: ast.Module) -> dict[str, str]:
    """``describe_parameter(name, "text")`` calls at the top level (name as a variable or a string)."""
    found = {}
    for node in tree.body:
        call = node.value if isinstance(node, ast.Expr) else None
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
                and call.func.id == "describe_parameter" and len(call.args) == 2):
            continue
        target, text = call.args
        name = target.id if isinstance(target, ast.Name) else target.value if (
            isinstance(target, ast.Constant) and isinstance(target.value, str)) else None
        if name and isinstance(text, ast.Constant) and isinstance(text.value, str):
            found[name] = " ".join(text.value.split())
    return found


def shows_objects(tree: ast.Module) -> bool:
    """Whether the script calls ``show_object(...)`` or ``show(...)`` anywhere (the CQGI way to give parts)."""
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in SHOW_FUNCTIONS
               for n in ast.walk(tree))


def has_build(tree: ast.Module) -> bool:
    return any(isinstance(n, ast.FunctionDef) and n.name == "build" for n in tree.body)


# --- inferred ranges ---------------------------------------------------------------------------------------------
def scale_of(defaults: list[float]) -> float:
    """Typical size among the script's non-zero number defaults (median magnitude); 1 when there is none."""
    sizes = sorted(abs(float(v)) for v in defaults if v)
    return sizes[len(sizes) // 2] if sizes else 1.0


def infer_range(kind: str, default: int | float, scale: float = 1.0) -> tuple[int | float, int | float]:
    """A range for a parameter the script gives none: 0.5x-2x of a positive default (mirrored for negative),
    for ints at least one step either side; a zero default gets 0..10 (an int: most often a count) or
    -scale..scale (a float: an offset or angle, scaled like the script's other numbers)."""
    if kind == "int":
        d = int(default)
        if d > 0:
            return min(d - 1, d // 2), max(d + 1, 2 * d)
        if d < 0:
            return min(d - 1, 2 * d), max(d + 1, -((-d) // 2))
        return 0, 10
    d = float(default)
    if d > 0:
        return d / 2, d * 2
    if d < 0:
        return d * 2, d / 2
    s = float(scale) if scale and math.isfinite(scale) else 1.0
    return -s, s

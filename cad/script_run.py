"""Running model scripts in the build worker, and turning what they give into one cadquery Assembly.

Two ways a script gives its geometry (``cad.script`` tells them apart when it reads the script):

* ``build(p)`` returns an Assembly, Workplane, Shape or Compound (or a build123d Part/Compound: anything whose
  ``wrapped`` is an OCP ``TopoDS_Shape``). Scripts without derived values are imported once per source (cached).
* CQGI style: the top-level code calls ``show_object(obj, name=..., options={"color": ...})`` (or ``show(...)``).
  The script runs with each parameter's assignment replaced by its value, as CadQuery's cqgi does, so values
  derived from parameters follow them. ``debug``, ``describe_parameter`` and ``log`` are accepted and ignored.

This module executes the designer's own script (in the worker, never to list or validate it).
"""
from __future__ import annotations

import ast
import builtins
import importlib.util
import logging
import sys
import threading
import traceback
import types
from pathlib import Path

from cad.errors import BuildError, ScriptError
from cad.script import ScriptInfo, compile_tree, parse_python, parse_source, source_hash

log = logging.getLogger(__name__)

_modules: dict[tuple[str, str], types.ModuleType] = {}
_modules_lock = threading.Lock()
# What run_build needs to know of a script, per path and source hash: reading it again (tokenize, AST) took 3 ms
# of every fit evaluation's ~120 on the bracket. ScriptInfo is frozen; a handful of scripts is a worker's lot.
_infos: dict[tuple[str, str], ScriptInfo] = {}
_INFOS_KEPT = 32


def _ignore(*_args, **_kwargs) -> None:
    return None


class Shown:
    """What a script passed to ``show_object``/``show``: (object, name or None, options) in call order."""

    def __init__(self):
        self.objects: list[tuple[object, str | None, dict]] = []

    def show_object(self, obj, name=None, options=None, **kwargs):
        options = dict(options) if isinstance(options, dict) else {}
        for key in ("color", "alpha"):
            if key in kwargs:
                options[key] = kwargs[key]
        self.objects.append((obj, name if isinstance(name, str) else None, options))

    def show(self, *objs, names=None, colors=None, **_kwargs):
        for i, obj in enumerate(objs):
            name = names[i] if isinstance(names, (list, tuple)) and i < len(names) else None
            color = colors[i] if isinstance(colors, (list, tuple)) and i < len(colors) else None
            self.show_object(obj, name, {"color": color} if color is not None else None)

    def script_globals(self, path: Path) -> dict:
        return {"__name__": f"_cad_script_{path.stem}", "__file__": str(path), "__builtins__": builtins,
                "show_object": self.show_object, "show": self.show, "debug": _ignore,
                "describe_parameter": _ignore, "log": _ignore}


def load_module(path: Path, key: tuple[str, str]) -> types.ModuleType:
    """Execute a ``build(p)`` script as a fresh module, cached per ``key``: (resolved path, source hash) as
    run_build computed it from the source it read (the file is read and hashed once per build)."""
    with _modules_lock:
        module = _modules.get(key)
        if module is not None:
            return module
        name = f"_cad_model_{path.stem}_{key[1][:12]}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        for helper, value in Shown().script_globals(path).items():  # show_object etc. at top level: ignored
            if helper not in ("__name__", "__file__", "__builtins__"):
                setattr(module, helper, _ignore)
        try:
            spec.loader.exec_module(module)  # the designer's own script file; model output is never executed
        except SyntaxError as exc:
            raise ScriptError(str(path), exc.lineno, f"syntax error: {exc.msg}") from None
        except Exception as exc:
            raise BuildError(str(path), script_line(exc, path), f"script failed to load: {exc!r}") from None
        if not callable(getattr(module, "build", None)):
            raise ScriptError(str(path), None, "script must define a top-level function build(p)")
        sys.modules.pop(name, None)
        _modules[key] = module
        return module


def run_build(path: Path | str, values: dict):
    """Run the script with ``values`` (validated and complete): what ``build(p)`` returned, or a ``Shown``."""
    path = Path(path).resolve()
    source = path.read_text(encoding="utf-8")
    key = (str(path), source_hash(source))
    info = _script_info(key, source)
    if info.kind == "build" and not info.derived:
        module = load_module(path, key)
        try:
            return module.build(types.SimpleNamespace(**values))
        except Exception as exc:
            raise BuildError(str(path), script_line(exc, path), f"build failed: {exc!r}") from None
    return _run_with_values(path, source, info, values)


def _script_info(key: tuple[str, str], source: str) -> ScriptInfo:
    with _modules_lock:
        info = _infos.get(key)
    if info is None:
        info = parse_source(source, key[0])  # a ScriptError is raised again on every run, never cached
        with _modules_lock:
            if len(_infos) >= _INFOS_KEPT:
                _infos.pop(next(iter(_infos)))
            _infos[key] = info
    return info


def _run_with_values(path: Path, source: str, info: ScriptInfo, values: dict):
    tree = parse_python(source, str(path))
    for node in tree.body:
        target = node.target if isinstance(node, ast.AnnAssign) else (
            node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None)
        name = target.id if isinstance(target, ast.Name) else None
        if name in values and info.lines.get(name) == node.lineno:
            node.value = ast.copy_location(ast.Constant(values[name]), node.value)
    shown = Shown()
    namespace = shown.script_globals(path)
    try:
        exec(compile_tree(tree, str(path)), namespace)  # the designer's own script, with the chosen values
        if info.kind == "build":
            derived = {d.name: namespace.get(d.name) for d in info.derived}
            return namespace["build"](types.SimpleNamespace(**values, **derived))
    except Exception as exc:
        stage = "build failed" if info.kind == "build" else "script failed"
        raise BuildError(str(path), script_line(exc, path), f"{stage}: {exc!r}") from None
    if not shown.objects:
        raise BuildError(str(path), None, "the script called show_object(...) for none of its parts with "
                                          "these values")
    return shown


def script_line(exc: BaseException, path: Path) -> int | None:
    """Line of the deepest traceback frame inside the script, so the error points at the user's code."""
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if Path(frame.filename) == path:
            line = frame.lineno
    return line


# --- to one Assembly ---------------------------------------------------------------------------------------------
def to_assembly(result, script_path: str):
    """One cadquery Assembly from what the script gave (see the module docstring); BuildError otherwise."""
    import cadquery as cq

    entries = result.objects if isinstance(result, Shown) else [(result, None, {})]
    if len(entries) == 1 and isinstance(entries[0][0], cq.Assembly):
        return entries[0][0]
    stem = Path(script_path).stem
    assembly = cq.Assembly(name=f"{stem}_assembly")
    used: set[str] = {assembly.name}
    for index, (obj, name, options) in enumerate(entries):
        part = _as_cadquery(obj, script_path, index)
        base = name or (stem if len(entries) == 1 else f"part{index + 1}")
        unique, n = base, 2
        while unique in used:
            unique, n = f"{base}_{n}", n + 1
        used.add(unique)
        assembly.add(part, name=unique, color=_color(options.get("color")))
    return assembly


def _as_cadquery(obj, script_path: str, index: int):
    import cadquery as cq

    if isinstance(obj, (cq.Assembly, cq.Workplane, cq.Shape)):
        return obj
    if type(obj).__name__ in ("BuildPart", "BuildSketch", "BuildLine"):  # a build123d builder: its result
        obj = getattr(obj, type(obj).__name__[5:].lower(), obj)
    wrapped = getattr(obj, "wrapped", None)
    try:
        from OCP.TopoDS import TopoDS_Shape

        if isinstance(wrapped, TopoDS_Shape):  # build123d (or any OCP-based library) on the same OCP
            return cq.Shape.cast(wrapped)
    except ImportError:  # pragma: no cover - OCP comes with cadquery
        pass
    what = "build(p)" if index == 0 else f"show_object #{index + 1}"
    raise BuildError(script_path, None, f"{what} gave a {type(obj).__name__}; expected a cadquery Assembly, "
                                        "Workplane, Shape or Compound (or a build123d Part/Compound)")


def _color(value):
    """A cq.Color from a CQ-editor colour option (a name, 0-1 or 0-255 RGB(A) numbers, a cq.Color), or None."""
    import cadquery as cq

    if value is None or isinstance(value, cq.Color):
        return value
    try:
        if isinstance(value, str):
            return cq.Color(value)
        numbers = [float(v) for v in value][:4]
        if len(numbers) < 3:
            return None
        if any(v > 1 for v in numbers[:3]):
            numbers = [v / 255 for v in numbers[:3]] + numbers[3:]
        return cq.Color(*numbers)
    except (TypeError, ValueError) as exc:
        log.info("ignoring colour %r: %s", value, exc)
        return None

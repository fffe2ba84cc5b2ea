"""A held-out family for the fit benchmark: seeded random parametric CadQuery models, written as real model scripts.

``generate(seed, scale)`` draws one model: a box or cylinder base plus 1-5 more features (vertical-edge or rim
fillet, open-top shell, feet/bosses below the base, side ribs, through holes, linear and polar hole or pin
patterns with an int count), 2-6 features in all, 2-10 numeric parameters in optim's script format
(``name: float = 12.3  # mm, 6..24, Group: text``). The part's size is drawn per model, log-uniform within its size
class (``SIZE_CLASSES``, 0.5 mm to 2 m); ``scale`` multiplies every length afterwards (parameters and fixed
literals alike), and the random draws do not depend on it, so ``generate(s, 100)`` is ``generate(s, 1)`` x100.
Every length in ``build(p)`` is a parameter, a fixed literal or a fraction of those: no absolute tolerance, so
a model is the same shape at any scale. Fragile operations (fillet, shell) clamp their size and fall back to
no fillet / no shell when OCC refuses, as the shipped models do.

``scale_script(source, factor)`` scales any other script (shipped or a user's): float parameters whose unit is a
length (mm, cm, m, in) get default, range and step multiplied; counts and angles stay.
"""
from __future__ import annotations

import ast
import math
import random
import re
from dataclasses import dataclass, field

SIZE_CLASSES = {"small": (0.5, 10.0), "medium": (10.0, 200.0), "large": (200.0, 2000.0)}  # mm, largest dimension
LENGTH_UNITS = ("mm", "cm", "m", "in")
MAX_PARAMETERS = 10
HEADER = '''"""{title}

Randomly generated held-out model for bench/fit.py (seed {seed}, size class {size_class}, scale x{scale:g}):
{features}. Units are millimetres.
"""
import cadquery as cq

'''
HELPERS = '''

def _fillet(body, selector, radius, limit):
    radius = min(radius, limit)
    if radius <= limit * 1e-3:
        return body
    try:
        return body.edges(selector).fillet(radius)
    except Exception:  # OCC refuses some radii: the part stays sharp
        return body


def _shell(body, thickness, limit):
    thickness = min(thickness, limit)
    try:
        shelled = body.faces(">Z").shell(-thickness)
        return shelled if shelled.val().isValid() else body
    except Exception:  # OCC refuses some shells: the part stays solid
        return body

'''


def fmt(x: float) -> str:
    """Six significant digits: scale-free for powers of ten (x100 shifts the digits, does not change them)."""
    text = f"{x:.6g}"
    return text if any(c in text for c in ".e") else text + ".0"


@dataclass
class Dim:
    """One dimension of a feature: a parameter of the script, or a fixed literal when not chosen as one."""
    name: str
    value: float | int
    kind: str = "float"  # "float" (a length) | "int" (a count)
    low: float | int | None = None
    high: float | int | None = None
    group: str = ""
    description: str = ""
    parameter: bool = False

    def expr(self) -> str:
        if self.parameter:
            return f"p.{self.name}"
        return str(self.value) if self.kind == "int" else fmt(self.value)

    def ref(self) -> str:
        """A placeholder in the feature code, resolved by ``_resolve`` once the parameters are chosen."""
        return f"\x00{self.name}\x00"

    def line(self) -> str:
        if self.kind == "int":
            return f"{self.name}: int = {self.value}  # {self.low}..{self.high}, {self.group}: {self.description}"
        return (f"{self.name}: float = {fmt(self.value)}  # mm, {fmt(self.low)}..{fmt(self.high)}, {self.group}: "
                f"{self.description}")


@dataclass
class GeneratedModel:
    name: str
    seed: int
    size_class: str
    size_mm: float  # the base's largest dimension at the default values, scale included
    features: list[str]
    dims: list[Dim] = field(repr=False)
    source: str = field(repr=False)

    @property
    def parameters(self) -> list[Dim]:
        return [d for d in self.dims if d.parameter]


class _Drawer:
    def __init__(self, rng: random.Random, scale: float):
        self.rng, self.scale, self.dims = rng, scale, []

    def length(self, name: str, value: float, group: str, description: str) -> Dim:
        low, high = value * self.rng.uniform(0.4, 0.8), value * self.rng.uniform(1.25, 2.0)
        dim = Dim(name, value * self.scale, "float", low * self.scale, high * self.scale, group, description)
        self.dims.append(dim)
        return dim

    def offset(self, name: str, value: float, bound: float, group: str, description: str) -> Dim:
        """A signed position within +-bound (a length that may be negative: its range is not around its value)."""
        dim = Dim(name, value * self.scale, "float", -bound * self.scale, bound * self.scale, group, description)
        self.dims.append(dim)
        return dim

    def count(self, name: str, value: int, low: int, high: int, group: str, description: str) -> Dim:
        dim = Dim(name, value, "int", low, high, group, description)
        self.dims.append(dim)
        return dim


def generate(seed: int, scale: float = 1.0, size_class: str | None = None) -> GeneratedModel:
    """The model of ``seed`` (deterministic); ``size_class`` defaults to one drawn from the seed."""
    base = _draw_base(random.Random(seed), scale, size_class)
    _choose_parameters(base.rng, base.draw.dims)
    return _model(f"rand_{seed:04d}", f"Random model {seed}", seed, base, ["body"], ["part"])


@dataclass
class _Base:
    rng: random.Random
    draw: "_Drawer"
    code: list[str]  # feature code, cuts last
    features: list[str]
    size_class: str
    size: float  # mm before scale
    height: str  # the base's height (a placeholder resolved with the parameters)
    half_x0: float  # the base's half length and smaller width at the defaults, before scale
    across0: float


def _model(name: str, title: str, seed: int, base: _Base, bodies: list[str], names: list[str]) -> GeneratedModel:
    draw = base.draw
    body = "\n".join(d.line() for d in draw.dims if d.parameter)
    build = "\n".join(f"    {line}" for line in _resolve(base.code, draw.dims))
    parts = "".join(f"    assembly.add({b}, name={n!r})\n" for b, n in zip(bodies, names))
    source = (HEADER.format(title=title, seed=seed, size_class=base.size_class, scale=draw.scale,
                            features=", ".join(base.features)) + body + "\n" + HELPERS
              + f"\ndef build(p):\n{build}\n    assembly = cq.Assembly(name={name!r})\n{parts}    return assembly\n")
    return GeneratedModel(name, seed, base.size_class, base.size * draw.scale, base.features, draw.dims, source)


def generate_assembly(seed: int, scale: float = 1.0, size_class: str | None = None) -> GeneratedModel:
    """A multi-part model of ``seed``: a random base (as ``generate``) and 1-3 small named parts (a block or a pin,
    4-20 % of the base's size) standing on its top at parametric positions, each a solid of its own in the STEP
    target (the case part-aware fitting is for). 2-10 parameters, each small part with at least one."""
    rng = random.Random(f"assembly:{seed}")
    base = _draw_base(rng, scale, size_class)
    draw, satellites = base.draw, []
    for k in range(1, rng.randint(1, 3) + 1):
        start = len(draw.dims)
        side = draw.length(f"part{k}_size", base.across0 * rng.uniform(0.06, 0.2), f"Part {k}", "Side of the part")
        x = draw.offset(f"part{k}_x", base.half_x0 * rng.uniform(-0.6, 0.6), base.half_x0 * 0.7, f"Part {k}",
                        "Position of the part along X")
        y = draw.offset(f"part{k}_y", base.across0 * rng.uniform(-0.15, 0.15),
                        base.across0 * 0.35, f"Part {k}", "Position of the part along Y")
        rise = rng.uniform(0.5, 1.5)
        where = f"cq.Workplane('XY', origin=({x.ref()}, {y.ref()}, {base.height}))"
        shape = f".box({side.ref()}, {side.ref()}, {side.ref()} * {rise:.3f}, centered=(True, True, False))" \
            if rng.random() < 0.5 else f".circle({side.ref()} / 2).extrude({side.ref()} * {rise:.3f})"
        base.code.append(f"part{k} = {where}{shape}")
        base.features.append(f"part {k} ({'block' if 'box' in shape else 'pin'})")
        satellites.append(draw.dims[start:])
    base_dims = draw.dims[:len(draw.dims) - sum(map(len, satellites))]
    wanted = rng.randint(1, max(1, min(len(base_dims), MAX_PARAMETERS - 2 * len(satellites))))
    for dim in rng.sample(base_dims, wanted):
        dim.parameter = True
    for dims in satellites:  # every small part has one or two parameters of its own
        for dim in rng.sample(dims, rng.randint(1, 2)):
            dim.parameter = True
    names = ["base"] + [f"part_{k}" for k in range(1, len(satellites) + 1)]
    return _model(f"rasm_{seed:04d}", f"Random assembly {seed}", seed, base,
                  ["body"] + [f"part{k}" for k in range(1, len(satellites) + 1)], names)


def _draw_base(rng: random.Random, scale: float, size_class: str | None) -> _Base:
    size_class = size_class or rng.choice(sorted(SIZE_CLASSES))
    low, high = SIZE_CLASSES[size_class]
    size = math.exp(rng.uniform(math.log(low), math.log(high)))
    draw = _Drawer(rng, scale)
    code: list[str] = []
    features: list[str] = []
    if rng.random() < 0.6:
        L = draw.length("base_length", size, "Base", "Length of the base block along X")
        W = draw.length("base_width", size * rng.uniform(0.4, 1.0), "Base", "Width of the base block along Y")
        H = draw.length("base_height", size * rng.uniform(0.15, 0.6), "Base", "Height of the base block")
        half_x, half_y = f"({L.ref()} / 2)", f"({W.ref()} / 2)"
        code.append(f"body = cq.Workplane('XY').box({L.ref()}, {W.ref()}, {H.ref()}, centered=(True, True, False))")
        features.append("box base")
        edges, across = "'|Z'", f"min({L.ref()}, {W.ref()})"
        half_x0, across0, height0 = L.value / 2, min(L.value, W.value), H.value
    else:
        R = draw.length("base_radius", size / 2, "Base", "Radius of the base cylinder")
        H = draw.length("base_height", size * rng.uniform(0.2, 0.8), "Base", "Height of the base cylinder")
        half_x = half_y = f"{R.ref()}"
        code.append(f"body = cq.Workplane('XY').circle({R.ref()}).extrude({H.ref()})")
        features.append("cylinder base")
        edges, across = "'>Z'", f"(2 * {R.ref()})"
        half_x0, across0, height0 = R.value, 2 * R.value, H.value
    # the features' defaults are drawn against the base's default size (so no clamp below acts at the default)
    half_x0, across0, height0 = (v / scale for v in (half_x0, across0, height0))
    thin0 = min(across0, height0)
    kinds = ["fillet", "shell", "feet", "rib", "hole", "linear", "polar"]
    chosen = [rng.choice(kinds) for _ in range(rng.randint(1, 5))]
    chosen = sorted(set(c for c in chosen if c in ("fillet", "shell")), key=kinds.index) + \
        [c for c in chosen if c not in ("fillet", "shell")]  # edge operations first, on the bare base
    cuts: list[str] = []
    for number, kind in enumerate(chosen, start=1):
        tag = f"{kind}{number}" if kind not in ("fillet", "shell") else kind
        if kind == "fillet":
            r = draw.length(f"{tag}_radius", thin0 * rng.uniform(0.05, 0.2), "Edges",
                            "Radius of the base's edge fillet")
            code.append(f"body = _fillet(body, {edges}, {r.ref()}, 0.45 * min({across}, {H.ref()}))")
        elif kind == "shell":
            t = draw.length(f"{tag}_wall", thin0 * rng.uniform(0.05, 0.12), "Edges", "Wall of the open-top shell")
            code.append(f"body = _shell(body, {t.ref()}, 0.3 * min({across}, {H.ref()}))")
        elif kind in ("feet", "rib"):
            fx, fy = rng.uniform(-0.6, 0.6), rng.uniform(-0.6, 0.6)
            if kind == "feet":
                r = draw.length(f"{tag}_radius", across0 * rng.uniform(0.08, 0.15), "Feet",
                                "Radius of the foot below")
                h = draw.length(f"{tag}_height", size * rng.uniform(0.05, 0.3), "Feet", "Height of the foot below")
                code.append(f"body = body.union(cq.Workplane('XY', origin=({fx:.3f} * {half_x}, {fy:.3f} * {half_y}, "
                            f"-{h.ref()})).circle(min({r.ref()}, 0.3 * {across})).extrude({h.ref()} * 1.001))")
            else:
                a = draw.length(f"{tag}_length", half_x0 * rng.uniform(0.2, 0.6), "Ribs",
                                "Reach of the side rib along X")
                b = draw.length(f"{tag}_width", across0 * rng.uniform(0.1, 0.3), "Ribs",
                                "Width of the side rib along Y")
                rise = rng.uniform(0.3, 1)
                code.append(f"body = body.union(cq.Workplane('XY', origin=(0, {fy / 2:.3f} * {half_y}, 0))"
                            f".box({half_x} + {a.ref()}, min({b.ref()}, {across}), {H.ref()} * {rise:.3f}, "
                            f"centered=(False, True, False)))")
        else:
            pins = kind != "hole" and rng.random() < 0.3
            if kind == "hole":
                d = draw.length(f"{tag}_diameter", across0 * rng.uniform(0.05, 0.15), "Holes", "Diameter of the hole")
                fx, fy = rng.uniform(-0.5, 0.5), rng.uniform(-0.5, 0.5)
                where = f".center({fx:.3f} * {half_x}, {fy:.3f} * {half_y})"
                limit = f"0.3 * {across}"
            elif kind == "linear":
                n = rng.randint(2, 5)
                count = draw.count(f"{tag}_count", n, max(1, n - 2), n + 3, "Patterns", "Holes in the row")
                pitch = draw.length(f"{tag}_pitch", 2 * half_x0 * rng.uniform(0.5, 0.8) / n, "Patterns",
                                    "Pitch of the row")
                d = draw.length(f"{tag}_diameter", min(pitch.value / scale, across0) * rng.uniform(0.2, 0.35),
                                "Holes", "Diameter of the holes")
                spacing = f"min({pitch.ref()}, 1.6 * {half_x} / max({count.ref()}, 1))"
                where = f".rarray({spacing}, 1, {count.ref()}, 1)"
                limit = f"min(0.8 * {spacing}, 0.3 * {across})"
            else:
                n = rng.randint(3, 7)
                count = draw.count(f"{tag}_count", n, max(2, n - 2), n + 3, "Patterns", "Holes on the circle")
                radius = draw.length(f"{tag}_circle", across0 * rng.uniform(0.15, 0.25), "Patterns",
                                     "Radius of the hole circle")
                d = draw.length(f"{tag}_diameter", radius.value / scale / n * rng.uniform(0.6, 1.2), "Holes",
                                "Diameter of the holes")
                circle = f"min({radius.ref()}, 0.35 * {across})"
                where = f".polarArray({circle}, 0, 360, {count.ref()})"
                limit = f"min(0.25 * {across}, 2.5 * {circle} / max({count.ref()}, 1))"
            circle_code = f"{where}.circle(min({d.ref()}, {limit}) / 2)"
            if pins:
                height = f"{H.ref()} * {rng.uniform(0.2, 0.6):.3f}"
                code.append(f"body = body.union(cq.Workplane('XY', origin=(0, 0, -{height})){circle_code}"
                            f".extrude({height} * 1.001))")
                kind = f"{kind} pins"
            else:
                depth = f"(4 * {H.ref()} + 4 * {across})"
                cuts.append(f"body = body.cut(cq.Workplane('XY', origin=(0, 0, -{depth} / 2)){circle_code}"
                            f".extrude({depth}))")
                kind = f"{kind} holes" if kind != "hole" else "through hole"
        features.append(kind)
    code += cuts
    return _Base(rng, draw, code, features, size_class, size, H.ref(), half_x0, across0)


def _resolve(lines: list[str], dims: list[Dim]) -> list[str]:
    by_name = {d.name: d for d in dims}
    return [re.sub(r"\x00(\w+)\x00", lambda m: by_name[m.group(1)].expr(), line) for line in lines]


def _choose_parameters(rng: random.Random, dims: list[Dim]) -> None:
    """2..10 of the dimensions become parameters (counts are always among the candidates)."""
    wanted = rng.randint(2, min(MAX_PARAMETERS, len(dims)))
    for dim in rng.sample(dims, wanted):
        dim.parameter = True


def write_model(folder, model: GeneratedModel):
    from pathlib import Path

    path = Path(folder) / f"{model.name}.py"
    path.write_text(model.source, encoding="utf-8")
    return path


def scale_script(source: str, factor: float) -> str:
    """``source`` with every length parameter's default, range and step multiplied by ``factor``."""
    if factor == 1:
        return source
    lines = source.splitlines(keepends=True)
    for node in ast.parse(source).body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(node.annotation, ast.Name) and node.annotation.id == "float"
                and node.lineno == node.end_lineno):
            continue
        index = node.lineno - 1
        code, hash_, comment = lines[index].partition("#")
        fields = comment.split(":", 1)[0].split(",")
        if not hash_ or fields[0].strip() not in LENGTH_UNITS:
            continue
        assignment, _, default = code.partition("=")
        default = fmt(float(ast.literal_eval(default.strip())) * factor)
        head, colon, description = comment.partition(":")
        head = re.sub(r"(-?[0-9.eE+-]+)\s*\.\.\s*(-?[0-9.eE+-]+)",
                      lambda m: f"{fmt(float(m.group(1)) * factor)}..{fmt(float(m.group(2)) * factor)}", head, count=1)
        head = re.sub(r"step\s*=\s*([0-9.eE+-]+)", lambda m: f"step={fmt(float(m.group(1)) * factor)}", head)
        newline = "\n" if lines[index].endswith("\n") else ""
        lines[index] = f"{assignment}= {default}  #{head}{colon}{description.rstrip(chr(10))}{newline}"
    return "".join(lines)

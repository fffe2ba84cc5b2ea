"""Target shapes: store a STEP or STL target per model, and compare a model's build with it (volumetric IoU).

Storing the files is ``cad.target_store`` (no geometry, the web process). The geometry functions (``target_info``,
``target_glb``, ``compare_model``) run in the build worker (``cad.worker``): they import cadquery and numpy lazily.

IoU method: ``exact`` when the model's parts fuse into a valid solid and the target is a valid solid (STEP):
``|A ∩ B| / (|A| + |B| - |A ∩ B|)`` from an OCC boolean. Otherwise (an STL target, a STEP of surfaces only, a failed
boolean, an intersection and a union that disagree) ``mesh``: both meshes are measured along rays in X, Y and Z
on one grid (``cad.voxel``). Every answer says which method was used.
"""
from __future__ import annotations

import logging
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from cad.errors import CadError

log = logging.getLogger(__name__)

TARGET_FORMATS = ("step", "stl")
MAX_TARGET_TRIANGLES = 500_000  # checked from the STL's header (or its facet count) before anything is decoded
MAX_DUPLICATE_SHARE = 0.5  # an STL with more exact duplicate triangles than this is refused (a crafted file)
MAX_TARGET_FILE_BYTES = 32 << 20  # checked from the file's size before it is read (uploads stop at 20 MB)
MAX_STEP_NESTING = 256  # parenthesis depth; real exports stay near 10, deep ones crash OCC's parser
_STEP_ENTITY = re.compile(rb"#(\d+)\s*=([^;]*);")
TARGET_COLOUR = (0.75, 0.78, 0.82)
EXACT_TOLERANCE = 1e-3  # relative: intersection and union volumes must agree this well for an exact IoU
VOLUME_NOISE = 1e-6  # relative to the smaller solid's volume: what a boolean's volume may be off by (any scale)


class TargetError(CadError, ValueError):
    """A target file is not a usable STEP or STL. The message says why."""


def detect_format(data: bytes) -> str:
    """'step' or 'stl' from the file's content (never from a client-supplied name); raise TargetError otherwise."""
    head = data[:512].lstrip()
    if head.startswith(b"ISO-10303-21"):
        return "step"
    if len(data) >= 84 and len(data) == 84 + 50 * int.from_bytes(data[80:84], "little"):
        return "stl"
    if head[:5].lower() == b"solid" and b"facet" in data[:4096]:
        return "stl"
    raise TargetError("the target is neither a STEP file (ISO-10303-21) nor a binary or ASCII STL file")


def parse_stl(data: bytes):
    """(vertices (3M, 3), triangles (M, 3)) of a binary or ASCII STL; TargetError when it is malformed."""
    import numpy as np

    count = int.from_bytes(data[80:84], "little") if len(data) >= 84 else -1
    binary = count >= 0 and len(data) == 84 + 50 * count
    if not binary:
        count = data.count(b"facet")  # ASCII: "facet normal" ... "endfacet", two per triangle
        count //= 2
    if count > MAX_TARGET_TRIANGLES:
        raise TargetError(f"the STL file has {count} triangles; at most {MAX_TARGET_TRIANGLES} are accepted")
    if binary:
        record = np.dtype([("normal", "<f4", 3), ("corners", "<f4", (3, 3)), ("attribute", "<u2")])
        corners = np.frombuffer(data, dtype=record, count=count, offset=84)["corners"].astype(np.float64)
    else:
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError:
            raise TargetError("the STL file is neither valid binary STL nor ASCII text") from None
        numbers = re.findall(r"^\s*vertex\s+(\S+)\s+(\S+)\s+(\S+)", text, flags=re.MULTILINE)
        if not numbers or len(numbers) % 3:
            raise TargetError("the ASCII STL file has no complete 'facet' with three 'vertex' lines")
        try:
            corners = np.array(numbers, dtype=np.float64).reshape(-1, 3, 3)
        except ValueError:
            raise TargetError("the ASCII STL file has a vertex that is not three numbers") from None
    if not len(corners):
        raise TargetError("the STL file has no triangles")
    if len(corners) > MAX_TARGET_TRIANGLES:
        raise TargetError(f"the STL file has {len(corners)} triangles; at most {MAX_TARGET_TRIANGLES} are accepted")
    if not np.isfinite(corners).all():
        raise TargetError("the STL file has coordinates that are not finite numbers")
    unique = len(np.unique(corners.reshape(len(corners), 9), axis=0))
    if len(corners) - unique > MAX_DUPLICATE_SHARE * len(corners):
        raise TargetError(f"{len(corners) - unique} of the STL file's {len(corners)} triangles are exact duplicates; "
                          f"export the target again as one clean mesh")
    vertices = corners.reshape(-1, 3)
    if np.ptp(vertices, axis=0).max() <= 0:
        raise TargetError("the STL file's triangles all lie on one point")
    return vertices, np.arange(len(vertices), dtype=np.int64).reshape(-1, 3)


def check_step_text(data: bytes) -> None:
    """Refuse, before OCC's reader sees it, a STEP file it cannot be trusted with: nesting deeper than
    MAX_STEP_NESTING, or an entity that refers to itself (``#3=EDGE_CURVE('',#2,#2,#3,.T.)``)."""
    import numpy as np

    codes = np.frombuffer(data, dtype=np.uint8)
    depth = np.cumsum((codes == ord("(")).astype(np.int32) - (codes == ord(")")))
    if len(depth) and int(depth.max()) > MAX_STEP_NESTING:
        raise TargetError(f"the STEP file nests parentheses {int(depth.max())} levels deep; at most "
                          f"{MAX_STEP_NESTING} are accepted")
    for match in _STEP_ENTITY.finditer(data):
        ref, body = b"#" + match[1], match[2]
        at = body.find(ref)
        while at >= 0:
            end = at + len(ref)
            if not body[end:end + 1].isdigit():
                raise TargetError(f"the STEP file's entity #{match[1].decode()} refers to itself")
            at = body.find(ref, end)


# --- geometry (build worker only) ---------------------------------------------------------------------------------

@dataclass
class LoadedTarget:
    format: str
    solid: object | None  # a valid cadquery Shape when the target is a solid, else None
    vertices: object  # numpy (N, 3), mm
    triangles: object  # numpy (M, 3)
    volume: float
    bbox: dict
    fields: dict = field(default_factory=dict)  # cad.residual_fields' target fields, per grid and blur
    # name -> (vertices, triangles, bbox) of each named solid of a STEP assembly (cad.residual_fields' part blocks)
    parts: dict = field(default_factory=dict)


_targets: OrderedDict[tuple, LoadedTarget] = OrderedDict()


def load_target(path: Path | str) -> LoadedTarget:
    """Parse and validate a stored target (cached per path, modification time and size)."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if key in _targets:
        _targets.move_to_end(key)
        return _targets[key]
    if stat.st_size > MAX_TARGET_FILE_BYTES:
        raise TargetError(f"the target file is larger than {MAX_TARGET_FILE_BYTES >> 20} MB")
    data = path.read_bytes()
    fmt = detect_format(data)
    if fmt == "step":
        check_step_text(data)
    loaded = _load_step(path) if fmt == "step" else _load_stl(data)
    _targets[key] = loaded
    while len(_targets) > 4:
        _targets.popitem(last=False)
    return loaded


def _box(lo, hi) -> dict:
    lo, hi = [float(v) for v in lo], [float(v) for v in hi]
    return {"min": lo, "max": hi, "size": [b - a for a, b in zip(lo, hi)]}


def _load_stl(data: bytes) -> LoadedTarget:
    from cad.voxel import oriented, signed_volume

    vertices, triangles = parse_stl(data)
    triangles = oriented(vertices, triangles)
    return LoadedTarget("stl", None, vertices, triangles, abs(signed_volume(vertices, triangles)),
                        _box(vertices.min(axis=0), vertices.max(axis=0)))


def _load_step(path: Path) -> LoadedTarget:
    import cadquery as cq
    import numpy as np

    from cad.build import tight_box
    from cad.export import preview_tolerance, tessellate

    try:
        shapes = [s for s in cq.importers.importStep(str(path)).vals() if isinstance(s, cq.Shape)]
    except Exception as exc:  # OCC reports unreadable files in several ways; its text may name the temporary file
        log.info("STEP import failed: %r", exc)
        raise TargetError(f"the STEP file could not be read ({type(exc).__name__})") from None
    compound = cq.Compound.makeCompound(shapes) if shapes else None
    if compound is None or not compound.Faces():
        raise TargetError("the STEP file contains no surfaces or solids")
    solids = compound.Solids()
    solid = _fuse(solids) if solids else None
    if solid is not None and not (solid.isValid() and solid.Volume() > 0):
        solid = None
    lo, hi = tight_box(compound)
    vertices, triangles = tessellate(compound, preview_tolerance(float(np.linalg.norm(np.subtract(hi, lo)))))
    if not len(triangles):
        raise TargetError("the STEP file's surfaces could not be tessellated")
    volume = solid.Volume() if solid is not None else 0.0
    if solid is None:
        from cad.voxel import oriented, signed_volume

        triangles = oriented(vertices, triangles)
        volume = abs(signed_volume(vertices, triangles))
    return LoadedTarget("step", solid, np.asarray(vertices), np.asarray(triangles), float(volume), _box(lo, hi),
                        parts=_named_parts(path, preview_tolerance(float(np.linalg.norm(np.subtract(hi, lo))))))


def _named_parts(path: Path, tolerance: float) -> dict:
    """name -> (vertices, triangles, bbox) of every named solid in a STEP assembly, placed in the file's
    coordinates; {} when the file holds fewer than two solids or their names repeat (nothing to match by)."""
    import cadquery as cq
    import numpy as np

    from cad.build import tight_box
    from cad.export import tessellate

    try:
        assembly = cq.Assembly.importStep(str(path))
    except Exception as exc:  # noqa: BLE001 - OCC's XCAF reader refuses some files the plain reader takes
        log.info("no part names read from the STEP file (%r)", exc)
        return {}
    found: list[tuple[str, object]] = []

    def walk(node, location) -> None:
        for child in node.children:
            placed = location * child.loc
            if isinstance(child.obj, cq.Shape) and child.obj.Solids():
                found.append((child.name, child.obj.moved(placed)))
            walk(child, placed)

    walk(assembly, assembly.loc)
    names = [name for name, _ in found]
    if len(names) < 2 or len(set(names)) != len(names):  # one solid: the whole shape says it all
        return {}
    parts = {}
    for name, shape in found:
        vertices, triangles = tessellate(shape, tolerance)
        if len(triangles):
            lo, hi = tight_box(shape)
            parts[name] = (np.asarray(vertices), np.asarray(triangles), _box(lo, hi))
    return parts


def _fuse(shapes: list):
    """One shape of the union of ``shapes`` (parts of an assembly may touch or overlap)."""
    if len(shapes) == 1:
        return shapes[0]
    return shapes[0].fuse(*shapes[1:]).clean()


def target_info(path: Path | str) -> dict:
    target = load_target(path)
    return {"format": target.format, "kind": "solid" if target.solid is not None else "mesh",
            "volume": target.volume, "bbox": target.bbox, "triangles": int(len(target.triangles)), "units": "mm"}


def target_glb(path: Path | str) -> bytes:
    """The target as a GLB in the model GLB's units and axes (metres, Y up), one node named ``target``."""
    from cad.export import glb_bytes
    from cad.mesh import PartMesh

    target = load_target(path)
    return glb_bytes([PartMesh("target", target.vertices, target.triangles, TARGET_COLOUR)], "target")


def target_png(path: Path | str, view: str = "iso", size: int = 384) -> bytes:
    """A render of the target alone, framed on itself (cad.render's camera), for the VLM step of optimise."""
    from cad.mesh import PartMesh
    from cad.render import render_png

    target = load_target(path)
    return render_png([PartMesh("target", target.vertices, target.triangles, TARGET_COLOUR)], view, size)


def _model_mesh(built):
    from cad.residual_fields import model_mesh

    return model_mesh(built.preview_meshes())


def _fused_model(built):
    """The union of the model's parts (fused at ``boolean_scale``, as ``exact_iou`` compares)."""
    if getattr(built, "_fused", None) is None:
        shapes = [p.shape for p in built.parts]
        factor = boolean_scale(built.diagonal()) if len(shapes) > 1 else 1.0
        built._fused = _scaled(_fuse([_scaled(shape, factor) for shape in shapes]), 1 / factor)
    return built._fused


def model_volume(built) -> tuple[float, str]:
    """(volume in mm^3, how): of the union of the parts ("union", as the exact IoU fuses them), or the sum of the
    part volumes ("sum of parts") where OCC's boolean fails."""
    try:
        return float(_fused_model(built).Volume()), "union"
    except Exception as exc:  # OCC booleans can fail on awkward geometry; parts that overlap count twice then
        log.info("union of the parts failed (%s); volume is the sum of the parts", exc)
        return float(sum(p.shape.Volume() for p in built.parts)), "sum of parts"


BOOLEAN_DIAGONAL_MM = 300.0  # booleans run on copies scaled by a power of ten to about this size (see boolean_scale)


def boolean_scale(diagonal: float) -> float:
    """The power of ten that brings a part of this diagonal to 95..950 mm, where OCC's booleans are at home.

    OCC's tolerances are absolute (Precision::Confusion is 1e-7 model units): the same part's booleans came out
    differently at x100 (the fuse and the intersection of a 6 m part disagreed) and its shell failed at x0.01.
    A power of ten keeps the scaled coordinates the unscaled part's digits, and is 1 for the shipped models.
    """
    import math

    if not diagonal > 0 or not math.isfinite(diagonal):
        return 1.0
    return 10.0 ** round(math.log10(BOOLEAN_DIAGONAL_MM / diagonal))


def _scaled(shape, factor: float):
    return shape if factor == 1 else shape.scale(factor)


def _diagonal(shape) -> float:
    import math

    from cad.build import tight_box

    lo, hi = tight_box(shape)
    return math.dist(lo, hi)


def exact_iou(solid, other) -> float:
    """Volumetric IoU of two solids by B-rep booleans. Raises ValueError when OCC's answer cannot be trusted.

    Both are scaled by ``boolean_scale`` of ``other``'s size first (the IoU is a ratio: the scale cancels)."""
    factor = boolean_scale(_diagonal(other))
    solid, other = _scaled(solid, factor), _scaled(other, factor)
    if not solid.isValid():
        raise ValueError("the model's parts do not fuse into a valid solid")
    volume, other_volume = solid.Volume(), other.Volume()
    common = solid.intersect(other).Volume()
    noise = VOLUME_NOISE * min(abs(volume), abs(other_volume))  # a share of the volumes: mm^3 mean nothing here
    if not -noise <= common <= min(volume, other_volume) + noise:
        raise ValueError(f"the boolean gave an impossible intersection volume {common / factor ** 3:g}")
    union = volume + other_volume - common
    # OCC's booleans can go wrong without an error where faces coincide (a wall exactly as thick as the
    # target's): the intersection and the union must agree, or neither is trusted.
    fused = solid.fuse(other).Volume()
    cube = factor ** 3  # report the model's own volumes, not the scaled copies
    if abs(fused - union) > EXACT_TOLERANCE * max(fused, union):
        raise ValueError(f"the booleans disagree (intersection implies a union of {union / cube:.6g} mm^3, the "
                         f"union measures {fused / cube:.6g} mm^3)")
    # Nearly coincident faces (a state within 1e-5 of the target's) can make intersection and union wrong in the
    # same way, so they agree: 0.81 for a state the mesh measures 1.0. Each difference must then complete the
    # intersection to its solid's volume (measured: the target minus the model came out 3 % short).
    for name, whole, rest in (("model", volume, solid.cut(other)), ("target", other_volume, other.cut(solid))):
        total = common + rest.Volume()
        if abs(total - whole) > EXACT_TOLERANCE * max(whole, union):
            raise ValueError(f"the booleans disagree (the intersection and the {name}'s remainder add up to "
                             f"{total / cube:.6g} mm^3, the {name} has {whole / cube:.6g} mm^3)")
    return common / union if union > 0 else 1.0


def state_iou(script_path: str, values: dict, target_values: dict) -> dict:
    """IoU of one model built with two parameter states: exact B-rep where possible, else along rays (mesh).
    ``{"iou", "method"}``; identical states are 1.0 without building."""
    from cad.build import build_model
    from cad.voxel import DEFAULT_RESOLUTION, mesh_iou

    if values == target_values:
        return {"iou": 1.0, "method": "identical"}
    built, goal = build_model(script_path, values), build_model(script_path, target_values)
    try:
        return {"iou": float(min(max(exact_iou(_fused_model(built), _fused_model(goal)), 0.0), 1.0)),
                "method": "exact"}
    except Exception as exc:  # noqa: BLE001 - OCC booleans can fail on awkward geometry
        log.info("exact IoU between states not possible (%s); using the mesh estimate", exc)
    voxel = mesh_iou(_model_mesh(built), _model_mesh(goal), DEFAULT_RESOLUTION, rays=True)
    return {"iou": float(min(max(voxel["iou"], 0.0), 1.0)), "method": "mesh"}


def compare_model(script_path: str, values: dict, target_path: str, method: str = "auto",
                  resolution: int | None = None, blur: float = 0.0, profile: bool = False,
                  rays: bool = False, detail: bool = True, field: dict | None = None) -> dict:
    """IoU of the model built with ``values`` against the stored target, with volume and bounding-box differences.

    ``method``: ``auto`` (exact when both are solids, else mesh), ``exact`` (still falls back to mesh when the
    boolean is impossible or fails) or ``mesh``. ``detail=False`` returns only ``iou`` and ``method`` (the
    optimiser's inner loop). ``blur``/``profile``/``rays`` (mesh method only, see ``cad.voxel.mesh_iou``) give the
    optimiser's smoothed coarse-stage scores instead of the IoU. ``field`` (``{"resolution", "blur"}``) returns the
    optimiser's least-squares view instead: ``residuals`` (see ``occupancy_residuals``) and a soft ``iou``.
    """
    from cad.build import build_model
    from cad.voxel import DEFAULT_RESOLUTION, mesh_iou

    if method not in ("auto", "exact", "mesh"):
        raise ValueError(f"method must be auto, exact or mesh, got {method!r}")
    built = build_model(script_path, values)
    target = load_target(target_path)
    if field is not None:
        from cad.residual_fields import occupancy_residuals

        return occupancy_residuals(built, target, **field)
    result: dict = {}
    model_solid = None
    if method != "mesh" and target.solid is not None:
        try:
            model_solid = _fused_model(built)
            result = {"iou": exact_iou(model_solid, target.solid), "method": "exact"}
        except Exception as exc:  # OCC booleans can fail on awkward geometry; the mesh estimate still works
            log.info("exact IoU not possible (%s); using the mesh estimate", exc)
            result = {"fallback_reason": str(exc)}
    elif method != "mesh":
        result = {"fallback_reason": "the target is a mesh (STL or surfaces), not a solid"}
    if "iou" not in result:
        voxel = mesh_iou(_model_mesh(built), (target.vertices, target.triangles),
                         resolution or DEFAULT_RESOLUTION, blur=blur if method == "mesh" else 0.0,
                         profile=profile and method == "mesh",
                         # a fallback for an exact answer measures along rays: exact along each ray, so thin walls
                         # are not rounded to whole voxels
                         rays=rays if method == "mesh" else True, cache=target.fields)
        result.update(iou=voxel["iou"], method="mesh", voxel_mm=voxel["voxel_mm"])
    result["iou"] = float(min(max(result["iou"], 0.0), 1.0))
    if not detail:
        return result
    measured = built.measurements()
    volume = model_solid.Volume() if model_solid is not None else model_volume(built)[0]
    model_box = _box(measured["min"], measured["max"])
    size_difference = [m - t for m, t in zip(model_box["size"], target.bbox["size"])]
    centre_difference = [(m0 + m1 - t0 - t1) / 2 for m0, m1, t0, t1 in
                         zip(model_box["min"], model_box["max"], target.bbox["min"], target.bbox["max"])]
    result.update(
        volume={"model": volume, "target": target.volume, "difference": volume - target.volume,
                "relative": (volume - target.volume) / target.volume if target.volume else None},
        bbox={"model": model_box, "target": target.bbox, "size_difference": size_difference,
              "centre_difference": centre_difference},
        units="mm")
    return result

"""Build CAD models and produce their artifacts (GLB/STL/STEP/PNG/bounding box), with caching.

``produce(script_path, values, artifact, **options)`` is the build entry point: plain, picklable arguments in,
bytes out. ``Builder`` runs it in the build worker process (``cad.worker``) under a timeout, so a hanging or
crashing model script cannot take the caller down, and wraps it with validation, a thread-safe in-memory LRU, an
on-disk cache (atomic writes) and per-key locks so one state is built once. The worker keeps the last built shapes
(``build_model``'s cache), so GLB, PNG and STL of one state build it once. The calling process never imports
cadquery through ``Builder``; ``build_model``/``produce`` called directly build in the current process.
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from cad.artifact_cache import DEFAULT_DISK_LIMIT_BYTES, ArtifactCache
from cad.errors import BuildError, EmptyGeometry
from cad.registry import CadModel
from cad.mesh import MAX_SIZE, MIN_SIZE, PALETTE, VIEWS, PartMesh

log = logging.getLogger(__name__)

FORMATS = ("glb", "stl", "step")
# Bump when any artifact's bytes change for the same inputs, so stale disk caches are never served.
# 2: tessellation and bounding boxes relative to the model's size; 3: linear GLB colours; 4: B-rep edges in the GLB
ARTIFACT_VERSION = "4"
_GEOMETRY_LOCK = threading.RLock()  # OCC is not reliably thread-safe; geometry work is serialised.


@dataclass
class BuiltPart:
    name: str
    shape: object  # cadquery Shape, placed in model coordinates
    color: tuple[float, float, float]


@dataclass
class BuiltModel:
    assembly: object
    parts: list[BuiltPart]
    _preview: list[PartMesh] | None = field(default=None, repr=False)
    _fused: object | None = field(default=None, repr=False)  # union of the parts (cad.target's exact IoU)
    _edges: dict | None = field(default=None, repr=False)  # part name -> B-rep edge polylines (cad.edges)

    def preview_meshes(self) -> list[PartMesh]:
        """Coarse tessellation shared by the GLB export and the PNG renderer (computed once)."""
        if self._preview is None:
            from cad.export import preview_tolerance, tessellate

            tolerance = preview_tolerance(self.diagonal())
            self._preview = [PartMesh(p.name, *tessellate(p.shape, tolerance), p.color) for p in self.parts]
        return self._preview

    def edge_lines(self) -> dict[str, list]:
        """Every part's B-rep edges as polylines in mm (cad.edges, relative to the part's size; computed once)."""
        if self._edges is None:
            from cad.edges import part_edges

            self._edges = {p.name: part_edges(p.shape) for p in self.parts}
        return self._edges

    def diagonal(self) -> float:
        import cadquery as cq

        lo, hi = tight_box(cq.Compound.makeCompound([p.shape for p in self.parts]))
        return sum((b - a) ** 2 for a, b in zip(lo, hi)) ** 0.5

    def measurements(self) -> dict:
        """Bounding box of the whole model and of every part (mm), plus part volumes (mm^3)."""
        import cadquery as cq

        def box(shape) -> dict:
            lo, hi = tight_box(shape)
            return {"min": lo, "max": hi, "size": [b - a for a, b in zip(lo, hi)]}

        whole = box(cq.Compound.makeCompound([p.shape for p in self.parts]))
        whole["parts"] = {p.name: {**box(p.shape), "volume": p.shape.Volume()} for p in self.parts}
        whole["units"] = "mm"
        return whole


def tight_box(shape) -> tuple[list[float], list[float]]:
    """(min, max) corners of the shape's exact bounding box, from its B-rep alone.

    cadquery's ``Shape.BoundingBox()`` asks OCC with ``useTriangulation=True``: once a shape has been tessellated
    (every GLB or PNG does that) the box is grown by the mesh's deflection, 1.8 % of a thin plate's thickness at
    any scale. Here neither the triangulation nor the shape's tolerance is used.
    """
    from OCP.Bnd import Bnd_Box
    from OCP.BRepBndLib import BRepBndLib

    box = Bnd_Box()
    BRepBndLib.AddOptimal_s(shape.wrapped, box, False, False)
    if box.IsVoid():
        raise ValueError("the shape has no geometry to bound")
    xmin, ymin, zmin, xmax, ymax, zmax = box.Get()
    return [xmin, ymin, zmin], [xmax, ymax, zmax]


def _flatten(assembly, script_path: str) -> list[BuiltPart]:
    import cadquery as cq

    parts: list[BuiltPart] = []

    def visit(node, parent_location):
        location = parent_location * node.loc
        if node.obj is not None:
            objects = node.obj.vals() if isinstance(node.obj, cq.Workplane) else [node.obj]
            shapes = [o for o in objects if isinstance(o, cq.Shape)]
            if not shapes:
                raise BuildError(script_path, None, f"part {node.name!r} has no solid geometry")
            shape = shapes[0] if len(shapes) == 1 else cq.Compound.makeCompound(shapes)
            color = node.color.toTuple()[:3] if node.color is not None else PALETTE[len(parts) % len(PALETTE)]
            parts.append(BuiltPart(node.name, shape.moved(location), tuple(float(c) for c in color)))
        for child in node.children:
            visit(child, location)

    visit(assembly, cq.Location())
    names = [p.name for p in parts]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise BuildError(script_path, None, f"part names must be unique, repeated: {', '.join(duplicates)}")
    return parts


MAX_VALUES_NAMED = 12


def _refuse_empty(built: BuiltModel, script_path: str, values: dict) -> None:
    """Raise EmptyGeometry when a part has no solid volume (OCC would fail later, differently per export)."""
    empty = [p.name for p in built.parts if not p.shape.Solids() or p.shape.Volume() <= 0]
    if not empty:
        return
    shown = ", ".join(f"{k}={v}" for k, v in list(values.items())[:MAX_VALUES_NAMED])
    more = f" and {len(values) - MAX_VALUES_NAMED} more" if len(values) > MAX_VALUES_NAMED else ""
    parts = ", ".join(repr(n) for n in empty)
    raise EmptyGeometry(script_path, None, f"these values leave no solid geometry in part {parts}: {shown}{more}")


_built: OrderedDict[str, BuiltModel] = OrderedDict()
_BUILT_ITEMS = 6
_counters = {"builds": 0}


def build_count() -> int:
    """How many times a script was actually run in this process (cache misses of ``build_model``)."""
    return _counters["builds"]


def build_model(script_path: str | Path, values: dict) -> BuiltModel:
    """Run the script with complete, validated ``values``; recent results are reused in this process."""
    from cad.script import source_hash
    from cad.script_run import run_build, to_assembly

    path = Path(script_path).resolve()
    key = hashlib.sha256(json.dumps([str(path), source_hash(path.read_text(encoding="utf-8")), values],
                                    sort_keys=True).encode()).hexdigest()
    with _GEOMETRY_LOCK:
        if key in _built:
            _built.move_to_end(key)
            return _built[key]
        _counters["builds"] += 1
        assembly = to_assembly(run_build(path, values), str(path))
        built = BuiltModel(assembly, _flatten(assembly, str(path)))
        _refuse_empty(built, str(path), values)
        _built[key] = built
        while len(_built) > _BUILT_ITEMS:
            _built.popitem(last=False)
        return built


def clear_process_cache() -> None:
    """Forget built shapes here and in a running build worker (benchmarks time cold builds on fresh shapes)."""
    from cad import worker

    with _GEOMETRY_LOCK:
        _built.clear()
    worker.clear_worker_cache()


def produce(script_path: str | Path, values: dict, artifact: str, view: str = "iso", size: int = 384,
            name: str = "model", camera: dict | None = None) -> bytes:
    """Artifact bytes for ``artifact`` in glb|stl|step|png|bbox|measure (bbox: UTF-8 JSON of ``measurements``;
    measure: of ``cad.measure.summary``). A png is drawn from ``camera`` (cad.render.check_camera) when given."""
    from cad import export, render

    with _GEOMETRY_LOCK:
        built = build_model(script_path, values)
        if artifact == "glb":
            return export.glb_bytes(built.preview_meshes(), name, edges=built.edge_lines())
        if artifact == "stl":
            return export.stl_bytes([p.shape for p in built.parts])
        if artifact == "step":
            return export.step_bytes(built.assembly)
        if artifact == "png":
            meshes = built.preview_meshes()
        elif artifact == "bbox":
            return json.dumps(built.measurements()).encode("utf-8")
        elif artifact == "measure":
            from cad.measure import summary

            return json.dumps(summary(built)).encode("utf-8")
        else:
            raise ValueError(f"unknown artifact {artifact!r}")
    return render.render_png(meshes, view, size, camera=camera)  # pure numpy: no need to hold the geometry lock


class Builder:
    """Validated, cached access to model artifacts, built in the shared build worker. Thread-safe.

    ``timeout_s`` bounds every job in the worker (``CAD_BUILD_TIMEOUT``); past it the worker is killed and the
    call raises ``cad.worker.BuildTimeout`` (a ``BuildError``).
    """

    def __init__(self, cache_dir: Path, memory_items: int = 32, timeout_s: float | None = None,
                 disk_limit_bytes: int = DEFAULT_DISK_LIMIT_BYTES):
        from cad.worker import DEFAULT_TIMEOUT_S, shared_client

        self.cache_dir = Path(cache_dir)
        self.timeout_s = float(timeout_s) if timeout_s else DEFAULT_TIMEOUT_S
        self.worker = shared_client()
        self.target_worker = shared_client("target")  # target import runs apart, under its own memory limit
        self.cache = ArtifactCache(self.cache_dir, memory_items, disk_limit_bytes)
        self._lock = threading.Lock()
        self._key_locks: weakref.WeakValueDictionary[str, threading.Lock] = weakref.WeakValueDictionary()
        self._stats = {"misses": 0, "errors": 0, "build_seconds": 0.0, "last_build_seconds": None}

    # --- public API ---
    def export(self, model: CadModel, params: dict, fmt: str) -> bytes:
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        return self._get(model, params, fmt)

    def render_png(self, model: CadModel, params: dict, view: str = "iso", size: int = 384,
                   camera: dict | None = None) -> bytes:
        """PNG of a preset view, or from ``camera`` ({position, target, up, fov or zoom}: the viewer's camera;
        ValueError when it cannot be drawn), drawn in the build worker under its timeout."""
        if view not in VIEWS:
            raise ValueError(f"view must be one of {', '.join(VIEWS)}, got {view!r}")
        if isinstance(size, bool) or not isinstance(size, int) or not MIN_SIZE <= size <= MAX_SIZE:
            raise ValueError(f"size must be a whole number between {MIN_SIZE} and {MAX_SIZE}, got {size!r}")
        if camera is None:
            return self._get(model, params, "png", view=view, size=size)
        from cad.render import check_camera  # numpy only: refuse a bad camera before the worker is asked

        check_camera(camera)
        canonical = json.dumps(camera, sort_keys=True, separators=(",", ":"))
        return self._get(model, params, "png", view=view, size=size, camera=camera,
                         key_options={"camera": hashlib.sha256(canonical.encode()).hexdigest()[:16]})

    def bounding_box(self, model: CadModel, params: dict) -> dict:
        """{"min","max","size" (mm, whole model), "parts": {name: {"min","max","size","volume"}}, "units":"mm"}."""
        return json.loads(self._get(model, params, "bbox"))

    def measure(self, model: CadModel, params: dict) -> dict:
        """{"min","max","size" (whole model), "volume" (of the parts' union), "volume_method", "units"}."""
        return json.loads(self._get(model, params, "measure"))

    def warm_up(self, model: CadModel) -> float:
        """Import cadquery and build the default state's GLB and iso render; returns seconds taken."""
        start = time.perf_counter()
        self.export(model, {}, "glb")
        self.render_png(model, {}, "iso", 384)
        elapsed = time.perf_counter() - start
        log.info("CAD warm-up of %s took %.2f s", model.name, elapsed)
        return elapsed

    # --- targets (cad.target), computed in the worker; not cached here ---
    def compare(self, model: CadModel, params: dict, target_path: Path, method: str = "auto",
                detail: bool = True, **options) -> dict:
        """IoU, volume and bounding-box differences of the model state against a stored target.

        ``options`` (resolution, blur, profile, rays) select the optimiser's scores; see cad.target.compare_model.
        """
        values = model.schema.complete(params)
        return self.worker.call("compare", str(model.path), values, str(target_path), method=method, detail=detail,
                                **options, timeout_s=self.timeout_s, script=str(model.path))

    def target_info(self, target_path: Path) -> dict:
        """Parse and validate a target file (raises cad.target.TargetError); its format, kind, volume, bbox."""
        return self._target_call("target_info", str(target_path))

    def target_glb(self, target_path: Path) -> bytes:
        return self._target_call("target_glb", str(target_path))

    def target_png(self, target_path: Path, view: str = "iso", size: int = 384) -> bytes:
        return self._target_call("target_png", str(target_path), view, size)

    def _target_call(self, job: str, *args):
        """A job of the target-import worker; its timeouts, limits and crashes are the file's fault: TargetError,
        with no path in the message (the upload is still a temporary file)."""
        from cad.sandbox import BuildLimitExceeded
        from cad.target import TargetError
        from cad.worker import BuildTimeout

        try:
            return self.target_worker.call(job, *args, timeout_s=self.timeout_s, script="target")
        except BuildLimitExceeded as exc:
            raise TargetError(exc.message) from None
        except BuildTimeout:
            raise TargetError(f"reading the target file took longer than {self.timeout_s:g} s and was stopped "
                              f"(CAD_BUILD_TIMEOUT)") from None
        except BuildError:  # the reader crashed (OCC on a malformed STEP): the file's fault, not a model script's
            raise TargetError("the target file crashed the CAD kernel's reader (malformed or hostile file); "
                              "nothing was stored") from None

    def stats(self) -> dict:
        with self._lock:
            return {**self.cache.stats(), **self._stats}

    def state_key(self, model: CadModel, params: dict) -> str:
        """Hash of (model name, script source hash, canonical complete parameter values)."""
        values = model.schema.complete(params)
        canonical = json.dumps([model.name, model.source_hash, values], sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    # --- caching ---
    def _get(self, model: CadModel, params: dict, artifact: str, key_options: dict | None = None,
             **options) -> bytes:
        """``key_options`` stand for options in the key (a hash for a camera) without being sent."""
        values = model.schema.complete(params)  # raises ParameterError before anything else happens
        shown = {k: v for k, v in options.items() if key_options is None or k not in key_options}
        suffix = "".join(f"-{k}{v}" for k, v in sorted({**shown, **(key_options or {})}.items()))
        key = f"{self.state_key(model, values)}-{artifact}{suffix}-v{ARTIFACT_VERSION}"
        data = self.cache.get(key)
        if data is not None:
            return data
        with self._lock:
            key_lock = self._key_locks.get(key)
            if key_lock is None:
                key_lock = threading.Lock()
                self._key_locks[key] = key_lock
        with key_lock:
            data = self.cache.get(key)  # another thread may have built it while we waited
            if data is not None:
                return data
            start = time.perf_counter()
            try:
                data = self.worker.call("produce", str(model.path), values, artifact, name=model.name, **options,
                                        timeout_s=self.timeout_s, script=str(model.path))
            except Exception:
                with self._lock:
                    self._stats["errors"] += 1
                raise
            elapsed = time.perf_counter() - start
            with self._lock:
                self._stats["misses"] += 1
                self._stats["build_seconds"] += elapsed
                self._stats["last_build_seconds"] = elapsed
            self.cache.put(key, data)
            return data

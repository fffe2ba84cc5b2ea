"""Synthetic training data from any model in the registry.

    python -m vlm.synth --out data/synth --models rover,bracket --count 300 --seed 0 [--photo-like 1]

For each example: a current state A and a target state B drawn within the schema (`--changes` parameters
changed, ints, floats and bools; `--no-change` of the pairs change nothing), a request in one of the styles of
`vlm.synth_text` ("match the reference photo", or text derived from the change), A rendered as the design view
(the server's `include_render` image) and, for photo requests, B rendered as the reference images (`--views`,
optionally with photo-like background, light, colour, camera jitter and crop: `vlm.photo`). The prompt is built by
`vlm.prompts.build_prompt`, the server's own, so training and serving see identical text; the answer is the
JSON change from A to B. Examples are written in the dataset format the UI logs (`vlm.dataset`, outcome
`synthetic`) with `values` (A), `target_values` (B), `style` and `split`.

Splits: an example's split is a hash of the seed and its target state (`vlm.dataset.hashed_split`, as for UI
logs), so no target state appears in two splits. Everything is a function of --seed: the same
arguments write the same file, whatever --workers is. CAD builds run in a process pool (`--workers`).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

from cad.pool import CadPool, JobFailed
from cad.registry import CadModel, ModelRegistry
from vlm.dataset import DatasetLog, changes_between, hashed_split, make_target, state_key
from vlm.photo import PhotoLook, apply_look, draw_look, jittered_direction, png_bytes
from vlm.prompts import build_prompt
from vlm.synth_text import STYLES, reason_text, request_text, summary_text

log = logging.getLogger("vlm.synth")

DEFAULT_STYLES = {"photo": 0.35, "absolute": 0.35, "relative": 0.15, "direction": 0.15}
RENDER_VIEW = "iso"  # the design view, as the server's include_render
MIN_MOVE = 0.15  # a changed number moves at least this share of its range (a change worth asking for)
MAX_ATTEMPTS = 8  # states that do not build are drawn again, this many times


@dataclass
class SynthConfig:
    models: list[str]
    count: int = 100  # examples per model
    seed: int = 0
    changes: tuple[int, int] = (1, 3)
    no_change: float = 0.1
    styles: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_STYLES))
    views: tuple[str, ...] = ("iso", "front")
    size: int = 384
    photo_like: float = 0.0  # strength of the photo-like variation of reference images (0: clean renders)
    render_share: float = 0.5  # text requests that also carry the design view (photo requests always do)
    val: float = 0.1
    test: float = 0.1
    workers: int = 0  # 0: one per CPU
    check_text_builds: bool = True  # False: training text requests without images skip the CAD build (fast)


@dataclass
class Plan:
    model: str
    index: int
    values: dict
    target_values: dict
    changed: list[str]
    style: str
    request: str
    include_render: bool
    shots: list[tuple[str, dict | None, int]]  # (view, look or None, noise seed) of each reference image
    split: str = "train"


# ---------------------------------------------------------------- drawing states
def grid_values(param: dict) -> list:
    """Every value of a parameter on its schema grid (ints and numbers with a step), else None."""
    if param["type"] == "bool":
        return [False, True]
    lo, hi = param["min"], param["max"]
    if param["type"] == "int":
        return list(range(int(lo), int(hi) + 1, int(param.get("step") or 1)))
    step = param.get("step") or (hi - lo) / 100
    count = int(round((hi - lo) / step))
    return [float(f"{lo + k * step:.10g}") for k in range(count + 1)]


def sample_state(params: list[dict], rng: random.Random) -> dict:
    return {p["name"]: rng.choice(grid_values(p)) for p in params}


def _moved_enough(param: dict, old, new) -> bool:
    if param["type"] == "bool":
        return new is not old
    if param["type"] == "int":
        return new != old
    return abs(new - old) >= MIN_MOVE * (param["max"] - param["min"]) - 1e-9


def perturb(params: list[dict], state: dict, count: int, rng: random.Random) -> tuple[dict, list[str]]:
    """State with `count` parameters moved to other grid values (bools flipped), and their names in schema order."""
    chosen = rng.sample(params, min(count, len(params)))
    new = dict(state)
    for param in chosen:
        options = [v for v in grid_values(param) if _moved_enough(param, state[param["name"]], v)]
        if options:
            new[param["name"]] = rng.choice(options)
    names = [p["name"] for p in params if new[p["name"]] != state[p["name"]]]
    return new, names


def _rng(*parts) -> random.Random:
    return random.Random(int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "big"))


def plan_example(model: CadModel, cfg: SynthConfig, index: int, attempt: int) -> Plan:
    rng = _rng("plan", cfg.seed, model.name, index, attempt)
    params = model.schema.to_json()
    values = sample_state(params, rng)
    if rng.random() < cfg.no_change:
        target_values, changed = dict(values), []
        style = "photo" if rng.random() < 0.5 else "no_change"
    else:
        target_values, changed = perturb(params, values, rng.randint(*cfg.changes), rng)
        names, weights = zip(*cfg.styles.items())
        style = rng.choices(names, weights)[0]
    by_name = {p["name"]: p for p in params}
    triples = [(by_name[n], values[n], target_values[n]) for n in changed]
    request = request_text(triples, style, rng)
    photo = style == "photo"
    include_render = photo or rng.random() < cfg.render_share
    shots = []
    if photo:
        for view in cfg.views:
            look = draw_look(rng, cfg.photo_like).to_json() if cfg.photo_like > 0 else None
            shots.append((view, look, rng.randrange(2**31)))
    split = hashed_split(state_key(model.name, target_values), cfg.seed, cfg.val, cfg.test)
    return Plan(model.name, index, values, target_values, changed, style, request, include_render, shots, split)


# ---------------------------------------------------------------- rendering (in the pool's processes)
def render_plan(script_path: str, plan: Plan, size: int) -> tuple[list[bytes], str | None]:
    """(images, None) or ([], why the states do not build). Design view first, then the references."""
    from cad.build import build_model
    from cad.render import render_array
    from vlm.photo import VIEW_DIRECTIONS

    try:
        current = build_model(script_path, plan.values).preview_meshes()
        goal = build_model(script_path, plan.target_values).preview_meshes()
    except Exception as exc:  # noqa: BLE001 - any failure of a drawn state means: draw another
        return [], f"{type(exc).__name__}: {exc}"
    images = []
    if plan.include_render:
        images.append(png_bytes_array(render_array(current, RENDER_VIEW, size)))
    for view, look_json, noise_seed in plan.shots:
        if look_json is None:
            images.append(png_bytes_array(render_array(goal, view, size, direction=VIEW_DIRECTIONS[view])))
            continue
        look = PhotoLook(**{k: tuple(v) if isinstance(v, list) else v for k, v in look_json.items()})
        array = render_array(goal, view, size, direction=jittered_direction(view, look), background=look.background)
        images.append(png_bytes(apply_look(array, look, noise_seed)))
    return images, None


def png_bytes_array(array) -> bytes:
    from PIL import Image

    return png_bytes(Image.fromarray(array, "RGB"))


# ---------------------------------------------------------------- assembling examples
def make_example(log_: DatasetLog, model: CadModel, plan: Plan, images: list[bytes], seed: int) -> dict:
    params = model.schema.to_json()
    by_name = {p["name"]: p for p in params}
    references = len(plan.shots)
    system, user = build_prompt(params, plan.values, plan.request, model_title=model.title,
                                has_images=references > 0, has_render=plan.include_render)
    triples = [(by_name[n], plan.values[n], plan.target_values[n]) for n in plan.changed]
    reasons = {n: reason_text(plan.style) for n in plan.changed}
    roles = ["render"] * int(plan.include_render) + ["reference"] * references
    target = make_target(summary_text(triples), changes_between(plan.values, plan.target_values, reasons))
    example_id = hashlib.sha256(f"synth:{seed}:{plan.model}:{plan.index}".encode()).hexdigest()[:32]
    return log_.make_example(
        outcome="synthetic", system=system, user=user, images=list(zip(roles, images)),
        answer=json.dumps(target, ensure_ascii=False), target=target, values=plan.values,
        target_values=plan.target_values, cad_model=plan.model, id=example_id, time=0.0, timestamp=None,
        source="synthetic", request=plan.request, style=plan.style, split=plan.split, changed=plan.changed,
        looks=[look for _, look, _ in plan.shots])


def synthesise(cfg: SynthConfig, out: Path, *, registry: ModelRegistry | None = None,
               progress: bool = True) -> dict:
    """Write the dataset to `out` (a new folder, or an empty one); returns counts."""
    from tqdm import tqdm

    registry = registry or ModelRegistry()
    models = {name: registry.get(name) for name in cfg.models}
    dataset = DatasetLog(out)
    if dataset.examples_path.exists() and dataset.examples_path.stat().st_size:
        raise SystemExit(f"{dataset.examples_path} already has examples: choose a new --out folder")
    workers = cfg.workers or os.cpu_count() or 1
    jobs = [(name, i) for name in models for i in range(cfg.count)]
    results: dict[tuple[str, int], tuple[Plan, list[bytes]]] = {}
    failures = 0
    bar = tqdm(total=len(jobs), desc="synthesising", unit="example", disable=not progress, dynamic_ncols=True)
    with CadPool(workers) as pool:
        pending = {}
        for name, i in jobs:
            plan = plan_example(models[name], cfg, i, 0)
            if not cfg.check_text_builds and not plan.include_render and not plan.shots and plan.split == "train":
                results[(name, i)] = (plan, [])  # nothing to render and no build asked for
                bar.update(1)
                continue
            pending[pool.submit(render_plan, str(models[name].path), plan, cfg.size)] = (plan, 0)
        while pending:
            future = next(iter(pending))  # in submission order: the pool keeps every worker busy meanwhile
            plan, attempt = pending.pop(future)
            try:
                images, error = pool.result(future)
            except JobFailed as exc:  # out of memory or time: this state is as unusable as one that fails
                images, error = [], str(exc)
            if error is None:
                results[(plan.model, plan.index)] = (plan, images)
                bar.update(1)
                continue
            failures += 1
            if attempt + 1 >= MAX_ATTEMPTS:
                raise SystemExit(f"{plan.model}: {MAX_ATTEMPTS} drawn states in a row do not build ({error})")
            log.debug("%s example %d: drawn state does not build (%s); drawing again", plan.model, plan.index, error)
            retry = plan_example(models[plan.model], cfg, plan.index, attempt + 1)
            pending[pool.submit(render_plan, str(models[plan.model].path), retry, cfg.size)] = (retry, attempt + 1)
    bar.close()
    ordered = [results[job] for job in jobs]
    counts: dict = {"examples": len(ordered), "states_that_did_not_build": failures}
    examples = [make_example(dataset, models[p.model], p, imgs, cfg.seed) for p, imgs in ordered]
    dataset.append(examples)
    for key, values in (("split", ("train", "val", "test")), ("style", (*STYLES, "no_change"))):
        for value in values:
            counts[f"{key}_{value}"] = sum(1 for e in examples if e[key] == value)
    manifest = {"config": {**cfg.__dict__, "changes": list(cfg.changes), "views": list(cfg.views)}, "counts": counts}
    (out / "synth.json").write_text(json.dumps(manifest, indent=2))
    return counts


# ---------------------------------------------------------------- CLI
def _styles(text: str) -> dict[str, float]:
    styles = {}
    for item in text.split(","):
        name, _, weight = item.partition("=")
        name = name.strip()
        if name not in STYLES:
            raise argparse.ArgumentTypeError(f"unknown style {name!r} (styles: {', '.join(STYLES)})")
        styles[name] = float(weight or 1)
    return styles


def _range(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition("-")
    lo_i, hi_i = int(lo), int(hi or lo)
    if not 0 < lo_i <= hi_i:
        raise argparse.ArgumentTypeError("--changes is N or MIN-MAX with 1 <= MIN <= MAX")
    return lo_i, hi_i


def parse_args(argv: list[str] | None) -> tuple[SynthConfig, Path, bool, ModelRegistry]:
    p = argparse.ArgumentParser(prog="python -m vlm.synth", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path, help="new dataset folder")
    p.add_argument("--models", default="", help="comma-separated model names (default: every model)")
    p.add_argument("--models-dir", action="append", type=Path, default=[], help="extra folder of model scripts")
    p.add_argument("--count", type=int, default=100, help="examples per model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--changes", type=_range, default=(1, 3), help="parameters changed per example: N or MIN-MAX")
    p.add_argument("--no-change", type=float, default=0.1, help="share of pairs where nothing changes")
    p.add_argument("--styles", type=_styles, default=dict(DEFAULT_STYLES),
                   help="request styles with weights, e.g. photo=2,absolute=1,relative=1,direction=1")
    p.add_argument("--views", default="iso,front", help="views of the reference images (front, side, top, iso)")
    p.add_argument("--size", type=int, default=384, help="image side in pixels")
    p.add_argument("--photo-like", type=float, default=0.0, help="photo-like variation of references, 0..1")
    p.add_argument("--render-share", type=float, default=0.5, help="text requests that carry the design view")
    p.add_argument("--val", type=float, default=0.1)
    p.add_argument("--test", type=float, default=0.1)
    p.add_argument("--workers", type=int, default=0, help="build processes (0: one per CPU)")
    p.add_argument("--no-text-build-check", action="store_true",
                   help="training text requests without images are not built (much faster; their states may not "
                        "build); validation and test examples always are")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    views = tuple(v.strip() for v in a.views.split(",") if v.strip())
    bad = [v for v in views if v not in ("front", "side", "top", "iso")]
    if bad or not views:
        p.error(f"--views: unknown view(s) {', '.join(bad) or '(none given)'}")
    if a.count < 1 or not 64 <= a.size <= 2048 or a.val + a.test >= 1 or min(a.val, a.test, a.no_change) < 0:
        p.error("need --count >= 1, 64 <= --size <= 2048, --val + --test < 1, non-negative shares")
    registry = ModelRegistry(extra_dirs=a.models_dir)
    models = [m.strip() for m in a.models.split(",") if m.strip()] or registry.names()
    unknown = [m for m in models if m not in registry.names()]
    if unknown:
        p.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(registry.names())}")
    cfg = SynthConfig(models=models, count=a.count, seed=a.seed, changes=a.changes, no_change=a.no_change,
                      styles=a.styles, views=views, size=a.size, photo_like=a.photo_like,
                      render_share=a.render_share, val=a.val, test=a.test, workers=a.workers,
                      check_text_builds=not a.no_text_build_check)
    return cfg, a.out, not a.no_progress, registry


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"), format="%(levelname)s %(name)s %(message)s")
    cfg, out, progress, registry = parse_args(argv)
    counts = synthesise(cfg, out, registry=registry, progress=progress)
    width = max(len(k) for k in counts)
    for key, value in counts.items():
        print(f"{key:<{width}}  {value}")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

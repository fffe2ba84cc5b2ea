"""bench/fit.py and its held-out family (bench/random_models.py): deterministic, real scripts, real geometry, and a
tiny end-to-end run that writes the JSON with all three solvers."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.random_models import SIZE_CLASSES, generate, generate_assembly, scale_script, write_model

ROOT = Path(__file__).resolve().parent.parent


def test_generator_is_deterministic_by_seed():
    assert generate(7).source == generate(7).source
    assert generate(7).source != generate(8).source
    for seed in range(40):
        model = generate(seed)
        assert 2 <= len(model.parameters) <= 10
        assert 2 <= len(model.features) <= 6
        low, high = SIZE_CLASSES[model.size_class]
        assert low <= model.size_mm <= high


def test_scripts_load_through_the_registry_with_the_intended_parameters(tmp_path):
    from cad.registry import ModelRegistry

    models = [generate(seed) for seed in range(12)]
    for model in models:
        write_model(tmp_path, model)
    registry = ModelRegistry([tmp_path])
    for model in models:
        schema = registry.get(model.name).schema
        assert schema.names() == [d.name for d in model.parameters]
        for dim in model.parameters:
            p = schema[dim.name]
            assert p.type == dim.kind
            assert p.min < p.default < p.max or p.type == "int" and p.min <= p.default <= p.max
            assert p.min == pytest.approx(dim.low, rel=1e-5) and p.max == pytest.approx(dim.high, rel=1e-5)


def test_random_assemblies_have_named_solids_and_every_small_part_a_parameter(tmp_path):
    """The multi-part held-out family: its STEP target is read back as named parts, in place, at any scale."""
    from cad import export
    from cad.build import build_model
    from cad.registry import ModelRegistry
    from cad.target import load_target

    assert generate_assembly(4).source == generate_assembly(4).source != generate_assembly(5).source
    models = [generate_assembly(seed) for seed in range(3)] + [generate_assembly(2, scale=100)]
    models[-1].name = "rasm_0002_x100"
    for model in models:
        assert 2 <= len(model.parameters) <= 10
        parts = {d.name.split("_")[0] for d in model.parameters if d.name.startswith("part")}
        assert parts == {f"part{k}" for k in range(1, len(parts) + 1)} and parts
        write_model(tmp_path, model)
    registry = ModelRegistry([tmp_path])
    boxes = {}
    for model in models:
        entry = registry.get(model.name)
        built = build_model(entry.path, entry.schema.complete({}))
        step = tmp_path / f"{model.name}.step"
        step.write_bytes(export.step_bytes(built.assembly))
        target = load_target(step)
        small = sorted(n for n in target.parts if n != "base")
        assert sorted(target.parts) == ["base"] + small and len(small) >= 1
        boxes[model.name] = target.parts[small[0]][2]
    plain, scaled = boxes["rasm_0002"], boxes["rasm_0002_x100"]
    for key in ("min", "max"):
        assert scaled[key] == pytest.approx([100 * v for v in plain[key]], rel=1e-4, abs=1e-6 * max(plain["size"]))


def test_scale_multiplies_every_length_and_nothing_else(tmp_path):
    from cad.script import parse_source

    seed = next(s for s in range(100) if any(d.kind == "int" for d in generate(s).parameters))
    plain = parse_source(generate(seed).source).schema
    for factor in (0.01, 100):
        scaled = parse_source(generate(seed, scale=factor).source).schema
        rewritten = parse_source(scale_script(generate(seed).source, factor)).schema
        for p in plain:
            for other in (scaled[p.name], rewritten[p.name]):
                k = factor if p.type == "float" else 1
                assert (other.min, other.default, other.max) == pytest.approx((p.min * k, p.default * k, p.max * k),
                                                                              rel=1e-5)
    bracket = (ROOT / "cad" / "models" / "bracket.py").read_text()
    scaled = parse_source(scale_script(bracket, 100)).schema
    assert scaled["width"].default == 4000.0 and scaled["width"].step == 100.0
    assert scaled["holes_per_leg"].max == 4


def test_generated_models_build_real_geometry(tmp_path):
    from cad.build import build_model
    from cad.registry import ModelRegistry

    for seed in (0, 10):  # a medium box with a fillet, shell, feet and a polar pattern; a 0.55 mm part
        model = generate(seed)
        write_model(tmp_path, model)
        script = ModelRegistry([tmp_path]).get(model.name)
        shape = build_model(script.path, script.schema.defaults()).parts[0].shape
        assert shape.isValid() and len(shape.Solids()) == 1 and shape.Volume() > 0
        size = max(shape.BoundingBox().xlen, shape.BoundingBox().ylen)
        assert size == pytest.approx(model.size_mm, rel=0.5)


def test_tiny_end_to_end_run_writes_all_three_solvers(tmp_path):
    out = tmp_path / "fit.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "fit.py"), "--random", "1", "--shipped", "none",
                           "--assemblies", "1", "--budget", "12", "--seed", "3", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    case, assembly = report["cases"]
    assert assembly["class"] == "random assembly" and "random assembly" in report["summary"]
    assert set(case["solvers"]) == set(assembly["solvers"]) == {"optim", "powell", "nelder-mead"}
    for run in case["solvers"].values():
        assert 0.0 <= run["iou"] <= 1.0 and 1 <= run["evaluations"] <= 12
        # Each gain on the shared objective, in order: the evaluations to Powell's final score come from these.
        counts, scores = [point[0] for point in run["trace"]], [point[1] for point in run["trace"]]
        assert counts == sorted(counts) and scores == sorted(scores) and counts[-1] <= 12
    powell = case["solvers"]["powell"]
    assert powell["to_powell"] == next(n for n, score in powell["trace"] if score == powell["trace"][-1][1])
    for run in case["solvers"].values():
        reached = [n for n, score in run["trace"] if score >= powell["trace"][-1][1]]
        assert run["to_powell"] == (reached[0] if reached else None)
    assert set(report["summary"]["all"]) == {"optim", "powell", "nelder-mead"}
    assert "median IoU" in done.stdout and "reach Powell" in done.stdout


def test_the_parallel_run_is_the_serial_fit_and_counts_the_builds_started_ahead(tmp_path):
    out = tmp_path / "fit.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "fit.py"), "--random", "1", "--shipped", "none",
                           "--budget", "40", "--seed", "3", "--solvers", "optim,optim-parallel", "--workers", "2",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (case,) = json.loads(out.read_text())["cases"]
    serial, parallel = case["solvers"]["optim"], case["solvers"]["optim-parallel"]
    assert case["parallel_identical"] and parallel["values"] == serial["values"]
    assert serial["builds"] == serial["evaluations"] <= 40 and parallel["builds"] > parallel["evaluations"]
    assert " builds" in done.stdout


def test_cases_scale_once_and_identically(tmp_path):
    """--scale multiplies every length once (random, shipped alike); the hidden values scale with them."""
    from argparse import Namespace

    from bench.fit import prepare_cases

    def cases(scale):
        folder = tmp_path / f"x{scale}"
        folder.mkdir()
        args = Namespace(random=3, assemblies=1, shipped="bracket", models_dir="", scale=scale, seed=1, spread=0.25)
        return prepare_cases(args, folder)

    plain, scaled = cases(1), cases(100)
    assert [c["name"] for c in plain] == [c["name"] for c in scaled]
    for one, other in zip(plain, scaled):
        for name, value in one["hidden"].items():
            factor = 100 if isinstance(value, float) else 1  # ints are counts here (and in the bracket)
            assert other["hidden"][name] == pytest.approx(value * factor, rel=1e-5), (one["name"], name)


def test_baselines_score_on_optims_final_stage():
    from bench.fit import FINAL_STAGE
    from cad.fit import DEFAULT_SCHEDULE

    assert FINAL_STAGE == DEFAULT_SCHEDULE[-1].options


def test_an_exact_iou_of_nearly_coincident_solids_is_not_trusted_when_its_booleans_disagree(tmp_path):
    """Found on the held-out assemblies: a fit within 1e-5 of the hidden state, scored 0.81 by OCC's booleans
    (intersection and union wrong in the same way) where the mesh measures 1.0; Powell's clearly wrong state scored
    0.89 and "won". The differences' volumes expose it: the IoU falls back to the mesh estimate."""
    from cad import export
    from cad.build import build_model
    from cad.registry import ModelRegistry
    from cad.target import compare_model

    hidden = {"base_height": 0.495254, "hole2_diameter": 0.201066, "feet3_radius": 0.247803, "part1_x": 0.599061,
              "part1_y": -0.278496, "part2_y": 0.310434, "part3_y": 0.202121}
    found = {"base_height": 0.495258, "hole2_diameter": 0.201022, "feet3_radius": 0.2478, "part1_x": 0.599061,
             "part1_y": -0.278449, "part2_y": 0.3104969, "part3_y": 0.202098}
    wrong = {**found, "part1_x": -0.2232, "part1_y": 0.2149}  # part 1 in another place
    write_model(tmp_path, generate_assembly(1003, 1.0, "small"))
    entry = ModelRegistry([tmp_path]).get("rasm_1003")
    target = tmp_path / "target.step"
    target.write_bytes(export.step_bytes(build_model(entry.path, hidden).assembly))
    near = compare_model(str(entry.path), found, str(target), detail=False)["iou"]
    far = compare_model(str(entry.path), wrong, str(target), detail=False)["iou"]
    assert near > 0.999 and far < 0.9

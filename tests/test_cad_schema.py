"""Model script parsing, parameter schema validation and the model registry (no cadquery needed)."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cad.errors import ParameterError, ScriptError, UnknownModel
from cad.registry import BUILTIN_MODELS_DIR, ModelRegistry
from cad.script import parse_source

ROOT = Path(__file__).resolve().parent.parent
KEYS = ["name", "label", "unit", "type", "min", "max", "step", "default", "group", "description"]

GOOD = '''"""Bracket

An L bracket.
"""
length: float = 50  # mm, 10..100, Size, step=0.5, label=Leg length: Length of: each leg
holes: int = 2  # 0..6, Holes: Number of holes
rounded: bool = True  # Style: Round the corners
angle: float = 90.0  # deg, 45..135, Size
_private: float = 3.0
NOT_A_PARAM = 4

def build(p):
    return None
'''


@pytest.fixture(scope="module")
def rover():
    return ModelRegistry().get("rover")


def test_parse_reads_title_description_and_every_field():
    info = parse_source(GOOD, "bracket.py")
    assert info.title == "Bracket" and info.description == "An L bracket."
    params = {p["name"]: p for p in info.schema.to_json()}
    assert list(params) == ["length", "holes", "rounded", "angle"]
    assert all(list(p) == KEYS for p in params.values())
    assert params["length"] == {"name": "length", "label": "Leg length", "unit": "mm", "type": "float", "min": 10.0,
                                "max": 100.0, "step": 0.5, "default": 50.0, "group": "Size",
                                "description": "Length of: each leg"}
    assert params["holes"]["unit"] == "" and params["holes"]["type"] == "int" and params["holes"]["step"] == 1
    assert params["rounded"] == {"name": "rounded", "label": "Rounded", "unit": "", "type": "bool", "min": None,
                                 "max": None, "step": None, "default": True, "group": "Style",
                                 "description": "Round the corners"}
    assert params["angle"]["step"] == pytest.approx(0.1) and params["angle"]["description"] == ""


@pytest.mark.parametrize("line, fragment", [
    ("width: float = open('x').read()  # mm, 1..10, Size", "literal"),
    ("width: float = 500.0  # mm, 1..10, Size", "outside"),
    ("width: float = 5.0  # mm, 10..1, Size", "below max"),
    ("width: float = 5.0  # mm, 1..10", "group"),
    ("width: int = 5  # 1..10.5, Size", "whole numbers"),
    ("width: bool = 1  # Size", "True or False"),
    ("width: float = 2.0 * 30  # mm, 1..10, Size", "outside"),  # folded (60.0), then checked
    ("width: float = 5.0  # mm, a..b, Size", "min..max"),
])
def test_bad_schema_is_reported_with_file_and_line(line, fragment):
    source = f'"""T"""\nimport math\n{line}\n\ndef build(p):\n    pass\n'
    with pytest.raises(ScriptError) as error:
        parse_source(source, "broken.py")
    assert error.value.line == 3 and error.value.path == "broken.py"
    assert str(error.value).startswith("broken.py:3: ") and fragment in str(error.value)


def test_syntax_error_and_missing_build_are_reported():
    with pytest.raises(ScriptError) as error:
        parse_source('"""T"""\nx: float = 1.0  # 0..2, G\ndef build(p)\n    pass\n', "syn.py")
    assert error.value.line == 3 and "syntax" in str(error.value)
    with pytest.raises(ScriptError, match="build"):
        parse_source('"""T"""\nx: float = 1.0  # 0..2, G\n', "nobuild.py")


def test_validate_coerces_and_accepts_edges(rover):
    schema = rover.schema
    assert schema.validate({"wheels_per_side": 3.0}) == {"wheels_per_side": 3}
    assert isinstance(schema.validate({"wheels_per_side": 3.0})["wheels_per_side"], int)
    assert schema.validate({"chassis_length": 80}) == {"chassis_length": 80.0}
    assert schema.validate({"chassis_length": 400.0, "show_sensor_fork": False}) == {
        "chassis_length": 400.0, "show_sensor_fork": False}
    full = schema.validate(schema.defaults(), partial=False)
    assert full == schema.defaults()


@pytest.mark.parametrize("values, parameter, fragment", [
    ({"wheel_diameter": 500}, "wheel_diameter", "wheel_diameter must be between 40 and 200 mm, got 500"),
    ({"wheel_diameter": 39.9}, "wheel_diameter", "between 40 and 200 mm"),
    ({"wheel_diameter": True}, "wheel_diameter", "number"),
    ({"wheel_diameter": "80"}, "wheel_diameter", "number"),
    ({"wheel_diameter": float("nan")}, "wheel_diameter", "finite"),
    ({"wheel_diameter": float("inf")}, "wheel_diameter", "finite"),
    ({"wheels_per_side": 2.5}, "wheels_per_side", "whole number"),
    ({"wheels_per_side": 9}, "wheels_per_side", "between 1 and 4"),
    ({"show_sensor_fork": 1}, "show_sensor_fork", "true or false"),
    ({"wheel_diamter": 80}, "wheel_diamter", "unknown parameter"),
    ({"wheel_diameter": None}, "wheel_diameter", "number"),
])
def test_validate_rejects_bad_values(rover, values, parameter, fragment):
    with pytest.raises(ParameterError) as error:
        rover.schema.validate(values)
    assert isinstance(error.value, ValueError)
    assert error.value.parameter == parameter and fragment in str(error.value)
    if parameter == "wheel_diameter" and "between" in fragment:
        assert (error.value.min, error.value.max) == (40, 200)


@pytest.mark.parametrize("values", [[1, 2], "wheel_diameter=80", None, 3])
def test_validate_rejects_non_dict(rover, values):
    with pytest.raises(ParameterError):
        rover.schema.validate(values)


def test_validate_full_requires_every_parameter(rover):
    with pytest.raises(ParameterError, match="missing"):
        rover.schema.validate({"wheel_diameter": 80.0}, partial=False)


def test_registry_lists_rover_and_rejects_unknown():
    registry = ModelRegistry()
    listed = registry.list()
    assert registry.default_name == "rover"
    rover = next(m for m in listed if m["name"] == "rover")
    assert set(rover) == {"name", "title", "description"} and rover["title"] == "Rover"
    with pytest.raises(UnknownModel):
        registry.get("no_such_model")
    model = registry.get()
    assert model.name == "rover" and len(model.source_hash) == 64 and model.path.name == "rover.py"


def test_rover_schema_is_json_serialisable_and_complete(rover):
    schema = json.loads(json.dumps(rover.schema.to_json()))
    names = {p["name"] for p in schema}
    assert {"chassis_length", "chassis_width", "chassis_thickness", "chassis_chamfer", "wheel_diameter",
            "wheel_width", "wheels_per_side", "axle_spacing", "wheel_z_offset", "pan_tilt_x", "pan_tilt_y",
            "pan_tilt_z", "fork_width", "fork_height", "fork_depth", "fork_wall", "fork_hole_diameter",
            "rover_yaw", "show_sensor_fork"} <= names
    assert {p["type"] for p in schema} == {"float", "int", "bool"}


def test_extra_dir_models_and_broken_scripts(tmp_path):
    (tmp_path / "user_bracket.py").write_text(GOOD)
    (tmp_path / "broken.py").write_text('"""B"""\nx: float = 1.0  # 0..2\n\ndef build(p):\n    pass\n')
    registry = ModelRegistry([tmp_path])
    names = [m["name"] for m in registry.list()]
    assert "user_bracket" in names and "rover" in names and "broken" not in names
    with pytest.raises(ScriptError) as error:
        registry.get("broken")
    assert error.value.line == 2 and error.value.path.endswith("broken.py")
    # An edited script is re-parsed.
    (tmp_path / "user_bracket.py").write_text(GOOD.replace("Bracket", "Angle bracket").replace("holes: int = 2",
                                                                                        "holes: int = 3"))
    assert registry.get("user_bracket").title == "Angle bracket"
    assert registry.get("user_bracket").schema.defaults()["holes"] == 3


def test_listing_and_validating_never_imports_cadquery():
    code = textwrap.dedent("""
        import sys
        from cad.registry import ModelRegistry
        registry = ModelRegistry()
        registry.list()
        registry.get("rover").schema.validate({"wheel_diameter": 90})
        import cad.build
        assert "cadquery" not in sys.modules and "OCP" not in sys.modules, "cadquery imported"
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_scripts_parse_safely_from_many_threads_at_once():
    """Four first requests read a model at the same moment (CI hit 'AST constructor recursion depth
    mismatch', a 500): a garbage collection that runs a finaliser mid-parse lets another thread parse
    too, and CPython 3.11 shares the converter's depth counter between threads."""
    import gc
    import sys
    import threading
    import time

    from cad.script import parse_python

    source = (BUILTIN_MODELS_DIR / "rover.py").read_text()
    errors = []

    class Cycle:  # garbage with a finaliser that yields the GIL
        def __init__(self):
            self.me = self

        def __del__(self):
            time.sleep(0)

    def at_depth(n, parse):  # threads at different stack depths, as request threads are
        return at_depth(n - 1, parse) if n else parse()

    def parse_often(depth):
        for _ in range(400):
            Cycle()
            try:
                at_depth(depth, lambda: parse_python(source, "rover.py"))
            except SystemError as exc:
                errors.append(exc)

    threshold, interval = gc.get_threshold(), sys.getswitchinterval()
    gc.set_threshold(10, 1, 1)
    sys.setswitchinterval(1e-5)
    try:
        threads = [threading.Thread(target=parse_often, args=(5 * i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        gc.set_threshold(*threshold)
        sys.setswitchinterval(interval)
    assert errors == []

"""The rover model: real CadQuery geometry responds to every parameter in the expected direction."""
import functools
import json

import pytest

from cad.build import build_model
from cad.registry import ModelRegistry

ROVER = ModelRegistry().get("rover")
SCHEMA = ROVER.schema


@functools.lru_cache(maxsize=None)
def _measure(frozen: str) -> dict:
    return build_model(ROVER.path, SCHEMA.complete(json.loads(frozen))).measurements()


def measure(**overrides) -> dict:
    return _measure(json.dumps(overrides, sort_keys=True))


def part(overrides: dict, name: str) -> dict:
    return measure(**overrides)["parts"][name]


def centre(box: dict, axis: int) -> float:
    return (box["min"][axis] + box["max"][axis]) / 2


X, Y, Z = 0, 1, 2

# parameter -> (smaller value, larger value, metric(overrides) that must strictly increase with the parameter)
CASES = {
    "chassis_length": (200, 260, lambda o: part(o, "chassis")["size"][X]),
    "chassis_width": (120, 180, lambda o: part(o, "chassis")["size"][Y]),
    "chassis_thickness": (4, 10, lambda o: part(o, "chassis")["size"][Z]),
    "chassis_chamfer": (5, 25, lambda o: -part(o, "chassis")["volume"]),
    "wheel_diameter": (70, 110, lambda o: part(o, "wheel_l1")["size"][Z]),
    "wheel_width": (20, 40, lambda o: part(o, "wheel_r2")["size"][Y]),
    "wheels_per_side": (2, 4, lambda o: sum(n.startswith("wheel_") for n in measure(**o)["parts"])),
    "axle_spacing": (85, 120, lambda o: centre(part(o, "wheel_l1"), X) - centre(part(o, "wheel_l3"), X)),
    "wheel_z_offset": (-10, 20, lambda o: part(o, "wheel_l1")["min"][Z]),
    "pan_tilt_x": (0, 50, lambda o: centre(part(o, "pan_tilt_head"), X)),
    "pan_tilt_y": (-20, 30, lambda o: centre(part(o, "sensor_fork"), Y)),
    "pan_tilt_z": (60, 120, lambda o: part(o, "pan_tilt_head")["max"][Z]),
    "fork_width": (40, 70, lambda o: part(o, "sensor_fork")["size"][Y]),
    "fork_height": (30, 60, lambda o: part(o, "sensor_fork")["size"][Z]),
    "fork_depth": (15, 30, lambda o: part(o, "sensor_fork")["size"][X]),
    "fork_wall": (3, 6, lambda o: part(o, "sensor_fork")["volume"]),
    "fork_hole_diameter": (4, 12, lambda o: -part(o, "sensor_fork")["volume"]),
    "rover_yaw": (0, 30, lambda o: part(o, "chassis")["size"][X]),
    "show_sensor_fork": (False, True, lambda o: int("sensor_fork" in measure(**o)["parts"])),
}


def test_every_parameter_has_a_geometry_test():
    assert set(CASES) == set(SCHEMA.names())


@pytest.mark.parametrize("name", list(CASES))
def test_parameter_changes_geometry_in_the_right_direction(name):
    low, high, metric = CASES[name]
    SCHEMA.validate({name: low}), SCHEMA.validate({name: high})  # test values are themselves valid
    assert metric({name: high}) > metric({name: low}) + 1e-6


def test_defaults_build_with_named_parts():
    result = measure()
    assert set(result["parts"]) == {"chassis", "pan_tilt_head", "sensor_fork",
                                    *(f"wheel_{s}{i}" for s in "lr" for i in (1, 2, 3))}
    assert all(p["volume"] > 0 for p in result["parts"].values())
    # Axes as documented: X forward (length), Y left (width), chassis bottom at Z = 0.
    chassis = result["parts"]["chassis"]
    assert chassis["size"][X] == pytest.approx(220) and chassis["size"][Y] == pytest.approx(140)
    assert chassis["min"][Z] == pytest.approx(0, abs=1e-6)
    assert centre(result["parts"]["wheel_l1"], Y) > 0 > centre(result["parts"]["wheel_r1"], Y)
    assert centre(result["parts"]["wheel_l1"], X) > centre(result["parts"]["wheel_l3"], X)


def test_quarter_turn_swaps_length_and_width():
    chassis = part({"rover_yaw": 90}, "chassis")
    assert chassis["size"][X] == pytest.approx(140, abs=0.01) and chassis["size"][Y] == pytest.approx(220, abs=0.01)


@pytest.mark.parametrize("name", [p.name for p in SCHEMA if p.type != "bool"])
def test_range_ends_build(name):
    parameter = SCHEMA[name]
    for value in (parameter.min, parameter.max):
        result = measure(**{name: value})
        assert all(p["volume"] > 0 for p in result["parts"].values()), (name, value)


@pytest.mark.parametrize("corner", ["min", "max"])
def test_all_parameters_at_one_end_build(corner):
    values = {p.name: getattr(p, corner) for p in SCHEMA if p.type != "bool"}
    result = measure(**values)
    wheels = [n for n in result["parts"] if n.startswith("wheel_")]
    assert len(wheels) == 2 * values["wheels_per_side"]
    assert all(p["volume"] > 0 for p in result["parts"].values())

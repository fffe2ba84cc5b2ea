"""The example models (enclosure, bracket, pillow block): every parameter changes real geometry the expected way,
and every parameter's min and max build valid solids."""
import functools
import json

import cadquery as cq
import pytest

from cad.build import build_model
from cad.registry import ModelRegistry

REGISTRY = ModelRegistry()
EXAMPLES = ("enclosure", "bracket", "pillow_block")
X, Y, Z = 0, 1, 2


@functools.lru_cache(maxsize=None)
def _built(model: str, frozen: str):
    m = REGISTRY.get(model)
    return build_model(m.path, m.schema.complete(json.loads(frozen)))


def built(model: str, **overrides):
    return _built(model, json.dumps(overrides, sort_keys=True))


def part(model: str, overrides: dict, name: str) -> dict:
    return built(model, **overrides).measurements()["parts"][name]


def shape(model: str, overrides: dict, name: str):
    return next(p.shape for p in built(model, **overrides).parts if p.name == name)


def centre(box: dict, axis: int) -> float:
    return (box["min"][axis] + box["max"][axis]) / 2


def solid_at(model: str, overrides: dict, name: str, point) -> bool:
    return shape(model, overrides, name).isInside(cq.Vector(*point))


# model -> parameter -> (smaller value, larger value, metric(overrides) that must strictly increase with it)
CASES = {
    "enclosure": {
        "length": (100, 160, lambda o: part("enclosure", o, "box")["size"][X]),
        "width": (60, 100, lambda o: part("enclosure", o, "box")["size"][Y]),
        "height": (40, 70, lambda o: part("enclosure", o, "box")["size"][Z]),
        "wall": (2, 4, lambda o: part("enclosure", o, "box")["volume"]),
        "floor": (2, 5, lambda o: part("enclosure", o, "box")["volume"]),
        "corner_radius": (2, 12, lambda o: -part("enclosure", o, "box")["volume"]),
        "boss_diameter": (6, 10, lambda o: part("enclosure", o, "box")["volume"]),
        "screw_hole": (2, 4, lambda o: -part("enclosure", o, "box")["volume"]),
        "vent_slots": (2, 5, lambda o: -part("enclosure", o, "box")["volume"]),
        "vent_width": (2, 4, lambda o: -part("enclosure", o, "box")["volume"]),
        "lid_thickness": (2, 5, lambda o: part("enclosure", o, "lid")["max"][Z]),
        "lid_lip": (2, 8, lambda o: -part("enclosure", o, "lid")["min"][Z]),
        "lid_lift": (0, 30, lambda o: part("enclosure", o, "lid")["min"][Z]),
        "show_lid": (False, True, lambda o: len(built("enclosure", **o).parts)),
    },
    "bracket": {
        "base_length": (60, 100, lambda o: part("bracket", o, "bracket")["size"][X]),
        "upright_height": (50, 90, lambda o: part("bracket", o, "bracket")["size"][Z]),
        "width": (30, 60, lambda o: part("bracket", o, "bracket")["size"][Y]),
        "thickness": (4, 8, lambda o: part("bracket", o, "bracket")["volume"]),
        "inner_fillet": (2, 8, lambda o: part("bracket", o, "bracket")["volume"]),
        "hole_diameter": (4, 8, lambda o: -part("bracket", o, "bracket")["volume"]),
        "holes_per_leg": (1, 3, lambda o: -part("bracket", o, "bracket")["volume"]),
        # Holes move inward as the edge distance grows: the point 10 mm from the base end stops being a hole.
        "hole_edge_distance": (10, 20, lambda o: int(solid_at("bracket", o, "bracket", (70, 0, 2.5)))),
        "gusset_thickness": (3, 8, lambda o: part("bracket", o, "bracket")["volume"]),
        "gusset_size": (20, 40, lambda o: part("bracket", o, "bracket")["volume"]),
    },
    "pillow_block": {
        "centre_height": (30, 45, lambda o: centre(part("pillow_block", o, "bearing"), Z)),
        "housing_diameter": (60, 80, lambda o: part("pillow_block", o, "housing")["max"][Z]),
        "housing_width": (30, 50, lambda o: part("pillow_block", o, "housing")["size"][Y]),
        "bearing_od": (40, 52, lambda o: part("pillow_block", o, "bearing")["size"][X]),
        "bearing_width": (10, 20, lambda o: part("pillow_block", o, "bearing")["size"][Y]),
        "base_length": (110, 150, lambda o: part("pillow_block", o, "housing")["size"][X]),
        "base_thickness": (10, 18, lambda o: part("pillow_block", o, "housing")["volume"]),
        # 12 mm bolt holes: x = 52 mm is solid with bolts 90 mm apart, inside a hole with bolts 100 mm apart.
        "bolt_spacing": (90, 100, lambda o: -int(solid_at("pillow_block", o, "housing", (52, 0, 3)))),
        "bolt_hole": (8, 14, lambda o: -part("pillow_block", o, "housing")["volume"]),
        "shaft_diameter": (16, 26, lambda o: part("pillow_block", o, "shaft")["size"][X]),
        "shaft_length": (100, 160, lambda o: part("pillow_block", o, "shaft")["size"][Y]),
        "show_shaft": (False, True, lambda o: len(built("pillow_block", **o).parts)),
    },
}


def test_every_example_has_a_geometry_test_per_parameter():
    assert set(EXAMPLES) <= set(REGISTRY.names())
    for model in EXAMPLES:
        assert set(CASES[model]) == set(REGISTRY.get(model).schema.names()), model


@pytest.mark.parametrize("model, name", [(m, n) for m in EXAMPLES for n in CASES[m]])
def test_parameter_changes_geometry_in_the_right_direction(model, name):
    low, high, metric = CASES[model][name]
    schema = REGISTRY.get(model).schema
    schema.validate({name: low}), schema.validate({name: high})  # the test values are themselves valid
    assert metric({name: high}) > metric({name: low}) + 1e-6


@pytest.mark.parametrize("model", EXAMPLES)
def test_min_and_max_of_every_parameter_build_valid_solids(model):
    schema = REGISTRY.get(model).schema
    for parameter in schema:
        extremes = (False, True) if parameter.type == "bool" else (parameter.min, parameter.max)
        for value in extremes:
            result = built(model, **{parameter.name: value})
            assert result.parts, (parameter.name, value)
            for p in result.parts:
                assert p.shape.isValid() and p.shape.Volume() > 0, (parameter.name, value, p.name)


@pytest.mark.parametrize("model", EXAMPLES)
def test_defaults_have_title_named_parts_and_sit_on_z0(model):
    m = REGISTRY.get(model)
    assert m.title and m.description
    box = built(model).measurements()
    assert box["min"][Z] == pytest.approx(0, abs=1e-6)
    assert all(p["volume"] > 0 for p in box["parts"].values())

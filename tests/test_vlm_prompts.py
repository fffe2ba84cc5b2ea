"""The prompt the model sees, and the structured-output schema of its answer."""
from __future__ import annotations

import json

import pytest

from vlm.proposals import parse_model_output
from vlm.prompts import build_prompt, proposal_json_schema

SCHEMA = [
    dict(name="wheel_diameter", label="Wheel diameter", unit="mm", type="float", min=40, max=200, step=1,
         default=120, group="wheels", description="Outer diameter of each wheel"),
    dict(name="wheel_count", label="Wheels per side", unit="", type="int", min=2, max=4, step=1, default=2,
         group="wheels", description="Number of wheels on each side"),
    dict(name="head_tilt", label="Head tilt", unit="deg", type="float", min=-45, max=60, step=0.5, default=10,
         group="head", description="Pan-tilt head tilt,\nmeasured from horizontal"),
    dict(name="camera_enabled", label="Camera", unit="", type="bool", min=None, max=None, step=None, default=True,
         group="head", description="Mount the camera on the head"),
]
VALUES = {"wheel_diameter": 132.5, "wheel_count": 3, "head_tilt": -12.25, "camera_enabled": False}


def prompt(request="Make the rover climb kerbs", **kw):
    kw = {"model_title": "Rover", "has_images": False, "has_render": False, **kw}
    return build_prompt(SCHEMA, VALUES, request, **kw)


def table_rows(user: str) -> dict[str, list[str]]:
    rows = {}
    for line in user.splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) == 5:
            rows[cells[0]] = cells
    return rows


def test_every_parameter_appears_with_unit_range_current_value_and_description():
    system, user = prompt()
    rows = table_rows(user)
    assert rows["wheel_diameter"] == ["wheel_diameter", "mm", "40..200", "132.5", "Outer diameter of each wheel"]
    assert rows["wheel_count"] == ["wheel_count", "-", "2..4 integer", "3", "Number of wheels on each side"]
    assert rows["head_tilt"] == ["head_tilt", "deg", "-45..60", "-12.25",
                                 "Pan-tilt head tilt, measured from horizontal"]
    assert rows["camera_enabled"] == ["camera_enabled", "-", "true/false", "false", "Mount the camera on the head"]
    assert "Rover" in system and "Rover" in user


def test_request_and_answer_format_are_stated():
    system, user = prompt("  Make the wheels 20% bigger  ")
    assert "Request: Make the wheels 20% bigger" in user
    assert '"summary"' in system and '"changes"' in system and '"parameter"' in system and '"reason"' in system
    assert "ONLY one JSON object" in system
    assert "unit" in system and "range" in system


def test_missing_current_value_falls_back_to_the_default():
    _, user = build_prompt(SCHEMA, {}, "x", model_title="Rover", has_images=False, has_render=False)
    assert table_rows(user)["wheel_diameter"][3] == "120"


@pytest.mark.parametrize("has_images,has_render,expect,refuse", [
    (False, False, [], ["image", "Image"]),
    (False, True, ["current CAD render"], ["reference photo"]),
    (True, False, ["reference photos", "not the CAD model"], ["CAD render"]),
    (True, True, ["FIRST image is the current CAD render", "reference photos"], []),
])
def test_images_are_described_as_render_or_reference_photos(has_images, has_render, expect, refuse):
    _, user = prompt(has_images=has_images, has_render=has_render)
    for text in expect:
        assert text in user
    for text in refuse:
        assert text not in user


def test_prompt_is_compact():
    system, user = prompt()
    assert len(system) + len(user) < 1500


def test_empty_request_or_schema_is_refused():
    with pytest.raises(ValueError, match="request is empty"):
        prompt("   ")
    with pytest.raises(ValueError, match="no parameters"):
        build_prompt([], {}, "x", model_title="Rover", has_images=False, has_render=False)


def test_json_schema_constrains_each_change_to_a_real_parameter_of_its_type_and_range():
    from jsonschema import Draft202012Validator

    schema = proposal_json_schema(SCHEMA)
    json.dumps(schema)  # must be serialisable as-is for an engine's `format` field
    Draft202012Validator.check_schema(schema)
    valid = Draft202012Validator(schema).is_valid

    def answer(*changes):
        return {"summary": "s", "changes": [{"parameter": n, "value": v, "reason": "r"} for n, v in changes]}

    assert valid(answer(("wheel_diameter", 160), ("wheel_count", 3), ("head_tilt", -12.5), ("camera_enabled", True)))
    assert valid(answer())
    assert not valid(answer(("wheel_diameter", 250)))  # above its maximum
    assert not valid(answer(("wheel_count", 2.5)))  # an integer parameter
    assert not valid(answer(("camera_enabled", 1)))  # a bool parameter
    assert not valid(answer(("wheel_size", 100)))  # not a parameter
    assert not valid({"changes": []}) and not valid({**answer(), "extra": 1})
    assert not valid({"summary": "s", "changes": [{"parameter": "wheel_diameter", "value": 100}]})  # no reason


def test_an_answer_in_the_requested_format_parses_cleanly():
    # A reply that follows the stated format to the letter must come through with no error.
    answer = parse_model_output(json.dumps({"summary": "Climb kerbs", "changes": [
        {"parameter": "wheel_diameter", "value": 160, "reason": "clearance"},
        {"parameter": "camera_enabled", "value": True, "reason": "see the kerb"}]}), SCHEMA, VALUES)
    assert answer.parse_error is None
    assert [(p.parameter, p.value, p.valid) for p in answer.proposals] == [("wheel_diameter", 160.0, True),
                                                                          ("camera_enabled", True, True)]

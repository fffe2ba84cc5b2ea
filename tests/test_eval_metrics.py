"""The proposal benchmark's metrics on a hand-made set of answers: every figure checked against a hand count."""
from __future__ import annotations

import json

import pytest

from vlm.metrics import aggregate, normalised_error, score_answer

SCHEMA = [
    {"name": "length", "label": "Length", "unit": "mm", "type": "float", "min": 0, "max": 100, "step": 1},
    {"name": "holes", "label": "Holes", "unit": "", "type": "int", "min": 0, "max": 10, "step": 1},
    {"name": "show_lid", "label": "Show lid", "unit": "", "type": "bool", "min": None, "max": None, "step": None},
    {"name": "width", "label": "Width", "unit": "mm", "type": "float", "min": 50, "max": 150, "step": 1},
]
A = {"length": 20.0, "holes": 2, "show_lid": True, "width": 100.0}


def answer(*changes) -> str:
    return json.dumps({"summary": "", "changes": [{"parameter": n, "value": v, "reason": ""} for n, v in changes]})


# (values, target, answer text)
CASES = [
    # 1. exactly right: length 20 -> 60
    (A, {**A, "length": 60.0}, answer(("length", 60))),
    # 2. right parameter, half way: length 20 -> 40 (target 60); plus a wrong change to width 100 -> 150
    (A, {**A, "length": 60.0}, answer(("length", 40), ("width", 150))),
    # 3. does not parse
    (A, {**A, "holes": 6}, "I would add a few holes."),
    # 4. one invalid (out of range) and one valid: holes -> 6 right, length 500 invalid
    (A, {**A, "holes": 6}, answer(("holes", 6), ("length", 500))),
    # 5. nothing should change and the model says so
    (A, dict(A), answer()),
    # 6. nothing should change but the model hides the lid
    (A, dict(A), answer(("show_lid", False))),
]


@pytest.fixture(scope="module")
def scores():
    return [score_answer(text, SCHEMA, values, target) for values, target, text in CASES]


def test_each_answer_is_scored_as_counted_by_hand(scores):
    s1, s2, s3, s4, s5, s6 = scores
    assert (s1.parsed, s1.proposals, s1.valid, s1.predicted, s1.truth) == (True, 1, 1, ["length"], ["length"])
    assert s1.error_before == pytest.approx(0.40 / 4) and s1.error_after == 0.0
    assert s2.predicted == ["length", "width"] and s2.truth == ["length"]
    assert s2.error_after == pytest.approx((0.20 + 0.50) / 4)  # length 20 of 100 short, width 50 of 100 off
    assert (s3.parsed, s3.proposals, s3.predicted) == (False, 0, [])
    assert s3.error_after == s3.error_before == pytest.approx(0.4 / 4)  # holes 2 -> 6 of range 10
    assert (s4.proposals, s4.valid, s4.predicted, s4.error_after) == (2, 1, ["holes"], 0.0)
    assert (s5.parsed, s5.proposals, s5.predicted, s5.error_after) == (True, 0, [], 0.0)
    assert s6.predicted == ["show_lid"] and s6.error_after == pytest.approx(1 / 4)
    assert s4.after_values == {**A, "holes": 6}


def test_aggregate_figures_are_exactly_the_hand_counts(scores):
    figures = aggregate(scores)
    assert figures["examples"] == 6
    assert figures["parse_rate"] == pytest.approx(5 / 6)
    assert figures["valid_rate"] == pytest.approx(5 / 6)  # proposals read: 1 + 2 + 0 + 2 + 0 + 1 = 6, valid 5
    # changed by the proposals: {length}, {length, width}, {}, {holes}, {}, {show_lid} = 5; true positives 3
    assert figures["precision"] == pytest.approx(3 / 5)
    assert figures["recall"] == pytest.approx(3 / 4)  # the targets change length, length, holes, holes
    assert figures["f1"] == pytest.approx(2 * 0.6 * 0.75 / 1.35)
    assert figures["no_change_correct"] == pytest.approx(1 / 2)
    before = [0.1, 0.1, 0.1, 0.1, 0, 0]
    after = [0, 0.175, 0.1, 0, 0, 0.25]
    assert figures["error_before"] == pytest.approx(sum(before) / 6)
    assert figures["error_after"] == pytest.approx(sum(after) / 6)
    assert figures["improved"] == pytest.approx(2 / 6) and figures["worsened"] == pytest.approx(2 / 6)
    assert figures["iou_examples"] == 0 and figures["iou_after"] is None and figures["latency_mean_s"] is None


def test_iou_and_latency_are_averaged_over_the_examples_that_have_them(scores):
    rows = [score_answer(text, SCHEMA, values, target, latency_s=t) for (values, target, text), t
            in zip(CASES[:3], (1.0, 2.0, 4.0))]
    for row, (before, after) in zip(rows, ((0.5, 1.0), (0.5, 0.7), (0.6, 0.6))):
        row.iou_before, row.iou_after = before, after
    figures = aggregate(rows)
    assert figures["iou_before"] == pytest.approx(1.6 / 3) and figures["iou_after"] == pytest.approx(2.3 / 3)
    assert figures["iou_after_median"] == 0.7
    assert figures["latency_mean_s"] == pytest.approx(7 / 3) and figures["latency_p95_s"] == 4.0


def test_normalised_error_caps_each_parameter_at_its_range():
    assert normalised_error(SCHEMA, A, A) == 0.0
    far = {**A, "length": 100.0, "holes": 10, "show_lid": False, "width": 150.0}
    assert normalised_error(SCHEMA, A, far) == pytest.approx((0.8 + 0.8 + 1 + 0.5) / 4)

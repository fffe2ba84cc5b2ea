"""Reading messy model answers into proposals, validating them, the proposal store and the response cache."""
from __future__ import annotations

import math
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vlm.cache import ResponseCache
from vlm.proposals import (MAX_TEXT_CHARS, ParsedAnswer, ProposalSelectionError, ProposalStore, parse_model_output,
                           resolve_parameter, select)
from vlm.tolerant_json import find_json_values

SCHEMA = [
    dict(name="wheel_diameter", label="Wheel diameter", unit="mm", type="float", min=40, max=200, step=1,
         default=120, group="wheels", description="Outer diameter of each wheel"),
    dict(name="wheel_width", label="Wheel width", unit="mm", type="float", min=10, max=80, step=1, default=30,
         group="wheels", description="Tyre width"),
    dict(name="wheel_count", label="Wheels per side", unit="", type="int", min=2, max=4, step=1, default=2,
         group="wheels", description="Number of wheels on each side"),
    dict(name="rover_yaw", label="Rover yaw", unit="deg", type="float", min=-180, max=180, step=1, default=0,
         group="pose", description="Heading of the rover"),
    dict(name="head_tilt", label="Head tilt", unit="deg", type="float", min=-45, max=60, step=1, default=10,
         group="head", description="Pan-tilt head tilt"),
    dict(name="chassis_length", label="Chassis length", unit="mm", type="float", min=150, max=600, step=5,
         default=300, group="chassis", description="Length of the chassis plate"),
    dict(name="camera_enabled", label="Camera", unit="", type="bool", min=None, max=None, step=None, default=True,
         group="head", description="Mount the camera on the head"),
]
VALUES = {"wheel_diameter": 120.0, "wheel_width": 30.0, "wheel_count": 2, "rover_yaw": 0.0, "head_tilt": 10.0,
          "chassis_length": 300.0, "camera_enabled": True}


def parse(text):
    return parse_model_output(text, SCHEMA, VALUES)


def seen(answer: ParsedAnswer):
    """What the user sees: (parameter, value, valid) per proposal."""
    return [(p.parameter, p.value, p.valid) for p in answer.proposals]


# ------------------------------------------------------------------ messy outputs, table-driven
MESSY = [
    ("strict JSON",
     '{"summary": "Bigger wheels", "changes": [{"parameter": "wheel_diameter", "value": 150, "reason": "clearance"}]}',
     [("wheel_diameter", 150.0, True)]),
    ("code fence with prose around",
     'Here is my proposal:\n```json\n{"summary": "s", "changes": [{"parameter": "wheel_width", "value": 40, '
     '"reason": "grip"}]}\n```\nLet me know!',
     [("wheel_width", 40.0, True)]),
    ("trailing commas, single quotes, Python literals, comments",
     "{'summary': 'x', // note\n 'changes': [{'parameter': 'camera_enabled', 'value': False, 'reason': None,},"
     " /* second */ {'parameter': 'wheel_count', 'value': 3,},],}",
     [("camera_enabled", False, True), ("wheel_count", 3, True)]),
    ("unquoted keys and bare unit values",
     "{summary: ok, changes: [{parameter: wheel_diameter, value: 12 cm, reason: bigger}]}",
     [("wheel_diameter", 120.0, True)]),
    ("bare list of changes",
     '[{"parameter": "head_tilt", "value": 20}, {"parameter": "rover_yaw", "value": -90}]',
     [("head_tilt", 20.0, True), ("rover_yaw", -90.0, True)]),
    ("several blobs: the example echo and the real answer",
     'Format: {"summary": "str", "changes": []}\nAnswer: {"summary": "tilt", "changes": '
     '[{"parameter": "head_tilt", "value": 30, "reason": "see further"}]}\nAlso {"note": 1}',
     [("head_tilt", 30.0, True)]),
    ("single change object",
     'I suggest {"parameter": "chassis_length", "value": "0.4 m", "reason": "stability"}.',
     [("chassis_length", 400.0, True)]),
    ("changes as a mapping",
     '{"summary": "s", "changes": {"wheel_diameter": 160, "head_tilt": {"value": "15 deg", "reason": "r"}}}',
     [("wheel_diameter", 160.0, True), ("head_tilt", 15.0, True)]),
    ("nested under another key",
     '{"answer": {"summary": "s", "changes": [{"param": "wheel_width", "new_value": "2 in"}]}}',
     [("wheel_width", 50.8, True)]),
    ("missing commas between entries",
     '{"summary": "s"\n"changes": [{"parameter": "wheel_diameter" "value": 100}\n{"parameter": "wheel_width" '
     '"value": 20}]}',
     [("wheel_diameter", 100.0, True), ("wheel_width", 20.0, True)]),
    ("NaN and Infinity are rejected",
     '{"summary": "s", "changes": [{"parameter": "wheel_diameter", "value": NaN}, '
     '{"parameter": "wheel_width", "value": Infinity}]}',
     [("wheel_diameter", "nan", False), ("wheel_width", "inf", False)]),
    ("an echoed format template loses to the real, empty answer",
     'Example: {"summary": "...", "changes": [{"parameter": "<name>", "value": 0, "reason": "..."}]}\n'
     'Answer: {"summary": "Already fine.", "changes": []}', []),
    ("empty changes is a valid answer",
     '{"summary": "Nothing to change.", "changes": []}', []),
]


@pytest.mark.parametrize("text,expected", [(t, e) for _, t, e in MESSY], ids=[m[0] for m in MESSY])
def test_messy_outputs_give_the_expected_proposals(text, expected):
    answer = parse(text)
    assert answer.parse_error is None
    got = [(p["parameter"], p["value"], p["valid"]) for p in (q.to_json() for q in answer.proposals)]
    assert got == expected


def test_summary_and_reason_and_current_are_carried_through():
    answer = parse('```\n{"summary": " Bigger wheels for rough ground. ", "changes": [{"parameter": "wheel_diameter",'
                   ' "value": 150, "reason": "more ground clearance"}]}\n```')
    assert answer.summary == "Bigger wheels for rough ground."
    assert answer.proposals[0].to_json() == {"parameter": "wheel_diameter", "value": 150.0, "current": 120.0,
                                             "reason": "more ground clearance", "valid": True}


@pytest.mark.parametrize("text,fragment", [
    ("I think the wheels should be bigger.", "contains no JSON"),
    ("", "contains no JSON"),
    ('{"summary": "hello", "confidence": 0.3}', "no list of changes"),
])
def test_answers_without_changes_explain_why(text, fragment):
    answer = parse(text)
    assert answer.proposals == []
    assert fragment in answer.parse_error
    assert '"changes"' in answer.parse_error  # tells what was expected


def test_cut_off_answer_keeps_complete_changes_and_warns():
    answer = parse('{"summary": "s", "changes": [{"parameter": "wheel_width", "value": 40, "reason": "grip"}, '
                   '{"parameter": "wheel_diameter", "value": 1')
    assert seen(answer) == [("wheel_width", 40.0, True)]
    assert answer.parse_error is None
    assert any("cut off" in w for w in answer.warnings)


# ------------------------------------------------------------------ values: units, relative changes, types
def one(value, parameter="wheel_diameter"):
    text = '{"summary": "s", "changes": [{"parameter": "%s", "value": %s}]}' % (parameter, value)
    proposals = parse(text).proposals
    assert len(proposals) == 1
    return proposals[0]


@pytest.mark.parametrize("param,value,expected", [
    ("wheel_diameter", '"120 mm"', 120.0),
    ("wheel_diameter", '"12 cm"', 120.0),
    ("wheel_diameter", '"0.1 m"', 100.0),
    ("wheel_diameter", '"0.15m"', 150.0),
    ("wheel_width", '"2 in"', 50.8),
    ("wheel_width", '"1.5 inches"', 38.1),
    ("rover_yaw", '"30°"', 30.0),
    ("rover_yaw", '"15 deg"', 15.0),
    ("rover_yaw", '"0.5 rad"', 28.6478897565),
    ("rover_yaw", '"-30°"', -30.0),  # this parameter can be negative: a signed string is absolute
    ("wheel_diameter", '"+10%"', 132.0),
    ("wheel_diameter", '"-25%"', 90.0),
    ("wheel_diameter", '"25% larger"', 150.0),
    ("wheel_diameter", '"50% smaller"', 60.0),
    ("wheel_diameter", '"+5 mm"', 125.0),
    ("wheel_diameter", '"+1 cm"', 130.0),
    ("wheel_diameter", '"-5 mm"', 115.0),  # min >= 0: a negative absolute is impossible, so it is an offset
    ("wheel_diameter", '"x1.5"', 180.0),
    ("wheel_diameter", '"1.25x"', 150.0),
    ("wheel_diameter", '"increase by 10 mm"', 130.0),
    ("wheel_diameter", '"reduce by 10%"', 108.0),
    ("head_tilt", '"+5"', 15.0),
    ("wheel_count", "3.0", 3),
    ("wheel_count", '"4"', 4),
    ("wheel_count", '"x2"', 4),
    ("camera_enabled", '"no"', False),
    ("camera_enabled", '"yes"', True),
    ("camera_enabled", "1", True),
    ("camera_enabled", '"false"', False),
])
def test_values_are_converted_to_the_parameters_unit(param, value, expected):
    proposal = one(value, param)
    assert proposal.valid, proposal.error
    assert proposal.value == pytest.approx(expected, abs=1e-9)
    assert type(proposal.value) is type(expected)


@pytest.mark.parametrize("param,value,error", [
    ("wheel_diameter", "500", "wheel_diameter: 500 mm is above the maximum 200 mm"),
    ("wheel_diameter", '"50 cm"', "wheel_diameter: 500 mm is above the maximum 200 mm"),
    ("wheel_diameter", '"-80%"', "wheel_diameter: 24 mm is below the minimum 40 mm"),
    ("wheel_diameter", "-5", "wheel_diameter: -5 mm is below the minimum 40 mm"),
    ("rover_yaw", '"4 rad"', "rover_yaw: 229.183 deg is above the maximum 180 deg"),
    ("wheel_count", "2.5", "wheel_count: 2.5 is not a whole number"),
    ("wheel_count", '"+10%"', "wheel_count: 2.2 is not a whole number"),
    ("wheel_count", "9", "wheel_count: 9 is above the maximum 4"),
    ("wheel_diameter", '"big"', "wheel_diameter: 'big' is not a number"),
    ("wheel_diameter", "true", "wheel_diameter: expects a number, got true"),
    ("wheel_diameter", '"30°"', "wheel_diameter: '30°' is an angle, but this parameter is a length in mm"),
    ("wheel_diameter", '"50%"', "ambiguous"),
    ("wheel_diameter", '"3 parsecs"', "unit I do not know"),
    ("wheel_diameter", "[1, 2]", "wheel_diameter: list is not a number"),
    ("wheel_diameter", "null", "wheel_diameter: no value given"),
    ("wheel_diameter", "1e999", "wheel_diameter: inf is not a finite number"),
    ("camera_enabled", '"maybe"', "camera_enabled: 'maybe' is not true or false"),
    ("camera_enabled", "2", "camera_enabled: 2 is not true or false"),
])
def test_bad_values_are_rejected_with_a_clear_reason_and_never_clamped(param, value, error):
    proposal = one(value, param)
    assert not proposal.valid
    assert error in proposal.error
    assert proposal.to_json()["error"] == proposal.error


def test_missing_value_key_is_rejected():
    answer = parse('{"summary": "s", "changes": [{"parameter": "wheel_width", "reason": "no value"}]}')
    assert seen(answer) == [("wheel_width", None, False)]
    assert answer.proposals[0].error == "wheel_width: no value given"


def test_duplicate_changes_last_wins_earlier_reported():
    answer = parse('{"summary": "s", "changes": [{"parameter": "wheel_width", "value": 40}, '
                   '{"parameter": "Wheel Width", "value": 50}, {"parameter": "head_tilt", "value": 5}]}')
    assert seen(answer) == [("wheel_width", 40.0, False), ("wheel_width", 50.0, True), ("head_tilt", 5.0, True)]
    assert "duplicate" in answer.proposals[0].error
    assert select(store_set(answer)) == {"wheel_width": 50.0, "head_tilt": 5.0}


# ------------------------------------------------------------------ parameter aliases
@pytest.mark.parametrize("raw,expected", [
    ("wheel_diameter", "wheel_diameter"),
    ("Wheel Diameter", "wheel_diameter"),
    ("wheel-diameter", "wheel_diameter"),
    ("WHEEL DIAMETER (mm)", "wheel_diameter"),
    ("Wheels per side", "wheel_count"),
    ("yaw", "rover_yaw"),
    ("tilt", "head_tilt"),
    ("diameter", "wheel_diameter"),
    ("camera", "camera_enabled"),
])
def test_aliases_resolve_to_the_canonical_name(raw, expected):
    assert resolve_parameter(raw, SCHEMA) == (expected, None)


@pytest.mark.parametrize("raw,fragment", [
    ("wheel", "ambiguous: it could be wheel_diameter, wheel_width or wheel_count"),
    ("width", None),  # unique: only wheel_width
    ("ya", "not a parameter"),  # too short to guess from
    ("flux_capacitor", "not a parameter"),
    ("", "not a parameter"),
])
def test_aliases_never_guess(raw, fragment):
    name, error = resolve_parameter(raw, SCHEMA)
    if fragment is None:
        assert name == "wheel_width" and error is None
    else:
        assert name is None and fragment in error


def test_unknown_and_ambiguous_parameters_are_rejected_proposals():
    answer = parse('{"summary": "s", "changes": [{"parameter": "flux_capacitor", "value": 1.21}, '
                   '{"parameter": "wheel", "value": 100}, {"parameter": "yaw", "value": "45°"}]}')
    assert seen(answer) == [("flux_capacitor", 1.21, False), ("wheel", 100, False), ("rover_yaw", 45.0, True)]
    assert answer.proposals[0].error == "'flux_capacitor' is not a parameter of this model"
    assert "ambiguous" in answer.proposals[1].error
    assert answer.proposals[0].current is None


# ------------------------------------------------------------------ robustness
def test_input_size_is_bounded():
    filler = "x" * (MAX_TEXT_CHARS + 10)
    answer = parse(filler + '{"summary": "s", "changes": [{"parameter": "wheel_width", "value": 40}]}')
    assert answer.proposals == []  # the JSON lies beyond the bound and is not read
    assert any("longer than" in w for w in answer.warnings)


def test_deep_nesting_and_brace_floods_are_harmless():
    assert parse("[" * 5000 + "]" * 5000).proposals == []
    assert parse("{" * 50_000).parse_error is not None


def test_python_code_in_the_answer_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    text = ('{"summary": "s", "changes": [{"parameter": "wheel_width", '
            f'"value": __import__("pathlib").Path("{marker}").touch()}}]}}')
    answer = parse(text)
    assert not marker.exists()
    assert not any(p.valid for p in answer.proposals)


def test_tolerant_reader_finds_each_blob():
    blobs = find_json_values('a {"x": 1} b [1, 2,] c {y: \'z\'}')
    assert [b.value for b in blobs] == [{"x": 1}, [1, 2], {"y": "z"}]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(
    st.text(max_size=400),
    st.lists(st.sampled_from(['{', '}', '[', ']', ',', ':', '"', "'", "changes", "parameter", "value",
                              "wheel_diameter", "rover_yaw", "wheel_count", "camera_enabled", "1e400", "NaN",
                              "-", "+", "%", "mm", "x", " ", "\n", "//", "/*", "True", "2.5", "500", "yes"]),
             max_size=80).map("".join),
))
def test_parse_never_raises_and_valid_proposals_are_in_range(text):
    answer = parse(text)
    by_name = {p["name"]: p for p in SCHEMA}
    for proposal in answer.proposals:
        proposal.to_json()
        if proposal.valid:
            param = by_name[proposal.parameter]
            if param["type"] == "bool":
                assert isinstance(proposal.value, bool)
            else:
                assert math.isfinite(proposal.value)
                assert param["min"] <= proposal.value <= param["max"]
                if param["type"] == "int":
                    assert isinstance(proposal.value, int)
        else:
            assert proposal.error


_VALUE_TEXT = st.builds(
    "{}{}{}{}".format,
    st.sampled_from(["", "+", "-", "x", "~"]),
    st.floats(min_value=0, max_value=1e6, allow_nan=False).map(lambda f: f"{f:g}"),
    st.sampled_from(["", " ", "  "]),
    st.sampled_from(["", "mm", "cm", "m", "in", "%", "°", "deg", "rad", "kg", "% larger", "x", "furlongs"]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(
    st.sampled_from([p["name"] for p in SCHEMA] + [p["label"] for p in SCHEMA] + ["wheel", "yaw", "zz"]),
    st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**6, 10**6), st.booleans(),
              _VALUE_TEXT),
), max_size=6), st.sampled_from(["{}", "```json\n{}\n```", "Sure! {} Hope this helps.", "{} {{\"note\": 1}}"]))
def test_structured_answers_validate_exactly_against_the_schema(changes, wrapper):
    import json
    body = json.dumps({"summary": "s", "changes": [{"parameter": n, "value": v, "reason": "r"} for n, v in changes]})
    answer = parse(wrapper.format(body))
    assert answer.parse_error is None and len(answer.proposals) == len(changes)
    by_name = {p["name"]: p for p in SCHEMA}
    final = {}
    for (name, raw), proposal in zip(changes, answer.proposals):
        if proposal.valid:
            param = by_name[proposal.parameter]
            if param["type"] != "bool":
                assert param["min"] <= proposal.value <= param["max"]
            final[proposal.parameter] = proposal.value
        else:
            assert proposal.error
        # An exact name with a plain finite number is valid exactly when it is in range (and whole for ints).
        if name in by_name and type(raw) in (int, float) and math.isfinite(raw) and by_name[name]["type"] != "bool":
            param = by_name[name]
            ok = param["min"] <= raw <= param["max"] and (param["type"] == "float" or raw == int(raw))
            duplicate = proposal.error and "duplicate" in proposal.error
            assert proposal.valid == ok or duplicate, (name, raw, proposal)
    # The last change to each parameter wins; exactly one valid proposal per parameter at most.
    assert len([p for p in answer.proposals if p.valid]) == len(final)


# ------------------------------------------------------------------ proposal store
def store_set(answer, store=None):
    store = store or ProposalStore()
    return store.get(store.add("rover", 3, answer, {"backend": "test"}))


MIXED = parse('{"summary": "mix", "changes": [{"parameter": "wheel_width", "value": 40}, '
              '{"parameter": "wheel_diameter", "value": 999}, {"parameter": "head_tilt", "value": 20}]}')


def test_store_keeps_what_was_proposed():
    store = ProposalStore()
    pid = store.add("rover", 7, MIXED, {"backend": "ollama"})
    ps = store.get(pid)
    assert (ps.id, ps.model_name, ps.base_version, ps.summary, ps.meta) == (pid, "rover", 7, "mix",
                                                                            {"backend": "ollama"})
    assert len(ps.proposals) == 3 and ps.created > 0
    assert store.get("nope") is None
    assert len(pid) >= 16 and all(c.isalnum() or c in "-_" for c in pid)


def test_select_all_valid_or_a_subset():
    ps = store_set(MIXED)
    assert ProposalStore.select(ps, None) == {"wheel_width": 40.0, "head_tilt": 20.0}
    assert select(ps, ["head_tilt"]) == {"head_tilt": 20.0}


@pytest.mark.parametrize("names,fragment,parameter", [
    (["wheel_diameter"], "wheel_diameter was rejected and cannot be applied: wheel_diameter: 999 mm is above",
     "wheel_diameter"),
    (["chassis_length"], "has no change to 'chassis_length'", "chassis_length"),
    ([], "no parameters were chosen", None),
])
def test_select_refuses_rejected_unknown_or_empty_choices(names, fragment, parameter):
    with pytest.raises(ProposalSelectionError) as info:
        select(store_set(MIXED), names)
    assert fragment in str(info.value)
    assert info.value.parameter == parameter
    assert isinstance(info.value, ValueError)


def test_select_with_nothing_valid_is_an_error():
    with pytest.raises(ProposalSelectionError, match="no valid changes"):
        select(store_set(parse('{"summary": "s", "changes": [{"parameter": "x", "value": 1}]}')))


def test_store_evicts_least_recently_used():
    store = ProposalStore(max_items=3)
    ids = [store.add("rover", i, MIXED, {}) for i in range(3)]
    assert store.get(ids[0]) is not None  # touch the oldest: it becomes most recent
    newest = store.add("rover", 3, MIXED, {})
    assert store.get(ids[1]) is None  # the least recently used went
    assert all(store.get(i) is not None for i in (ids[0], ids[2], newest))
    assert len(store) == 3


def test_store_is_safe_under_concurrent_adds():
    store = ProposalStore(max_items=50)
    ids: list[str] = []
    lock = threading.Lock()

    def worker():
        for _ in range(200):
            pid = store.add("rover", 0, MIXED, {})
            with lock:
                ids.append(pid)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 800 and len(store) == 50
    assert sum(store.get(pid) is not None for pid in ids) == 50


# ------------------------------------------------------------------ response cache
def cache_key(**overrides):
    args = dict(backend="ollama", model="llava", adapter="v1", system="sys", prompt="make it taller",
                images=[b"\x89PNG render"], max_new_tokens=256, temperature=0.0)
    args.update(overrides)
    return ResponseCache.key(**args)


def test_cache_key_is_stable_and_covers_every_input():
    base = cache_key()
    assert base == cache_key()
    variants = [dict(backend="openai"), dict(model="llava-2"), dict(adapter=None), dict(system="sys2"),
                dict(prompt="make it shorter"), dict(images=[b"\x89PNG render2"]), dict(images=[]),
                dict(images=[b"\x89PNG render", b"photo"]), dict(max_new_tokens=128),
                dict(json_schema={"type": "object"})]
    keys = {cache_key(**v) for v in variants}
    assert base not in keys and len(keys) == len(variants)


def test_sampled_requests_are_not_cached():
    cache = ResponseCache()
    key = cache_key(temperature=0.7)
    assert key is None
    cache.put(key, "answer")
    assert cache.get(key) is None
    assert cache.stats()["items"] == 0


def test_cache_hits_misses_and_lru_eviction():
    cache = ResponseCache(max_items=2)
    k1, k2, k3 = cache_key(prompt="a"), cache_key(prompt="b"), cache_key(prompt="c")
    assert cache.get(k1) is None
    cache.put(k1, {"text": "one", "timings": {}})
    cache.put(k2, {"text": "two", "timings": {}})
    got = cache.get(k1)
    got["timings"]["cached"] = True  # the caller's copy; the cache keeps its own
    assert cache.get(k1) == {"text": "one", "timings": {}}
    cache.put(k3, {"text": "three", "timings": {}})  # evicts k2, the least recently used
    assert cache.get(k2) is None and cache.get(k3)["text"] == "three"
    stats = cache.stats()
    assert (stats["items"], stats["max_items"], stats["hits"], stats["misses"]) == (2, 2, 3, 2)
    assert stats["hit_rate"] == pytest.approx(0.6)


def test_store_evicts_oldest_sets_past_its_byte_budget():
    from vlm.proposals import ProposalStore, ParsedAnswer

    store = ProposalStore(max_items=100, max_bytes=3000)
    ids = [store.add("rover", 0, ParsedAnswer(summary="", proposals=[], parse_error=None),
                     {"images": [b"x" * 1000]}) for _ in range(5)]
    assert len(store) == 3
    assert store.get(ids[0]) is None and store.get(ids[1]) is None
    assert all(store.get(i) is not None for i in ids[2:])


# ---------------------------------------------------------------- real models' habits
HABITS = [
    ("values in prose, with units and hedges",
     "I'd set the wheel diameter to about 16 cm and the chassis length to roughly 400 mm. The wheel width is 30 mm "
     "now, which is fine.",
     [("wheel_diameter", 160.0, True), ("chassis_length", 400.0, True)], "prose"),
    ("a markdown table with an arrow in the value column",
     "| Parameter | Current | Proposed | Reason |\n|---|---|---|---|\n| wheel_diameter | 120 | 150 mm | clearance |\n"
     "| Chassis length | 300 | 300 → 350 | longer |\n",
     [("wheel_diameter", 150.0, True), ("chassis_length", 350.0, True)], "markdown table"),
    ("a flat map of names to values", 'Changes: {"wheel_diameter": 150, "wheel_count": 3}',
     [("wheel_diameter", 150.0, True), ("wheel_count", 3, True)], None),
    ("two complementary blocks are merged",
     '{"changes": [{"parameter": "wheel_diameter", "value": 150}]}\nAnd for the pose:\n'
     '{"changes": [{"parameter": "rover_yaw", "value": 90}]}',
     [("wheel_diameter", 150.0, True), ("rover_yaw", 90.0, True)], None),
    ("the same parameter twice: the later value wins, the earlier is flagged",
     '{"changes": [{"parameter": "wheel_diameter", "value": 150}]} {"changes": [{"parameter": "wheel_diameter", '
     '"value": 160}]}',
     [("wheel_diameter", 150.0, False), ("wheel_diameter", 160.0, True)], None),
    ("a draft then a corrected final answer: only the final counts",
     'First attempt: {"changes": [{"parameter": "wheel_diameter", "value": 190}, {"parameter": "rover_yaw", '
     '"value": 45}]}\nActually that is too big. Final answer: {"changes": [{"parameter": "wheel_diameter", '
     '"value": 150}]}',
     [("wheel_diameter", 150.0, True)], "draft"),
    ("JSON in the reasoning is a draft; the answer after it counts",
     '<think>maybe {"changes": [{"parameter": "wheel_diameter", "value": 190}]}</think>\n'
     '{"summary": "s", "changes": [{"parameter": "wheel_width", "value": 40}]}',
     [("wheel_width", 40.0, True)], None),
    ("a decimal comma", '{"changes": [{"parameter": "wheel_width", "value": "12,5"}]}',
     [("wheel_width", 12.5, True)], None),
    ("a thousands separator is not a decimal comma", '{"changes": [{"parameter": "rover_yaw", "value": "1,200"}]}',
     [("rover_yaw", 1200.0, False)], None),
]


@pytest.mark.parametrize("text,expected,warning", [h[1:] for h in HABITS], ids=[h[0] for h in HABITS])
def test_real_models_habits_are_read_without_a_wrong_value(text, expected, warning):
    answer = parse(text)
    assert answer.parse_error is None, answer.parse_error
    assert [(p.parameter, p.value, p.valid) for p in answer.proposals] == expected
    if warning:
        assert any(warning in w for w in answer.warnings), answer.warnings


def test_json_only_inside_the_reasoning_is_not_an_answer():
    answer = parse('<think>{"changes": [{"parameter": "wheel_diameter", "value": 190}]}</think> Done.')
    assert answer.proposals == [] and "reasoning" in answer.parse_error


def test_prose_without_a_stated_value_proposes_nothing():
    for text in ("The wheels look a bit small, maybe make them larger.", "The wheel diameter is 120 mm now."):
        answer = parse(text)
        assert answer.proposals == [] and answer.parse_error


def test_an_answer_cut_off_by_max_new_tokens_says_to_raise_it():
    cut = parse_model_output('{"summary": "s", "changes": [{"parameter": "wheel_diameter", "value": 150}, {"param',
                             SCHEMA, VALUES, cut_off_at=64)
    assert [(p.parameter, p.value) for p in cut.proposals] == [("wheel_diameter", 150.0)]
    assert any("raise max_new_tokens" in w for w in cut.warnings)
    nothing = parse_model_output("Let me think about the wheels", SCHEMA, VALUES, cut_off_at=16)
    assert "raise max_new_tokens" in nothing.parse_error

"""POST /api/optimise with use_vlm: a real app on the Ollama backend (USE_FINETUNED_MODEL=0) talking HTTP to a
FakeOllama with a scripted answer; real CadQuery builds and IoU in the build worker."""
from __future__ import annotations

import base64
import json
import time

import pytest

from tests.fake_engines import free_port
from tests.test_web_targets import HIDDEN, file_of_state, next_event, sse_events, stream_events
from web import create_app
from web.config import Config


def answer(*changes) -> str:
    return json.dumps({"summary": "Match the target", "changes": [
        {"parameter": name, "value": value, "reason": "the target is different there"} for name, value in changes]})


def make_app(tmp_path, ollama_url: str, **env):
    config = Config.from_env({"USE_FINETUNED_MODEL": "0", "OLLAMA_URL": ollama_url, "OPTIM_DATA_DIR": str(tmp_path),
                              "CAD_WARMUP": "0", "VLM_CONNECT_TIMEOUT": "1", **env})
    app = create_app(config)
    app.testing = True
    return app


@pytest.fixture()
def app(ollama, tmp_path):
    app = make_app(tmp_path / "data", ollama.url)
    yield app
    app.extensions["optim"].shutdown()


def with_target(app):
    client = app.test_client()
    assert client.put("/api/target?model=bracket", data=file_of_state(client, HIDDEN, "step")).status_code == 201
    return client


def test_a_proposal_nearer_the_target_is_kept_and_refined_as_one_undoable_entry(app, ollama):
    ollama.text = answer(("base_length", 70), ("upright_height", "75 mm"))
    client = with_target(app)
    entries = len(client.get("/api/history?model=bracket").get_json()["entries"])
    r = client.post("/api/optimise?model=bracket", json={"use_vlm": True, "max_steps": 3})
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    report = body["optimise"]
    assert report["vlm_used"] and report["vlm_accepted"] and "vlm_note" not in report
    assert report["vlm_proposed"] == {"base_length": 70.0, "upright_height": 75.0}
    assert report["iou_before"] < 0.9 and report["vlm_iou"] == pytest.approx(1.0, abs=1e-6)
    assert report["iou_after"] >= report["vlm_iou"] and report["applied"]
    assert report["vlm_summary"] == "Match the target"
    # The proposal (refined or not) is in the ONE new history entry, which undo takes back whole.
    changes = body["entry"]["changes"]
    assert changes["base_length"]["to"] == 70.0 and changes["upright_height"]["to"] == 75.0
    assert body["entry"]["source"] == {"kind": "optimise"} and "VLM" in body["entry"]["summary"]
    assert len(client.get("/api/history?model=bracket").get_json()["entries"]) == entries + 1
    undone = client.post("/api/undo?model=bracket", json={}).get_json()
    assert (undone["values"]["base_length"], undone["values"]["upright_height"]) == (80.0, 60.0)
    # What the model was shown: the parameter table, the measured differences, a render of the current state and
    # one of the target.
    chat = ollama.posts("/api/chat")[-1]
    system, user = chat["messages"][0]["content"], chat["messages"][1]["content"]
    assert "never write code" in system and "base_length" in user and "IoU" in user
    assert "X +10.0" in user and "Z -15.0" in user and "Volume" in user  # model minus target: 80-70, 60-75
    current, target = (base64.b64decode(image) for image in chat["messages"][1]["images"])
    assert current[:8] == target[:8] == b"\x89PNG\r\n\x1a\n" and current != target
    assert "FIRST image is the current CAD render" in user and "second image is a render of the target" in user
    branches = chat["format"]["properties"]["changes"]["items"]["anyOf"]  # one per parameter, with its range
    assert branches[0]["properties"]["parameter"]["enum"] == ["base_length"]


@pytest.mark.parametrize("text, note", [
    ("Looks great to me, nothing to change!", "no valid proposal: the model's answer contains no JSON"),
    (answer(("base_length", 9999), ("os.system('rm -rf /')", 1)), "above the maximum"),
    (answer(("base_length", 200)), "no better than the current"),
])
def test_a_useless_answer_is_rejected_with_a_note_and_the_numeric_search_still_runs(app, ollama, text, note):
    ollama.text = text
    client = with_target(app)
    r = client.post("/api/optimise?model=bracket", json={"use_vlm": True, "max_steps": 6, "stream": True})
    assert r.status_code == 200
    events = sse_events(r.get_data(as_text=True))
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "vlm" and kinds[-1] == "done" and "progress" in kinds  # the VLM step comes first
    vlm = events[0][1]
    assert vlm["used"] and not vlm["accepted"] and note in vlm["note"]
    report = events[-1][1]["optimise"]
    assert report["vlm_note"] == vlm["note"] and not report["vlm_accepted"] and report["steps"] == 6
    if "no better" in note:
        assert report["vlm_proposed"] == {"base_length": 200.0} and report["vlm_iou"] < report["iou_before"]
    else:
        assert report["vlm_iou"] is None
    assert events[-1][1]["values"]["base_length"] != 200.0 and events[-1][1]["values"]["base_length"] <= 200


@pytest.mark.parametrize("engine", ["down", "slow"])
def test_an_unusable_engine_is_a_note_and_the_numeric_search_still_runs(ollama, tmp_path, engine):
    if engine == "down":
        app = make_app(tmp_path / "data", f"http://127.0.0.1:{free_port()}")
    else:
        ollama.behaviour, ollama.stall_s = "slow", 30
        app = make_app(tmp_path / "data", ollama.url, VLM_GENERATE_TIMEOUT="1")
    try:
        client = with_target(app)
        started = time.monotonic()
        r = client.post("/api/optimise?model=bracket", json={"use_vlm": True, "max_steps": 4})
        assert r.status_code == 200, r.get_json()
        report = r.get_json()["optimise"]
        assert not report["vlm_used"] and not report["vlm_accepted"] and report["vlm_proposed"] == {}
        assert report["vlm_note"].startswith("the VLM was not usable")
        assert ("reach" in report["vlm_note"] or "not running" in report["vlm_note"]) if engine == "down" else (
            "engine_timeout" in report["vlm_note"])
        assert report["steps"] == 4 and time.monotonic() - started < 25
    finally:
        app.extensions["optim"].shutdown()


def test_cancel_while_waiting_for_the_vlm_ends_the_run_at_once(app, ollama):
    ollama.behaviour, ollama.stall_s = "slow", 60
    client = with_target(app)
    r = client.post("/api/optimise?model=bracket", json={"use_vlm": True, "max_steps": 500, "stream": True},
                    buffered=False)
    events = stream_events(r)
    deadline = time.monotonic() + 30
    # The question is on its way to the engine (a chat with messages: the load before it is an empty chat).
    while not [chat for chat in ollama.posts("/api/chat") if chat.get("messages")]:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    started = time.monotonic()
    assert app.test_client().delete("/api/optimise?model=bracket").status_code == 202
    closed = ollama.wait_for_close(timeout=5)  # the cancel reached the engine: its request was closed
    assert closed is not None and closed - started < 1.0
    vlm = next_event(events, "vlm", timeout=30)
    assert not vlm["used"] and vlm["note"] == "cancelled before the VLM answered"
    done = next_event(events, "done", timeout=30)
    assert list(events) == []
    assert done["optimise"]["stopped"] == "cancelled" and time.monotonic() - started < 10
    assert done["entry"] is None  # nothing better than the start was found before the cancel
    ollama.released.set()  # the abandoned question gets its answer (dropped); shutdown need not wait for it


def test_with_votes_the_optimise_step_applies_what_most_samples_agree_on(ollama, tmp_path):
    by_seed = {0: answer(("base_length", 70), ("width", 30)), 1: answer(("base_length", 70)),
               2: answer(("upright_height", "75 mm"))}
    ollama.responder = lambda body: by_seed[body["options"]["seed"]]
    app = make_app(tmp_path / "data", ollama.url, VLM_VOTES="3")
    try:
        client = with_target(app)
        report = client.post("/api/optimise?model=bracket", json={"use_vlm": True, "max_steps": 3}).get_json()
        assert report["optimise"]["vlm_proposed"] == {"base_length": 70.0}  # 2 of 3; width and height 1 of 3
        assert sorted(b["options"]["seed"] for b in ollama.posts("/api/chat") if b.get("messages")) == [0, 1, 2]
    finally:
        app.extensions["optim"].shutdown()

"""Training examples from the UI: the dataset log (atomic appends, content-addressed images, targets), its
export CLI, and apply/reject through the real HTTP API (Ollama backend on a local fake engine) writing the lines."""
from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests

from tests.fake_engines import FakeOllama
from tests.training_data import make_dataset, png, serve
from vlm.dataset import DatasetLog, load_examples, read_examples
from web import create_app
from web.config import Config

REPO_ROOT = Path(__file__).resolve().parent.parent
ANSWER = {
    "summary": "Bigger wheels and a lower head",
    "changes": [
        {"parameter": "wheel_diameter", "value": 120, "reason": "more ground clearance"},
        {"parameter": "pan_tilt_z", "value": 70, "reason": "lower centre of gravity"},
        {"parameter": "chassis_length", "value": 9999, "reason": "far too long"},  # out of range: invalid
    ],
}


def lines(root: Path) -> list[dict]:
    path = root / "examples.jsonl"
    # blank lines are allowed (a writer that saw a line still being written starts on a fresh one)
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def record(log: DatasetLog, **overrides) -> dict:
    target = {"summary": "Bigger wheels", "changes": [{"parameter": "wheel_diameter", "value": 120,
                                                        "reason": "clearance"}]}
    args = dict(outcome="applied", system="sys", user="make it climb", answer='{"changes": []}', target=target,
                values={"wheel_diameter": 90}, target_values={"wheel_diameter": 120},
                images=[("render", png((10, 20, 30)))], proposal_id=None)
    args.update(overrides)
    return log.record(**args)


def test_record_writes_one_line_with_target_and_content_addressed_images(tmp_path):
    log = DatasetLog(tmp_path / "ds")
    render, photo = png((1, 2, 3)), png((9, 9, 9), size=(30, 20))
    first = record(log, images=[("render", render), ("reference", photo)])
    second = record(log, user="other request", images=[("render", render)], outcome="rejected", target=None,
                    target_values=None, reject_reason="no")
    assert lines(log.root) == [first, second]
    stored = sorted(p.name for p in (log.root / "images").iterdir())
    assert stored == sorted({hashlib.sha256(render).hexdigest() + ".png", hashlib.sha256(photo).hexdigest() + ".png"})
    assert [img["role"] for img in first["images"]] == ["render", "reference"]
    assert (log.root / first["images"][1]["file"]).read_bytes() == photo
    assert first["target"]["changes"] == [{"parameter": "wheel_diameter", "value": 120, "reason": "clearance"}]
    assert second["target"] is None and second["reject_reason"] == "no"
    assert first["request_key"] != second["request_key"]
    # a rejected answer is kept for preference data but is never a training target
    assert [e["id"] for e in load_examples(log.root)] == [first["id"]]
    assert [e["id"] for e in load_examples(log.root, trainable=False)] == [first["id"], second["id"]]


@pytest.mark.parametrize("overrides", [
    {"outcome": "maybe"}, {"user": ""}, {"images": [("thumbnail", png((1, 1, 1)))]},
    {"images": [("render", b"GIF89a not stored")]},
])
def test_bad_examples_are_refused_and_write_nothing(tmp_path, overrides):
    log = DatasetLog(tmp_path / "ds")
    with pytest.raises(ValueError):
        record(log, **overrides)
    assert lines(log.root) == []


def test_concurrent_appends_never_interleave(tmp_path):
    log = DatasetLog(tmp_path / "ds")
    long_user = "x" * 70_000  # larger than a pipe buffer: a non-atomic writer would interleave

    def work(t):
        for i in range(15):
            record(log, user=f"{t}-{i} {long_user}", proposal_id=f"{t}-{i}")

    threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    got = lines(log.root)
    assert len(got) == 90 and len({e["proposal_id"] for e in got}) == 90


def test_reading_skips_torn_lines_missing_images_and_hostile_paths(tmp_path):
    log = make_dataset(tmp_path / "ds", count=4)
    missing = lines(log.root)[1]["images"][0]["file"]
    with open(log.examples_path, "a") as fh:
        bad = lines(log.root)[0]
        fh.write(json.dumps({**bad, "request_key": "evil", "images": [{"role": "render", "file": "../../etc/passwd"}]})
                 + "\n")
        fh.write('{"schema": 1, "user": "torn line wri')  # a crash mid-line
    record(log, proposal_id="after-crash", split="train")  # must not be glued onto the torn line
    examples, counts = read_examples(log.root)
    assert counts["malformed"] == 1 and counts["missing_images"] == 1
    (log.root / missing).unlink()
    # p3 is a rejection: no target, not trainable
    assert [e["proposal_id"] for e in load_examples(log.root)] == ["p0", "p2", "after-crash"]
    assert [e["proposal_id"] for e in load_examples(log.root, trainable=False)] == ["p0", "p2", "p3", "after-crash"]


def test_one_label_per_request_the_latest_decision_wins(tmp_path):
    log = DatasetLog(tmp_path / "ds")
    applied = record(log, proposal_id="a")
    rejected = record(log, proposal_id="b", outcome="rejected", target=None)  # the same prompt and images
    assert applied["request_key"] == rejected["request_key"]
    examples, counts = read_examples(log.root)
    assert [e["id"] for e in examples] == [rejected["id"]] and counts["superseded"] == 1
    assert load_examples(log.root) == []  # the latest decision has no target: nothing to train on
    again = record(log, proposal_id="c", target_values={"wheel_diameter": 130})
    assert [e["id"] for e in load_examples(log.root)] == [again["id"]]


def test_schema_1_rejects_lose_their_no_change_target(tmp_path):
    log = DatasetLog(tmp_path / "ds")
    old = {"schema": 1, "id": "x", "proposal_id": "p", "outcome": "rejected", "system": "s", "user": "u",
           "images": [], "answer": "", "target": {"changes": []}}
    log.examples_path.parent.mkdir(parents=True)
    log.examples_path.write_text(json.dumps(old) + "\n")
    assert load_examples(log.root) == []
    assert load_examples(log.root, trainable=False)[0]["target"] is None


def test_splits_never_share_a_target_state():
    from vlm.dataset import hashed_split, split_of

    same_target = [{"cad_model": "rover", "target_values": {"w": 120}, "request_key": str(i)} for i in range(50)]
    assert len({split_of(e, seed=3) for e in same_target}) == 1
    shares = [hashed_split(str(i), seed=0) for i in range(4000)]
    assert 0.07 < shares.count("test") / 4000 < 0.13 and 0.07 < shares.count("val") / 4000 < 0.13
    assert [hashed_split(str(i), seed=0) for i in range(50)] != [hashed_split(str(i), seed=1) for i in range(50)]


def test_export_cli_keeps_the_latest_decision_and_only_needed_images(tmp_path):
    log = make_dataset(tmp_path / "dataset", count=6)  # --data is the server's data dir here
    p2 = lines(log.root)[2]
    log.append([{**p2, "id": "p2-again", "outcome": "rejected", "target": None}])  # the same request decided again
    (tmp_path / "dataset" / "images" / "stray.png").write_bytes(png((0, 0, 0)))
    r = subprocess.run([sys.executable, "-m", "vlm.dataset", "export", "--data", str(tmp_path), "--out",
                        str(tmp_path / "out")], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    counts = dict(line.split() for line in r.stdout.splitlines() if not line.startswith("written"))
    assert counts["examples"] == "6" and counts["skipped_superseded"] == "1" and counts["rejected"] == "2"
    assert counts["trainable"] == "4" and counts["split_val"] == "1"
    exported = load_examples(tmp_path / "out", trainable=False)
    assert [e["proposal_id"] for e in exported] == ["p0", "p1", "p3", "p4", "p5", "p2"]
    assert next(e for e in exported if e["proposal_id"] == "p2")["target"] is None
    needed = {Path(p).name for e in exported for p in e["image_paths"]}
    assert {p.name for p in (tmp_path / "out" / "images").iterdir()} == needed
    bad = subprocess.run([sys.executable, "-m", "vlm.dataset", "export", "--data", str(tmp_path / "nope"), "--out",
                          str(tmp_path / "o2")], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "examples.jsonl" in bad.stderr


# ---------------------------------------------------------------- through the HTTP API
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    engine = FakeOllama(text=json.dumps(ANSWER))
    engine.start()
    data = tmp_path_factory.mktemp("data")
    app = create_app(Config(data_dir=data, cad_warmup=False, backend="ollama", ollama_url=engine.url))
    with serve(app) as url:
        yield url, engine, data / "dataset"
    app.extensions["optim"].shutdown()
    engine.stop()


def ask(url, **body) -> dict:
    r = requests.post(url + "/api/vlm", json={"prompt": "climb kerbs", **body}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def test_applying_a_subset_logs_what_the_model_saw_and_what_the_user_kept(server):
    url, engine, dataset = server
    photo = png((200, 40, 40), size=(80, 60))
    answer = ask(url, include_render=True, images=[base64.b64encode(photo).decode()])
    seen = engine.posts("/api/chat")[-1]
    state = requests.get(url + "/api/params", timeout=10).json()
    r = requests.post(f"{url}/api/proposals/{answer['id']}/apply",
                      json={"version": state["version"], "parameters": ["wheel_diameter"]}, timeout=30)
    assert r.status_code == 200, r.text
    example = lines(dataset)[-1]
    assert example["proposal_id"] == answer["id"] and example["outcome"] == "applied"
    assert example["applied"] == {"wheel_diameter": 120} and example["invalid"] == ["chassis_length"]
    assert example["target"] == {"summary": ANSWER["summary"], "changes": [
        {"parameter": "wheel_diameter", "value": 120, "reason": "more ground clearance"}]}
    assert example["values"] == state["values"]
    assert example["target_values"] == {**state["values"], "wheel_diameter": 120}
    assert example["answer"] == json.dumps(ANSWER) and example["request"] == "climb kerbs"
    assert (example["cad_model"], example["backend"]) == ("rover", "ollama")
    # exactly the prompt and image bytes the engine received, the render first
    assert example["system"] == seen["messages"][0]["content"] and example["user"] == seen["messages"][-1]["content"]
    sent_images = [base64.b64decode(b) for b in seen["messages"][-1]["images"]]
    assert [img["role"] for img in example["images"]] == ["render", "reference"]
    assert [(dataset / img["file"]).read_bytes() for img in example["images"]] == sent_images
    # applying the rest later accumulates: the latest line holds both applied changes
    r = requests.post(f"{url}/api/proposals/{answer['id']}/apply", json={"parameters": ["pan_tilt_z"]}, timeout=30)
    assert r.status_code == 200
    assert lines(dataset)[-1]["applied"] == {"wheel_diameter": 120, "pan_tilt_z": 70}
    assert [c["parameter"] for c in lines(dataset)[-1]["target"]["changes"]] == ["wheel_diameter", "pan_tilt_z"]
    requests.post(url + "/api/reset", json={}, timeout=30)


def test_a_corrected_or_added_value_is_what_is_logged(server):
    url, _, dataset = server
    answer = ask(url, prompt="wheels of 130 mm and a longer chassis")
    # the model said 120 (correct it to 130), proposed an out-of-range chassis length (correct it to 300) and
    # forgot the wheel width (add it)
    r = requests.post(f"{url}/api/proposals/{answer['id']}/apply", json={
        "parameters": ["wheel_diameter"],
        "values": {"wheel_diameter": 130, "chassis_length": 300, "wheel_width": 40}}, timeout=30)
    assert r.status_code == 200, r.text
    assert {k: r.json()["values"][k] for k in ("wheel_diameter", "chassis_length", "wheel_width")} == \
        {"wheel_diameter": 130, "chassis_length": 300, "wheel_width": 40}
    assert r.json()["applied"] == {"wheel_diameter": 130, "chassis_length": 300, "wheel_width": 40}
    example = lines(dataset)[-1]
    assert {c["parameter"]: c["value"] for c in example["target"]["changes"]} == \
        {"wheel_diameter": 130, "chassis_length": 300, "wheel_width": 40}
    assert example["corrected"] == {"wheel_diameter": {"proposed": 120, "applied": 130}}
    assert example["added"] == ["wheel_width"]
    bad = requests.post(f"{url}/api/proposals/{answer['id']}/apply", json={"values": {"wheel_width": 5000}},
                        timeout=30)
    assert bad.status_code == 422 and len(lines(dataset)) == len(lines(dataset))
    requests.post(url + "/api/reset", json={}, timeout=30)


def test_an_answer_with_nothing_valid_can_still_become_an_example(server):
    url, engine, dataset = server
    engine.responder = lambda body: "I think the wheels should be bigger."  # an untrained model's answer
    try:
        answer = ask(url, prompt="bigger wheels please")
    finally:
        engine.responder = None
    assert answer["proposals"] == [] and answer["parse_error"]
    assert requests.post(f"{url}/api/proposals/{answer['id']}/apply", json={}, timeout=30).status_code == 422
    r = requests.post(f"{url}/api/proposals/{answer['id']}/apply", json={"values": {"wheel_diameter": 110}},
                      timeout=30)
    assert r.status_code == 200, r.text
    example = lines(dataset)[-1]
    assert example["target"]["changes"] == [{"parameter": "wheel_diameter", "value": 110, "reason": ""}]
    requests.post(url + "/api/reset", json={}, timeout=30)


def test_applying_values_already_in_place_records_nothing(server):
    url, _, dataset = server
    answer = ask(url, prompt="apply twice")
    first = requests.post(f"{url}/api/proposals/{answer['id']}/apply", json={}, timeout=30)
    assert first.status_code == 200 and first.json()["entry"] is not None
    count = len(lines(dataset))
    again = requests.post(f"{url}/api/proposals/{answer['id']}/apply", json={}, timeout=30)
    assert again.status_code == 200 and again.json()["entry"] is None and again.json()["applied"] == {}
    assert len(lines(dataset)) == count
    requests.post(url + "/api/reset", json={}, timeout=30)


def test_a_proposal_older_than_a_manual_edit_does_not_overwrite_it(server):
    url, _, dataset = server
    answer = ask(url, prompt="stale proposal")
    version = requests.get(url + "/api/params", timeout=10).json()["version"]
    edit = requests.patch(url + "/api/params", json={"version": version, "values": {"wheel_diameter": 150}},
                          timeout=30)
    assert edit.status_code == 200
    count = len(lines(dataset))
    r = requests.post(f"{url}/api/proposals/{answer['id']}/apply", json={}, timeout=30)
    assert r.status_code == 409 and r.json()["error"] == "stale_proposal"
    assert r.json()["parameters"] == ["wheel_diameter"] and len(lines(dataset)) == count
    assert requests.get(url + "/api/params", timeout=10).json()["values"]["wheel_diameter"] == 150
    # a proposal for other parameters still applies; overwrite is explicit
    assert requests.post(f"{url}/api/proposals/{answer['id']}/apply", json={"parameters": ["pan_tilt_z"]},
                         timeout=30).status_code == 200
    r = requests.post(f"{url}/api/proposals/{answer['id']}/apply", json={"overwrite": True}, timeout=30)
    assert r.status_code == 200 and r.json()["values"]["wheel_diameter"] == 120
    requests.post(url + "/api/reset", json={}, timeout=30)


def test_a_reject_is_never_a_no_change_target_by_itself(server):
    url, _, dataset = server
    answer = ask(url, prompt="a different request")
    before = len(lines(dataset))
    r = requests.post(f"{url}/api/proposals/{answer['id']}/reject", json={"reason": "wheels are fine"}, timeout=30)
    assert r.status_code == 200 and r.json() == {"id": answer["id"], "rejected": True, "recorded_as": "rejected"}
    example = lines(dataset)[-1]
    assert len(lines(dataset)) == before + 1
    assert example["outcome"] == "rejected" and example["target"] is None and example["answer"] == json.dumps(ANSWER)
    assert example["reject_reason"] == "wheels are fine" and example["images"] == []
    assert example["request_key"] not in {e["request_key"] for e in load_examples(dataset)}
    # only when the designer says so does it teach "no change"
    other = ask(url, prompt="is it fine as it is?")
    r = requests.post(f"{url}/api/proposals/{other['id']}/reject", json={"nothing_should_change": True}, timeout=30)
    assert r.status_code == 200 and r.json()["recorded_as"] == "no_change"
    example = lines(dataset)[-1]
    assert example["outcome"] == "no_change" and example["target"]["changes"] == []
    assert example["target_values"] == example["values"]
    assert requests.post(f"{url}/api/proposals/{answer['id']}/reject", timeout=30).status_code == 200  # no body


def test_failed_or_bad_decisions_log_nothing(server):
    url, _, dataset = server
    answer = ask(url, prompt="yet another request")
    before = len(lines(dataset))
    r = requests.post(f"{url}/api/proposals/nope/reject", json={}, timeout=30)
    assert r.status_code == 404 and r.json()["error"] == "unknown_proposal"
    r = requests.post(f"{url}/api/proposals/{answer['id']}/reject", json={"reason": 5}, timeout=30)
    assert r.status_code == 400 and r.json()["error"] == "bad_reason"
    r = requests.post(f"{url}/api/proposals/{answer['id']}/apply", json={"version": 999}, timeout=30)
    assert r.status_code == 409
    r = requests.post(f"{url}/api/proposals/{answer['id']}/apply", json={"parameters": ["chassis_length"]}, timeout=30)
    assert r.status_code == 422
    r = requests.post(f"{url}/api/proposals/{answer['id']}/apply", json={"values": [1]}, timeout=30)
    assert r.status_code == 400 and r.json()["error"] == "bad_values"
    assert len(lines(dataset)) == before

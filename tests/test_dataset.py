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
    args = dict(outcome="applied", system="sys", user="make it climb", answer='{"changes": []}',
                summary="Bigger wheels", accepted={"wheel_diameter": 120}, reasons={"wheel_diameter": "clearance"},
                rejected=[], images=[("render", png((10, 20, 30)))], proposal_id=None)
    args.update(overrides)
    return log.record(**args)


def test_record_writes_one_line_with_target_and_content_addressed_images(tmp_path):
    log = DatasetLog(tmp_path / "ds")
    render, photo = png((1, 2, 3)), png((9, 9, 9), size=(30, 20))
    first = record(log, images=[("render", render), ("reference", photo)], rejected=["pan_tilt_z"])
    second = record(log, images=[("render", render)], accepted={}, outcome="rejected", reject_reason="no")
    assert lines(log.root) == [first, second]
    stored = sorted(p.name for p in (log.root / "images").iterdir())
    assert stored == sorted({hashlib.sha256(render).hexdigest() + ".png", hashlib.sha256(photo).hexdigest() + ".png"})
    assert [img["role"] for img in first["images"]] == ["render", "reference"]
    assert (log.root / first["images"][1]["file"]).read_bytes() == photo
    assert first["target"] == {"summary": "Bigger wheels",
                               "changes": [{"parameter": "wheel_diameter", "value": 120, "reason": "clearance"}]}
    assert second["target"] == {"changes": []} and second["reject_reason"] == "no"


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
        fh.write(json.dumps({**bad, "proposal_id": "evil", "images": [{"role": "render", "file": "../../etc/passwd"}]})
                 + "\n")
        fh.write('{"schema": 1, "user": "torn line wri')  # a crash mid-line
    record(log, proposal_id="after-crash")  # must not be glued onto the torn line
    examples, counts = read_examples(log.root)
    assert counts["malformed"] == 1 and counts["missing_images"] == 1
    (log.root / missing).unlink()
    assert [e["proposal_id"] for e in load_examples(log.root)] == ["p0", "p2", "p3", "after-crash"]


def test_export_cli_keeps_the_latest_decision_and_only_needed_images(tmp_path):
    log = make_dataset(tmp_path / "dataset", count=6)  # --data is the server's data dir here
    record(log, proposal_id="p2", outcome="rejected", accepted={}, images=[("render", png((5, 5, 5)))])
    (tmp_path / "dataset" / "images" / "stray.png").write_bytes(png((0, 0, 0)))
    r = subprocess.run([sys.executable, "-m", "vlm.dataset", "export", "--data", str(tmp_path), "--out",
                        str(tmp_path / "out")], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    counts = dict(line.split() for line in r.stdout.splitlines() if not line.startswith("written"))
    assert counts["examples"] == "6" and counts["skipped_superseded"] == "1" and counts["rejected"] == "2"
    exported = load_examples(tmp_path / "out")
    assert [e["proposal_id"] for e in exported] == ["p0", "p1", "p3", "p4", "p5", "p2"]
    assert next(e for e in exported if e["proposal_id"] == "p2")["target"] == {"changes": []}
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
    version = requests.get(url + "/api/params", timeout=10).json()["version"]
    r = requests.post(f"{url}/api/proposals/{answer['id']}/apply",
                      json={"version": version, "parameters": ["wheel_diameter"]}, timeout=30)
    assert r.status_code == 200, r.text
    example = lines(dataset)[-1]
    assert example["proposal_id"] == answer["id"] and example["outcome"] == "applied"
    assert example["accepted"] == {"wheel_diameter": 120}
    assert set(example["rejected"]) == {"pan_tilt_z", "chassis_length"} and example["invalid"] == ["chassis_length"]
    assert example["target"] == {"summary": ANSWER["summary"], "changes": [
        {"parameter": "wheel_diameter", "value": 120, "reason": "more ground clearance"}]}
    assert example["answer"] == json.dumps(ANSWER) and example["request"] == "climb kerbs"
    assert (example["cad_model"], example["backend"]) == ("rover", "ollama")
    # exactly the prompt and image bytes the engine received, the render first
    assert example["system"] == seen["messages"][0]["content"] and example["user"] == seen["messages"][-1]["content"]
    sent_images = [base64.b64decode(b) for b in seen["messages"][-1]["images"]]
    assert [img["role"] for img in example["images"]] == ["render", "reference"]
    assert [(dataset / img["file"]).read_bytes() for img in example["images"]] == sent_images
    # applying the rest later accumulates: the latest line holds both accepted changes
    r = requests.post(f"{url}/api/proposals/{answer['id']}/apply", json={"parameters": ["pan_tilt_z"]}, timeout=30)
    assert r.status_code == 200
    assert lines(dataset)[-1]["accepted"] == {"wheel_diameter": 120, "pan_tilt_z": 70}
    requests.post(url + "/api/reset", json={}, timeout=30)


def test_rejecting_logs_an_empty_target(server):
    url, _, dataset = server
    answer = ask(url, prompt="a different request")
    before = len(lines(dataset))
    r = requests.post(f"{url}/api/proposals/{answer['id']}/reject", json={"reason": "wheels are fine"}, timeout=30)
    assert r.status_code == 200 and r.json() == {"id": answer["id"], "rejected": True}
    example = lines(dataset)[-1]
    assert len(lines(dataset)) == before + 1
    assert example["outcome"] == "rejected" and example["target"] == {"changes": []}
    assert example["accepted"] == {} and example["reject_reason"] == "wheels are fine" and example["images"] == []
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
    assert len(lines(dataset)) == before

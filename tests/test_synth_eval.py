"""Synthetic data from a registry model (real CadQuery builds and renders) and the proposal benchmark run against
real HTTP engines on 127.0.0.1 that speak Ollama's and OpenAI's APIs."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cad.registry import ModelRegistry
from tests.fake_engines import FakeOllama, FakeOpenAI
from vlm.dataset import load_examples, read_examples, state_key
from vlm.eval import main as eval_main
from vlm.prompts import build_prompt
from vlm.synth import SynthConfig, synthesise

ARGS = dict(models=["bracket"], count=14, seed=5, size=64, views=("iso", "top"), photo_like=0.8, workers=2,
            val=0.15, test=0.3)


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "bracket"
    synthesise(SynthConfig(**ARGS), out, progress=False)
    return out


def test_examples_are_the_servers_prompt_and_the_change_from_a_to_b(synth):
    model = ModelRegistry().get("bracket")
    schema = {p["name"]: p for p in model.schema.to_json()}
    examples = load_examples(synth, trainable=False)
    assert len(examples) == 14 and {e["outcome"] for e in examples} == {"synthetic"}
    for e in examples:
        a, b = e["values"], e["target_values"]
        photo = e["style"] == "photo"
        system, user = build_prompt(model.schema.to_json(), a, e["request"], model_title=model.title,
                                    has_images=photo, has_render="render" in [i["role"] for i in e["images"]])
        assert (e["system"], e["user"]) == (system, user)
        assert [i["role"] for i in e["images"]].count("reference") == (2 if photo else 0)
        changed = [n for n in a if a[n] != b[n]]
        assert [c["parameter"] for c in e["target"]["changes"]] == changed and len(changed) <= 3
        for c in e["target"]["changes"]:
            p = schema[c["parameter"]]
            assert c["value"] == b[c["parameter"]]
            if p["type"] == "float":  # a change worth asking for, on the schema's grid
                assert abs(b[p["name"]] - a[p["name"]]) >= 0.15 * (p["max"] - p["min"]) - 1e-9
                assert abs(round((b[p["name"]] - p["min"]) / p["step"]) * p["step"] + p["min"] - b[p["name"]]) < 1e-6
        if e["style"] in ("absolute", "relative") and changed:
            assert re.search(r"\d", e["request"])  # text requests carry the amount
    assert json.loads(examples[0]["answer"]) == examples[0]["target"]


def test_splits_are_disjoint_in_target_states_and_deterministic(synth, tmp_path):
    examples = load_examples(synth, trainable=False)
    by_split: dict[str, set] = {}
    for e in examples:
        by_split.setdefault(e["split"], set()).add(state_key(e["cad_model"], e["target_values"]))
    assert set(by_split) == {"train", "val", "test"}
    assert not (by_split["train"] & by_split["test"]) and not (by_split["train"] & by_split["val"])
    assert not (by_split["val"] & by_split["test"])
    again = tmp_path / "again"
    synthesise(SynthConfig(**{**ARGS, "workers": 1}), again, progress=False)  # other worker count, same seed
    assert (again / "examples.jsonl").read_bytes() == (synth / "examples.jsonl").read_bytes()
    other = tmp_path / "other"
    synthesise(SynthConfig(**{**ARGS, "seed": 6, "count": 4}), other, progress=False)
    assert read_examples(other)[0][0]["values"] != read_examples(synth)[0][0]["values"]
    with pytest.raises(SystemExit, match="already has examples"):
        synthesise(SynthConfig(**ARGS), synth, progress=False)


def _chat_answer(body: dict) -> str:
    """An engine in a real model's style: prose first, then a markdown table setting width to 60 mm."""
    return ("Looking at the reference, the bracket should be wider.\n\n| parameter | current | proposed | reason |\n"
            "|---|---|---|---|\n| width | - | 60 mm | wider |\n")


def run_eval(tmp_path, *args) -> dict:
    out = tmp_path / "report.json"
    assert eval_main([*args, "--no-progress", "--workers", "2", "--out", str(out)]) == 0
    return json.loads(out.read_text())


def test_the_same_eval_runs_against_ollama_and_openai_compatible_servers(synth, tmp_path, capsys):
    test = load_examples(synth, split="test")
    with FakeOllama() as ollama, FakeOpenAI() as openai:
        ollama.responder = openai.responder = _chat_answer
        via_ollama = run_eval(tmp_path, "--data", str(synth), "--backend", "ollama", "--url", ollama.url)
        table = capsys.readouterr().out
        via_openai = run_eval(tmp_path, "--data", str(synth), "--backend", "openai", "--url", openai.base_url,
                              "--model", openai.models[0])
        sent = [m for m in ollama.posts("/api/chat") if m["messages"]]  # not the documented load request
        sent_openai = openai.posts("/v1/chat/completions")
    # every test example went out with its own prompt, images and the per-parameter answer schema
    assert [m["messages"][-1]["content"] for m in sent] == [e["user"] for e in test]
    assert [len(m["messages"][-1].get("images", [])) for m in sent] == [len(e["images"]) for e in test]
    branch = next(b for b in sent[0]["format"]["properties"]["changes"]["items"]["anyOf"]
                  if b["properties"]["parameter"]["enum"] == ["width"])
    assert branch["properties"]["value"] == {"type": "number", "minimum": 15, "maximum": 120}
    assert sent_openai[0]["response_format"]["json_schema"]["strict"] is True
    a, b = via_ollama["systems"]["ollama:llava:latest"], via_openai["systems"][f"openai:{openai.models[0]}"]
    for key in ("parse_rate", "valid_rate", "precision", "recall", "error_before", "error_after", "iou_after"):
        assert a[key] == b[key], key
    # the answer sets width to 60 mm on every example: check the figures against a direct count
    n = len(test)
    width_changed = sum(1 for e in test if e["values"]["width"] != e["target_values"]["width"])
    assert a["examples"] == n and a["parse_rate"] == 1.0 and a["valid_rate"] == 1.0
    assert a["recall"] == pytest.approx(width_changed / sum(len(e["target"]["changes"]) for e in test))
    assert via_ollama["systems"]["no change"]["error_after"] == a["error_before"]
    assert a["iou_examples"] == n and 0 <= a["iou_after"] <= 1 and a["latency_mean_s"] > 0
    assert all(label in table.split("\n")[0] for label in ("no change", "mean", "ollama:llava:latest"))
    assert "param error after" in table and "by request style" in table


def test_replayed_answers_are_scored_like_live_ones(synth, tmp_path):
    test = load_examples(synth, split="test")
    answers = tmp_path / "answers.jsonl"
    # the exact target for the first example, nothing usable for the rest
    rows = [{"id": test[0]["id"], "text": json.dumps(test[0]["target"])}] + \
        [{"id": e["id"], "text": "no idea"} for e in test[1:]]
    answers.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = run_eval(tmp_path, "--data", str(synth), "--backend", "replay", "--answers", str(answers))
    replay = report["systems"]["replay:answers.jsonl"]
    assert replay["parse_rate"] == pytest.approx(1 / len(test))
    first = report["examples"][0]["scores"]["replay:answers.jsonl"]
    assert first["error_after"] == 0.0 and first["iou_after"] == pytest.approx(1.0)
    assert report["systems"]["no change"]["iou_before"] == replay["iou_before"]

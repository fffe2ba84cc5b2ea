"""Self-consistency voting (vlm.voting): sampled answers merged into the changes most of them agree on, in the
benchmark's engine wrapper and in the server's ask path (VLM_VOTES) against a real local Ollama-speaking server."""
from __future__ import annotations

import json

import pytest

from tests.fake_engines import FakeOpenAI, fake_openai  # noqa: F401  (pytest fixture)
from vlm.backend import GenerateRequest, GenerateResult
from vlm.openai_compat import OpenAICompatBackend
from vlm.voting import VoteSettings, merged_result, vote
from web import create_app
from web.config import Config

SCHEMA = [
    {"name": "wheel_diameter", "type": "float", "min": 40, "max": 200, "default": 80},
    {"name": "wheels_per_side", "type": "int", "min": 1, "max": 4, "default": 2},
    {"name": "show_sensor_fork", "type": "bool", "default": True},
    {"name": "chassis_length", "type": "float", "min": 80, "max": 400, "default": 200},
]
VALUES = {"wheel_diameter": 80.0, "wheels_per_side": 2, "show_sensor_fork": True, "chassis_length": 200.0}


def answer(**changes) -> str:
    return json.dumps({"summary": "s", "changes": [{"parameter": k, "value": v, "reason": "r"}
                                                    for k, v in changes.items()]})


def changes_of(merged: dict) -> dict:
    return {c["parameter"]: c["value"] for c in merged["changes"]}


def test_a_change_most_answers_make_is_kept_at_their_median_and_a_lone_guess_is_dropped():
    texts = [answer(wheel_diameter=120, chassis_length=300), answer(wheel_diameter=130),
             answer(wheel_diameter=110, show_sensor_fork=False), "no json at all", answer(wheels_per_side=3)]
    merged = vote(texts, SCHEMA, VALUES)  # more than half of 5: three answers
    assert changes_of(merged) == {"wheel_diameter": 120}  # median_low of 110, 120, 130: a value one answer gave
    assert "3 of 5" in merged["changes"][0]["reason"]
    assert changes_of(vote(texts, SCHEMA, VALUES, min_share=0.6)) == {}  # 3 of 5 is not more than 60 %


def test_integers_stay_whole_and_bools_go_by_majority():
    texts = [answer(wheels_per_side=3, show_sensor_fork=False), answer(wheels_per_side=4, show_sensor_fork=False),
             answer(wheels_per_side=3, show_sensor_fork=True), answer(wheels_per_side=4)]
    merged = changes_of(vote(texts, SCHEMA, VALUES, min_share=0.5))
    assert merged["wheels_per_side"] == 3 and isinstance(merged["wheels_per_side"], int)
    # show_sensor_fork: 2 of 4 answers propose it; one of them sets the current value (not a change): not kept
    assert "show_sensor_fork" not in merged


def test_invalid_proposals_do_not_vote():
    texts = [answer(wheel_diameter=900), answer(wheel_diameter=950), answer(wheel_diameter=120)]
    assert changes_of(vote(texts, SCHEMA, VALUES)) == {}  # out of range twice: one valid vote of three


def test_settings_seed_each_sample_and_one_vote_is_the_request_itself():
    request = GenerateRequest(system="s", prompt="p", temperature=0.0)
    assert VoteSettings().samples(request) == [request]
    samples = VoteSettings(votes=3, temperature=0.7, seed=5).samples(request)
    assert [(s.temperature, s.seed) for s in samples] == [(0.7, 5), (0.7, 6), (0.7, 7)]
    with pytest.raises(ValueError):
        VoteSettings(votes=0)
    with pytest.raises(ValueError):
        VoteSettings(votes=3, temperature=0.0)


def test_merged_result_is_one_answer_that_parses():
    results = [GenerateResult(text=answer(wheel_diameter=120), model="m", completion_tokens=10,
                              timings={"generate": 0.5}, finish_reason="stop") for _ in range(3)]
    merged = merged_result(results, SCHEMA, VALUES, VoteSettings(votes=3))
    assert changes_of(json.loads(merged.text)) == {"wheel_diameter": 120}
    assert merged.completion_tokens == 30 and merged.timings == {"generate": 1.5, "votes": 3}


@pytest.fixture()
def voting_app(ollama, tmp_path):
    config = Config(data_dir=tmp_path / "data", cad_warmup=False, backend="ollama", ollama_url=ollama.url,
                    ollama_model="llava:latest", keep_alive_s=300, vlm_votes=3, vlm_vote_temperature=0.7)
    app = create_app(config)
    yield app
    app.extensions["optim"].shutdown()


def test_the_server_samples_votes_and_answers_with_the_agreed_changes(voting_app, ollama):
    by_seed = {0: answer(wheel_diameter=120, chassis_length=300), 1: answer(wheel_diameter=130), 2: answer()}
    ollama.responder = lambda body: by_seed[body["options"]["seed"]]
    c = voting_app.test_client()
    body = c.post("/api/vlm", json={"model": "rover", "prompt": "bigger wheels"}).get_json()
    chats = [b for b in ollama.posts("/api/chat") if b.get("messages")]  # not the load's empty chat
    assert [(b["options"]["seed"], b["options"]["temperature"]) for b in chats] == [(0, 0.7), (1, 0.7), (2, 0.7)]
    assert body["parse_error"] is None and body["timings"]["votes"] == 3
    assert {p["parameter"]: p["value"] for p in body["proposals"]} == {"wheel_diameter": 120}
    again = c.post("/api/vlm", json={"model": "rover", "prompt": "bigger wheels"}).get_json()
    assert again["cached"] is True and len([b for b in ollama.posts("/api/chat") if b.get("messages")]) == 3  # seeded votes: the same answer


def test_bad_vote_settings_are_refused_at_start():
    with pytest.raises(ValueError, match="VLM_VOTES"):
        Config.from_env({"VLM_VOTES": "40"}).validate()


def test_an_openai_compatible_engine_gets_the_sample_seed(fake_openai):
    backend = OpenAICompatBackend(fake_openai.url + "/v1", FakeOpenAI.default_models[0], None)
    backend.generate(GenerateRequest(system="s", prompt="p", temperature=0.7, seed=4, max_new_tokens=32))
    backend.generate(GenerateRequest(system="s", prompt="p", max_new_tokens=32))
    bodies = fake_openai.posts("/v1/chat/completions")
    assert bodies[0]["seed"] == 4 and bodies[0]["temperature"] == 0.7 and "seed" not in bodies[1]

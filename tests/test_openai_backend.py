"""OpenAICompatBackend against a real OpenAI-compatible HTTP server on 127.0.0.1 (vLLM's shapes)."""
from __future__ import annotations

import base64
import threading
import time

import pytest

from tests.fake_engines import fake_openai  # noqa: F401  (pytest fixture)
from tests.fake_engines import MID_STREAM_ERROR, PROPOSAL_TEXT, FakeOpenAI, free_port, proposal_chunks
from vlm.backend import BackendError, GenerateRequest
from vlm.openai_compat import OpenAICompatBackend

MODEL = FakeOpenAI.default_models[0]
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00fake-png-body"
JPEG = b"\xff\xd8\xff\xe0" + b"\x00fake-jpeg-body"
SCHEMA = {"type": "object", "properties": {"summary": {"type": "string"}}, "required": ["summary"]}


def backend(base_url: str, **kw) -> OpenAICompatBackend:
    kw.setdefault("connect_timeout_s", 1.0)
    kw.setdefault("read_timeout_s", 5.0)
    return OpenAICompatBackend(base_url, kw.pop("model", MODEL), kw.pop("api_key", None), **kw)


def request(**kw) -> GenerateRequest:
    kw.setdefault("system", "You propose CAD parameter changes as JSON.")
    kw.setdefault("prompt", "Make the rover climb better.")
    return GenerateRequest(**kw)


def no_progress(fraction, phase):
    pass


def chat_posts(fake):
    return fake.posts("/v1/chat/completions")


def test_streamed_generation_sends_parts_and_relays_sse_tokens_in_order(fake_openai):
    tokens: list[str] = []
    result = backend(fake_openai.base_url).generate(
        request(images=[PNG, JPEG], max_new_tokens=128, temperature=0.2, json_schema=SCHEMA), tokens.append)

    [body] = chat_posts(fake_openai)
    assert body["model"] == MODEL
    assert body["messages"] == [
        {"role": "system", "content": "You propose CAD parameter changes as JSON."},
        {"role": "user", "content": [
            {"type": "text", "text": "Make the rover climb better."},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(PNG).decode()}},
            {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64," + base64.b64encode(JPEG).decode()}},
        ]}]
    assert (body["max_tokens"], body["temperature"], body["stream"]) == (128, 0.2, True)
    assert body["response_format"] == {"type": "json_schema", "json_schema": {"name": "proposal", "schema": SCHEMA,
                                                                           "strict": True}}
    assert "authorization" not in fake_openai.requests[-1].headers

    assert tokens == proposal_chunks() and len(tokens) > 1
    assert result.text == PROPOSAL_TEXT and result.model == MODEL
    assert (result.prompt_tokens, result.completion_tokens) == (FakeOpenAI.prompt_tokens, len(tokens))
    assert 0 <= result.timings["first_token"] <= result.timings["generate"]


def test_tokens_reach_the_caller_before_the_stream_ends(fake_openai):
    fake_openai.gate = threading.Event()
    fake_openai.stall_s = 3.0
    started = time.monotonic()
    tokens: list[str] = []

    def on_token(piece):
        tokens.append(piece)
        fake_openai.gate.set()

    backend(fake_openai.base_url).generate(request(), on_token)
    assert time.monotonic() - started < 1.5
    assert "".join(tokens) == PROPOSAL_TEXT


def test_without_on_token_the_answer_is_still_streamed_from_the_engine(fake_openai):
    result = backend(fake_openai.base_url).generate(request())
    [body] = chat_posts(fake_openai)
    assert body["stream"] is True and "response_format" not in body
    assert body["messages"][-1]["content"] == [{"type": "text", "text": "Make the rover climb better."}]
    assert result.text == PROPOSAL_TEXT and result.prompt_tokens == FakeOpenAI.prompt_tokens


def test_api_key_goes_as_bearer_and_a_wrong_one_is_named():
    with FakeOpenAI(api_key="sekrit") as fake:
        good = backend(fake.base_url, api_key="sekrit")
        good.load(no_progress)
        assert good.generate(request()).text == PROPOSAL_TEXT
        assert {r.headers.get("authorization") for r in fake.requests} == {"Bearer sekrit"}

        for key in ("wrong", None):
            with pytest.raises(BackendError) as err:
                backend(fake.base_url, api_key=key).load(no_progress)
            assert err.value.code == "engine_auth_failed" and err.value.status == 503
            assert "OPENAI_API_KEY rejected" in err.value.message
        with pytest.raises(BackendError) as err:
            backend(fake.base_url, api_key="wrong").generate(request(), lambda t: None)
        assert "OPENAI_API_KEY rejected" in err.value.message


def test_load_checks_the_model_is_served(fake_openai):
    b = backend(fake_openai.base_url)
    b.load(no_progress)
    assert [(r.method, r.path) for r in fake_openai.requests] == [("GET", "/v1/models")]
    status = b.status()
    assert status["reachable"] and status["present"] and status["served_models"] == [MODEL]

    with pytest.raises(BackendError) as err:
        backend(fake_openai.base_url, model="llava-hf/other").load(no_progress)
    assert (err.value.code, err.value.status) == ("model_missing", 503)
    assert MODEL in err.value.message and "OPENAI_MODEL" in err.value.message


def test_unserved_model_at_generate_is_model_missing(fake_openai):
    with pytest.raises(BackendError) as err:
        backend(fake_openai.base_url, model="llava-hf/other").generate(request())
    assert (err.value.code, err.value.status) == ("model_missing", 503)
    assert "llava-hf/other" in err.value.message


def test_engine_rejecting_response_format_gets_one_retry_without_it(fake_openai):
    fake_openai.behaviour = "reject_response_format"
    b = backend(fake_openai.base_url)
    tokens: list[str] = []
    assert b.generate(request(json_schema=SCHEMA), tokens.append).text == PROPOSAL_TEXT
    first, second = chat_posts(fake_openai)
    assert "response_format" in first and "response_format" not in second
    assert "".join(tokens) == PROPOSAL_TEXT
    b.generate(request(json_schema=SCHEMA))  # remembered: no second rejected attempt
    assert len(chat_posts(fake_openai)) == 3 and "response_format" not in chat_posts(fake_openai)[-1]


def test_refused_connection_is_engine_unreachable():
    base = f"http://127.0.0.1:{free_port()}/v1"
    b = backend(base)
    for call in (lambda: b.load(no_progress), lambda: b.generate(request(), lambda t: None)):
        with pytest.raises(BackendError) as err:
            call()
        assert (err.value.code, err.value.status) == ("engine_unreachable", 503)
        assert f"Cannot reach OpenAI-compatible server at {base}: is it running?" in err.value.message
    assert b.status()["reachable"] is False and b.is_alive() is False


@pytest.mark.parametrize("streaming", [True, False])
def test_slow_engine_times_out_with_504(fake_openai, streaming):
    fake_openai.behaviour = "slow"
    started = time.monotonic()
    with pytest.raises(BackendError) as err:
        backend(fake_openai.base_url, read_timeout_s=0.4).generate(request(), (lambda t: None) if streaming else None)
    assert (err.value.code, err.value.status) == ("engine_timeout", 504)
    assert time.monotonic() - started < 2.0


def test_stream_that_stalls_mid_answer_times_out(fake_openai):
    fake_openai.behaviour = "stall_mid_stream"
    tokens: list[str] = []
    started = time.monotonic()
    with pytest.raises(BackendError) as err:
        backend(fake_openai.base_url, read_timeout_s=0.4).generate(request(), tokens.append)
    assert err.value.code == "engine_timeout" and time.monotonic() - started < 2.0
    assert tokens == proposal_chunks()[:1]


def test_error_event_mid_stream_raises_with_the_engine_message(fake_openai):
    fake_openai.behaviour = "error_mid_stream"
    tokens: list[str] = []
    with pytest.raises(BackendError) as err:
        backend(fake_openai.base_url).generate(request(), tokens.append)
    assert MID_STREAM_ERROR in err.value.message and err.value.code == "engine_error"
    assert tokens == proposal_chunks()[:2]


def test_server_error_body_message_reaches_the_user(fake_openai):
    fake_openai.behaviour = "error"
    with pytest.raises(BackendError) as err:
        backend(fake_openai.base_url).generate(request())
    assert err.value.status == 503 and "CUDA out of memory" in err.value.message


def test_wrong_base_url_without_v1_is_explained(fake_openai):
    with pytest.raises(BackendError) as err:
        backend(fake_openai.url).load(no_progress)  # missing /v1
    assert err.value.code == "engine_error" and "/v1" in err.value.message


def test_unknown_image_bytes_are_refused_before_any_request(fake_openai):
    with pytest.raises(BackendError) as err:
        backend(fake_openai.base_url).generate(request(images=[b"not an image"]))
    assert (err.value.code, err.value.status) == ("invalid_image", 400)
    assert chat_posts(fake_openai) == []


def test_unload_frees_nothing_remote_and_says_so(fake_openai):
    b = backend(fake_openai.base_url)
    b.load(no_progress)
    b.unload()
    b.unload()
    assert [r.method for r in fake_openai.requests] == ["GET"]  # only load's model listing
    assert "frees nothing locally" in b.status()["note"]

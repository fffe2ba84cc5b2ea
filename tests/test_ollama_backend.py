"""OllamaBackend against a real HTTP server on 127.0.0.1 that speaks Ollama's documented API."""
from __future__ import annotations

import base64
import threading
import time

import pytest

from tests.fake_engines import fake_ollama  # noqa: F401  (pytest fixture)
from tests.fake_engines import (MID_STREAM_ERROR, PROPOSAL_TEXT, BlackholeListener, FakeOllama, FakeOpenAI,
                                free_port, proposal_chunks)
from vlm.backend import BackendError, GenerateRequest, GenerationCancelled
from vlm.ollama import OllamaBackend

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00fake-png-body"
SCHEMA = {"type": "object", "properties": {"summary": {"type": "string"}}, "required": ["summary"]}


def backend(url: str, **kw) -> OllamaBackend:
    kw.setdefault("keep_alive_s", 300.0)
    kw.setdefault("connect_timeout_s", 1.0)
    kw.setdefault("read_timeout_s", 5.0)
    return OllamaBackend(url, kw.pop("model", "llava:latest"), **kw)


def request(**kw) -> GenerateRequest:
    kw.setdefault("system", "You propose CAD parameter changes as JSON.")
    kw.setdefault("prompt", "Make the rover climb better.")
    return GenerateRequest(**kw)


def no_progress(fraction, phase):
    pass


def test_streamed_generation_sends_documented_chat_and_relays_tokens_in_order(fake_ollama):
    b = backend(fake_ollama.url)
    tokens: list[str] = []
    result = b.generate(request(images=[PNG], max_new_tokens=200, temperature=0.0, json_schema=SCHEMA),
                        tokens.append)

    body = fake_ollama.posts("/api/chat")[-1]
    assert body == {
        "model": "llava:latest",
        "messages": [{"role": "system", "content": "You propose CAD parameter changes as JSON."},
                     {"role": "user", "content": "Make the rover climb better.",
                      "images": [base64.b64encode(PNG).decode()]}],
        "stream": True,
        "options": {"temperature": 0.0, "num_predict": 200, "num_ctx": 8192},
        "keep_alive": "300s",
        "format": SCHEMA,
    }
    assert not body["messages"][1]["images"][0].startswith("data:")
    assert tokens == proposal_chunks() and len(tokens) > 1
    assert result.text == PROPOSAL_TEXT
    assert (result.prompt_tokens, result.completion_tokens) == (FakeOllama.prompt_eval_count, len(tokens))
    assert result.timings["engine_eval"] == pytest.approx(1.2)
    assert result.timings["engine_total"] == pytest.approx(1.5)
    assert 0 <= result.timings["first_token"] <= result.timings["generate"]


def test_tokens_reach_the_caller_before_the_stream_ends(fake_ollama):
    # The fake holds the rest of the stream until the first token arrives here (or 3 s pass): a client that
    # buffered the whole answer would take those 3 s.
    fake_ollama.gate = threading.Event()
    fake_ollama.stall_s = 3.0
    started = time.monotonic()
    tokens: list[str] = []

    def on_token(piece):
        tokens.append(piece)
        fake_ollama.gate.set()

    backend(fake_ollama.url).generate(request(), on_token)
    assert time.monotonic() - started < 1.5
    assert "".join(tokens) == PROPOSAL_TEXT


def test_without_on_token_the_answer_is_still_streamed_from_the_engine(fake_ollama):
    result = backend(fake_ollama.url).generate(request(prompt="hi"))
    body = fake_ollama.posts("/api/chat")[-1]
    assert body["stream"] is True and "format" not in body and "images" not in body["messages"][-1]
    assert result.text == PROPOSAL_TEXT and result.completion_tokens is not None


@pytest.mark.parametrize("seconds, expected", [(-1, -1), (-30, -1), (0, 0), (300, "300s"), (2.5, "2.5s")])
def test_keep_alive_is_converted_for_ollama(fake_ollama, seconds, expected):
    backend(fake_ollama.url, keep_alive_s=seconds).generate(request())
    assert fake_ollama.posts("/api/chat")[-1]["keep_alive"] == expected


def test_load_checks_version_and_tags_then_warms_and_unload_frees(fake_ollama):
    b = backend(fake_ollama.url, keep_alive_s=-1)
    phases = []
    b.load(lambda fraction, phase: phases.append(fraction))
    assert [r.path for r in fake_ollama.requests] == ["/api/version", "/api/tags", "/api/show", "/api/chat"]
    assert fake_ollama.posts("/api/chat") == [
        {"model": "llava:latest", "messages": [], "keep_alive": -1, "stream": False}]
    assert phases[0] == 0.0 and phases[-1] == 1.0 and phases == sorted(phases)

    status = b.status()
    assert status["reachable"] and status["present"] and status["loaded"]
    assert status["version"] == FakeOllama.version and status["size_vram"] == FakeOllama.size_vram

    b.unload()
    assert fake_ollama.posts("/api/chat")[-1] == {"model": "llava:latest", "messages": [], "keep_alive": 0,
                                                  "stream": False}
    assert b.status()["loaded"] is False
    b.unload()  # idempotent


def test_keep_alive_zero_skips_the_pointless_warm_up(fake_ollama):
    backend(fake_ollama.url, keep_alive_s=0).load(no_progress)
    assert fake_ollama.posts("/api/chat") == []


def test_untagged_model_name_matches_latest(fake_ollama):
    b = backend(fake_ollama.url, model="llava")
    b.load(no_progress)
    assert b.status()["present"] is True


def test_missing_model_at_load_says_how_to_pull_it(fake_ollama):
    fake_ollama.behaviour = "model_missing"
    with pytest.raises(BackendError) as err:
        backend(fake_ollama.url).load(no_progress)
    assert (err.value.code, err.value.status) == ("model_missing", 503)
    assert "`ollama pull llava:latest`" in err.value.message
    assert fake_ollama.posts("/api/chat") == []  # no attempt to load what is not there


def test_missing_model_at_generate_maps_ollama_404(fake_ollama):
    with pytest.raises(BackendError) as err:
        backend(fake_ollama.url, model="bakllava:7b").generate(request())
    assert (err.value.code, err.value.status) == ("model_missing", 503)
    assert "`ollama pull bakllava:7b`" in err.value.message
    assert backend(fake_ollama.url, model="bakllava:7b").status()["present"] is False


def test_refused_connection_is_engine_unreachable_with_a_hint():
    url = f"http://127.0.0.1:{free_port()}"
    b = backend(url)
    for call in (lambda: b.load(no_progress), lambda: b.generate(request(), lambda t: None)):
        with pytest.raises(BackendError) as err:
            call()
        assert (err.value.code, err.value.status) == ("engine_unreachable", 503)
        assert err.value.message == (f"Cannot reach Ollama at {url}: is it running? "
                                     "Start it with `ollama serve`.")
    status = b.status()
    assert status["reachable"] is False and "Cannot reach Ollama" in status["error"]
    assert b.is_alive() is False
    b.unload()  # nothing to free on an engine that is gone: no error


@pytest.mark.parametrize("streaming", [True, False])
def test_engine_that_answers_nothing_times_out_at_the_read_timeout(fake_ollama, streaming):
    fake_ollama.behaviour = "slow"
    b = backend(fake_ollama.url, read_timeout_s=0.4)
    started = time.monotonic()
    with pytest.raises(BackendError) as err:
        b.generate(request(), (lambda t: None) if streaming else None)
    assert (err.value.code, err.value.status) == ("engine_timeout", 504)
    assert time.monotonic() - started < 2.0


def test_stream_that_stalls_mid_answer_times_out(fake_ollama):
    fake_ollama.behaviour = "stall_mid_stream"
    tokens: list[str] = []
    started = time.monotonic()
    with pytest.raises(BackendError) as err:
        backend(fake_ollama.url, read_timeout_s=0.4).generate(request(), tokens.append)
    assert (err.value.code, err.value.status) == ("engine_timeout", 504)
    assert time.monotonic() - started < 2.0
    assert tokens == proposal_chunks()[:1]


def test_request_time_limit_caps_a_long_read_timeout(fake_ollama):
    fake_ollama.behaviour = "slow"
    started = time.monotonic()
    with pytest.raises(BackendError) as err:
        backend(fake_ollama.url, read_timeout_s=30).generate(request(timeout_s=0.4), lambda t: None)
    assert err.value.code == "engine_timeout"
    assert time.monotonic() - started < 2.0


def test_connect_timeout_is_engine_timeout():
    blackhole = BlackholeListener()
    try:
        if not blackhole.start():
            pytest.skip("this platform accepts connections beyond the listen backlog")
        started = time.monotonic()
        with pytest.raises(BackendError) as err:
            backend(blackhole.url, connect_timeout_s=0.3).load(no_progress)
        assert (err.value.code, err.value.status) == ("engine_timeout", 504)
        assert time.monotonic() - started < 1.5
    finally:
        blackhole.stop()


def test_error_line_mid_stream_raises_with_ollamas_message(fake_ollama):
    fake_ollama.behaviour = "error_mid_stream"
    tokens: list[str] = []
    with pytest.raises(BackendError) as err:
        backend(fake_ollama.url).generate(request(), tokens.append)
    assert MID_STREAM_ERROR in err.value.message and err.value.code == "engine_error"
    assert tokens == proposal_chunks()[:2]


def test_engine_error_body_is_carried_to_the_user(fake_ollama):
    fake_ollama.behaviour = "error"
    with pytest.raises(BackendError) as err:
        backend(fake_ollama.url).generate(request())
    assert err.value.status == 503 and err.value.code == "engine_error"
    assert "llama runner process has terminated" in err.value.message


def test_a_server_that_is_not_ollama_is_named_as_such():
    with FakeOpenAI() as other:
        with pytest.raises(BackendError) as err:
            backend(other.url).load(no_progress)
    assert err.value.code == "engine_error" and "OLLAMA_URL" in err.value.message


def test_cancel_cuts_a_stalled_stream_at_once(fake_ollama):
    fake_ollama.behaviour = "stall_mid_stream"
    b = backend(fake_ollama.url, read_timeout_s=10)
    first = threading.Event()
    outcome: dict = {}

    def run():
        try:
            b.generate(request(), lambda t: first.set())
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            outcome["exc"] = exc

    worker = threading.Thread(target=run)
    worker.start()
    assert first.wait(2)
    started = time.monotonic()
    b.cancel()
    worker.join(3)
    assert not worker.is_alive()
    assert isinstance(outcome.get("exc"), GenerationCancelled)
    assert time.monotonic() - started < 1.0
    fake_ollama.behaviour = "ok"
    assert b.generate(request(), lambda t: None).text == PROPOSAL_TEXT  # the next call is not pre-cancelled


def test_num_ctx_is_configurable(fake_ollama):
    backend(fake_ollama.url, num_ctx=16384).generate(request())
    assert fake_ollama.posts("/api/chat")[-1]["options"]["num_ctx"] == 16384


def test_images_to_a_model_without_vision_are_refused_with_a_clear_reason(fake_ollama):
    fake_ollama.capabilities = ["completion", "tools"]
    b = backend(fake_ollama.url)
    b.load(no_progress)
    assert fake_ollama.posts("/api/show")[-1] == {"model": "llava:latest"}
    with pytest.raises(BackendError) as err:
        b.generate(request(images=[PNG]))
    assert err.value.status == 422 and err.value.code == "model_not_vision"
    assert "cannot see images" in err.value.message and "completion, tools" in err.value.message
    assert not [p for p in fake_ollama.posts("/api/chat") if p.get("messages")], "nothing sent to the engine"
    assert b.generate(request()).text == PROPOSAL_TEXT  # text-only asks still work


def test_a_vision_model_gets_its_images(fake_ollama):
    b = backend(fake_ollama.url)
    b.generate(request(images=[PNG]))
    assert b.capabilities() == ["completion", "vision"]
    assert fake_ollama.posts("/api/chat")[-1]["messages"][-1]["images"]


def test_busy_engine_is_asked_again_honouring_retry_after(fake_ollama):
    fake_ollama.refuse_next = [(503, "0.3"), (429, None)]
    started = time.monotonic()
    result = backend(fake_ollama.url).generate(request())
    waited = time.monotonic() - started
    assert result.text == PROPOSAL_TEXT
    assert 0.3 + 0.5 <= waited < 3.0  # Retry-After 0.3 s, then the first backoff step (0.5 s)


def test_retries_are_bounded_and_end_with_the_engines_error(fake_ollama, monkeypatch):
    import vlm.http_util as http_util

    monkeypatch.setattr(http_util, "BASE_BACKOFF_S", 0.01)
    fake_ollama.refuse_next = [(503, None)] * (http_util.MAX_RETRIES + 1) + [(503, None)]
    with pytest.raises(BackendError) as err:
        backend(fake_ollama.url).generate(request())
    assert err.value.status == 503 and "HTTP 503" in err.value.message
    assert len(fake_ollama.refuse_next) == 1, "one first try plus MAX_RETRIES, no more"


def test_cancel_ends_a_retry_wait_at_once(fake_ollama):
    from vlm.backend import CancelToken

    fake_ollama.refuse_next = [(503, "30")]
    token = CancelToken()
    threading.Timer(0.2, token.set).start()
    started = time.monotonic()
    with pytest.raises(GenerationCancelled):
        backend(fake_ollama.url).generate(request(cancel=token))
    assert time.monotonic() - started < 1.5

"""FinetunedBackend + vlm.worker on the tiny LLaVA-OneVision: real transformers/peft code in a real child process."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import psutil

from vlm.dtype_choice import choose_dtype, cpu_flags
import pytest

from tests.fixtures_vlm import make_png
from vlm.backend import BackendError, GenerateRequest, GenerationCancelled
from vlm.finetuned import FinetunedBackend
from vlm.worker_process import REPO_ROOT
from vlm.tiny import NUM_IMAGE_TOKENS

PROMPT = "Make the wheels bigger."


@pytest.fixture(scope="module")
def loaded(tiny_vlm):
    """One worker with the adapter, shared by this module's tests."""
    backend = FinetunedBackend(tiny_vlm.adapter_dir)
    progress: list[tuple[float, str]] = []
    backend.load(lambda fraction, phase: progress.append((fraction, phase)))
    backend.progress_seen = progress
    yield backend
    backend.unload()


def _request(**kw) -> GenerateRequest:
    return GenerateRequest(system=kw.pop("system", "You are a CAD assistant."), prompt=kw.pop("prompt", PROMPT),
                           max_new_tokens=kw.pop("max_new_tokens", 16), **kw)


def test_load_reports_progress_and_status(loaded, tiny_vlm):
    fractions = [f for f, _ in loaded.progress_seen]
    phases = [p for _, p in loaded.progress_seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert {"reading weights", "building model", "loading adapter"} <= set(phases)
    status = loaded.status()
    assert status["model"] == str(tiny_vlm.base_dir)  # resolved from adapter_config.json
    assert status["adapter"] == str(tiny_vlm.adapter_dir)
    # dtype auto on CPU: float16 only where the CPU runs it natively, and the status says why
    expected, reason = choose_dtype("auto", cuda=False, flags=cpu_flags())
    assert (status["dtype"], status["dtype_reason"]) == (expected, reason) and status["device"] == "cpu"
    assert psutil.pid_exists(status["pid"]) and status["rss_bytes"] > 50_000_000
    assert status["gpu_bytes"] == 0


def test_streamed_tokens_concatenate_to_final_text(loaded):
    tokens: list[str] = []
    result = loaded.generate(_request(max_new_tokens=24), on_token=tokens.append)
    assert len(tokens) > 1, "tokens must arrive one by one, not in a single block"
    assert "".join(tokens) == result.text and result.text
    assert 0 < result.completion_tokens <= 24  # may stop early at <|im_end|>
    assert result.prompt_tokens > 5 and result.timings["generate"] > 0


def test_adapter_changes_greedy_output(loaded, tiny_vlm, finetuned_backend_factory):
    with_adapter = loaded.generate(_request()).text
    assert loaded.generate(_request()).text == with_adapter  # greedy is deterministic
    base_only = finetuned_backend_factory(None, str(tiny_vlm.base_dir))
    base_only.load(lambda f, p: None)
    assert base_only.status()["adapter"] is None
    assert base_only.generate(_request()).text != with_adapter


def test_images_go_through_the_processor(loaded):
    plain = loaded.generate(_request(max_new_tokens=4))
    one = loaded.generate(_request(max_new_tokens=4, images=[make_png()]))
    two = loaded.generate(_request(max_new_tokens=4, images=[make_png(), make_png((0, 0, 255), (120, 60))]))
    # each image expands to at least the base grid's tokens (anyres adds more for larger images)
    assert one.prompt_tokens - plain.prompt_tokens >= NUM_IMAGE_TOKENS
    assert two.prompt_tokens - one.prompt_tokens >= NUM_IMAGE_TOKENS


def test_undecodable_image_is_a_clear_error_and_worker_survives(loaded):
    with pytest.raises(BackendError) as err:
        loaded.generate(_request(images=[b"not an image at all"]))
    assert err.value.code == "bad_image" and "image" in err.value.message
    assert loaded.is_alive() and loaded.generate(_request(max_new_tokens=2)).text is not None


def test_timeout_cancels_promptly_and_worker_stays_usable(loaded):
    pid = loaded.pid
    started = time.monotonic()
    with pytest.raises(BackendError) as err:
        loaded.generate(_request(max_new_tokens=3000, timeout_s=0.5))
    assert err.value.code == "model_timeout" and err.value.status == 504
    assert time.monotonic() - started < 3.0, "the worker must stop generating soon after the cancel"
    assert loaded.pid == pid, "a cancel that was honoured must not restart the worker"
    assert loaded.generate(_request(max_new_tokens=3)).completion_tokens <= 3


def test_cancel_from_another_thread(loaded):
    first_token = threading.Event()

    def on_token(_text):
        first_token.set()

    canceller = threading.Thread(target=lambda: first_token.wait(10) and loaded.cancel())
    canceller.start()
    started = time.monotonic()
    with pytest.raises(GenerationCancelled):
        loaded.generate(_request(max_new_tokens=3000), on_token=on_token)
    canceller.join()
    assert time.monotonic() - started < 5.0
    assert loaded.generate(_request(max_new_tokens=3)).text is not None


def test_corrupt_adapter_is_a_clear_error(tiny_vlm, tmp_path, finetuned_backend_factory):
    adapter = tiny_vlm.copy_adapter(tmp_path / "adapter")
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # truncated download
    backend = finetuned_backend_factory(adapter)
    with pytest.raises(BackendError) as err:
        backend.load(lambda f, p: None)
    assert f"adapter {weights} is corrupt: truncated" in err.value.message
    assert "Traceback" not in err.value.message
    assert backend.pid is None and not backend.is_alive()  # the failed worker was ended


@pytest.mark.parametrize("case, expected", [
    ("missing_adapter", "does not exist"),
    ("bad_adapter_config", "adapter config"),
    ("missing_base", "base model folder"),
])
def test_bad_paths_are_clear_errors(case, expected, tiny_vlm, tmp_path, finetuned_backend_factory):
    if case == "missing_adapter":
        backend = finetuned_backend_factory(tmp_path / "runs" / "nope")
    elif case == "bad_adapter_config":
        adapter = tiny_vlm.copy_adapter(tmp_path / "adapter")
        (adapter / "adapter_config.json").write_text("{not json")
        backend = finetuned_backend_factory(adapter)
    else:
        backend = finetuned_backend_factory(tiny_vlm.adapter_dir, str(tmp_path / "no_such_base"))
    with pytest.raises(BackendError) as err:
        backend.load(lambda f, p: None)
    assert expected in err.value.message and backend.pid is None


def test_worker_stdout_carries_only_protocol_lines():
    proc = subprocess.Popen([sys.executable, "-m", "vlm.worker"], cwd=REPO_ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, _ = proc.communicate('this is not json\n{"op": "status"}\n{"op": "generate", "id": "x"}\n'
                              '{"op": "shutdown"}\n', timeout=60)
    events = [json.loads(line) for line in out.splitlines()]  # any stray print would fail here
    assert events[0]["event"] == "error" and events[0]["code"] == "bad_request"
    assert events[1]["event"] == "status" and events[1]["rss_bytes"] > 0
    assert events[2] == {"event": "error", "id": "x", "message": "no model is loaded", "code": "not_loaded"}
    assert proc.returncode == 0


def test_web_side_modules_do_not_import_torch():
    code = ("import sys, vlm.finetuned, vlm.lifecycle, vlm.voting, web.config; "
            "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_an_untrained_model_answers_in_the_schema_when_constrained(loaded):
    """Decoding constrained to the answer schema (vlm.constrained): even random weights give a proposal that parses
    and names real parameters in range, so a designer can correct it and apply it."""
    import jsonschema

    from cad.registry import ModelRegistry
    from vlm.proposals import parse_model_output
    from vlm.prompts import proposal_json_schema

    schema = ModelRegistry().get("bracket").schema.to_json()
    answer_schema = proposal_json_schema(schema)
    free = loaded.generate(_request(max_new_tokens=200)).text
    with pytest.raises(ValueError):
        json.loads(free)  # random weights, unconstrained: not an answer
    result = loaded.generate(_request(max_new_tokens=400, json_schema=answer_schema))
    answer = json.loads(result.text)
    jsonschema.validate(answer, answer_schema)
    assert result.finish_reason == "stop"
    values = {p["name"]: p["default"] for p in schema}
    parsed = parse_model_output(result.text, schema, values)
    assert parsed.parse_error is None and all(p.valid for p in parsed.proposals), parsed


def test_a_request_cancelled_before_it_starts_never_runs(tiny_vlm):
    proc = subprocess.Popen([sys.executable, "-m", "vlm.worker"], cwd=REPO_ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    load = {"op": "load", "base": str(tiny_vlm.base_dir), "adapter": None, "dtype": "float32", "device_map": None}
    commands = [load, {"op": "cancel", "id": "early"},  # queued behind the load, cancelled before it starts
                {"op": "generate", "id": "early", "system": "s", "prompt": "p", "max_new_tokens": 4},
                {"op": "generate", "id": "later", "system": "s", "prompt": "p", "max_new_tokens": 4}]
    proc.stdin.write("".join(json.dumps(c) + "\n" for c in commands))
    proc.stdin.flush()
    by_id: dict = {}
    try:
        while "later" not in by_id:
            event = json.loads(proc.stdout.readline())
            if event["event"] in ("error", "done"):
                by_id[event.get("id")] = event
    finally:
        proc.communicate('{"op": "shutdown"}\n', timeout=30)
    assert by_id["early"] == {"event": "error", "id": "early", "message": "generation was cancelled",
                              "code": "cancelled"}
    assert by_id["later"]["event"] == "done"


def test_a_seeded_sample_is_repeatable_and_the_seed_matters(loaded):
    """A vote's samples (vlm.voting) carry seeds: the same request and seed give the same answer."""
    texts = {seed: loaded.generate(_request(temperature=1.5, seed=seed, max_new_tokens=12)).text for seed in range(4)}
    assert loaded.generate(_request(temperature=1.5, seed=2, max_new_tokens=12)).text == texts[2]
    assert len(set(texts.values())) > 1, texts

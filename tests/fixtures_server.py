"""The real optim server as a subprocess (`python optim.py`) on 127.0.0.1, for browser and end-to-end tests.

    server = start_live_server({"VLM_BACKEND": "ollama", ...}, data_dir)   # waits for GET /healthz
    server.url, server.api("GET", "/api/params")
    server.stop()                                                           # SIGTERM, then SIGKILL

Fixtures:
  live_server          fine-tuned backend with the tiny LLaVA-OneVision + LoRA (`tiny_vlm`); real worker process
  live_server_scripted Ollama backend pointed at a FakeOllama whose answer is `SCRIPTED_ANSWER` (deterministic
                       proposals, one of them rejected, plus markup that must be shown as text)
  live_server_adapters fine-tuned backend on the tiny model with OPTIM_RUNS_DIR holding the adapters of
                       `make_runs_dir` ("tiny" active, "tiny-alt", "broken"); the model is not preloaded
Each server gets its own temporary OPTIM_DATA_DIR; its log is written to the data dir's parent (`server.log`).
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.fake_engines import FakeOllama, free_port

log = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 60.0

XSS_MARKUP = '<img src=x onerror="window.__xss=1">'
SCRIPTED_ANSWER = json.dumps({
    "summary": f"Bigger wheels and a lower head {XSS_MARKUP}",
    "changes": [
        {"parameter": "wheel_diameter", "value": 120, "reason": f"more ground clearance {XSS_MARKUP}"},
        {"parameter": "pan_tilt_z", "value": 70, "reason": "lower centre of gravity"},
        {"parameter": "chassis_length", "value": 9999, "reason": "far too long on purpose"},
    ],
})


@dataclass
class LiveServer:
    url: str
    port: int
    data_dir: Path
    log_path: Path
    process: subprocess.Popen

    def api(self, method: str, path: str, **kwargs) -> requests.Response:
        return requests.request(method, self.url + path, timeout=kwargs.pop("timeout", 30), **kwargs)

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            log.warning("server pid %s ignored SIGTERM; killing it", self.process.pid)
            self.process.kill()
            self.process.wait(timeout=10)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def start_live_server(env_overrides: dict[str, str], data_dir: Path) -> LiveServer:
    """Start `optim.py` with the given environment on a free port and wait until /healthz answers."""
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir.parent / f"server-{port}.log"
    env = dict(os.environ)
    env.update({"HOST": "127.0.0.1", "PORT": str(port), "OPTIM_DATA_DIR": str(data_dir),
                "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
    env.update(env_overrides)
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen([sys.executable, str(REPO_ROOT / "optim.py")], cwd=REPO_ROOT, env=env,
                                   stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    server = LiveServer(url=f"http://127.0.0.1:{port}", port=port, data_dir=data_dir, log_path=log_path,
                        process=process)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"optim.py exited with {process.returncode}:\n{server.log_text()[-4000:]}")
        try:
            if requests.get(server.url + "/healthz", timeout=1).status_code == 200:
                return server
        except requests.RequestException:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"optim.py did not answer /healthz within {START_TIMEOUT_S} s:\n{server.log_text()[-4000:]}")


# The fine-tuned backend on the tiny model, loaded on demand and kept: fp32 (CPU) and no preload.
TINY_FINETUNED_ENV = {"VLM_BACKEND": "finetuned", "VLM_DTYPE": "float32", "VLM_KEEP_ALIVE": "-1", "PRELOAD_MODEL": "0"}


@pytest.fixture(scope="session")
def live_server(tiny_vlm, tmp_path_factory):
    """The app with the fine-tuned backend on the tiny model; the model loads on demand (not preloaded)."""
    root = tmp_path_factory.mktemp("live_server")
    server = start_live_server({**TINY_FINETUNED_ENV, "FINETUNED_MODEL_PATH": str(tiny_vlm.adapter_dir)}, root / "data")
    yield server
    server.stop()


def make_runs_dir(tiny_vlm, runs: Path) -> Path:
    """A runs/ folder with three adapters for the tiny base: "tiny" (a copy), "tiny-alt" (lora_B negated, so it
    answers differently) and "broken" (garbage weights: listed, but refused when chosen)."""
    from safetensors.numpy import load_file, save_file

    runs.mkdir(parents=True, exist_ok=True)
    tiny_vlm.copy_adapter(runs / "tiny")
    alt = tiny_vlm.copy_adapter(runs / "tiny-alt")
    weights = load_file(alt / "adapter_model.safetensors")
    save_file({k: (-v if "lora_B" in k else v) for k, v in weights.items()}, str(alt / "adapter_model.safetensors"))
    broken = tiny_vlm.copy_adapter(runs / "broken")
    (broken / "adapter_model.safetensors").write_bytes(b"\x00garbage" * 10)
    return runs


@pytest.fixture(scope="session")
def live_server_adapters(tiny_vlm, tmp_path_factory):
    """The fine-tuned backend with a runs/ folder of adapters to switch between (see `make_runs_dir`)."""
    root = tmp_path_factory.mktemp("live_server_adapters")
    runs = make_runs_dir(tiny_vlm, root / "runs")
    server = start_live_server({**TINY_FINETUNED_ENV, "FINETUNED_MODEL_PATH": str(runs / "tiny"),
                                "OPTIM_RUNS_DIR": str(runs)}, root / "data")
    yield server
    server.stop()


@pytest.fixture()
def ollama():
    """A fresh local engine speaking Ollama's API (tests/fake_engines.py) for one test."""
    server = FakeOllama()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def scripted_engine():
    engine = FakeOllama(text=SCRIPTED_ANSWER, chunks=12, delay_s=0.05)
    engine.start()
    yield engine
    engine.stop()


@pytest.fixture(scope="session")
def live_server_scripted(scripted_engine, tmp_path_factory):
    """The app with the Ollama backend against a local engine that always gives SCRIPTED_ANSWER."""
    root = tmp_path_factory.mktemp("live_server_scripted")
    server = start_live_server({
        "VLM_BACKEND": "ollama",
        "OLLAMA_URL": scripted_engine.url,
        "OLLAMA_MODEL": "llava:latest",
        "PRELOAD_MODEL": "0",
        "MAX_UPLOAD_MB": "2",  # a small limit keeps the too-large-photo test light
    }, root / "data")
    yield server
    server.stop()

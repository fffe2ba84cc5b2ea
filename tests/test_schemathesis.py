"""Schemathesis against the generated OpenAPI document (issue 17), on the real server (`python optim.py`, real
HTTP, Ollama backend on a fake engine). `make soak` runs it: every check, bounded examples, a fixed seed.

The document names the default model's parameters (names, types, ranges), so the generated edits are valid and
are applied; the run must end with 0 server errors and 0 schema violations, and the history must show the edits.
Settings that relate to what a request's shape cannot say are in tests/schemathesis.toml; the output and a JUnit
report go to test-artifacts/schemathesis/.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.fake_engines import FakeOllama
from tests.fixtures_server import start_live_server

HERE = Path(__file__).resolve().parent
ARTIFACTS = HERE.parent / "test-artifacts" / "schemathesis"  # the whole output and the JUnit report
EXAMPLES = int(os.environ.get("OPTIM_SCHEMATHESIS_EXAMPLES", "25"))  # per operation
SEED = os.environ.get("OPTIM_SCHEMATHESIS_SEED", "17")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    engine = FakeOllama()
    engine.start()
    live = start_live_server({"VLM_BACKEND": "ollama", "OLLAMA_URL": engine.url, "CAD_WARMUP": "0",
                              "OPTIM_RECORD_DATASET": "0"}, tmp_path_factory.mktemp("schemathesis") / "data")
    yield live
    live.stop()
    engine.stop()


def schemathesis_cli() -> list[str]:
    exe = Path(sys.executable).with_name("schemathesis")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "schemathesis.cli"]


@pytest.mark.soak
def test_schemathesis_finds_no_server_error_and_no_schema_violation(server, tmp_path):
    before = server.api("GET", "/api/history").json()["entries"]
    command = [*schemathesis_cli(), "--config-file", str(HERE / "schemathesis.toml"), "--no-color", "run",
               f"{server.url}/api/openapi.json", "--checks", "all", "--max-examples", str(EXAMPLES), "--seed", SEED,
               "--workers", "1", "--request-timeout", "120", "--report", "junit",
               "--report-dir", str(ARTIFACTS)]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    run = subprocess.run(command, capture_output=True, text=True, timeout=1800, cwd=tmp_path)
    (ARTIFACTS / "output.txt").write_text(run.stdout + run.stderr)
    summary = run.stdout[-12000:] + run.stderr[-3000:]
    assert run.returncode == 0, summary
    assert "Server error" not in run.stdout and "does not conform" not in run.stdout, summary
    entries = server.api("GET", "/api/history").json()["entries"]
    edits = [e for e in entries if e["source"]["kind"] == "user"]
    assert len(entries) > len(before) and edits, "no generated edit was accepted: the document's parameters are wrong"
    assert "Server error" not in server.log_text() and "Traceback" not in server.log_text()


# ------------------------------------------------------------- in make test: a few examples, in-process (< 30 s)
SESSION_OPERATIONS = [("GET", "/api/params"), ("PATCH", "/api/params"), ("PUT", "/api/params/range"),
                      ("DELETE", "/api/params/range"), ("POST", "/api/undo"), ("POST", "/api/redo"),
                      ("POST", "/api/reset"), ("GET", "/api/history"), ("GET", "/api/history/{index}"),
                      ("POST", "/api/history/{index}/restore")]


@pytest.fixture(scope="module")
def session_api(tmp_path_factory):
    """The generated document of a real app (WSGI, no server). The design-session operations change state, and the
    document's parameter names must make their edits valid. (Schemathesis' own pytest plugin does not run under
    pytest 9, so hypothesis drives each operation's strategy here.)"""
    from tests.test_security import make_app

    app = make_app(tmp_path_factory.mktemp("schemathesis-wsgi"))
    config = schemathesis.config.SchemathesisConfig.from_path(HERE / "schemathesis.toml")
    yield app, schemathesis.openapi.from_wsgi("/api/openapi.json", app, config=config)
    app.extensions["optim"].shutdown()


@pytest.mark.parametrize("method, path", SESSION_OPERATIONS)
def test_design_session_operations_conform_to_the_document(session_api, method, path):
    app, schema = session_api
    operation = schema[path][method]

    @given(case=operation.as_strategy())
    @settings(max_examples=12, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def run(case):
        case.call_and_validate()

    run()
    if method == "PATCH":  # some generated edits were valid and applied
        history = app.test_client().get("/api/history").get_json()
        assert any(e["source"]["kind"] == "user" for e in history["entries"]), history

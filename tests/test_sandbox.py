"""The build sandbox (cad.sandbox, cad.worker_pool) against hostile model scripts and target files, through the real
HTTP app and real workers: each is answered with a clear JSON error within its limit while other models keep
rendering, and no answer names a temporary path. Limits are set small through their environment variables."""
from __future__ import annotations

import os
import struct
import threading
import time
from pathlib import Path

import pytest

from cad import worker
from cad.build import Builder
from cad.registry import ModelRegistry
from cad.sandbox import BuildLimitExceeded
from cad.worker import WorkerClient
from web import create_app
from web.config import Config

TIMEOUT_S = 8.0
LIMITS = {"CAD_BUILD_WORKERS": "2", "CAD_BUILD_MEMORY_MB": "2048", "CAD_TARGET_MEMORY_MB": "2048",
          "CAD_BUILD_CPU_S": "30"}
HEADER = '"""Hostile test model"""\nimport cadquery as cq\n\nsize: float = 10.0  # mm, 1..20, Size\n\n\n'
CUBE = "    return cq.Assembly().add(cq.Workplane().box(p.size, p.size, p.size), name='cube')\n"


def hostile_scripts(pid_dir: Path) -> dict[str, str]:
    child = "[sys.executable, '-c', 'import time; time.sleep(600)']"
    return {
        "membomb": "def build(p):\n    data = bytearray(20 << 30)  # 20 GB at once\n" + CUBE,
        "memcreep": "def build(p):\n    chunks = []\n    while True:  # 64 MB at a time, until something stops it\n"
                    "        chunks.append(b'x' * (64 << 20))\n",
        "forker": "import os, time\n\n\ndef build(p):\n    pid = os.fork()\n    if pid == 0:\n"
                  "        time.sleep(600)\n        os._exit(0)\n"
                  f"    open({str(pid_dir / 'forker')!r}, 'w').write(str(pid))\n    while True:\n        time.sleep(0.1)\n",
        "spawner": "import subprocess, sys\n\n\ndef build(p):\n"
                   f"    child = subprocess.Popen({child})\n"
                   f"    open({str(pid_dir / 'spawner')!r}, 'w').write(str(child.pid))\n" + CUBE,
        "spinner": "def build(p):\n    while True:\n        pass\n",
    }


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    base = tmp_path_factory.mktemp("sandbox")
    models, pids = base / "models", base / "pids"
    models.mkdir()
    pids.mkdir()
    for name, body in hostile_scripts(pids).items():
        (models / f"{name}.py").write_text(HEADER + body)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in LIMITS.items():
            patch.setenv(name, value)
        app = create_app(Config(data_dir=base / "data", cad_warmup=False, testing=True, models_dir=models,
                                build_timeout_s=TIMEOUT_S))
    app.pid_dir = pids
    try:
        yield app
    finally:
        app.extensions["optim"].shutdown()


@pytest.fixture(scope="module")
def pool(app):
    """The app's build pool, both workers started and each holding one shipped model (bracket, rover); the
    target-import worker started too."""
    builder = app.extensions["optim"].builder
    results = {}

    def render(name):
        results[name] = app.test_client().get(f"/api/render.png?model={name}&size=64").status_code

    threads = [threading.Thread(target=render, args=(name,)) for name in ("bracket", "rover")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=240)
    assert results == {"bracket": 200, "rover": 200}
    assert len(builder.worker.clients) == 2
    builder.target_worker.call("ping")  # started, so the target tests time reading, not cadquery's import
    return builder.worker


def start_all(pool) -> None:
    """Every worker of the pool running (an earlier test's limit may have ended one)."""
    for client in pool.clients:
        client.call("ping")


def assert_clean(body: dict) -> None:
    text = str(body)
    assert "/tmp" not in text and "Traceback" not in text and str(Path.home()) not in text


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie counts as gone
    except OSError:
        return False


def wait_gone(pid: int, within_s: float = 5.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline and alive(pid):
        time.sleep(0.1)
    return not alive(pid)


@pytest.mark.parametrize("script", ["membomb", "memcreep"])
def test_a_memory_bomb_is_a_422_limit_error_and_its_worker_is_replaced(app, pool, script):
    c = app.test_client()
    before = set(pool.pids)
    started = time.perf_counter()
    r = c.get(f"/api/model.glb?model={script}")
    assert r.status_code == 422, r.get_json()
    body = r.get_json()
    assert body["error"] == "cad_build_limit" and body["limit"] == "memory"
    assert f"{script}.py" in body["message"] and "2048 MB memory limit" in body["message"]
    assert "CAD_BUILD_MEMORY_MB" in body["message"]
    assert_clean(body)
    assert time.perf_counter() - started < TIMEOUT_S  # the limit stopped it, not the timeout
    assert len(set(pool.pids) & before) == len(before) - 1  # its worker is gone, any other kept running
    assert c.get("/api/render.png?model=bracket&size=64&view=front").status_code == 200  # on a fresh worker


def test_an_endless_loop_times_out_while_another_model_keeps_rendering(app, pool):
    answers = {}

    def spin():
        started = time.perf_counter()
        r = app.test_client().get("/api/model.stl?model=spinner")
        answers["spinner"] = (r.status_code, r.get_json(), time.perf_counter() - started)

    start_all(pool)
    thread = threading.Thread(target=spin)
    thread.start()
    time.sleep(1.0)  # the spinner holds one worker
    c = app.test_client()
    for size in (80, 96):  # new renders of bracket, on the other worker
        started = time.perf_counter()
        r = c.get(f"/api/render.png?model=bracket&size={size}&view=top")
        assert r.status_code == 200 and time.perf_counter() - started < TIMEOUT_S
    assert "spinner" not in answers  # both renders were done while the spinner still ran
    thread.join(timeout=60)
    status, body, elapsed = answers["spinner"]
    assert status == 504 and body["error"] == "cad_build_timeout", body
    assert f"timed out after {TIMEOUT_S:g} s" in body["message"] and "spinner.py" in body["message"]
    assert_clean(body)
    assert TIMEOUT_S - 0.5 < elapsed < TIMEOUT_S + 5


def test_a_forked_child_of_a_hanging_script_dies_with_the_timeout(app, pool):
    r = app.test_client().get("/api/model.glb?model=forker")
    assert r.status_code == 504 and r.get_json()["error"] == "cad_build_timeout"
    child = int((app.pid_dir / "forker").read_text())
    assert wait_gone(child), f"the forked child {child} outlived the timeout"


def test_a_process_a_script_leaves_running_is_killed_when_its_job_ends(app, pool):
    c = app.test_client()
    r = c.get("/api/model.stl?model=spawner")
    assert r.status_code == 200 and len(r.data) > 84
    child = int((app.pid_dir / "spawner").read_text())
    assert wait_gone(child), f"the spawned child {child} outlived its job"
    assert c.get("/api/render.png?model=spawner&size=64").status_code == 200  # the worker itself carried on


def identical_triangles_stl(count: int) -> bytes:
    record = struct.pack("<12fH", 0, 0, 1, 0, 0, 0, 10, 0, 0, 0, 10, 0, 0)
    return b"\0" * 80 + struct.pack("<I", count) + record * count


STEP_HEAD = ("ISO-10303-21;\nHEADER;\nFILE_DESCRIPTION(('x'),'2;1');\nFILE_NAME('x','2026',(''),(''),'','','');\n"
             "FILE_SCHEMA(('AUTOMOTIVE_DESIGN'));\nENDSEC;\nDATA;\n")
STEP_TAIL = "ENDSEC;\nEND-ISO-10303-21;\n"
SELF_REFERENCING_STEP = STEP_HEAD + (
    "#1=CARTESIAN_POINT('',(0.,0.,0.));\n#2=VERTEX_POINT('',#1);\n#3=EDGE_CURVE('',#2,#2,#3,.T.);\n"
    "#4=ORIENTED_EDGE('',*,*,#3,.T.);\n#5=EDGE_LOOP('',(#4));\n") + STEP_TAIL
NESTED_STEP = STEP_HEAD + "#1=CARTESIAN_POINT(''," + "(" * 100_000 + "0." + ")" * 100_000 + ");\n" + STEP_TAIL


@pytest.mark.parametrize("data, message", [
    (identical_triangles_stl(340_000), "339999 of the STL file's 340000 triangles are exact duplicates"),
    (SELF_REFERENCING_STEP.encode(), "entity #3 refers to itself"),
    (NESTED_STEP.encode(), "nests parentheses 100001 levels deep"),
], ids=["340k-identical-triangles", "self-referencing-step", "nested-step"])
def test_a_hostile_target_is_invalid_target_and_changes_nothing(app, pool, data, message):
    c = app.test_client()
    build_pids = set(pool.pids)
    started = time.perf_counter()
    r = c.put("/api/target?model=bracket", data=data)
    assert r.status_code == 422, r.get_json()
    body = r.get_json()
    assert body["error"] == "invalid_target" and message in body["message"], body
    assert "script" not in body["message"] and "bracket" not in body["message"]  # not blamed on the model
    assert_clean(body)
    assert time.perf_counter() - started < TIMEOUT_S
    assert c.get("/api/target?model=bracket").status_code == 404  # nothing was stored
    assert set(pool.pids) == build_pids  # read in the target-import process: the build workers were not involved
    assert c.get("/api/render.png?model=bracket&size=64").status_code == 200


def test_cpu_time_past_its_limit_is_a_limit_error_and_the_worker_restarts(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    (models / "spinner.py").write_text(HEADER + hostile_scripts(tmp_path)["spinner"])
    builder = Builder(tmp_path / "cache", timeout_s=60)
    builder.worker = WorkerClient(cpu_s=2)
    try:
        builder.worker.call("ping")
        first = builder.worker.pid
        started = time.perf_counter()
        with pytest.raises(BuildLimitExceeded, match="more than the 2 s CPU-time limit") as error:
            builder.export(ModelRegistry([models]).get("spinner"), {}, "glb")
        assert error.value.limit == "cpu" and time.perf_counter() - started < 30
        box = builder.bounding_box(ModelRegistry().get("bracket"), {})
        assert box["units"] == "mm" and builder.worker.pid not in (None, first)
    finally:
        builder.worker.close()


def test_the_pool_size_and_limits_come_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CAD_BUILD_WORKERS", "3")
    monkeypatch.setenv("CAD_BUILD_MEMORY_MB", "3000")
    monkeypatch.setenv("CAD_TARGET_MEMORY_MB", "1500")
    monkeypatch.setenv("CAD_BUILD_CPU_S", "7")
    builder = Builder(tmp_path)
    assert len(builder.worker.clients) == 3
    assert {(c.memory_mb, c.cpu_s) for c in builder.worker.clients} == {(3000, 7.0)}
    assert (builder.target_worker.memory_mb, builder.target_worker.role) == (1500, "target")
    assert builder.worker is worker.shared_client() and builder.worker.pid is None  # nothing started yet
    monkeypatch.setenv("CAD_BUILD_WORKERS", "nonsense")
    assert len(worker.shared_client().clients) == 2  # the default, with a warning


def test_a_reader_that_crashes_or_hangs_is_the_target_files_fault(tmp_path):
    """What OCC does on some malformed files (segfault, endless loop) costs only the target-import process and is
    a TargetError without the file's path. A FIFO nobody writes to holds the reader inside the job."""
    import signal

    from cad.target import TargetError

    fifo = tmp_path / "target.step"
    os.mkfifo(fifo)
    builder = Builder(tmp_path / "cache", timeout_s=3)
    builder.target_worker = WorkerClient("target")
    try:
        builder.target_worker.call("ping")
        started = time.perf_counter()
        with pytest.raises(TargetError, match="took longer than 3 s") as error:
            builder.target_info(fifo)
        assert str(tmp_path) not in str(error.value) and time.perf_counter() - started < 10
        builder.target_worker.call("ping")
        pid = builder.target_worker.pid
        threading.Timer(1.0, os.kill, (pid, signal.SIGSEGV)).start()
        with pytest.raises(TargetError, match="crashed the CAD kernel's reader") as error:
            builder.target_info(fifo)
        assert str(tmp_path) not in str(error.value) and "script" not in str(error.value)
        assert builder.target_worker.call("ping") not in (None, pid)  # a fresh reader
    finally:
        builder.target_worker.close()


def test_a_job_waiting_for_a_worker_when_shutdown_stops_the_pool_fails_and_starts_no_worker(tmp_path):
    # Shutdown kills the workers; a job queued behind a running one (the optimiser starts states ahead) must
    # fail like the running one, not start a fresh worker once the slot frees.
    from cad.worker import WorkerCrashed
    from cad.worker_pool import WorkerPool

    spinner, cube = tmp_path / "spinner.py", tmp_path / "cube.py"
    spinner.write_text(HEADER + hostile_scripts(tmp_path)["spinner"])
    cube.write_text(HEADER + "def build(p):\n" + CUBE)
    pool, errors = WorkerPool(1), {}

    def run(name, path):
        try:
            pool.call("produce", str(path), {"size": 10.0}, "stl", timeout_s=60, script=str(path))
        except WorkerCrashed as exc:
            errors[name] = str(exc)

    try:
        threads = {name: threading.Thread(target=run, args=(name, path))
                   for name, path in (("running", spinner), ("waiting", cube))}
        threads["running"].start()
        deadline = time.monotonic() + 30
        while pool.pid is None and time.monotonic() < deadline:
            time.sleep(0.05)
        threads["waiting"].start()
        time.sleep(0.5)  # the cube now waits for the spinner's worker
        pool.close()
        for thread in threads.values():
            thread.join(timeout=30)
        assert set(errors) == {"running", "waiting"} and "stopped" in errors["waiting"]
        assert pool.pid is None  # nothing started a new worker
    finally:
        pool.close()

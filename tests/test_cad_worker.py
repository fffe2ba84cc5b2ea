"""The build worker: scripts run in a child process with a timeout; hangs and crashes are reported and survived."""
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cad.build import Builder
from cad.errors import BuildError
from cad.registry import ModelRegistry
from cad.worker import BuildTimeout, WorkerClient, WorkerCrashed

REPO = Path(__file__).resolve().parent.parent
HEADER = '"""Test model"""\nimport cadquery as cq\n\nsize: float = 10.0  # mm, 1..20, Size\n\n\n'


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    scripts = {
        "hang": "def build(p):\n    while True:\n        pass\n",
        "exits": "import os\n\n\ndef build(p):\n    os._exit(3)\n",
        "segfault": "import ctypes\n\n\ndef build(p):\n    return ctypes.string_at(0)\n",
        "chatty": "def build(p):\n    for i in range(20000):\n        print('noise', i)\n"
                  "    return cq.Assembly().add(cq.Workplane().box(p.size, p.size, p.size), name='cube')\n",
    }
    for name, body in scripts.items():
        (folder / f"{name}.py").write_text(HEADER + body)
    return ModelRegistry([folder])


@pytest.fixture()
def private_builder(tmp_path):
    """A Builder with its own worker, so killing it does not disturb other tests; closed afterwards."""
    builder = Builder(tmp_path / "cache", timeout_s=4)
    builder.worker = WorkerClient()
    yield builder
    builder.worker.close()


def test_a_hanging_script_times_out_and_the_next_build_works(models, private_builder):
    rover = ModelRegistry().get("rover")
    private_builder.bounding_box(rover, {})  # the worker is up (its start is not part of the timeout)
    first_pid = private_builder.worker.pid
    started = time.perf_counter()
    with pytest.raises(BuildTimeout, match="timed out after 4 s") as error:
        private_builder.export(models.get("hang"), {}, "glb")
    assert isinstance(error.value, BuildError) and error.value.path.endswith("hang.py")
    assert 3.5 < time.perf_counter() - started < 15
    assert private_builder.worker.pid is None  # killed, not left spinning
    box = private_builder.bounding_box(rover, {"chassis_length": 250})
    assert box["parts"]["chassis"]["size"][0] == pytest.approx(250)
    assert private_builder.worker.pid not in (None, first_pid) and private_builder.worker.restarts == 1


@pytest.mark.parametrize("script, status", [("exits", "3"), ("segfault", str(-signal.SIGSEGV))])
def test_a_crashing_script_is_a_build_error_and_the_worker_restarts(models, private_builder, script, status):
    with pytest.raises(WorkerCrashed, match=f"crashed.*exit status {status}"):
        private_builder.export(models.get(script), {}, "stl")
    assert private_builder.stats()["errors"] == 1 and not any(private_builder.cache_dir.rglob("*.stl"))
    stl = private_builder.export(models.get("chatty"), {"size": 12}, "stl")  # prints to stdout: harmless
    assert len(stl) == 84 + 50 * int.from_bytes(stl[80:84], "little") and len(stl) > 84


def test_glb_png_and_stl_of_one_state_build_once_in_the_worker(tmp_path):
    builder = Builder(tmp_path)
    rover = ModelRegistry().get("rover")
    before = builder.worker.call("stats")["builds"]
    state = {"wheel_diameter": 97, "fork_width": 61}
    builder.export(rover, state, "glb")
    builder.render_png(rover, state, "side", 96)
    builder.export(rover, state, "stl")
    builder.bounding_box(rover, state)
    assert builder.worker.call("stats")["builds"] == before + 1
    assert builder.stats()["misses"] == 4


def test_builder_keeps_cadquery_out_of_the_calling_process(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from cad.build import Builder
        from cad.registry import ModelRegistry
        data = Builder(Path({str(tmp_path)!r})).export(ModelRegistry().get("bracket"), {{}}, "glb")
        assert data[:4] == b"glTF"
        print(sorted({{m.split(".")[0] for m in sys.modules}} & {{"cadquery", "OCP", "vtk"}}))
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_worker_exits_when_its_parent_is_killed(tmp_path, models):
    # The parent starts a worker on a hanging script, reports the worker's pid, then dies abruptly.
    code = textwrap.dedent(f"""
        import sys, threading
        from pathlib import Path
        from cad.build import Builder
        from cad.registry import ModelRegistry
        builder = Builder(Path({str(tmp_path)!r}), timeout_s=600)
        builder.worker.call("ping")
        print(builder.worker.pid, flush=True)
        hang = ModelRegistry([Path({str(models.dirs[1])!r})]).get("hang")
        builder.export(hang, {{}}, "glb")
    """)
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        worker_pid = int(parent.stdout.readline())
        time.sleep(1.0)  # the worker is now inside the endless loop
        parent.kill()
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _alive(worker_pid):
            time.sleep(0.2)
        assert not _alive(worker_pid)
    finally:
        parent.kill()
        parent.stdout.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by init) counts as gone
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_close_stops_a_worker_in_the_middle_of_a_hanging_job(models, tmp_path):
    import threading

    builder = Builder(tmp_path / "cache", timeout_s=60)
    builder.worker = WorkerClient()
    builder.bounding_box(ModelRegistry().get("rover"), {})
    errors = []

    def hang():
        try:
            builder.export(models.get("hang"), {}, "glb")
        except BuildError as exc:
            errors.append(exc)

    thread = threading.Thread(target=hang)
    thread.start()
    time.sleep(1.0)  # the worker is inside the endless loop
    started = time.perf_counter()
    builder.worker.close()  # what server shutdown does: it must not wait the 60 s build timeout
    thread.join(timeout=10)
    assert time.perf_counter() - started < 5 and not thread.is_alive()
    assert builder.worker.pid is None and isinstance(errors[0], WorkerCrashed)

"""The CAD build worker: one long-lived child process (``python -m cad.worker``) that runs model scripts.

Model scripts are the operator's own files, but they can still hang or crash the interpreter (an infinite loop,
``os._exit``, a segfault inside OCC). They therefore never run in the web process: every build, export, render and
target comparison is a job sent to this worker, with a per-job timeout. A job that times out gets the worker
killed and is reported as ``BuildTimeout``; a worker that dies mid-job is reported as ``BuildError``; either way
the next job starts a fresh worker. cadquery is imported in the worker only.

Limits (``cad.sandbox``): every worker runs in its own process group with an address-space limit, core dumps off
and a CPU-time limit per job; a timeout kills the whole group (processes a script started too). A job that runs
out of memory or CPU time is ``BuildLimitExceeded`` and the worker is replaced.

Protocol over the child's stdin/stdout: frames of an 8-byte little-endian length followed by a pickle. Requests are
``(job, args)``; answers are ``("ok", result)`` or ``("error", kind, details)``. Pickles only ever travel between
this process and its own child. The child first sends ``("ready", pid)`` once cadquery is imported, so the job
timeout measures the job, not the interpreter start.
"""
from __future__ import annotations

import atexit
import logging
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

from cad import sandbox
from cad.errors import BuildError, EmptyGeometry, ScriptError
from cad.sandbox import BuildLimitExceeded
from cad.target import TargetError

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 60.0
START_TIMEOUT_S = 180.0  # interpreter start + cadquery import on a busy 2-core machine
_HEADER = struct.Struct("<Q")
_REPO_ROOT = Path(__file__).resolve().parent.parent


class BuildTimeout(BuildError):
    """A job ran past its time limit; the worker was killed."""

    status = 504


class WorkerCrashed(BuildError):
    """The worker process died while running a job (os._exit, segfault, out of memory)."""


# errors that cross the pipe as (path, line, message) and are raised again as themselves
_SCRIPT_ERRORS = {cls.__name__: cls for cls in (BuildError, ScriptError, EmptyGeometry)}


# --- child side ---------------------------------------------------------------------------------------------------

def _jobs() -> dict:
    from cad import build, target

    return {
        "produce": build.produce,
        "clear": build.clear_process_cache,
        "target_info": target.target_info,
        "target_glb": target.target_glb,
        "target_png": target.target_png,
        "compare": target.compare_model,
        "ping": lambda: os.getpid(),
        "stats": lambda: {"pid": os.getpid(), "builds": build.build_count()},
    }


def _error_answer(exc: BaseException) -> tuple:
    if sandbox.out_of_memory(exc):
        return ("limit", "memory", None)  # the parent replaces this worker: the heap may be in a bad state
    if isinstance(exc, (BuildError, ScriptError)):
        return ("error", type(exc).__name__, (exc.path, exc.line, exc.message))
    if isinstance(exc, TargetError):
        return ("error", "TargetError", str(exc))
    if isinstance(exc, ValueError):
        return ("error", "ValueError", str(exc))
    return ("error", "BuildError", ("<worker>", None, f"unexpected error in the build worker: {exc!r}"))


def _watch_parent(parent_pid: int) -> None:
    """Exit when the web process is gone, even while a script hangs (stdin EOF is only seen between jobs)."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent_pid:
            sandbox.kill_own_group()


def serve(memory_mb: int = 0, cpu_s: float = 0.0) -> None:
    sandbox.apply_process_limits(memory_mb)
    protocol_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever a script prints goes to stderr and cannot corrupt the protocol
    sys.stdout = sys.stderr
    protocol_in = os.fdopen(os.dup(0), "rb")
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    import cadquery  # noqa: F401  (imported before "ready" so job timeouts do not include it)

    jobs = _jobs()

    def send(message) -> None:
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        protocol_out.write(_HEADER.pack(len(data)) + data)
        protocol_out.flush()

    me = os.getpid()
    send(("ready", me))
    while True:
        header = protocol_in.read(_HEADER.size)
        if len(header) < _HEADER.size:
            return  # the parent closed the pipe
        job, args, kwargs = pickle.loads(protocol_in.read(_HEADER.unpack(header)[0]))
        sandbox.start_job_cpu_limit(cpu_s)
        try:
            answer = ("ok", jobs[job](*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - every failure becomes an answer; the loop goes on
            answer = _error_answer(exc)
        if os.getpid() != me:
            os._exit(0)  # a copy a script forked came back here: only the worker itself answers
        sandbox.kill_strays()
        send(answer)


# --- parent side --------------------------------------------------------------------------------------------------

class WorkerClient:
    """Runs jobs in one child process, one at a time (thread-safe), restarting it after a timeout, a crash or a
    limit. ``role`` "build" (model scripts) or "target" (target import) picks the memory limit's variable."""

    def __init__(self, role: str = "build", memory_mb: int | None = None, cpu_s: float | None = None):
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self.starts = 0
        self.closes = 0  # times close() stopped it: a job that waited across one must not start a new worker
        self.role = role
        self.memory_mb = sandbox.memory_mb(role) if memory_mb is None else int(memory_mb)
        self.cpu_s = sandbox.cpu_seconds() if cpu_s is None else float(cpu_s)

    @property
    def restarts(self) -> int:
        return max(self.starts - 1, 0)

    @property
    def pid(self) -> int | None:
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    @property
    def busy(self) -> bool:
        return self._lock.locked()

    def call(self, job: str, *args, timeout_s: float = DEFAULT_TIMEOUT_S, script: str = "<worker>",
             waited_since: int | None = None, **kwargs):
        """Run ``job`` in the worker and return its result; raise what the job raised (rebuilt on this side).
        A job that was waiting (for this worker's lock, or for the pool since ``closes`` read ``waited_since``)
        while close() stopped the worker fails with WorkerCrashed instead of starting a new one: shutdown stops
        what is queued too."""
        waited_since = self.closes if waited_since is None else waited_since
        with self._lock:
            if self.closes != waited_since:
                raise WorkerCrashed(script, None, "the build worker was stopped (the server is shutting down) "
                                                  "while this job waited for it")
            process = self._ensure_started()
            try:
                self._send(process, (job, args, kwargs))
                answer = self._receive(process, time.monotonic() + timeout_s)
            except TimeoutError:
                self._kill()
                raise BuildTimeout(script, None, f"model script timed out after {timeout_s:g} s") from None
            except (EOFError, OSError, pickle.UnpicklingError):
                raise self._crash_error(script, self._kill(grace_s=2.0)) from None
            if answer[0] == "limit":
                self._kill()  # a fresh heap for the next job
                raise BuildLimitExceeded(script, None, sandbox.memory_message(self.role, self.memory_mb), "memory")
        if answer[0] == "ok":
            return answer[1]
        kind, details = answer[1], answer[2]
        if kind in _SCRIPT_ERRORS:
            raise _SCRIPT_ERRORS[kind](*details)
        if kind == "TargetError":
            raise TargetError(details)
        raise ValueError(details)

    def close(self) -> None:
        """Stop the worker now, even in the middle of a job (shutdown must not wait for a hanging script): the
        job's caller then gets WorkerCrashed, and so does every job waiting for it."""
        self.closes += 1
        process = self._process
        if process is not None:
            sandbox.kill_group(process.pid)
        if self._lock.acquire(timeout=10):
            try:
                self._kill()
            finally:
                self._lock.release()

    # -- internals (called with the lock held) --
    def _crash_error(self, script: str, code: int | None) -> BuildError:
        if code == -signal.SIGXCPU:
            return BuildLimitExceeded(script, None, sandbox.cpu_message(self.role, self.cpu_s), "cpu")
        if code == -signal.SIGKILL:
            return WorkerCrashed(script, None, "the build worker was killed (SIGKILL, most likely the machine ran "
                                               "out of memory); it has been restarted")
        return WorkerCrashed(script, None, f"the build worker crashed while running the model script "
                                           f"(exit status {code}); it has been restarted")

    def _ensure_started(self) -> subprocess.Popen:
        if self._process is not None and self._process.poll() is None:
            return self._process
        self.starts += 1
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO_ROOT), env.get("PYTHONPATH")) if p)
        # its own session: a timeout kills the whole group, whatever the script started
        process = subprocess.Popen([sys.executable, "-m", "cad.worker", str(self.memory_mb), repr(self.cpu_s)],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=str(_REPO_ROOT), env=env,
                                   start_new_session=True)
        self._process = process
        try:
            ready = self._receive(process, time.monotonic() + START_TIMEOUT_S)
        except (TimeoutError, EOFError, OSError, pickle.UnpicklingError):
            code = self._kill()
            raise WorkerCrashed("<worker>", None, f"the build worker failed to start (exit status {code})") from None
        log.info("CAD %s worker started (pid %s, memory limit %s MB, CPU limit %g s per job)", self.role, ready[1],
                 self.memory_mb or "no", self.cpu_s)
        return process

    @staticmethod
    def _send(process: subprocess.Popen, message) -> None:
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        process.stdin.write(_HEADER.pack(len(data)) + data)
        process.stdin.flush()

    @staticmethod
    def _receive(process: subprocess.Popen, deadline: float):
        header = _read_exact(process.stdout.fileno(), _HEADER.size, deadline)
        return pickle.loads(_read_exact(process.stdout.fileno(), _HEADER.unpack(header)[0], deadline))

    def _kill(self, grace_s: float = 0.0) -> int | None:
        """Kill the worker's process group and reap the worker; ``grace_s`` lets a worker that is already dying
        (its pipe closed) finish, so its own exit status is reported."""
        process, self._process = self._process, None
        if process is None:
            return None
        if grace_s:
            try:
                process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass
        sandbox.kill_group(process.pid)  # the worker and whatever its script started, even after a crash
        try:
            code = process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            code = None
        for stream in (process.stdin, process.stdout):
            try:
                stream.close()
            except OSError:
                pass
        return code


def _read_exact(fd: int, size: int, deadline: float) -> bytes:
    chunks, remaining = [], size
    while remaining:
        wait = deadline - time.monotonic()
        if wait <= 0:
            raise TimeoutError
        ready, _, _ = select.select([fd], [], [], wait)
        if not ready:
            raise TimeoutError
        chunk = os.read(fd, min(remaining, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


_shared: dict = {}  # (role, settings) -> the process-wide WorkerPool ("build") or WorkerClient ("target")
_shared_lock = threading.Lock()


def _settings(role: str) -> tuple:
    from cad.worker_pool import pool_size

    return (role, sandbox.memory_mb(role), sandbox.cpu_seconds(), pool_size() if role == "build" else 1)


def shared_client(role: str = "build"):
    """The process-wide build workers (a ``cad.worker_pool.WorkerPool``, ``CAD_BUILD_WORKERS``) or, for
    ``role="target"``, the one target-import worker (its own process and memory limit, ``CAD_TARGET_MEMORY_MB``).
    One per setting of the limits' variables (read now), so an app made after they changed gets its own."""
    key = _settings(role)
    with _shared_lock:
        if key not in _shared:
            if role == "target":
                client = WorkerClient("target")
            else:
                from cad.worker_pool import WorkerPool

                client = WorkerPool(key[3])
            _shared[key] = client
            atexit.register(client.close)
        return _shared[key]


def clear_worker_cache() -> None:
    """Make running shared workers forget their built shapes (no-op when none runs, e.g. inside the worker)."""
    for key, client in list(_shared.items()):
        if key[0] == "build" and client.pid is not None:
            client.call("clear")


def shutdown() -> None:
    """Stop the shared workers that run (tests and app shutdown); the next job starts new ones."""
    with _shared_lock:
        clients = list(_shared.values())
    for client in clients:
        client.close()


if __name__ == "__main__":
    from cad.worker import serve as _serve  # the canonical module, so exception classes match the parent's

    _serve(int(sys.argv[1]) if len(sys.argv) > 1 else 0, float(sys.argv[2]) if len(sys.argv) > 2 else 0.0)

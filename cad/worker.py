"""The CAD build worker: one long-lived child process (``python -m cad.worker``) that runs model scripts.

Model scripts are the operator's own files, but they can still hang or crash the interpreter (an infinite loop,
``os._exit``, a segfault inside OCC). They therefore never run in the web process: every build, export, render and
target comparison is a job sent to this worker, with a per-job timeout. A job that times out gets the worker
killed and is reported as ``BuildTimeout``; a worker that dies mid-job is reported as ``BuildError``; either way
the next job starts a fresh worker. cadquery is imported in the worker only.

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
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

from cad.errors import BuildError, EmptyGeometry, ScriptError
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
            os._exit(0)


def serve() -> None:
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

    send(("ready", os.getpid()))
    while True:
        header = protocol_in.read(_HEADER.size)
        if len(header) < _HEADER.size:
            return  # the parent closed the pipe
        job, args, kwargs = pickle.loads(protocol_in.read(_HEADER.unpack(header)[0]))
        try:
            answer = ("ok", jobs[job](*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - every failure becomes an answer; the loop goes on
            answer = _error_answer(exc)
        send(answer)


# --- parent side --------------------------------------------------------------------------------------------------

class WorkerClient:
    """Runs jobs in one child process, one at a time (thread-safe), restarting it after a timeout or a crash."""

    def __init__(self):
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self.starts = 0

    @property
    def restarts(self) -> int:
        return max(self.starts - 1, 0)

    @property
    def pid(self) -> int | None:
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def call(self, job: str, *args, timeout_s: float = DEFAULT_TIMEOUT_S, script: str = "<worker>", **kwargs):
        """Run ``job`` in the worker and return its result; raise what the job raised (rebuilt on this side)."""
        with self._lock:
            process = self._ensure_started()
            try:
                self._send(process, (job, args, kwargs))
                answer = self._receive(process, time.monotonic() + timeout_s)
            except TimeoutError:
                self._kill()
                raise BuildTimeout(script, None, f"model script timed out after {timeout_s:g} s") from None
            except (EOFError, OSError, pickle.UnpicklingError):
                code = self._kill()
                raise WorkerCrashed(script, None, f"the build worker crashed while running the model script "
                                                  f"(exit status {code}); it has been restarted") from None
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
        job's caller then gets WorkerCrashed."""
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()
        if self._lock.acquire(timeout=10):
            try:
                self._kill()
            finally:
                self._lock.release()

    # -- internals (called with the lock held) --
    def _ensure_started(self) -> subprocess.Popen:
        if self._process is not None and self._process.poll() is None:
            return self._process
        self.starts += 1
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO_ROOT), env.get("PYTHONPATH")) if p)
        process = subprocess.Popen([sys.executable, "-m", "cad.worker"], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, cwd=str(_REPO_ROOT), env=env)
        self._process = process
        try:
            ready = self._receive(process, time.monotonic() + START_TIMEOUT_S)
        except (TimeoutError, EOFError, OSError, pickle.UnpicklingError):
            code = self._kill()
            raise WorkerCrashed("<worker>", None, f"the build worker failed to start (exit status {code})") from None
        log.info("CAD build worker started (pid %s)", ready[1])
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

    def _kill(self) -> int | None:
        process, self._process = self._process, None
        if process is None:
            return None
        if process.poll() is None:
            process.kill()
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


_shared: WorkerClient | None = None
_shared_lock = threading.Lock()


def shared_client() -> WorkerClient:
    """The process-wide worker (one pool of one for every Builder in this process)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = WorkerClient()
            atexit.register(_shared.close)
        return _shared


def clear_worker_cache() -> None:
    """Make a running shared worker forget its built shapes (no-op when none runs, e.g. inside the worker)."""
    client = _shared
    if client is not None and client.pid is not None:
        client.call("clear")


def shutdown() -> None:
    """Stop the shared worker if it runs (tests and app shutdown); the next job starts a new one."""
    with _shared_lock:
        client = _shared
    if client is not None:
        client.close()


if __name__ == "__main__":
    from cad.worker import serve as _serve  # the canonical module, so exception classes match the parent's

    _serve()

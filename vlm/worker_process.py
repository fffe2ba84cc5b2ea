"""One model worker child process (`python -m vlm.worker`) seen from the parent: starting it, writing its commands,
reading its events, and ending it. What the commands mean (load, generate, set_adapter) is `vlm.finetuned`'s.

Commands go out as JSON lines on its stdin. Its protocol events come back on `events`, status replies on
`status_replies` (so a status ask never takes a generation's event), and an EXIT event once it has ended. Its stderr
goes to the debug log, the last lines kept for error messages. No torch here: the web process stays light.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import queue
import subprocess
import threading
from pathlib import Path

from .backend import BackendError

log = logging.getLogger("vlm.finetuned")  # the backend's log: one place to follow a worker's life

REPO_ROOT = Path(__file__).resolve().parent.parent
EXIT = "__exit__"  # the event put after the process has ended: {"event": EXIT, "code": <exit code>}


def exit_message(code: int | None) -> str:
    return f"the model worker exited unexpectedly (exit code {code})"


class WorkerProcess:
    def __init__(self, python: str, env: dict):
        env = {**os.environ, **env}
        env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO_ROOT), env.get("PYTHONPATH", "")] if p)
        env.setdefault("PYTHONUNBUFFERED", "1")
        self.proc = subprocess.Popen(
            [python, "-m", "vlm.worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, cwd=str(REPO_ROOT), env=env, text=True, encoding="utf-8", bufsize=1)
        self.pid = self.proc.pid
        self.events: queue.Queue = queue.Queue()
        self.status_replies: queue.Queue = queue.Queue()
        self.prewarmed = threading.Event()  # set when the worker reports "prewarmed"
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=40)
        self._write_lock = threading.Lock()
        threading.Thread(target=self._read_events, daemon=True, name=f"vlm-worker-{self.pid}-out").start()
        threading.Thread(target=self._read_stderr, daemon=True, name=f"vlm-worker-{self.pid}-err").start()
        log.info("started model worker pid %s", self.pid)

    def running(self) -> bool:
        return self.proc.poll() is None

    def _read_events(self) -> None:
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                log.warning("model worker wrote a non-protocol line: %r", line[:200])
                continue
            if event.get("event") == "prewarmed":
                self.prewarmed.set()  # and on to the events queue: a load waiting for it takes it from there
            (self.status_replies if event.get("event") == "status" else self.events).put(event)
        code = self.proc.wait()
        self.events.put({"event": EXIT, "code": code})

    def _read_stderr(self) -> None:
        for line in self.proc.stderr:
            line = line.rstrip()
            self.stderr_tail.append(line)
            log.debug("worker %s: %s", self.pid, line)

    def send(self, **msg) -> None:
        """Write one command; a worker that has ended (or whose pipe broke) is a BackendError model_crashed."""
        if not self.running():
            raise BackendError(exit_message(self.proc.poll()), code="model_crashed")
        try:
            with self._write_lock:
                self.proc.stdin.write(json.dumps(msg) + "\n")
                self.proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            raise BackendError(exit_message(self.proc.poll()), code="model_crashed") from None

    def last_stderr(self, lines: int = 3) -> str:
        return " | ".join(list(self.stderr_tail)[-lines:])

    def shutdown(self, grace_s: float) -> None:
        """Ask the worker to exit and wait up to grace_s for it; the caller kills one that ignored it."""
        if not self.running():
            return
        try:
            with self._write_lock:
                self.proc.stdin.write(json.dumps({"op": "shutdown"}) + "\n")
                self.proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            log.warning("model worker pid %s ignored shutdown; killing it", self.pid)

    def kill(self) -> None:
        """End the process now (if it has not ended) and close its pipes."""
        if self.running():
            self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - a kill that does not land
            log.error("model worker pid %s did not die", self.pid)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                stream.close()
            except OSError:
                pass

    def rss_bytes(self) -> int | None:
        try:
            import psutil

            return psutil.Process(self.pid).memory_info().rss
        except Exception:  # noqa: BLE001 - the process may have just ended
            return None

    def ask_status(self, timeout_s: float = 0.5) -> dict | None:
        """The worker's own status reply (gpu_bytes, rss_bytes, busy), or None when it does not answer in time."""
        try:
            while not self.status_replies.empty():  # stale answers to an earlier ask
                self.status_replies.get_nowait()
            self.send(op="status")
            return self.status_replies.get(timeout=timeout_s)
        except (BackendError, queue.Empty):
            return None

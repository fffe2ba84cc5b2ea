"""Training started from the API: one `python -m vlm.train` child process at a time, its progress, its cancel.

The web process never imports torch: it starts the child (its own process group, so a cancel stops everything
the child started), reads the progress file the child writes atomically (`vlm.train --progress-file`) and polls
the exit status. The adapter lands in runs/NAME like one trained on the command line, so the adapter picker lists
it (with its training summary) and POST /api/vlm/adapter switches to it.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
PROGRESS_FILE = "progress.json"
LOG_FILE = "train.log"
LOG_TAIL_CHARS = 1500  # of the child's log, in a failed job's error
STOP_GRACE_S = 5.0  # a cancelled child gets this long after SIGTERM before SIGKILL


class TrainingRefused(Exception):
    """A training request that cannot start: HTTP status, error code and a human message."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _tail(path: Path, chars: int = LOG_TAIL_CHARS) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - chars))
            return fh.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


class TrainingJobs:
    """At most one training child; `status()` is cheap (a file read and a poll) and never blocks."""

    def __init__(self, runs_dir: Path, dataset_dir: Path, python: str = sys.executable):
        self.runs_dir, self.dataset_dir, self.python = Path(runs_dir), Path(dataset_dir), python
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._job: dict | None = None

    def command(self, out: Path, base: str, max_steps: int, epochs: float) -> list[str]:
        cmd = [self.python, "-m", "vlm.train", "--data", str(self.dataset_dir), "--base", base, "--out", str(out),
               "--progress-file", str(out / PROGRESS_FILE), "--no-progress", "--overwrite"]
        if max_steps:
            cmd += ["--max-steps", str(max_steps)]
        if epochs:
            cmd += ["--epochs", str(epochs)]
        return cmd

    def start(self, name: str, base: str, *, examples: int, max_steps: int = 0, epochs: float = 0.0) -> dict:
        """Start training runs/NAME on the dataset; raises TrainingRefused when it cannot."""
        out = self.runs_dir / name
        with self._lock:
            if self._running():
                raise TrainingRefused(409, "training_running", f"adapter {self._job['name']!r} is still training; "
                                      "wait for it or cancel it (DELETE /api/vlm/train)")
            if (out / "adapter_config.json").exists():
                raise TrainingRefused(409, "adapter_exists", f"runs/{name} already holds an adapter: choose another "
                                      "name (an adapter is never overwritten from the API)")
            if examples < 1:
                raise TrainingRefused(422, "no_training_examples", "the dataset has no training examples yet: apply "
                                      "or correct some proposals first, or generate data with python -m vlm.synth")
            out.mkdir(parents=True, exist_ok=True)
            (out / PROGRESS_FILE).unlink(missing_ok=True)
            env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
            with open(out / LOG_FILE, "wb") as log_file:
                self._proc = subprocess.Popen(self.command(out, base, max_steps, epochs), cwd=str(REPO_ROOT),
                                              stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                              env=env, start_new_session=True)
            self._job = {"name": name, "base": base, "examples": examples, "pid": self._proc.pid,
                         "started": time.time(), "cancelled": False}
            log.info("training %s started (pid %d, %d examples, base %s)", name, self._proc.pid, examples, base)
            return self._describe()

    def status(self) -> dict | None:
        with self._lock:
            return self._describe() if self._job else None

    def cancel(self) -> dict | None:
        """Stop the running child (its whole process group); None when nothing runs."""
        with self._lock:
            if not self._running():
                return None
            self._job["cancelled"] = True
            proc = self._proc
        _stop_group(proc)
        with self._lock:
            return self._describe()

    def shutdown(self) -> None:
        if self._running():
            _stop_group(self._proc)

    def _running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _describe(self) -> dict:
        job, proc = self._job, self._proc
        out = self.runs_dir / job["name"]
        progress = _read_json(out / PROGRESS_FILE)
        code = proc.poll() if proc is not None else None
        if code is None:
            state = "running"
        elif job["cancelled"]:
            state = "cancelled"
        elif code == 0 and (out / "adapter_config.json").is_file():
            state = "finished"
        else:
            state = "failed"
        elapsed = time.time() - job["started"]
        answer = {"name": job["name"], "state": state, "base": job["base"], "examples": job["examples"],
                  "pid": job["pid"],
                  "phase": progress.get("phase", "starting") if state == "running" else state,
                  "step": progress.get("step", 0), "total_steps": progress.get("total_steps"),
                  "loss": progress.get("loss"), "eta_s": progress.get("eta_s") if state == "running" else 0.0,
                  "elapsed_s": round(elapsed, 1), "best": progress.get("best"), "exit_code": code}
        if state == "failed":
            answer["error"] = "training stopped with exit code %s; the end of its log:\n%s" % (
                code, _tail(out / LOG_FILE))
        return answer


def _stop_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass

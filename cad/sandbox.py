"""Resource limits of the CAD worker processes (``cad.worker``): memory, CPU time, and the process group.

Each worker child runs in its own session (process group) and sets its own limits before importing cadquery:

- memory: ``RLIMIT_AS`` (address space), ``CAD_BUILD_MEMORY_MB`` for build workers (default 6144: cadquery,
  OCC and VTK map about 1-3 GB before building anything), ``CAD_TARGET_MEMORY_MB`` for the target-import worker
  (default 4096). An allocation past it fails (Python's MemoryError, OCC's Standard_OutOfMemory); the job is
  answered with ``BuildLimitExceeded`` and the worker is replaced. Both soft and hard limits are set, so a script
  cannot raise them again. 0 turns the limit off.
- CPU time: ``RLIMIT_CPU`` per job, ``CAD_BUILD_CPU_S`` seconds (default 120; threads count together). The soft
  limit is moved to "used so far + limit" before each job; past it the kernel stops the worker with SIGXCPU.
- wall time: the caller's timeout (``CAD_BUILD_TIMEOUT``); past it the whole process group is killed with SIGKILL,
  so processes a script forked or spawned go with it.
- processes a script started and left running when its job ends are killed (``kill_strays``), and a forked copy
  of the worker that returns into the job loop exits at once.
- core dumps are off (``RLIMIT_CORE`` 0): a crashing OCC must not write gigabytes of core files.

A grandchild that starts its own session (``setsid``) leaves the group and is not reached; only a cgroup would.
"""
from __future__ import annotations

import logging
import math
import os
import resource
import signal

from cad.errors import BuildError

log = logging.getLogger(__name__)

DEFAULT_BUILD_MEMORY_MB = 6144
DEFAULT_TARGET_MEMORY_MB = 4096
DEFAULT_CPU_S = 120.0


class BuildLimitExceeded(BuildError):
    """A job went past a resource limit (``limit``: "memory" or "cpu"); its worker was replaced."""

    status = 422

    def __init__(self, path: str, line: int | None, message: str, limit: str = "memory"):
        super().__init__(path, line, message)
        self.limit = limit


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        log.warning("%s=%r is not a number; using %g", name, raw, default)
        return default
    return max(value, 0.0)


def memory_mb(role: str = "build") -> int:
    """The address-space limit in MB for a worker of ``role`` ("build" or "target"); 0 means none."""
    if role == "target":
        return int(_env_number("CAD_TARGET_MEMORY_MB", DEFAULT_TARGET_MEMORY_MB))
    return int(_env_number("CAD_BUILD_MEMORY_MB", DEFAULT_BUILD_MEMORY_MB))


def cpu_seconds() -> float:
    """CPU seconds one job may use (``CAD_BUILD_CPU_S``); 0 means no limit."""
    return _env_number("CAD_BUILD_CPU_S", DEFAULT_CPU_S)


def memory_env_name(role: str) -> str:
    return "CAD_TARGET_MEMORY_MB" if role == "target" else "CAD_BUILD_MEMORY_MB"


# --- child side ---------------------------------------------------------------------------------------------------

def apply_process_limits(memory_limit_mb: int) -> None:
    """Called by the worker child on start, before cadquery is imported."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if memory_limit_mb > 0:
        limit = memory_limit_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def start_job_cpu_limit(seconds: float) -> None:
    """Allow the next job ``seconds`` of CPU time on top of what this process has used so far."""
    if seconds <= 0:
        return
    usage = resource.getrusage(resource.RUSAGE_SELF)
    soft = int(math.ceil(usage.ru_utime + usage.ru_stime + seconds))
    resource.setrlimit(resource.RLIMIT_CPU, (soft, resource.RLIM_INFINITY))


def out_of_memory(exc: BaseException | None) -> bool:
    """Whether ``exc`` or an exception it was raised from (``raise ... from None`` keeps ``__context__``) is an
    allocation failure: Python's MemoryError or OCC's Standard_OutOfMemory."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, MemoryError) or "OutOfMemory" in type(exc).__name__ or "Standard_OutOfMemory" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def kill_strays() -> int:
    """SIGKILL every other process of this worker's group (whatever a finished job's script left running) and reap
    those that are this process's children; returns how many were killed. Called after every job."""
    me, group = os.getpid(), os.getpgid(0)
    killed = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()  # state, ppid, pgrp, ...
        except (OSError, IndexError):
            continue  # gone meanwhile
        if int(fields[2]) == group:
            try:
                os.kill(int(entry), signal.SIGKILL)
                killed.append(int(entry))
            except (ProcessLookupError, PermissionError):
                pass
    for pid in killed:
        try:
            os.waitpid(pid, 0)  # SIGKILL cannot be caught: this returns at once for a child of ours
        except ChildProcessError:
            pass  # a grandchild: its own parent (killed too) leaves it to init
    if killed:
        log.warning("killed %d process(es) a model script left running", len(killed))
    return len(killed)


def kill_own_group() -> None:
    """The worker's last act when its parent is gone: take every process a script started with it."""
    try:
        os.killpg(os.getpgid(0), signal.SIGKILL)
    finally:
        os._exit(0)


# --- parent side --------------------------------------------------------------------------------------------------

def kill_group(pid: int) -> None:
    """SIGKILL the process group led by ``pid`` (a worker started with start_new_session); quiet when gone."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def memory_message(role: str, limit_mb: int) -> str:
    what = "the target file needed" if role == "target" else "the model script needed"
    return (f"{what} more than the {limit_mb} MB memory limit and was stopped; the worker was restarted "
            f"(raise {memory_env_name(role)} if this is expected)")


def cpu_message(role: str, seconds: float) -> str:
    what = "reading the target file" if role == "target" else "the model script"
    return (f"{what} used more than the {seconds:g} s CPU-time limit and was stopped; the worker was restarted "
            f"(raise CAD_BUILD_CPU_S if this is expected)")

"""The design session: current parameters of one CAD model, undo/redo history, atomic persistence.

One JSON file per model under the data dir. Every state has a version; a write that carries a stale
version is refused (409) so two browser tabs never silently overwrite each other. A change is only
committed in memory after it has been written to disk, so a failed write (disk full, read-only dir)
leaves both the file and the running state as they were.
"""
from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field, asdict
from pathlib import Path
from typing import Any

from .errors import ParameterError

log = logging.getLogger(__name__)

MAX_HISTORY = 500
FILE_FORMAT = 1


class SessionError(Exception):
    status = 409
    code = "session_error"

    def __init__(self, message: str, **extra: Any):
        super().__init__(message)
        self.message = message
        self.extra = extra


class VersionConflict(SessionError):
    code = "version_conflict"


class NothingToUndo(SessionError):
    code = "nothing_to_undo"


class NothingToRedo(SessionError):
    code = "nothing_to_redo"


class PersistError(SessionError):
    status = 503
    code = "session_not_saved"


@dataclass
class HistoryEntry:
    id: str
    source: dict
    summary: str
    changes: dict  # name -> {"from": old, "to": new}
    timestamp: float

    def to_json(self, index: int) -> dict:
        return {"index": index, **asdict(self)}


@dataclass
class _State:
    version: int
    values: dict
    entries: list[HistoryEntry] = field(default_factory=list)
    position: int = -1  # index of the entry the values correspond to; -1 = no entry applied


def atomic_write_json(path: Path, data: dict) -> None:
    """Write JSON so that the file is either the old or the new content, never half of each."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def _describe(changes: dict) -> str:
    parts = [f"{name} {c['from']} → {c['to']}" for name, c in changes.items()]
    text = ", ".join(parts[:4])
    return text + (f" (+{len(parts) - 4} more)" if len(parts) > 4 else "")


class DesignSession:
    """Parameters and history of one model. Thread-safe; every public method is one atomic step."""

    def __init__(self, model_name: str, schema, path: Path):
        self.model_name = model_name
        self.schema = schema
        self.path = Path(path)
        self._lock = threading.RLock()
        self._state = self._load()

    # -- persistence -------------------------------------------------------------------------
    def _load(self) -> _State:
        defaults = self.schema.defaults()
        if not self.path.exists():
            return _State(version=0, values=dict(defaults))
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            entries = [HistoryEntry(**{k: e[k] for k in ("id", "source", "summary", "changes", "timestamp")})
                       for e in raw.get("entries", [])]
            state = _State(version=int(raw["version"]), values=self._reconcile(raw.get("values", {})),
                           entries=entries, position=int(raw.get("position", len(entries) - 1)))
            state.position = max(-1, min(state.position, len(entries) - 1))
            return state
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # Keep the unreadable file for inspection rather than overwriting it on the next save.
            backup = self.path.with_suffix(f".corrupt-{int(time.time())}.json")
            log.error("session file %s is unreadable (%s); starting from defaults, kept it as %s", self.path, exc, backup)
            try:
                os.replace(self.path, backup)
            except OSError:
                pass
            return _State(version=0, values=dict(defaults))

    def _reconcile(self, stored: dict) -> dict:
        """Values restored from disk, adapted to the current schema (the model script may have changed)."""
        values = dict(self.schema.defaults())
        for name, value in stored.items():
            try:
                values.update(self.schema.validate({name: value}))
            except ParameterError:
                log.warning("%s: dropping stored value %s=%r that the current schema rejects", self.model_name, name, value)
        return values

    def _save(self, state: _State) -> None:
        data = {"format": FILE_FORMAT, "model": self.model_name, "version": state.version, "values": state.values,
                "position": state.position, "entries": [asdict(e) for e in state.entries]}
        try:
            atomic_write_json(self.path, data)
        except OSError as exc:
            raise PersistError(f"could not save the design session ({exc.strerror or exc}); nothing was changed") from exc

    def _commit(self, new: _State) -> None:
        self._save(new)
        self._state = new

    # -- reading -----------------------------------------------------------------------------
    @property
    def lock(self) -> threading.RLock:
        """Hold it to read a snapshot that matches the change just made (no other write in between)."""
        return self._lock

    @property
    def version(self) -> int:
        return self._state.version

    @property
    def values(self) -> dict:
        return dict(self._state.values)

    def snapshot(self) -> dict:
        with self._lock:
            s = self._state
            return {"model": self.model_name, "version": s.version, "values": dict(s.values),
                    "can_undo": s.position >= 0, "can_redo": s.position < len(s.entries) - 1}

    def history(self) -> dict:
        with self._lock:
            s = self._state
            return {"model": self.model_name, "version": s.version, "position": s.position,
                    "can_undo": s.position >= 0, "can_redo": s.position < len(s.entries) - 1,
                    "entries": [e.to_json(i) for i, e in enumerate(s.entries)]}

    # -- writing -----------------------------------------------------------------------------
    def _check_version(self, expected: int | None) -> None:
        if expected is not None and expected != self._state.version:
            raise VersionConflict(
                f"the design changed since you loaded it (your version {expected}, current {self._state.version}); "
                "reload to see the latest state", current_version=self._state.version)

    def apply(self, changes: dict, *, source: dict, expected_version: int | None = None,
              summary: str | None = None) -> HistoryEntry | None:
        """Apply a validated change set as one history entry. Returns None when nothing actually changes."""
        with self._lock:
            clean = self.schema.validate(changes)
            self._check_version(expected_version)
            s = self._state
            diff = {n: {"from": s.values.get(n), "to": v} for n, v in clean.items() if not _same(s.values.get(n), v)}
            if not diff:
                return None
            entry = HistoryEntry(id=uuid.uuid4().hex[:12], source=dict(source), summary=summary or _describe(diff),
                                 changes=diff, timestamp=time.time())
            entries = s.entries[: s.position + 1] + [entry]  # a new change drops the redo branch
            position = len(entries) - 1
            if len(entries) > MAX_HISTORY:
                drop = len(entries) - MAX_HISTORY
                entries, position = entries[drop:], position - drop
            values = {**s.values, **{n: c["to"] for n, c in diff.items()}}
            self._commit(_State(version=s.version + 1, values=values, entries=entries, position=position))
            return entry

    def undo(self, expected_version: int | None = None) -> HistoryEntry:
        with self._lock:
            self._check_version(expected_version)
            s = self._state
            if s.position < 0:
                raise NothingToUndo("there is nothing to undo")
            entry = s.entries[s.position]
            values = {**s.values, **{n: c["from"] for n, c in entry.changes.items()}}
            self._commit(_State(s.version + 1, self._reconcile(values), list(s.entries), s.position - 1))
            return entry

    def redo(self, expected_version: int | None = None) -> HistoryEntry:
        with self._lock:
            self._check_version(expected_version)
            s = self._state
            if s.position >= len(s.entries) - 1:
                raise NothingToRedo("there is nothing to redo")
            entry = s.entries[s.position + 1]
            values = {**s.values, **{n: c["to"] for n, c in entry.changes.items()}}
            self._commit(_State(s.version + 1, self._reconcile(values), list(s.entries), s.position + 1))
            return entry

    def reset(self, expected_version: int | None = None) -> HistoryEntry | None:
        """Back to the defaults, as an undoable entry."""
        return self.apply(self.schema.defaults(), source={"kind": "reset"}, expected_version=expected_version,
                          summary="reset to defaults")


def _same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            return math.isclose(float(a), float(b), rel_tol=0, abs_tol=1e-12)
        except (TypeError, ValueError):
            return False
    return a == b


class SessionStore:
    """One DesignSession per model, created on first use."""

    def __init__(self, data_dir: Path, registry):
        self.dir = Path(data_dir) / "sessions"
        self.registry = registry
        self._sessions: dict[str, DesignSession] = {}
        self._lock = threading.Lock()

    def get(self, model_name: str) -> DesignSession:
        with self._lock:
            session = self._sessions.get(model_name)
            if session is None:
                model = self.registry.get(model_name)  # raises UnknownModel
                session = DesignSession(model.name, model.schema, self.dir / f"{model.name}.json")
                self._sessions[model_name] = session
            return session

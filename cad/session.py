"""The design session: current parameters of one CAD model, undo/redo history, durable persistence.

All sessions live in one SQLite database, `<data dir>/sessions/sessions.sqlite3` (WAL journal,
`synchronous=FULL`): a `sessions` row per model holds its version, current values and which history entry
they correspond to, and `entries` holds one row per history entry. An edit, undo or redo is one small
transaction (insert one entry, drop the redo branch or the oldest entry past MAX_HISTORY, update the
session row), so its cost does not grow with the length of the history, and a transaction that committed
survives a SIGKILL or a power cut. Every state has a version; a write that carries a stale version is refused
(409) so two browser tabs never silently overwrite each other. A change is only committed in memory after
its transaction has committed, so a failed write (disk full, read-only dir) leaves both the database and the
running state as they were.

Sessions of earlier releases (one JSON file per model in the same folder) are imported on first start and
the files renamed to `<model>.json.migrated`.
"""
from __future__ import annotations

import logging
import math
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from .errors import ParameterError
from .session_db import (DB_NAME, HistoryEntry, SessionDB, StoredSession, migrate_json_session, put_entry,
                         put_range, put_state, read_json_session)

log = logging.getLogger(__name__)

MAX_HISTORY = 500


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


class NoSuchEntry(SessionError):
    status = 404
    code = "no_such_entry"


class PersistError(SessionError):
    status = 503
    code = "session_not_saved"


def _describe(changes: dict) -> str:
    parts = [f"{name} {c['from']} → {c['to']}" for name, c in changes.items()]
    text = ", ".join(parts[:4])
    return text + (f" (+{len(parts) - 4} more)" if len(parts) > 4 else "")



# ------------------------------------------------------------------------------------------------ session
class DesignSession:
    """Parameters and history of one model. Thread-safe; every public method is one atomic step."""

    def __init__(self, model_name: str, schema, db: SessionDB, *, fallback: StoredSession | None = None,
                 read_only_reason: str | None = None):
        self.model_name = model_name
        self.base_schema = schema  # the script's schema; ``schema`` has this session's narrowed ranges
        self.db = db
        self._lock = threading.RLock()
        self._read_only = read_only_reason
        self._ranges = self._load_ranges()
        self.schema = schema.with_ranges(self._ranges)
        self._state = self._load(fallback)

    def follow(self, schema) -> None:
        """Use the script's current schema (its file changed): overrides that no longer fit are ignored; values
        outside a new range are clamped into it and values the script no longer has are dropped, as one history
        entry (kind "script") that says so. Read-only sessions follow in memory only."""
        with self._lock:
            if schema.to_json() == self.base_schema.to_json():
                return
            self.base_schema = schema
            self._ranges = self._valid_ranges(self._ranges)
            self.schema = schema.with_ranges(self._ranges)
            s = self._state
            values = self._reconcile(s.values)
            diff = {n: {"from": s.values[n], "to": v} for n, v in values.items()
                    if n in s.values and not _same(s.values[n], v)}
            dropped = sorted(set(s.values) - set(values))
            log.info("session %s follows the changed script (%d values moved, %d dropped)", self.model_name,
                     len(diff), len(dropped))
            if not (diff or dropped):
                s.values = values
                return
            summary = "the script changed: " + "; ".join(
                ([_describe(diff)] if diff else []) + ([f"dropped {', '.join(dropped)} (no longer in the script)"]
                                                       if dropped else []))
            entry = HistoryEntry(id=uuid.uuid4().hex[:12], source={"kind": "script", "dropped": dropped},
                                 summary=summary, changes=diff, timestamp=time.time())
            try:
                self._commit(StoredSession(s.version + 1, values, *_appended(s, entry)), entry)
            except PersistError as exc:
                log.error("session %s: %s; following the script in memory only", self.model_name, exc)
                s.values = values

    def _load_ranges(self) -> dict[str, tuple]:
        """Stored range overrides that still narrow the script's ranges (the script may have changed)."""
        try:
            stored = self.db.ranges(self.model_name)
        except (sqlite3.Error, OSError) as exc:
            log.error("session %s: range overrides could not be read (%s); using the script's", self.model_name, exc)
            return {}
        return self._valid_ranges(stored)

    def _valid_ranges(self, stored: dict[str, tuple]) -> dict[str, tuple]:
        ranges = {}
        for name, (low, high) in stored.items():
            try:
                ranges[name] = self.base_schema.check_range(name, low, high)
            except ParameterError as exc:
                log.warning("%s: ignoring stored range of %s (%s)", self.model_name, name, exc)
        return ranges

    # -- persistence -------------------------------------------------------------------------
    def _load(self, fallback: StoredSession | None) -> StoredSession:
        defaults = self.schema.defaults()
        if fallback is not None:  # a JSON session that could not be imported: serve it, refuse writes
            fallback.values = self._reconcile(fallback.values)
            return fallback
        try:
            stored = self.db.load(self.model_name)
        except (sqlite3.Error, OSError, ValueError) as exc:
            log.error("session %s could not be read from %s (%s); serving the defaults", self.model_name,
                      self.db.path, exc)
            return StoredSession(version=0, values=dict(defaults))
        if stored is None:
            return StoredSession(version=0, values=dict(defaults))
        version, applied_seq, values, rows = stored
        entries = [e for _, e in rows]
        first_seq = rows[0][0] if rows else applied_seq + 1
        if rows and rows[-1][0] - first_seq != len(rows) - 1:
            log.error("session %s: history rows are not contiguous; numbering them afresh", self.model_name)
        position = max(-1, min(applied_seq - first_seq, len(entries) - 1))
        return StoredSession(version=version, values=self._reconcile(values), entries=entries, position=position,
                      first_seq=first_seq)

    def _reconcile(self, stored: dict) -> dict:
        """Values restored from disk, adapted to the current schema (the model script may have changed): a number
        outside its range is clamped into it; a value that cannot fit goes back to the default."""
        values = dict(self.schema.defaults())
        for name, value in stored.items():
            if name not in self.schema:
                continue
            try:
                values.update(self.schema.validate({name: _clamped(self.schema[name], value)}))
            except ParameterError:
                log.warning("%s: dropping stored value %s=%r that the current schema rejects", self.model_name, name, value)
        return values

    def _commit(self, new: StoredSession, entry: HistoryEntry | None = None, also=None) -> None:
        """Write `new` in one transaction (with `entry` as its newest history row), then make it current."""
        if self._read_only:
            raise PersistError(f"could not save the design session ({self._read_only}); nothing was changed")
        old = self._state
        try:
            with self.db.transaction() as conn:
                if entry is not None:
                    seq = new.first_seq + new.position
                    conn.execute("DELETE FROM entries WHERE model = ? AND (seq > ? OR seq < ?)",
                                 (self.model_name, old.applied_seq, new.first_seq))
                    put_entry(conn, self.model_name, seq, entry)
                put_state(conn, self.model_name, new)
                if also is not None:
                    also(conn)
        except (sqlite3.Error, OSError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise PersistError(f"could not save the design session ({reason}); nothing was changed") from exc
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

    def entry_json(self, entry_id: str) -> dict | None:
        """One history entry as history() lists it (None once it has left the history). Searched from the
        newest: the entry just made is found at once, however long the history."""
        with self._lock:
            entries = self._state.entries
            for i in range(len(entries) - 1, -1, -1):
                if entries[i].id == entry_id:
                    return entries[i].to_json(i)
            return None

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
            values = {**s.values, **{n: c["to"] for n, c in diff.items()}}
            self._commit(StoredSession(s.version + 1, values, *_appended(s, entry)), entry)
            return entry

    def undo(self, expected_version: int | None = None) -> HistoryEntry:
        with self._lock:
            self._check_version(expected_version)
            s = self._state
            if s.position < 0:
                raise NothingToUndo("there is nothing to undo")
            entry = s.entries[s.position]
            values = {**s.values, **{n: c["from"] for n, c in entry.changes.items()}}
            self._commit(StoredSession(s.version + 1, self._reconcile(values), list(s.entries), s.position - 1,
                                       s.first_seq))
            return entry

    def redo(self, expected_version: int | None = None) -> HistoryEntry:
        with self._lock:
            self._check_version(expected_version)
            s = self._state
            if s.position >= len(s.entries) - 1:
                raise NothingToRedo("there is nothing to redo")
            entry = s.entries[s.position + 1]
            values = {**s.values, **{n: c["to"] for n, c in entry.changes.items()}}
            self._commit(StoredSession(s.version + 1, self._reconcile(values), list(s.entries), s.position + 1,
                                       s.first_seq))
            return entry

    def ranges(self) -> dict[str, tuple]:
        with self._lock:
            return dict(self._ranges)

    def set_range(self, name: str, low=None, high=None, expected_version: int | None = None) -> HistoryEntry | None:
        """Narrow parameter ``name`` to ``low..high`` for this session (both None: back to the script's range).
        A current value outside the new range is clamped into it as one history entry (returned)."""
        with self._lock:
            if low is None and high is None:
                if name not in self.base_schema:
                    self.base_schema.check_range(name, 0, 1)  # raises: unknown parameter
                bounds = None
            else:
                bounds = self.base_schema.check_range(name, low, high)
            self._check_version(expected_version)
            ranges = {k: v for k, v in self._ranges.items() if k != name}
            if bounds is not None:
                ranges[name] = bounds
            schema = self.base_schema.with_ranges(ranges)
            s = self._state
            current = s.values.get(name, schema[name].default)
            clamped = min(max(current, schema[name].min), schema[name].max)
            shown = f"{bounds[0]}..{bounds[1]}" if bounds else "the script's range"
            entry, history = None, (list(s.entries), s.position, s.first_seq)
            if not _same(current, clamped):
                diff = {name: {"from": current, "to": clamped}}
                entry = HistoryEntry(id=uuid.uuid4().hex[:12], source={"kind": "range"},
                                     summary=f"range of {name} set to {shown}; {_describe(diff)}", changes=diff,
                                     timestamp=time.time())
                history = _appended(s, entry)
            new = StoredSession(s.version + 1, {**s.values, name: clamped}, *history)
            self._commit(new, entry, also=lambda conn: put_range(conn, self.model_name, name, bounds))
            self._ranges, self.schema = ranges, schema
            return entry

    def values_at(self, index: int) -> dict:
        """The values right after history entry ``index`` (as history() numbers them; -1: before the oldest entry
        kept), worked out from the current values by undoing or redoing the entries in between."""
        with self._lock:
            s = self._state
            if isinstance(index, bool) or not isinstance(index, int) or not -1 <= index < len(s.entries):
                raise NoSuchEntry(f"there is no history entry {index!r} (entries are -1..{len(s.entries) - 1})")
            values = dict(s.values)
            for i in range(s.position, index, -1):  # back over later entries
                values.update({n: c["from"] for n, c in s.entries[i].changes.items()})
            for i in range(s.position + 1, index + 1):  # forward over redoable ones
                values.update({n: c["to"] for n, c in s.entries[i].changes.items()})
            return self._reconcile(values)

    def restore(self, index: int, expected_version: int | None = None) -> HistoryEntry | None:
        """Go back (or forward) to the state after entry ``index`` as ONE new, undoable entry (None: already there)."""
        with self._lock:
            self._check_version(expected_version)
            values = self.values_at(index)
            shown = "the start" if index < 0 else f"entry {index + 1}"
            return self.apply(values, source={"kind": "restore", "index": index},
                              summary=f"restored the state of {shown}")

    def reset(self, expected_version: int | None = None) -> HistoryEntry | None:
        """Back to the defaults, as an undoable entry."""
        return self.apply(self.schema.defaults(), source={"kind": "reset"}, expected_version=expected_version,
                          summary="reset to defaults")


def _appended(s: StoredSession, entry: HistoryEntry) -> tuple[list, int, int]:
    """(entries, position, first_seq) with `entry` as the newest: it drops the redo branch, and the oldest entries
    past MAX_HISTORY."""
    entries = s.entries[: s.position + 1] + [entry]
    position, first_seq = len(entries) - 1, s.first_seq
    if len(entries) > MAX_HISTORY:
        drop = len(entries) - MAX_HISTORY
        entries, position, first_seq = entries[drop:], position - drop, first_seq + drop
    return entries, position, first_seq


def _clamped(param, value):
    """`value` moved into the parameter's range when both are numbers (ints rounded); otherwise as it is."""
    if param.type == "bool" or isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    if param.min is not None:
        value = max(value, param.min)
    if param.max is not None:
        value = min(value, param.max)
    return int(round(value)) if param.type == "int" else value


def _same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            return math.isclose(float(a), float(b), rel_tol=0, abs_tol=1e-12)
        except (TypeError, ValueError):
            return False
    return a == b


class SessionStore:
    """One DesignSession per model, created on first use, all in one database under `<data dir>/sessions/`.
    JSON sessions of earlier releases found there are imported at start (and, should that fail, retried when
    the model is first used)."""

    def __init__(self, data_dir: Path, registry):
        self.dir = Path(data_dir) / "sessions"
        self.registry = registry
        self.db = SessionDB(self.dir / DB_NAME)
        self._sessions: dict[str, DesignSession] = {}
        self._lock = threading.Lock()
        self.migrate()

    def _json_files(self) -> list[Path]:
        try:
            return sorted(p for p in self.dir.glob("*.json") if p.is_file() and ".corrupt-" not in p.name)
        except OSError:
            return []

    def migrate(self) -> int:
        """Import every JSON session file still in the folder; returns how many were dealt with."""
        done = 0
        for path in self._json_files():
            try:
                done += migrate_json_session(self.db, path)
            except (sqlite3.Error, OSError) as exc:
                log.error("could not import session file %s into %s (%s); left it in place", path, self.db.path, exc)
        return done

    def get(self, model_name: str) -> DesignSession:
        with self._lock:
            session = self._sessions.get(model_name)
        if session is not None:
            # Outside the store's lock: a thread holding the session's lock may be asking the store for it.
            session.follow(self.registry.get(model_name).schema)  # the script is re-parsed only when it changed
            return session
        with self._lock:
            session = self._sessions.get(model_name)
            if session is None:
                model = self.registry.get(model_name)  # raises UnknownModel
                legacy = self.dir / f"{model.name}.json"
                fallback = reason = None
                if legacy.is_file():
                    try:
                        migrate_json_session(self.db, legacy)
                    except (sqlite3.Error, OSError) as exc:
                        # Serve what the file holds; writing now would fork it from its history.
                        reason = f"session file {legacy.name} could not be imported: {exc}"
                        log.error("%s", reason)
                        try:
                            fallback = read_json_session(legacy)
                        except (OSError, ValueError, KeyError, TypeError, AttributeError):
                            fallback = None
                session = DesignSession(model.name, model.schema, self.db, fallback=fallback,
                                        read_only_reason=reason)
                self._sessions[model_name] = session
            return session

    def close(self) -> None:
        self.db.close()

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

import contextlib
import json
import logging
import math
import os
import sqlite3
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field, asdict
from pathlib import Path
from typing import Any, Iterator

from .errors import ParameterError

log = logging.getLogger(__name__)

MAX_HISTORY = 500
FILE_FORMAT = 1  # the JSON files of earlier releases
DB_NAME = "sessions.sqlite3"
BUSY_TIMEOUT_MS = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    model TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    applied_seq INTEGER NOT NULL,  -- seq of the entry the values correspond to (below every entry: none)
    current_values TEXT NOT NULL   -- JSON object
);
CREATE TABLE IF NOT EXISTS entries (
    model TEXT NOT NULL,
    seq INTEGER NOT NULL,          -- contiguous per model; position in the history = seq - min(seq)
    id TEXT NOT NULL,
    source TEXT NOT NULL,          -- JSON
    summary TEXT NOT NULL,
    changes TEXT NOT NULL,         -- JSON: name -> {"from", "to"}
    timestamp REAL NOT NULL,
    PRIMARY KEY (model, seq)
) WITHOUT ROWID;
"""


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
    first_seq: int = 0  # database seq of entries[0] (of the next entry while there are none)

    @property
    def applied_seq(self) -> int:
        return self.first_seq + self.position


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
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    try:  # make a rename durable
        dfd = os.open(folder, os.O_RDONLY)
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


def _dumps(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


# ------------------------------------------------------------------------------------------------ database
class SessionDB:
    """The sessions database: one connection shared by the threads of this process, serialised by a lock
    (SQLite runs one write at a time anyway; busy_timeout covers other connections to the same file).
    The connection is opened on first use and again after an error, so a data dir that was unwritable at
    start works once it is fixed."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = self._open()
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) or not self.path.exists():
                raise
            # Not a database (or damaged beyond use): keep it for inspection and start a new one.
            backup = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            log.error("sessions database %s is unreadable (%s); starting a new one, kept it as %s",
                      self.path, exc, backup)
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(OSError):
                    os.replace(f"{self.path}{suffix}", f"{backup}{suffix}")
            conn = self._open()
        self._conn = conn
        return conn

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                               check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                log.warning("sessions database %s: journal_mode is %s, not wal", self.path, mode)
            conn.execute("PRAGMA synchronous = FULL")  # an acknowledged edit survives a power cut too
            conn.executescript(_SCHEMA)
        except BaseException:
            conn.close()
            raise
        return conn

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._connect()
            except sqlite3.Error:
                self._drop()
                raise

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed (durably) when the block ends, rolled back if it raises."""
        with self._lock:
            try:
                conn = self._connect()
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error:
                self._drop()
                raise
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                try:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                except sqlite3.Error:
                    self._drop()
                if isinstance(exc, sqlite3.Error) and not isinstance(exc, sqlite3.IntegrityError):
                    self._drop()
                raise

    def close(self) -> None:
        with self._lock:
            self._drop()

    # -- one session ---------------------------------------------------------------------------
    def load(self, model: str) -> tuple[int, int, dict, list[tuple[int, HistoryEntry]]] | None:
        with self.read() as conn:
            row = conn.execute("SELECT version, applied_seq, current_values FROM sessions WHERE model = ?",
                               (model,)).fetchone()
            if row is None:
                return None
            rows = conn.execute("SELECT seq, id, source, summary, changes, timestamp FROM entries "
                                "WHERE model = ? ORDER BY seq", (model,)).fetchall()
        entries = [(seq, HistoryEntry(id=eid, source=json.loads(src), summary=summary, changes=json.loads(ch),
                                      timestamp=ts)) for seq, eid, src, summary, ch, ts in rows]
        return int(row[0]), int(row[1]), json.loads(row[2]), entries

    def exists(self, model: str) -> bool:
        with self.read() as conn:
            return conn.execute("SELECT 1 FROM sessions WHERE model = ?", (model,)).fetchone() is not None


def _put_state(conn: sqlite3.Connection, model: str, state: _State) -> None:
    conn.execute("INSERT INTO sessions (model, version, applied_seq, current_values) VALUES (?, ?, ?, ?) "
                 "ON CONFLICT (model) DO UPDATE SET version = excluded.version, "
                 "applied_seq = excluded.applied_seq, current_values = excluded.current_values",
                 (model, state.version, state.applied_seq, _dumps(state.values)))


def _put_entry(conn: sqlite3.Connection, model: str, seq: int, e: HistoryEntry) -> None:
    conn.execute("INSERT INTO entries (model, seq, id, source, summary, changes, timestamp) "
                 "VALUES (?, ?, ?, ?, ?, ?, ?)",
                 (model, seq, e.id, _dumps(e.source), e.summary, _dumps(e.changes), float(e.timestamp)))


# ------------------------------------------------------------------------------------------------ JSON import
def read_json_session(path: Path) -> _State:
    """A session file of earlier releases (format 1), as stored (values not yet reconciled with the schema)."""
    raw = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        raise ValueError("not a JSON object")
    entries = [HistoryEntry(id=str(e["id"]), source=dict(e["source"]), summary=str(e["summary"]),
                            changes=dict(e["changes"]), timestamp=float(e["timestamp"]))
               for e in raw.get("entries", [])]
    values = raw.get("values", {})
    if not isinstance(values, dict):
        raise ValueError("values is not an object")
    state = _State(version=int(raw["version"]), values=values, entries=entries,
                   position=int(raw.get("position", len(entries) - 1)))
    state.position = max(-1, min(state.position, len(entries) - 1))
    return state


def migrate_json_session(db: SessionDB, path: Path) -> bool:
    """Import one JSON session into the database (unless the model already has a row there: an import that
    committed before its rename), then rename the file to `<name>.migrated`. Returns True when the file was
    dealt with; an unreadable file is renamed to `<model>.corrupt-<time>.json` and the model starts afresh.
    Raises sqlite3.Error / OSError when the database cannot be written (the file is left for the next start)."""
    path = Path(path)
    model = path.stem
    try:
        state = read_json_session(path)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        backup = path.with_suffix(f".corrupt-{int(time.time())}.json")
        log.error("session file %s is unreadable (%s); starting from defaults, kept it as %s", path, exc, backup)
        with contextlib.suppress(OSError):
            os.replace(path, backup)
        return True
    with db.transaction() as conn:
        if conn.execute("SELECT 1 FROM sessions WHERE model = ?", (model,)).fetchone() is None:
            conn.execute("DELETE FROM entries WHERE model = ?", (model,))
            for seq, entry in enumerate(state.entries):
                _put_entry(conn, model, seq, entry)
            _put_state(conn, model, state)
            imported = True
        else:
            imported = False
    os.replace(path, path.with_name(path.name + ".migrated"))
    _fsync_dir(path.parent)
    log.info("session %s: %s %s (%d history entries), renamed it to %s.migrated",
             model, "imported" if imported else "already in the database, not re-imported", path,
             len(state.entries), path.name)
    return True


# ------------------------------------------------------------------------------------------------ session
class DesignSession:
    """Parameters and history of one model. Thread-safe; every public method is one atomic step."""

    def __init__(self, model_name: str, schema, db: SessionDB, *, fallback: _State | None = None,
                 read_only_reason: str | None = None):
        self.model_name = model_name
        self.schema = schema
        self.db = db
        self._lock = threading.RLock()
        self._read_only = read_only_reason
        self._state = self._load(fallback)

    # -- persistence -------------------------------------------------------------------------
    def _load(self, fallback: _State | None) -> _State:
        defaults = self.schema.defaults()
        if fallback is not None:  # a JSON session that could not be imported: serve it, refuse writes
            fallback.values = self._reconcile(fallback.values)
            return fallback
        try:
            stored = self.db.load(self.model_name)
        except (sqlite3.Error, OSError, ValueError) as exc:
            log.error("session %s could not be read from %s (%s); serving the defaults", self.model_name,
                      self.db.path, exc)
            return _State(version=0, values=dict(defaults))
        if stored is None:
            return _State(version=0, values=dict(defaults))
        version, applied_seq, values, rows = stored
        entries = [e for _, e in rows]
        first_seq = rows[0][0] if rows else applied_seq + 1
        if rows and rows[-1][0] - first_seq != len(rows) - 1:
            log.error("session %s: history rows are not contiguous; numbering them afresh", self.model_name)
        position = max(-1, min(applied_seq - first_seq, len(entries) - 1))
        return _State(version=version, values=self._reconcile(values), entries=entries, position=position,
                      first_seq=first_seq)

    def _reconcile(self, stored: dict) -> dict:
        """Values restored from disk, adapted to the current schema (the model script may have changed)."""
        values = dict(self.schema.defaults())
        for name, value in stored.items():
            try:
                values.update(self.schema.validate({name: value}))
            except ParameterError:
                log.warning("%s: dropping stored value %s=%r that the current schema rejects", self.model_name, name, value)
        return values

    def _commit(self, new: _State, entry: HistoryEntry | None = None) -> None:
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
                    _put_entry(conn, self.model_name, seq, entry)
                _put_state(conn, self.model_name, new)
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
            entries = s.entries[: s.position + 1] + [entry]  # a new change drops the redo branch
            position, first_seq = len(entries) - 1, s.first_seq
            if len(entries) > MAX_HISTORY:
                drop = len(entries) - MAX_HISTORY
                entries, position, first_seq = entries[drop:], position - drop, first_seq + drop
            values = {**s.values, **{n: c["to"] for n, c in diff.items()}}
            self._commit(_State(version=s.version + 1, values=values, entries=entries, position=position,
                                first_seq=first_seq), entry)
            return entry

    def undo(self, expected_version: int | None = None) -> HistoryEntry:
        with self._lock:
            self._check_version(expected_version)
            s = self._state
            if s.position < 0:
                raise NothingToUndo("there is nothing to undo")
            entry = s.entries[s.position]
            values = {**s.values, **{n: c["from"] for n, c in entry.changes.items()}}
            self._commit(_State(s.version + 1, self._reconcile(values), list(s.entries), s.position - 1, s.first_seq))
            return entry

    def redo(self, expected_version: int | None = None) -> HistoryEntry:
        with self._lock:
            self._check_version(expected_version)
            s = self._state
            if s.position >= len(s.entries) - 1:
                raise NothingToRedo("there is nothing to redo")
            entry = s.entries[s.position + 1]
            values = {**s.values, **{n: c["to"] for n, c in entry.changes.items()}}
            self._commit(_State(s.version + 1, self._reconcile(values), list(s.entries), s.position + 1, s.first_seq))
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

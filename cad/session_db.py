"""Storage of design sessions: one SQLite database, `<data dir>/sessions/sessions.sqlite3` (WAL journal,
`synchronous=FULL`), and the import of the JSON session files of earlier releases.

A `sessions` row per model holds its version, current values and which history entry they correspond to;
`entries` holds one row per history entry. `cad.session` decides what changes; this module only stores it.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

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
CREATE TABLE IF NOT EXISTS ranges (  -- a session's narrowed parameter ranges (the script file is never edited)
    model TEXT NOT NULL,
    parameter TEXT NOT NULL,
    low REAL NOT NULL,
    high REAL NOT NULL,
    PRIMARY KEY (model, parameter)
) WITHOUT ROWID;
"""


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
class StoredSession:
    version: int
    values: dict
    entries: list[HistoryEntry] = field(default_factory=list)
    position: int = -1  # index of the entry the values correspond to; -1 = no entry applied
    first_seq: int = 0  # database seq of entries[0] (of the next entry while there are none)

    @property
    def applied_seq(self) -> int:
        return self.first_seq + self.position


def fsync_dir(folder: Path) -> None:
    try:  # make a rename durable
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def dumps(obj) -> str:
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

    def ranges(self, model: str) -> dict[str, tuple[float, float]]:
        with self.read() as conn:
            rows = conn.execute("SELECT parameter, low, high FROM ranges WHERE model = ?", (model,)).fetchall()
        return {name: (low, high) for name, low, high in rows}

    def exists(self, model: str) -> bool:
        with self.read() as conn:
            return conn.execute("SELECT 1 FROM sessions WHERE model = ?", (model,)).fetchone() is not None


def put_state(conn: sqlite3.Connection, model: str, state: StoredSession) -> None:
    conn.execute("INSERT INTO sessions (model, version, applied_seq, current_values) VALUES (?, ?, ?, ?) "
                 "ON CONFLICT (model) DO UPDATE SET version = excluded.version, "
                 "applied_seq = excluded.applied_seq, current_values = excluded.current_values",
                 (model, state.version, state.applied_seq, dumps(state.values)))


def put_range(conn: sqlite3.Connection, model: str, parameter: str, bounds: tuple | None) -> None:
    """Store a narrowed range of ``parameter`` (None: forget it, the script's range applies again)."""
    conn.execute("DELETE FROM ranges WHERE model = ? AND parameter = ?", (model, parameter))
    if bounds is not None:
        conn.execute("INSERT INTO ranges (model, parameter, low, high) VALUES (?, ?, ?, ?)",
                     (model, parameter, float(bounds[0]), float(bounds[1])))


def put_entry(conn: sqlite3.Connection, model: str, seq: int, e: HistoryEntry) -> None:
    conn.execute("INSERT INTO entries (model, seq, id, source, summary, changes, timestamp) "
                 "VALUES (?, ?, ?, ?, ?, ?, ?)",
                 (model, seq, e.id, dumps(e.source), e.summary, dumps(e.changes), float(e.timestamp)))


# ------------------------------------------------------------------------------------------------ JSON import
def read_json_session(path: Path) -> StoredSession:
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
    state = StoredSession(version=int(raw["version"]), values=values, entries=entries,
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
                put_entry(conn, model, seq, entry)
            put_state(conn, model, state)
            imported = True
        else:
            imported = False
    os.replace(path, path.with_name(path.name + ".migrated"))
    fsync_dir(path.parent)
    log.info("session %s: %s %s (%d history entries), renamed it to %s.migrated",
             model, "imported" if imported else "already in the database, not re-imported", path,
             len(state.entries), path.name)
    return True

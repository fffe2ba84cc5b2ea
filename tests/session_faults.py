"""Fault injection for the sessions database (cad/session_db.py): connections whose chosen statement fails the
way SQLite reports a full or read-only disk, and a dump of what the database holds."""
from __future__ import annotations

import sqlite3
from pathlib import Path

from cad.session_db import SessionDB


class FailingConnection:
    """Delegates to a real connection, but a statement starting with `prefix` raises `error`."""

    def __init__(self, real: sqlite3.Connection, prefix: str, error: sqlite3.Error):
        self._real, self._prefix, self._error = real, prefix.upper(), error

    def execute(self, sql, *args):
        if sql.lstrip().upper().startswith(self._prefix):
            raise self._error
        return self._real.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self._real, name)


FAULTS = {
    "full_disk_on_entry": ("INSERT INTO ENTRIES", sqlite3.OperationalError("database or disk is full")),
    "full_disk_on_state": ("INSERT INTO SESSIONS", sqlite3.OperationalError("database or disk is full")),
    "read_only_on_commit": ("COMMIT", sqlite3.OperationalError("attempt to write a readonly database")),
    "locked_on_begin": ("BEGIN", sqlite3.OperationalError("database is locked")),
}


def fail_session_writes(monkeypatch, db: SessionDB, fault: str) -> None:
    """Every connection `db` opens from now on (the current one is dropped) fails as `fault` says."""
    prefix, error = FAULTS[fault]
    real_open = SessionDB._open
    monkeypatch.setattr(SessionDB, "_open", lambda self: FailingConnection(real_open(self), prefix, error))
    db.close()


def dump(path: Path) -> list:
    """Every row of the sessions database at `path`, through a connection of its own."""
    conn = sqlite3.connect(path)
    try:
        return [conn.execute("SELECT * FROM sessions ORDER BY model").fetchall(),
                conn.execute("SELECT * FROM entries ORDER BY model, seq").fetchall()]
    finally:
        conn.close()

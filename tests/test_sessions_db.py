"""Design sessions in SQLite (cad/session.py), without Flask: long histories, two threads (and two
connections) editing at once, a SIGKILL mid-burst, the import of JSON sessions of earlier releases, and a
database that cannot be opened."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cad.registry import ModelRegistry
from cad.session import (DB_NAME, MAX_HISTORY, NothingToRedo, NothingToUndo, PersistError, SessionStore,
                         VersionConflict)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def registry():
    return ModelRegistry()


def float_names(session, n):
    return [p.name for p in session.schema.parameters if p.type == "float" and p.max > p.min][:n]


def value_for(session, name, k):
    p = session.schema[name]
    return round(p.min + (k % 40 + 1) * (p.max - p.min) / 50, 3)  # consecutive k always differ


def replay(session, hist) -> dict:
    values = dict(session.schema.defaults())
    for entry in hist["entries"][: hist["position"] + 1]:
        for name, change in entry["changes"].items():
            values[name] = change["to"]
    return values


def rows(data_dir: Path, model: str) -> int:
    conn = sqlite3.connect(data_dir / "sessions" / DB_NAME)
    try:
        return conn.execute("SELECT COUNT(*) FROM entries WHERE model = ?", (model,)).fetchone()[0]
    finally:
        conn.close()


def test_a_1000_edit_history_keeps_the_last_entries_and_undoes_through_them(tmp_path, registry):
    store = SessionStore(tmp_path, registry)
    s = store.get("rover")
    name = float_names(s, 1)[0]
    acked, states = [], []
    for k in range(1000):
        acked.append(s.apply({name: value_for(s, name, k)}, source={"kind": "user"}).id)
        states.append(s.snapshot()["values"])
    hist = s.history()
    assert hist["version"] == 1000 and len(hist["entries"]) == MAX_HISTORY and hist["position"] == MAX_HISTORY - 1
    assert [e["id"] for e in hist["entries"]] == acked[-MAX_HISTORY:]
    assert [e["index"] for e in hist["entries"]] == list(range(MAX_HISTORY))
    assert rows(tmp_path, "rover") == MAX_HISTORY  # the oldest rows are deleted, not only hidden

    reopened = SessionStore(tmp_path, registry).get("rover")
    assert reopened.history() == hist and reopened.snapshot() == s.snapshot()

    for _ in range(MAX_HISTORY):
        reopened.undo()
    assert reopened.snapshot()["values"] == states[1000 - MAX_HISTORY - 1] and not reopened.snapshot()["can_undo"]
    with pytest.raises(NothingToUndo):
        reopened.undo()
    for _ in range(3):
        reopened.redo()
    assert reopened.values == states[1000 - MAX_HISTORY + 2]
    with pytest.raises(VersionConflict):
        reopened.apply({name: value_for(s, name, 3)}, source={"kind": "user"}, expected_version=1000)
    entry = reopened.apply({name: value_for(s, name, 7) + 1}, source={"kind": "user"},
                           expected_version=1000 + MAX_HISTORY + 3)  # drops the redo branch
    again = SessionStore(tmp_path, registry).get("rover")
    hist = again.history()
    assert [e["id"] for e in hist["entries"]] == acked[1000 - MAX_HISTORY:1000 - MAX_HISTORY + 3] + [entry.id]
    assert hist["position"] == 3 and not hist["can_redo"] and hist["version"] == 1000 + MAX_HISTORY + 4
    assert rows(tmp_path, "rover") == 4 and again.values == replay(again, hist) == reopened.values
    with pytest.raises(NothingToRedo):
        again.redo()


def test_two_threads_and_two_connections_editing_at_once(tmp_path, registry):
    store, other = SessionStore(tmp_path, registry), SessionStore(tmp_path, registry)  # two connections
    s = store.get("rover")
    names = float_names(s, 2)
    bracket = other.get("bracket")
    bname = float_names(bracket, 1)[0]
    acked: list[str] = []
    conflicts = []
    lock = threading.Lock()
    errors = []

    def rover_writer(name):
        try:
            for k in range(60):
                while True:  # a version read a moment ago may be stale by the time it is used: retry
                    version = s.version
                    try:
                        entry = s.apply({name: value_for(s, name, k)}, source={"kind": "user"},
                                        expected_version=version)
                        break
                    except VersionConflict:
                        conflicts.append(version)
                with lock:
                    acked.append(entry.id)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    def bracket_writer():
        try:
            for k in range(60):
                bracket.apply({bname: value_for(bracket, bname, k)}, source={"kind": "user"})
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=rover_writer, args=(n,)) for n in names] + [threading.Thread(target=bracket_writer)]
    [t.start() for t in threads]
    [t.join(60) for t in threads]
    assert not errors, errors
    hist = s.history()
    assert sorted(e["id"] for e in hist["entries"]) == sorted(acked) and len(acked) == 120 == hist["version"]
    reopened = SessionStore(tmp_path, registry)
    r = reopened.get("rover")
    assert r.history() == hist and r.values == s.values == replay(r, hist)
    assert reopened.get("bracket").history() == bracket.history() and bracket.version == 60


KILL_CHILD = """
import sys
from pathlib import Path
from cad.registry import ModelRegistry
from cad.session import SessionStore
s = SessionStore(Path(sys.argv[1]), ModelRegistry()).get("rover")
p = s.schema[sys.argv[2]]
for k in range(100000):
    entry = s.apply({p.name: round(p.min + (k % 40 + 1) * (p.max - p.min) / 50, 3)}, source={"kind": "user"})
    print(entry.id, s.version, flush=True)  # acknowledged
"""


def test_sigkill_during_a_burst_keeps_every_acknowledged_edit(tmp_path, registry):
    name = float_names(SessionStore(tmp_path / "probe", registry).get("rover"), 1)[0]
    proc = subprocess.Popen([sys.executable, "-c", KILL_CHILD, str(tmp_path), name], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    acked = []
    deadline = time.monotonic() + 30
    while len(acked) < 150 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        acked.append(line.split())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    acked += [line.split() for line in proc.stdout.read().splitlines()]
    assert len(acked) >= 150
    s = SessionStore(tmp_path, registry).get("rover")
    hist = s.history()
    ids = [e["id"] for e in hist["entries"]]
    assert set(i for i, _ in acked[-MAX_HISTORY:]) <= set(ids)
    assert hist["version"] >= int(acked[-1][1]) and hist["version"] - len(acked) in (0, 1)
    assert s.values == replay(s, hist)


def old_json_session(entries: int, position: int) -> dict:
    """A session file as releases before the database wrote it (format 1)."""
    es = [{"id": f"e{k:011d}", "source": {"kind": "user"}, "summary": f"wheel_diameter {80 + k} → {81 + k}",
           "changes": {"wheel_diameter": {"from": 80.0 + k, "to": 81.0 + k}}, "timestamp": 1.7e9 + k}
          for k in range(entries)]
    return {"format": 1, "model": "rover", "version": entries + 2, "position": position, "entries": es,
            "values": {"wheel_diameter": 80.0 + position + 1, "no_longer_a_parameter": 3}}


def test_json_sessions_are_imported_once_and_moved_aside(tmp_path, registry):
    sessions = tmp_path / "sessions"
    sessions.mkdir()
    (sessions / "rover.json").write_text(json.dumps(old_json_session(5, 2), indent=1), encoding="utf-8")
    (sessions / "bracket.json").write_text('{"version": 3, "entr', encoding="utf-8")  # half written
    store = SessionStore(tmp_path, registry)
    assert not (sessions / "rover.json").exists() and (sessions / "rover.json.migrated").exists()
    assert not (sessions / "bracket.json").exists() and len(list(sessions.glob("bracket.corrupt-*.json"))) == 1
    s = store.get("rover")
    hist = s.history()
    assert hist["version"] == 7 and hist["position"] == 2 and hist["can_undo"] and hist["can_redo"]
    assert [e["id"] for e in hist["entries"]] == [f"e{k:011d}" for k in range(5)]
    assert hist["entries"][1]["changes"] == {"wheel_diameter": {"from": 81.0, "to": 82.0}}
    assert hist["entries"][1]["timestamp"] == 1.7e9 + 1 and hist["entries"][1]["source"] == {"kind": "user"}
    assert s.values == {**s.schema.defaults(), "wheel_diameter": 83.0}
    assert store.get("bracket").version == 0  # unreadable: defaults, file kept for inspection
    s.redo(expected_version=7)
    assert s.values["wheel_diameter"] == 84.0

    # A crash after the import committed but before the rename: the file is back, and is not imported again.
    os.replace(sessions / "rover.json.migrated", sessions / "rover.json")
    again = SessionStore(tmp_path, registry).get("rover")
    assert again.version == 8 and again.values["wheel_diameter"] == 84.0
    assert not (sessions / "rover.json").exists() and (sessions / "rover.json.migrated").exists()


def test_json_session_that_cannot_be_imported_is_served_and_writes_are_refused(tmp_path, registry):
    sessions = tmp_path / "sessions"
    (sessions / DB_NAME).mkdir(parents=True)  # the database cannot be opened
    (sessions / "rover.json").write_text(json.dumps(old_json_session(3, 2)), encoding="utf-8")
    s = SessionStore(tmp_path, registry).get("rover")
    assert s.version == 5 and len(s.history()["entries"]) == 3 and s.values["wheel_diameter"] == 83.0
    with pytest.raises(PersistError):
        s.undo()
    assert s.version == 5 and (sessions / "rover.json").exists()


def test_a_corrupt_database_is_kept_aside_and_a_new_one_started(tmp_path, registry):
    (tmp_path / "sessions").mkdir()
    (tmp_path / "sessions" / DB_NAME).write_bytes(b"this is not a database" * 100)
    store = SessionStore(tmp_path, registry)
    s = store.get("rover")
    assert s.version == 0
    name = float_names(s, 1)[0]
    s.apply({name: value_for(s, name, 1)}, source={"kind": "user"})
    assert SessionStore(tmp_path, registry).get("rover").version == 1
    assert list((tmp_path / "sessions").glob(f"{DB_NAME}.corrupt-*"))

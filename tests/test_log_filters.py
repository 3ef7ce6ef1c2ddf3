"""Several doors in one access log: the `door` column (added to old logs in place) and `log` filters/CSV."""

import csv
import io
import sqlite3
import time

from door_access.cli import main, parse_since
from door_access.core import Event
from door_access.door.access_log import AccessLog

OLD_SCHEMA = ("CREATE TABLE events(id INTEGER PRIMARY KEY, wall REAL, t REAL, event TEXT, name TEXT,"
              " distance REAL, track INTEGER, detail TEXT)")


def site(tmp_path):
    """A log written by an old version (no door column), then by two doors sharing it."""
    path = tmp_path / "log.sqlite"
    with sqlite3.connect(path) as db:
        db.execute(OLD_SCHEMA)
        db.execute("INSERT INTO events(wall, t, event, name, distance, track, detail) VALUES "
                   "(1000.0, 1.0, 'unlock', 'old', 0.5, 1, '')")
    now = time.time()
    front, lab = AccessLog(path, door_id="front"), AccessLog(path, door_id="lab")  # both migrate: one wins
    # each log writes from its own thread: flushed one by one, so the rows land in this order
    assert front.record(Event("unlock", 2.0, now - 7200, "alice", 0.41, 3)) and front.flush(10)
    assert lab.record(Event("denied", 3.0, now - 60, "alice", 0.5, 4, "outside hours (08:00-18:00)")) and lab.flush(10)
    assert front.record(Event("unlock", 4.0, now - 30, "bob", 0.6, 5, 'said "hi", then left')) and front.flush(10)
    front.close(), lab.close()
    (tmp_path / "config.yaml").write_text(f"access_log:\n  path: {path}\n")
    return path, now


def test_old_logs_gain_a_door_column_and_queries_filter(tmp_path):
    path, now = site(tmp_path)
    log = AccessLog(path)
    try:
        everything = log.query()
        assert [(e.name, door) for e, door in everything] == [("old", None), ("alice", "front"), ("alice", "lab"),
                                                            ("bob", "front")]
        assert [e.event for e, _ in log.query(door="lab")] == ["denied"]
        assert [d for _, d in log.query(person="alice")] == ["front", "lab"]
        assert [e.name for e, _ in log.query(since=now - 3600)] == ["alice", "bob"]
        assert [e.name for e, _ in log.query(door="front", person="alice", since=now - 3600)] == []
        assert [e.name for e, _ in log.query(last=2)] == ["alice", "bob"]
        assert [e.name for e in log.last(1)] == ["bob"]  # the old reader still works
    finally:
        log.close()


def test_log_command_filters_and_writes_csv(tmp_path, capsys, monkeypatch):
    site(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["log", "--person", "alice", "--csv"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0] == ["time", "door", "event", "name", "distance", "track", "detail"]
    assert [(r[1], r[2], r[3], r[6]) for r in rows[1:]] == [("front", "unlock", "alice", ""),
                                                           ("lab", "denied", "alice", "outside hours (08:00-18:00)")]
    assert main(["log", "--door", "front", "--since", "1h", "--csv"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert [(r[3], r[6]) for r in rows[1:]] == [("bob", 'said "hi", then left')]  # quoting survives the round trip
    assert main(["log", "--door", "lab", "--json"]) == 0
    assert '"door": "lab"' in capsys.readouterr().out
    assert main(["log", "--since", "yesterday-ish"]) == 2
    assert "--since" in capsys.readouterr().err


def test_since_accepts_dates_and_spans():
    assert parse_since("90m", now=10_000.0) == 10_000.0 - 5400
    assert parse_since("2d", now=200_000.0) == 200_000.0 - 172_800
    assert abs(parse_since("2026-11-24T08:00") - time.mktime((2026, 11, 24, 8, 0, 0, 0, 0, -1))) < 1

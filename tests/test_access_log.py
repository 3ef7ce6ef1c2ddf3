"""The SQLite access log: survives restarts, reads back in order, never blocks its callers and loses nothing."""

import logging
import shutil
import sqlite3
import subprocess
import sys
import threading

import pytest

from door_access.core import DENIED, FAULT, UNLOCK, Event
from door_access.door.access_log import AccessLog, AccessLogError, format_event, spool_path

from conftest import REPO


def ev(i: int, kind: str = UNLOCK, name: str | None = "alice") -> Event:
    return Event(kind, t=float(i), wall=1_700_000_000.0 + i, name=name, distance=0.5 + i / 1000, track=i,
                 detail=f"n{i}")


def warnings(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "door_access.door.access_log" and r.levelno == logging.WARNING]


def test_records_survive_a_restart_and_read_back_oldest_first(tmp_path):
    path = tmp_path / "logs" / "deeper" / "access.sqlite"  # parent folders are created
    log1 = AccessLog(path)
    for i in range(5):
        assert log1.record(ev(i))
    log1.close()

    log2 = AccessLog(path)  # the "restart"
    assert log2.record(ev(5, DENIED, name=None))
    assert log2.last(3) == [ev(3), ev(4), ev(5, DENIED, name=None)]
    assert log2.last(100) == [ev(i) for i in range(5)] + [ev(5, DENIED, name=None)]
    assert log2.last(0) == []
    log2.close()


def test_wal_mode_is_on(tmp_path):
    path = tmp_path / "access.sqlite"
    AccessLog(path).close()
    with sqlite3.connect(path) as other:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_numpy_values_and_odd_names_are_stored(tmp_path):
    np = pytest.importorskip("numpy")
    log = AccessLog(tmp_path / "a.sqlite")
    odd = Event(UNLOCK, t=np.float64(1.5), wall=1.0, name="O'Brien\n$(x); {name}", distance=np.float32(0.25),
                track=np.int64(7))
    assert log.record(odd)
    (back,) = log.last(1)
    assert (back.name, back.distance, back.track) == ("O'Brien\n$(x); {name}", 0.25, 7)
    line = format_event(back)
    assert "\n" not in line and "O'Brien\\n$(x); {name}" in line and "0.250" in line and "track 7" in line
    log.close()


def test_a_database_locked_by_another_process_is_one_warning_and_nothing_is_lost(tmp_path, caplog):
    path = tmp_path / "access.sqlite"
    log = AccessLog(path, busy_timeout_s=0.2, retry_s=0.05)
    assert log.record(ev(0))
    assert log.flush(10)

    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    with caplog.at_level(logging.WARNING):
        for i in (1, 2, 3):
            assert log.record(ev(i))  # spooled and queued: the caller never waits on the lock
        assert log.pending() == 3  # returned while the lock is still held
        assert not log.flush(0.5)
    (warning,) = warnings(caplog)
    assert str(path) in warning.getMessage() and "locked" in warning.getMessage()
    assert len(spool_path(path).read_text().splitlines()) == 3  # durable before it is in SQLite

    other.execute("COMMIT")
    assert log.flush(10)
    assert log.record(ev(4))
    assert [e.t for e in log.last(10)] == [0.0, 1.0, 2.0, 3.0, 4.0]  # in order, exactly once
    assert spool_path(path).read_text() == ""  # emptied once everything is in SQLite

    # recovered, then failing anew: a new warning
    other.execute("BEGIN EXCLUSIVE")
    assert log.record(ev(5))
    assert not log.flush(0.5)
    other.execute("ROLLBACK")
    other.close()
    assert log.flush(10)
    assert len(warnings(caplog)) == 2
    assert [e.t for e in log.last(10)] == [float(i) for i in range(6)]
    log.close()


def test_a_folder_that_cannot_be_created_is_one_warning_and_every_event_arrives_later(tmp_path, caplog):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a regular file where the log's folder should be")
    path = blocker / "access.sqlite"
    with caplog.at_level(logging.WARNING):
        log = AccessLog(path, retry_s=0.05)  # does not raise
        assert log.record(ev(0))
        assert log.record(ev(1))
        assert not log.flush(0.3)
    assert len(warnings(caplog)) == 2  # one for the spool, one for the database
    assert all(str(blocker) in w.getMessage() for w in warnings(caplog))
    with pytest.raises(AccessLogError, match="not_a_folder"):
        log.last(1)

    blocker.unlink()  # the cause goes away: the writer reopens and writes what it kept in memory
    assert log.flush(10)
    assert log.record(ev(2))
    assert log.last(5) == [ev(0), ev(1), ev(2)]
    log.close()


def test_a_file_that_is_not_a_database_is_one_warning_and_recovers_when_replaced(tmp_path, caplog):
    path = tmp_path / "access.sqlite"
    path.write_bytes(b"this is not a SQLite database, just text " * 100)
    with caplog.at_level(logging.WARNING):
        log = AccessLog(path, retry_s=0.05)
        assert log.record(ev(0))
        assert log.record(ev(1))
        assert not log.flush(0.3)
    assert len(warnings(caplog)) == 1
    with pytest.raises(AccessLogError):
        log.last(1)
    path.unlink()  # the operator moves the broken file away
    assert log.flush(10)
    assert log.last(5) == [ev(0), ev(1)]
    log.close()


def test_a_database_deleted_while_running_gets_every_later_event(tmp_path):
    path = tmp_path / "logs" / "access.sqlite"
    log = AccessLog(path, retry_s=0.05)
    assert log.record(ev(0)) and log.flush(10)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    for i in (1, 2):
        log.record(ev(i))  # held up by the lock
    for _ in range(100):  # the folder, the database and the spool all go (the writer, retrying, may add a
        try:             # journal mid-way: deleted on the next try, as `rm -r` run again would)
            shutil.rmtree(path.parent)
            break
        except OSError:
            continue
    log.record(ev(3))
    assert log.flush(10)  # into a new file at the same path
    other.execute("ROLLBACK")
    other.close()
    log.close()
    assert AccessLog(path).last(10) == [ev(1), ev(2), ev(3)]  # nothing recorded after ev(0) was lost


def test_the_spool_is_replayed_exactly_once_after_a_crash(tmp_path):
    path = tmp_path / "access.sqlite"
    # a crash while the database was locked: the events are only in the spool
    other = sqlite3.connect(path, isolation_level=None)
    AccessLog(path).close()
    other.execute("BEGIN EXCLUSIVE")
    code = ("import sys, os; sys.path.insert(0, sys.argv[1]); from door_access.door.access_log import AccessLog; "
            "from door_access.core import Event; log = AccessLog(sys.argv[2]); "
            "[log.record(Event('unlock', float(i), 1.7e9 + i, 'alice', 0.5, i, 'n')) for i in range(3)]; "
            "os._exit(9)")  # killed: no close(), no flush
    proc = subprocess.run([sys.executable, "-c", code, str(REPO), str(path)], timeout=60)
    assert proc.returncode == 9
    other.execute("ROLLBACK")
    other.close()
    spooled = spool_path(path).read_bytes()
    assert len(spooled.splitlines()) == 3

    log = AccessLog(path)  # the next start replays the spool
    assert log.flush(10)
    assert [e.t for e in log.last(10)] == [0.0, 1.0, 2.0]
    log.close()
    # a crash between the insert and emptying the spool: the same lines again, plus a line torn mid-write
    spool_path(path).write_bytes(spooled + b'{"uid": "x-1", "wal')
    log = AccessLog(path)
    assert log.flush(10)
    assert [e.t for e in log.last(10)] == [0.0, 1.0, 2.0]  # exactly once
    assert log.record(ev(7)) and log.flush(10)
    assert [e.t for e in log.last(10)] == [0.0, 1.0, 2.0, 7.0]
    log.close()


def test_a_second_log_on_the_same_file_does_not_take_the_spool(tmp_path):
    path = tmp_path / "access.sqlite"
    owner = AccessLog(path)
    reader = AccessLog(path)  # `door-access log` while the door runs
    assert owner.record(ev(0)) and owner.flush(10)
    assert reader.last(5) == [ev(0)]
    reader.close()
    assert owner.record(ev(1)) and owner.flush(10)
    assert owner.last(5) == [ev(0), ev(1)]
    owner.close()


def test_undecodable_names_from_file_names_are_stored_escaped(tmp_path):
    import os

    name = os.fsdecode(b"latin1 \xe9t\xe9")  # a file name that is not UTF-8
    log = AccessLog(tmp_path / "a.sqlite")
    assert log.record(ev(0, name=name))
    assert log.flush(10)
    assert log.last(1)[0].name == "latin1 \\xe9t\\xe9"
    log.close()


def test_writes_from_several_threads_all_arrive(tmp_path):
    log = AccessLog(tmp_path / "a.sqlite")
    results: list[bool] = []

    def write(base: int) -> None:
        results.extend(log.record(ev(base + i)) for i in range(25))

    threads = [threading.Thread(target=write, args=(k * 100,)) for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=30)
    assert results == [True] * 100
    assert sorted(e.t for e in log.last(1000)) == sorted(float(k * 100 + i) for k in range(4) for i in range(25))
    log.close()


def test_closed_log_records_nothing(tmp_path):
    log = AccessLog(tmp_path / "a.sqlite")
    assert log.record(ev(0))
    log.close()
    assert log.record(ev(1, FAULT)) is False
    assert log.last(5) == [ev(0)]  # still readable

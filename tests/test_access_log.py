"""The SQLite access log: survives restarts, reads back in order, and never takes the door down with it."""

import logging
import sqlite3
import threading

import pytest

from door_access.access_log import AccessLog, AccessLogError, format_event
from door_access.core import DENIED, FAULT, UNLOCK, Event


def ev(i: int, kind: str = UNLOCK, name: str | None = "alice") -> Event:
    return Event(kind, t=float(i), wall=1_700_000_000.0 + i, name=name, distance=0.5 + i / 1000, track=i,
                 detail=f"n{i}")


def warnings(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "door_access.access_log" and r.levelno == logging.WARNING]


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


def test_a_database_locked_by_another_process_is_one_warning_and_recovers(tmp_path, caplog):
    path = tmp_path / "access.sqlite"
    log = AccessLog(path, busy_timeout_s=0.2)
    assert log.record(ev(0))

    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    with caplog.at_level(logging.WARNING):
        assert log.record(ev(1)) is False
        assert log.record(ev(2)) is False
        assert log.record(ev(3)) is False
    (warning,) = warnings(caplog)
    assert str(path) in warning.getMessage() and "locked" in warning.getMessage()

    other.execute("COMMIT")
    assert log.record(ev(4))
    assert [e.t for e in log.last(10)] == [0.0, 4.0]

    # recovered, then failing anew: a new warning
    other.execute("BEGIN EXCLUSIVE")
    assert log.record(ev(5)) is False
    other.execute("ROLLBACK")
    other.close()
    assert len(warnings(caplog)) == 2
    assert log.record(ev(6))
    log.close()


def test_a_folder_that_cannot_be_created_is_one_warning_and_recovers(tmp_path, caplog):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a regular file where the log's folder should be")
    path = blocker / "access.sqlite"
    with caplog.at_level(logging.WARNING):
        log = AccessLog(path)  # does not raise
        assert log.record(ev(0)) is False
        assert log.record(ev(1)) is False
    (warning,) = warnings(caplog)
    assert str(path) in warning.getMessage()
    with pytest.raises(AccessLogError, match="not_a_folder"):
        log.last(1)

    blocker.unlink()  # the cause goes away: the next record reopens and works
    assert log.record(ev(2))
    assert log.last(5) == [ev(2)]
    log.close()


def test_a_file_that_is_not_a_database_is_one_warning(tmp_path, caplog):
    path = tmp_path / "access.sqlite"
    path.write_bytes(b"this is not a SQLite database, just text " * 100)
    with caplog.at_level(logging.WARNING):
        log = AccessLog(path)
        assert log.record(ev(0)) is False
        assert log.record(ev(1)) is False
    assert len(warnings(caplog)) == 1
    with pytest.raises(AccessLogError):
        log.last(1)
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
    log.close()
    assert log.record(ev(0, FAULT)) is False
    with pytest.raises(AccessLogError):
        log.last(1)

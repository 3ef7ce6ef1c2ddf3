"""The access log: every unlock, denial, relock and fault, in a SQLite file that survives restarts.

Writing to the log must never hold up the door, and must never lose an event. `record()`
appends the event to a spool next to the database (`<log>.spool.jsonl`: JSON lines,
append-only, fsynced) and queues it for the log's own writer thread, then returns: no caller
ever waits on SQLite. The writer inserts queued events in order; while the database is locked,
read-only, deleted or corrupt it warns once and retries, and once it is writable again every
event lands, in order. Each event carries a unique id (`uid`, a UNIQUE column), so an event
replayed from the spool after a crash is inserted exactly once. The spool is emptied whenever
everything in it is in SQLite, and replayed at the next start if the app stopped before that.

One process owns the spool at a time (an exclusive `flock`); another `AccessLog` on the same
file (`door-access log` while the door runs) writes straight to SQLite, from memory.

The log names people and its snapshots show their faces: the database (and so its -wal and -shm,
which SQLite creates with the database's mode) and the spool are created 0600, their folder 0700.
With `keep_days`, the writer thread deletes older events and snapshots at start and once a day
(SQLite's secure_delete overwrites what is deleted), so retention never delays a caller.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from pathlib import Path

from door_access.core import Event
from door_access.files import private_dir, private_file

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events(
    id INTEGER PRIMARY KEY,
    wall REAL,
    t REAL,
    event TEXT,
    name TEXT,
    distance REAL,
    track INTEGER,
    detail TEXT
)
"""
_FIELDS = ("uid", "wall", "t", "event", "name", "distance", "track", "detail", "door")
_ADDED_COLUMNS = {"uid": "TEXT", "door": "TEXT"}  # columns that logs from older versions lack
PRUNE_EVERY_S = 86400.0  # retention runs at start and then daily
PRUNE_RETRY_S = 3600.0  # ...or an hour after a failed try


class AccessLogError(Exception):
    """The access log cannot be read; the message names the file and the reason."""


def spool_path(path: Path) -> Path:
    return Path(path).with_name(Path(path).name + ".spool.jsonl")


class AccessLog:
    """The SQLite access log with a durable spool and its own writer thread; `record()` from any thread."""

    def __init__(self, path: Path, busy_timeout_s: float = 0.5, retry_s: float = 0.5, door_id: str | None = None,
                 keep_days: float = 0.0, snapshots_dir: Path | None = None):
        self.path = Path(path)
        self.keep_days = keep_days  # events and snapshots older than this are deleted; 0 keeps them forever
        self.snapshots_dir = Path(snapshots_dir) if snapshots_dir else None
        self._next_prune = 0.0 if keep_days > 0 else float("inf")  # monotonic time of the next retention run
        self.door_id = door_id  # written in each row's `door` column (several doors may share one log)
        self.spool = spool_path(self.path)
        self.busy_timeout_s = busy_timeout_s
        self.retry_s = retry_s
        self._cond = threading.Condition()  # guards the pending rows and the spool file
        self._pending: list[dict] = []  # rows not yet in SQLite, oldest first
        self._uid_prefix = uuid.uuid4().hex[:16]  # this run's; with a counter, unique across runs
        self._uid_count = itertools.count(1)  # next() on a count is atomic under the GIL
        self._spool_fd: int | None = None
        self._spool_ino: int | None = None
        self._owns_spool = False
        self._spool_failing = False
        self._failing = False  # a warning was logged and no write has succeeded since
        self._closed = False
        self._close_by = float("inf")
        self._written = 0  # rows committed so far (for flush())
        self._conn: sqlite3.Connection | None = None
        self._conn_ino: int | None = None
        with self._cond:
            self._take_spool()
        self._thread = threading.Thread(target=self._writer, name="access-log", daemon=True)
        self._thread.start()

    # ---- the callers' side ---------------------------------------------------------------------

    def record(self, event: Event) -> bool:
        """Spool `event` and queue it for the writer; never waits on the database. False once closed."""
        row = _row(f"{self._uid_prefix}-{next(self._uid_count)}", event, self.door_id)
        with self._cond:
            if self._closed:
                log.debug("access log %s is closed; not recording %s", self.path, event.event)
                return False
            self._pending.append(row)
            self._spool_append(row)
            self._cond.notify_all()
        return True

    def flush(self, timeout: float) -> bool:
        """Wait up to `timeout` for every event recorded so far to be in SQLite; True when it is."""
        deadline = time.monotonic() + timeout
        with self._cond:
            target = self._written + len(self._pending)
            while self._written < target and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)
            return self._written >= target

    def pending(self) -> int:
        """Events recorded but not yet in SQLite."""
        with self._cond:
            return len(self._pending)

    def last(self, n: int) -> list[Event]:
        """The newest `n` events in SQLite, oldest first; raises AccessLogError when the log cannot be read."""
        return [event for event, _door in self.query(last=n)] if n > 0 else []

    def query(self, door: str | None = None, person: str | None = None, since: float | None = None,
              last: int | None = None) -> list[tuple[Event, str | None]]:
        """(event, door id) of the events matching every filter given, oldest first: the newest `last` of them.

        Waits briefly for this log's own queued events first; raises AccessLogError when the log cannot be read."""
        where, args = [], []
        for column, value in (("door", door), ("name", person)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if since is not None:
            where.append("wall >= ?")
            args.append(float(since))
        sql = "SELECT event, t, wall, name, distance, track, detail, door FROM events"
        sql += (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id DESC"
        if last is not None:
            sql += " LIMIT ?"
            args.append(int(last))
        self.flush(self.busy_timeout_s * 4)
        try:
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s)
            try:
                rows = conn.execute(sql, args).fetchall()
            finally:
                conn.close()
        except (sqlite3.Error, OSError) as exc:
            raise AccessLogError(f"cannot read access log {self.path}: {exc}") from exc
        return [(Event(event, t, wall, name, distance, track, detail or ""), door_id)
                for event, t, wall, name, distance, track, detail, door_id in reversed(rows)]

    def close(self, timeout: float = 2.0) -> None:
        """Write what is queued, for up to `timeout`; what is left stays in the spool for the next start."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._close_by = time.monotonic() + timeout
            self._cond.notify_all()
        self._thread.join(timeout + self.busy_timeout_s + 1.0)
        with self._cond:
            if self._pending:
                log.warning("access log: %d event(s) not yet in %s; they stay in %s for the next start",
                            len(self._pending), self.path, self.spool if self._owns_spool else "memory (lost)")
            if self._spool_fd is not None:
                os.close(self._spool_fd)  # also releases the flock
                self._spool_fd = None

    # ---- the spool (called with the condition held) ---------------------------------------------

    def _take_spool(self) -> None:
        """Own the spool if no other process does, and queue what a previous run left in it."""
        try:
            private_dir(self.spool.parent)
            fd = os.open(self.spool, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        except OSError as exc:
            self._spool_failed(exc)
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            log.debug("access log spool %s is owned by another process", self.spool)
            return
        self._spool_fd, self._spool_ino, self._owns_spool = fd, os.fstat(fd).st_ino, True
        with open(self.spool, "rb") as f:
            lines = f.read().splitlines()
        for line in lines:
            try:
                row = json.loads(line)
                self._pending.append({k: row[k] for k in _FIELDS})
            except (ValueError, KeyError, TypeError):  # a line torn by a crash mid-write
                log.warning("access log spool %s: skipping a damaged line (%d bytes)", self.spool, len(line))
        if self._pending:
            log.info("access log: replaying %d event(s) from %s", len(self._pending), self.spool)
        if len(self._pending) != len(lines):
            self._spool_rewrite()

    def _spool_append(self, row: dict) -> None:
        if not self._owns_spool:
            return
        try:
            if self._spool_fd is None or _ino(self.spool) != self._spool_ino:  # deleted or replaced under us
                self._spool_reopen()
                return
            os.write(self._spool_fd, _line(row))
            os.fsync(self._spool_fd)
        except OSError as exc:
            self._spool_failed(exc)
            return
        self._spool_ok()

    def _spool_reopen(self) -> None:
        """The spool file went away (its folder deleted...): a new one with every pending row."""
        if self._spool_fd is not None:
            os.close(self._spool_fd)
            self._spool_fd = None
        private_dir(self.spool.parent)
        fd = os.open(self.spool, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._spool_fd, self._spool_ino = fd, os.fstat(fd).st_ino
        self._spool_rewrite()

    def _spool_rewrite(self) -> None:
        os.ftruncate(self._spool_fd, 0)
        os.write(self._spool_fd, b"".join(_line(r) for r in self._pending))
        os.fsync(self._spool_fd)
        self._spool_ok()

    def _spool_empty(self) -> None:
        if self._spool_fd is None:
            return
        try:
            if _ino(self.spool) == self._spool_ino:
                os.ftruncate(self._spool_fd, 0)
        except OSError as exc:
            self._spool_failed(exc)

    def _spool_ok(self) -> None:
        if self._spool_failing:
            log.info("access log spool %s is writable again", self.spool)
            self._spool_failing = False

    def _spool_failed(self, exc: BaseException) -> None:
        if not self._spool_failing:
            log.warning("access log: cannot write the spool %s (%s: %s); events are kept in memory until "
                        "the database takes them", self.spool, type(exc).__name__, exc)
            self._spool_failing = True

    # ---- the writer thread -----------------------------------------------------------------------

    def _writer(self) -> None:
        try:
            self._insert([])  # create the file and its schema now, so readers find them
            while True:
                with self._cond:
                    while not self._pending and not self._closed and time.monotonic() < self._next_prune:
                        self._cond.wait(None if self._next_prune == float("inf")
                                        else max(0.0, self._next_prune - time.monotonic()))
                    if self._closed and not self._pending or time.monotonic() >= self._close_by:
                        return
                    batch = list(self._pending)
                if time.monotonic() >= self._next_prune:
                    self._prune()
                if not batch:
                    continue
                ok = self._insert(batch)
                with self._cond:
                    if ok:
                        del self._pending[:len(batch)]
                        self._written += len(batch)
                        if not self._pending and self._owns_spool:
                            self._spool_empty()
                        self._cond.notify_all()
                    else:
                        self._cond.wait(min(self.retry_s, max(0.0, self._close_by - time.monotonic())))
        finally:
            self._drop_connection()

    def _prune(self) -> None:
        """Retention: delete the events and snapshots older than `keep_days` (on the writer thread)."""
        self._next_prune = time.monotonic() + PRUNE_RETRY_S
        cutoff = time.time() - self.keep_days * 86400.0
        try:
            events = self._connection().execute("DELETE FROM events WHERE wall < ?", (cutoff,)).rowcount
            snapshots = 0
            if self.snapshots_dir is not None and self.snapshots_dir.is_dir():
                for snap in self.snapshots_dir.glob("*.jpg"):
                    if snap.stat().st_mtime < cutoff:
                        snap.unlink(missing_ok=True)
                        snapshots += 1
        except (sqlite3.Error, OSError) as exc:  # a log that cannot be written was already warned about
            log.log(logging.DEBUG if self._failing else logging.WARNING, "access log: retention (keep_days %g) "
                    "failed (%s: %s); tried again in an hour", self.keep_days, type(exc).__name__, exc)
            self._drop_connection()
            return
        self._next_prune = time.monotonic() + PRUNE_EVERY_S
        if events or snapshots:
            log.info("access log: deleted %d event(s) and %d snapshot(s) older than %g days", events, snapshots,
                     self.keep_days)

    def _insert(self, rows: list[dict]) -> bool:
        """All `rows` in one transaction (a replayed row is ignored: exactly once); False on failure."""
        try:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(f"INSERT OR IGNORE INTO events({', '.join(_FIELDS)}) "
                                 f"VALUES ({', '.join('?' * len(_FIELDS))})",
                                 [tuple(r[k] for k in _FIELDS) for r in rows])
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                raise
        except Exception as exc:  # locked, read-only, deleted folder, not a database: retried
            if not self._failing:
                log.warning("access log: cannot write to %s (%s: %s); events are kept and written when it works "
                            "again", self.path, type(exc).__name__, exc)
                self._failing = True
            self._drop_connection()  # reopen next time: the cause may be gone by then
            return False
        if self._failing:
            log.info("access log %s is writable again", self.path)
            self._failing = False
        return True

    def _connection(self) -> sqlite3.Connection:
        """The open connection; reopened when the file was deleted or replaced under it."""
        if self._conn is not None and _ino(self.path) == self._conn_ino:
            return self._conn
        self._drop_connection()
        private_file(self.path)  # 0600 before SQLite opens it: its -wal and -shm get the same mode
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT)
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, check_same_thread=False, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")  # readers (`door-access log`) never block the writer
            conn.execute("PRAGMA secure_delete=ON")  # deleted events are overwritten, not left in free pages
            conn.execute(_SCHEMA)
            _add_missing_columns(conn)
            conn.execute("CREATE UNIQUE INDEX IF NOT EXISTS events_uid ON events(uid)")
        except BaseException:
            conn.close()
            raise
        self._conn, self._conn_ino = conn, _ino(self.path)
        return conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except sqlite3.Error:
                pass
            self._conn = None


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    """A log written by an older version gets the columns it lacks (NULL in its old rows)."""
    have = {row[1] for row in conn.execute("PRAGMA table_info(events)")}
    for column, kind in _ADDED_COLUMNS.items():
        if column in have:
            continue
        try:
            conn.execute(f"ALTER TABLE events ADD COLUMN {column} {kind}")
        except sqlite3.OperationalError as exc:  # another door process sharing the log added it first
            if "duplicate column" not in str(exc):
                raise


def _ino(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


def _text(value: str | None) -> str | None:
    """Names from file names may hold undecodable bytes (surrogates): kept as escapes SQLite can store."""
    if value is None:
        return None
    try:
        raw = str(value).encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = str(value).encode("utf-8", "backslashreplace")
    return raw.decode("utf-8", "backslashreplace")


def _row(uid: str, e: Event, door: str | None) -> dict:
    return {"uid": uid, "wall": float(e.wall), "t": float(e.t), "event": str(e.event), "name": _text(e.name),
            "distance": None if e.distance is None else float(e.distance),
            "track": None if e.track is None else int(e.track), "detail": _text(e.detail) or "", "door": door}


def _line(row: dict) -> bytes:
    return (json.dumps(row, ensure_ascii=True) + "\n").encode("ascii")


def format_event(e: Event) -> str:
    """One human-readable line for `door-access log`: local time, event, name, distance, track, detail."""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.wall))
    name = _one_line(e.name) if e.name is not None else "-"
    distance = f"{e.distance:.3f}" if e.distance is not None else "-"
    track = f"track {e.track}" if e.track is not None else "-"
    line = f"{when}  {e.event:<11}  {name:<20}  {distance:>6}  {track}"
    return f"{line}  {_one_line(e.detail)}" if e.detail else line


def _one_line(text: str) -> str:
    """Control characters (a newline in a file name, say) escaped, so one event stays one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


# ---- the per-person budget: failed attempts and suspensions, beside the events ----------------------

_LEDGER_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS person_failures(id INTEGER PRIMARY KEY, name TEXT NOT NULL, wall REAL NOT NULL, "
    "door TEXT)",
    "CREATE INDEX IF NOT EXISTS person_failures_name ON person_failures(name, wall)",
    "CREATE TABLE IF NOT EXISTS suspensions(name TEXT PRIMARY KEY, wall REAL NOT NULL, door TEXT, detail TEXT)",
)
DAY_S = 86400.0


class PersonLedger:
    """Failed attempts per person over the last `window_s` and the suspensions they led to, in two tables of
    the access log's SQLite file: a restart or a crash keeps them, every door sharing the log shares each
    person's budget, and `door-access release` (another process) ends a suspension the running door sees at
    its next look. Written at once (a failed attempt is rare), never through the events' spool.

    The database is the authority; what this process did is also kept in memory, and used, fail closed,
    while the database cannot be read or written: a suspension seen or made here holds until the database
    says it was released, and what could not be written is written with the next write that works (a
    busy database must not undo a suspension or lose a failure). `path=None` keeps everything in memory."""

    def __init__(self, path: Path | None, window_s: float = DAY_S, door_id: str | None = None,
                 busy_timeout_s: float = 0.5):
        self.path = Path(path) if path is not None else None
        self.window_s, self.door_id, self.busy_timeout_s = window_s, door_id, busy_timeout_s
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._failing = False
        self._failures: dict[str, list[float]] = {}  # this process's, for when the database fails
        self._suspended: dict[str, str] = {}  # name -> detail: seen or made here
        self._unsaved: list[tuple[str, float, str | None]] = []  # (name, wall, suspension detail or None: a failure)

    def failed(self, name: str, wall: float) -> int:
        """Count a failed attempt that named `name`; how many fell within the window up to now."""
        with self._lock:
            mine = [w for w in self._failures.get(name, []) if w > wall - self.window_s] + [wall]
            self._failures[name] = mine

            def count(db):
                db.execute("DELETE FROM person_failures WHERE wall <= ?", (wall - self.window_s,))
                return db.execute("SELECT COUNT(*) FROM person_failures WHERE name = ? AND wall > ?",
                                  (_text(name), wall - self.window_s)).fetchone()[0]

            counted = self._write((name, wall, None), count)
            return len(mine) if counted is None else int(counted)

    def suspend(self, name: str, wall: float, detail: str) -> None:
        with self._lock:
            self._suspended[name] = detail
            self._write((name, wall, detail))

    def _write(self, row: tuple[str, float, str | None] | None = None, then=None):
        """Write `row` and whatever earlier writes could not, then `then(db)`, in one transaction; None
        when the database fails (the rows wait for the next write)."""
        if row is not None:
            self._unsaved.append(row)

        def write(db):
            for who, wall, detail in self._unsaved:
                if detail is None:
                    db.execute("INSERT INTO person_failures(name, wall, door) VALUES (?, ?, ?)",
                               (_text(who), wall, self.door_id))
                else:
                    db.execute("INSERT OR REPLACE INTO suspensions(name, wall, door, detail) VALUES (?, ?, ?, ?)",
                               (_text(who), wall, self.door_id, detail))
            return then(db) if then is not None else True

        out = self._db(write, write=True)
        if out is not None:
            self._unsaved.clear()
        return out

    def suspended(self, name: str) -> str | None:
        """Why `name` is suspended, or None. A database that cannot be read leaves what this process knows."""
        with self._lock:
            row = self._db(lambda db: db.execute("SELECT detail FROM suspensions WHERE name = ?",
                                                 (_text(name),)).fetchone() or ("",))
            if row is None:
                return self._suspended.get(name)
            if row[0]:
                self._suspended[name] = row[0]
                return row[0]
            if name in self._suspended:
                if any(who == name and detail for who, _, detail in self._unsaved):  # never written yet
                    self._write()
                    return self._suspended[name]
                del self._suspended[name]  # released by another process (`door-access release`)
                self._failures.pop(name, None)
            return None

    def release(self, name: str) -> tuple[bool, int]:
        """End `name`'s suspension and clear their counted failures: (was suspended, failures cleared).
        Raises AccessLogError when the database cannot be written (nothing is released then)."""
        with self._lock:
            def clear(db):
                was = db.execute("DELETE FROM suspensions WHERE name = ?", (_text(name),)).rowcount
                return was, db.execute("DELETE FROM person_failures WHERE name = ?", (_text(name),)).rowcount

            done = self._db(clear, write=True)
            if done is None:
                raise AccessLogError(f"cannot release {name}: the access log {self.path} cannot be written")
            self._suspended.pop(name, None)
            self._failures.pop(name, None)
            self._unsaved = [row for row in self._unsaved if row[0] != name]
            return bool(done[0]), int(done[1])

    def suspensions(self) -> dict[str, str]:
        """Everyone suspended now (name -> detail)."""
        with self._lock:
            rows = self._db(lambda db: db.execute("SELECT name, detail FROM suspensions ORDER BY wall").fetchall())
            return dict(rows) if rows is not None else dict(self._suspended)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _db(self, work, write: bool = False):
        """`work(connection)`, in one write transaction when `write` (a read takes no lock: the decider
        asks at each vote); None (logged once) when the database fails."""
        try:
            if self._conn is None:
                if self.path is not None:
                    private_file(self.path)  # 0600 before SQLite opens it, as the log's own writer does
                conn = sqlite3.connect(self.path or ":memory:", timeout=self.busy_timeout_s,
                                       check_same_thread=False, isolation_level=None)
                conn.execute("PRAGMA journal_mode=WAL")
                for statement in _LEDGER_SCHEMA:
                    conn.execute(statement)
                self._conn = conn
            if not write:
                out = work(self._conn)
            else:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    out = work(self._conn)
                    self._conn.execute("COMMIT")
                except BaseException:
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                    raise
        except (sqlite3.Error, OSError) as exc:
            if not self._failing:
                log.error("access log %s: cannot keep the per-person failure counts (%s: %s); this process "
                          "keeps its own meanwhile", self.path, type(exc).__name__, exc)
                self._failing = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            return None
        if self._failing:
            log.info("access log %s: per-person failure counts are written again", self.path)
            self._failing = False
        return out

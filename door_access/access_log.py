"""The access log: every unlock, denial, relock and fault, in a SQLite file that survives restarts.

Writing to the log must never stop the door: `record()` swallows every failure (read-only or
missing folder, a database locked by another process, a corrupt file), logs one warning per
failure episode and returns False. It reopens the database on the next call, so a log that
becomes writable again picks up where it left off.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

from .core import Event

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


class AccessLogError(Exception):
    """The access log cannot be read; the message names the file and the reason."""


class AccessLog:
    """The SQLite access log, safe to write from one thread while others read it."""

    def __init__(self, path: Path, busy_timeout_s: float = 2.0, door_id: str | None = None):
        self.path = Path(path)
        self.door_id = door_id  # written in each row's `door` column (several doors may share one log)
        self.busy_timeout_s = busy_timeout_s
        self._lock = threading.Lock()  # one connection, shared by the worker that writes and the readers
        self._conn: sqlite3.Connection | None = None
        self._failing = False  # a warning was logged and nothing has succeeded since
        self._closed = False
        with self._lock:
            try:
                self._connection()
            except Exception as exc:  # the app runs without a log rather than not at all
                self._failed("cannot open", exc)

    def record(self, event: Event) -> bool:
        """Append `event`; False (and one warning per failure episode) when it could not be written."""
        with self._lock:
            if self._closed:
                log.debug("access log %s is closed; not recording %s", self.path, event.event)
                return False
            try:
                self._connection().execute(
                    "INSERT INTO events(wall, t, event, name, distance, track, detail, door)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (float(event.wall), float(event.t), event.event, event.name,
                     None if event.distance is None else float(event.distance),
                     None if event.track is None else int(event.track), event.detail, self.door_id),
                )
            except Exception as exc:  # never raise into the worker: the door decides without the log
                self._failed("cannot write to", exc)
                return False
            if self._failing:
                log.info("access log %s is writable again", self.path)
                self._failing = False
            return True

    def last(self, n: int) -> list[Event]:
        """The newest `n` events, oldest first; raises AccessLogError when the log cannot be read."""
        if n <= 0:
            return []
        with self._lock:
            if self._closed:
                raise AccessLogError(f"access log {self.path} is closed")
            try:
                rows = self._connection().execute(
                    "SELECT event, t, wall, name, distance, track, detail FROM events ORDER BY id DESC LIMIT ?", (n,)
                ).fetchall()
            except (sqlite3.Error, OSError) as exc:
                self._drop_connection()
                raise AccessLogError(f"cannot read access log {self.path}: {exc}") from exc
        return [Event(event, t, wall, name, distance, track, detail or "")
                for event, t, wall, name, distance, track, detail in reversed(rows)]

    def query(self, door: str | None = None, person: str | None = None, since: float | None = None,
              last: int | None = None) -> list[tuple[Event, str | None]]:
        """(event, door id) of the events matching every filter given, oldest first: the newest `last` of them."""
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
        with self._lock:
            if self._closed:
                raise AccessLogError(f"access log {self.path} is closed")
            try:
                rows = self._connection().execute(sql, args).fetchall()
            except (sqlite3.Error, OSError) as exc:
                self._drop_connection()
                raise AccessLogError(f"cannot read access log {self.path}: {exc}") from exc
        return [(Event(event, t, wall, name, distance, track, detail or ""), door_id)
                for event, t, wall, name, distance, track, detail, door_id in reversed(rows)]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._drop_connection()

    # ---- internals (called with the lock held) ---------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        """The open connection, (re)opening the database when a previous attempt failed."""
        if self._conn is not None:
            return self._conn
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: autocommit, so each INSERT is its own transaction and holds no lock afterwards
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, check_same_thread=False, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")  # readers (`door-access log`) never block the writer
            conn.execute(_SCHEMA)
            _add_door_column(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except sqlite3.Error:
                pass
            self._conn = None

    def _failed(self, what: str, exc: BaseException) -> None:
        if not self._failing:
            log.warning("access log: %s %s (%s: %s); events are not recorded until it works again",
                        what, self.path, type(exc).__name__, exc)
            self._failing = True
        self._drop_connection()  # reopen on the next call: the cause may be gone by then


def _add_door_column(conn: sqlite3.Connection) -> None:
    """Logs written before doors had ids get a `door` column (NULL in their old rows)."""
    if "door" in {row[1] for row in conn.execute("PRAGMA table_info(events)")}:
        return
    try:
        conn.execute("ALTER TABLE events ADD COLUMN door TEXT")
    except sqlite3.OperationalError as exc:  # another door process added it first
        if "duplicate column" not in str(exc):
            raise


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

"""`door-access review`: recent denied (or admitted) attempts with their snapshots, to train from.

The access log holds the decision (time, closest person, distance); actions.py names each
snapshot after its event (`snapshot_pattern`), so an attempt's photo is found from its log row
alone. An attempt's ID is its access-log row id: `door-access enroll NAME --from-snapshot ID`
adds that face to NAME, as face-recognition NVRs let users train from recent recognitions.
"""

from __future__ import annotations

import re
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from door_access.config import Config
from door_access.core import DENIED, Event
from door_access.door.access_log import AccessLogError
from door_access.door.actions import snapshot_pattern

_CLOSEST = re.compile(r"closest: ([^)]+)\)")


@dataclass(frozen=True)
class Attempt:
    id: int
    event: Event
    snapshot: Path | None

    @property
    def closest(self) -> str | None:
        """The person the face was closest to: the named person, or the closest one in the detail."""
        if self.event.name:
            return self.event.name
        m = _CLOSEST.search(self.event.detail or "")
        return m.group(1) if m else None

    def as_dict(self) -> dict:
        e = self.event
        return {"id": self.id, "event": e.event, "time": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.wall)),
                "closest": self.closest, "distance": None if e.distance is None else round(e.distance, 4),
                "detail": e.detail, "snapshot": str(self.snapshot) if self.snapshot else None}


def _rows(cfg: Config, where: str, params: tuple, limit: int = -1) -> list[tuple]:
    path = cfg.resolve(cfg.access_log.path)
    if not path.is_file():
        raise AccessLogError(f"no access log at {path} yet")
    try:
        conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=2.0)
        try:
            return conn.execute("SELECT id, event, t, wall, name, distance, track, detail FROM events "
                                f"WHERE {where} ORDER BY id DESC LIMIT ?", (*params, limit)).fetchall()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise AccessLogError(f"cannot read access log {path}: {exc}") from exc


def _attempt(cfg: Config, row: tuple) -> Attempt:
    rid, kind, t, wall, name, distance, track, detail = row
    event = Event(kind, t, wall, name, distance, track, detail or "")
    snapshot = None
    if cfg.access_log.snapshots_dir:
        found = sorted(cfg.resolve(cfg.access_log.snapshots_dir).glob(snapshot_pattern(event)))
        snapshot = found[0] if found else None
    return Attempt(int(rid), event, snapshot)


def recent_attempts(cfg: Config, last: int, kinds: tuple[str, ...] = (DENIED,)) -> list[Attempt]:
    """The newest `last` attempts of these kinds, newest first."""
    marks = ",".join("?" * len(kinds))
    return [_attempt(cfg, r) for r in _rows(cfg, f"event IN ({marks})", kinds, int(last))]


def attempt_by_id(cfg: Config, attempt_id: int) -> Attempt:
    rows = _rows(cfg, "id = ?", (int(attempt_id),))
    if not rows:
        raise AccessLogError(f"no event with id {attempt_id} in the access log (see `door-access review`)")
    return _attempt(cfg, rows[0])

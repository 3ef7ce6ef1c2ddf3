"""`door-access forget NAME`: erase a person: photos, cached templates, verified live samples, snapshots, policy
entry; the log keeps their events under a pseudonym.

The pseudonym is "forgotten-" and a random id that is stored nowhere: the same for every event of
the person in this log (an auditor still sees that one person came five times), and not
reversible from the log. The log and the cache are rewritten with SQLite's secure_delete and the
log's WAL is checkpointed and truncated, so the name and the templates are not left in free
pages. The spool (events not yet in SQLite) is rewritten too when no door holds it; a running
door holds it, and is given time to drop the person (its gallery poll) and write its queue first.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import secrets
import shutil
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from door_access.config import Config, ConfigError, compose_yaml
from door_access.core import DENIED, UNLOCK, Event
from door_access.door.access_log import AccessLogError, spool_path
from door_access.door.actions import snapshot_pattern
from door_access.door.policy import parse_policy
from door_access.files import sha256_file, write_private
from door_access.liveness.live_samples import LiveSamples, store_path
from door_access.recognition.gallery import prune_cache, scan_images

log = logging.getLogger(__name__)


class ForgetError(ValueError):
    """A store that could not be rewritten; the message says what was already removed (exit code 2)."""


@dataclass
class Erasure:
    """What `forget` found of a person (before) and removed (after `erase`)."""

    name: str
    photos: list[Path] = field(default_factory=list)  # enrolled photo files
    folder: Path | None = None  # images/NAME/, removed whole (photos, and anything else in it)
    events: int = 0  # access-log rows that name the person (renamed, kept)
    policy: bool = False  # an entry in people.yaml
    door_running: bool = False  # a door holds the access log's spool
    pseudonym: str = ""
    cache_rows: int = 0
    cache_asides: list[Path] = field(default_factory=list)  # embeddings.sqlite.bad-* (unusable caches)
    snapshots: list[Path] = field(default_factory=list)
    spooled: int = 0  # spooled events renamed
    live_samples: int = 0  # verified live entries erased (liveness/live_samples.py)

    @property
    def found(self) -> bool:
        return bool(self.photos or self.folder or self.events or self.policy or self.live_samples)

    def as_dict(self) -> dict:
        return {"name": self.name, "photos": [str(p) for p in self.photos],
                "folder": str(self.folder) if self.folder else None, "cache_rows": self.cache_rows,
                "cache_asides": [str(p) for p in self.cache_asides], "snapshots": [str(p) for p in self.snapshots],
                "policy_entry": self.policy, "events_renamed": self.events, "spooled_renamed": self.spooled,
                "pseudonym": self.pseudonym, "door_running": self.door_running,
                "live_samples": self.live_samples}


def survey(cfg: Config, images_dir: Path, name: str) -> Erasure:
    """What there is of `name`: nothing is changed."""
    e = Erasure(name)
    if Path(images_dir).is_dir():  # paths come from the folder's listing, never from `name` (no "../x")
        e.folder = next((d for d in Path(images_dir).iterdir() if d.name == name and d.is_dir()), None)
        e.photos = [p for who, p in scan_images(images_dir)[0] if who == name]
    log_path = cfg.resolve(cfg.access_log.path)
    if log_path.is_file():
        try:
            with closing(sqlite3.connect(f"{log_path.as_uri()}?mode=ro", uri=True, timeout=5)) as db:
                e.events = sum(1 for row in db.execute("SELECT name, detail FROM events WHERE name = ? OR "
                                                       "instr(detail, ?) > 0", (name, name))
                               if _names(row, name))
                suspended = _has_table(db, "suspensions") and db.execute(
                    "SELECT 1 FROM suspensions WHERE name = ?", (name,)).fetchone()
        except sqlite3.Error as exc:
            raise AccessLogError(f"cannot read access log {log_path}: {exc}") from exc
        if suspended:  # forgetting and enrolling again must not lift it unseen
            raise ForgetError(f"{name} is suspended after repeated failed attempts: release them first "
                              f"(`door-access release {name}`, recorded as an alarm), then forget them")
    people = cfg.path("people")
    e.policy = people.is_file() and name in parse_policy(people.read_text(encoding="utf-8"), people).rules
    e.door_running = _spool_held(spool_path(log_path))
    try:
        e.live_samples = sum(1 for x in LiveSamples(store_path(cfg), cfg.live_samples).entries() if x.name == name)
    except ValueError as exc:
        log.warning("forget: %s", exc)  # erase() says what to do when it cannot rewrite the file
    return e


def erase(cfg: Config, images_dir: Path, e: Erasure, settle_s: float) -> Erasure:
    """Remove what `survey` found. With a door running, wait `settle_s` after removing the photos (its gallery
    drops the person at its next poll and writes its queued events) before the log is rewritten."""
    for photo in e.photos:
        photo.unlink(missing_ok=True)
    if e.folder is not None:
        if e.folder.is_symlink():  # a link to a folder elsewhere: its photos went above, the link goes now
            e.folder.unlink()
        else:
            shutil.rmtree(e.folder)
    if e.door_running and settle_s > 0:
        log.info("forget: a door is running on this log: waiting %.1f s for it to drop %s", settle_s, e.name)
        time.sleep(settle_s)
    cache = cfg.path("cache") / "embeddings.sqlite"
    if cache.is_file():
        keep = set()
        if Path(images_dir).is_dir():
            for _who, photo in scan_images(images_dir)[0]:
                try:
                    keep.add(sha256_file(photo))
                except OSError:
                    pass
        try:
            e.cache_rows = prune_cache(cache, keep)
        except sqlite3.Error as exc:
            raise ForgetError(f"the photos of {e.name} are removed, but the embedding cache {cache} cannot be pruned "
                              f"({exc}): delete that file (it is only a cache), then run forget again") from exc
    try:
        e.live_samples = LiveSamples(store_path(cfg), cfg.live_samples).forget(e.name)
    except (OSError, ValueError) as exc:
        raise ForgetError(f"the photos of {e.name} are removed, but their live samples cannot be erased ({exc}): "
                          f"delete {store_path(cfg)} (the door collects them again), then run forget again") from exc
    for aside in sorted(cache.parent.glob(cache.name + ".bad-*")):  # unusable caches that may hold templates
        aside.unlink(missing_ok=True)
        e.cache_asides.append(aside)
    e.pseudonym = "forgotten-" + secrets.token_hex(6)
    try:
        _rewrite_log(cfg, e)
    except sqlite3.Error as exc:
        raise ForgetError(f"the photos and templates of {e.name} are removed, but the access log cannot be "
                          f"rewritten ({exc}): run forget again") from exc
    if e.policy:
        _drop_policy(cfg.path("people"), e.name)
    return e


def _names(row: tuple, name: str) -> bool:
    """Whether a log row (name, detail) names the person: as its name, its closest match or in a conflict."""
    who, detail = row
    return who == name or _rename_detail(detail or "", name, "") != (detail or "")


def _rename_detail(detail: str, name: str, pseudonym: str) -> str:
    """The decider's detail texts that carry a name ("unknown face (closest: N)", "conflict: one track named
    A and B"), with `name` replaced; any other text is left as it is."""
    n = re.escape(name)
    detail = re.sub(rf"(closest: ){n}\)", lambda m: f"{m.group(1)}{pseudonym})", detail)
    detail = re.sub(rf"^(conflict: one track named ){n}( and )", lambda m: m.group(1) + pseudonym + m.group(2),
                    detail)
    return re.sub(rf"^(conflict: one track named .* and ){n}$", lambda m: m.group(1) + pseudonym, detail)


def _rewrite_log(cfg: Config, e: Erasure) -> None:
    path = cfg.resolve(cfg.access_log.path)
    snapshots = cfg.resolve(cfg.access_log.snapshots_dir) if cfg.access_log.snapshots_dir else None
    if path.is_file():
        with closing(sqlite3.connect(path, timeout=10, isolation_level=None)) as db:
            db.execute("PRAGMA secure_delete=ON")  # the old name is overwritten, not left in a free page
            db.execute("BEGIN IMMEDIATE")
            rows = db.execute("SELECT id, event, t, wall, name, track, detail FROM events WHERE name = ? OR "
                              "instr(detail, ?) > 0", (e.name, e.name)).fetchall()
            e.events = 0
            for rid, kind, t, wall, who, track, detail in rows:
                renamed = _rename_detail(detail or "", e.name, e.pseudonym)
                if who != e.name and renamed == (detail or ""):
                    continue
                e.events += 1
                db.execute("UPDATE events SET name = ?, detail = ? WHERE id = ?",
                           (e.pseudonym if who == e.name else who, renamed, rid))
                if snapshots is not None and kind in (DENIED, UNLOCK):
                    for snap in sorted(snapshots.glob(snapshot_pattern(Event(kind, t, wall, track=track)))):
                        snap.unlink(missing_ok=True)
                        e.snapshots.append(snap)
            if _has_table(db, "person_failures"):  # their counted failed attempts: renamed with their events
                db.execute("UPDATE person_failures SET name = ? WHERE name = ?", (e.pseudonym, e.name))
            db.execute("COMMIT")
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the WAL's copies of the old pages are gone too
    e.spooled = _rewrite_spool(spool_path(path), e.name, e.pseudonym)


def _has_table(db: sqlite3.Connection, table: str) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone() is not None


def _spool_held(spool: Path) -> bool:
    """Whether a running door holds the log's spool (its flock)."""
    try:
        fd = os.open(spool, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def _rewrite_spool(spool: Path, name: str, pseudonym: str) -> int:
    """Rename the person in events still queued in the spool (when no door holds it); how many."""
    try:
        fd = os.open(spool, os.O_RDWR)
    except FileNotFoundError:
        return 0
    try:
        held = False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            held = True  # a running door's: read only
        with open(spool, "rb") as f:
            lines = f.read().splitlines()
        out, renamed = [], 0
        for line in lines:
            try:
                row = json.loads(line)
            except ValueError:
                out.append(line)  # a torn line: the log skips it at replay
                continue
            if isinstance(row, dict) and _names((row.get("name"), row.get("detail")), name):
                if held:
                    renamed += 1
                    continue
                row["name"] = pseudonym if row.get("name") == name else row.get("name")
                row["detail"] = _rename_detail(row.get("detail") or "", name, pseudonym)
                renamed += 1
                line = json.dumps(row, ensure_ascii=True).encode("ascii")
            out.append(line)
        if held:
            if renamed:
                log.warning("forget: the running door has %d event(s) naming %s not yet in the log (%s); run forget "
                            "again once it has written them", renamed, name, spool)
            return 0
        if renamed:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, b"".join(line + b"\n" for line in out))
            os.fsync(fd)
        return renamed
    finally:
        os.close(fd)


def _drop_policy(path: Path, name: str) -> None:
    """people.yaml without `name`'s entry, the rest (comments included) untouched; written atomically with the
    file's mode. An entry that cannot be cut out by lines (flow style) raises ConfigError."""
    text = path.read_text(encoding="utf-8")
    node = compose_yaml(text, path)
    lines = text.splitlines(keepends=True)
    for key, value in node.value if isinstance(node, yaml.MappingNode) else ():
        if str(key.value) != name:
            continue
        end = _last_line(value, key.end_mark.line)
        kept = "".join(lines[:key.start_mark.line] + lines[end + 1:])
        if name in parse_policy(kept, path).rules or key.start_mark.column != 0:
            break
        tmp = path.with_name(f".{path.name}.forget")
        write_private(tmp, kept.encode("utf-8"), path.stat().st_mode & 0o777)
        os.replace(tmp, path)
        return
    raise ConfigError(f"{path}: cannot remove the entry of {name!r} by itself; remove it by hand")


def _last_line(node, line: int) -> int:
    """The last line that holds part of `node` (its scalars), so comments after it stay."""
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            line = max(_last_line(k, line), _last_line(v, line))
        return line
    if isinstance(node, yaml.SequenceNode) and node.flow_style is False:
        for item in node.value:
            line = max(line, _last_line(item, line))
        return line
    end = node.end_mark
    return max(line, end.line - 1 if end.column == 0 and end.line > node.start_mark.line else end.line)

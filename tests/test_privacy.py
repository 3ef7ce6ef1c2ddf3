"""Biometric data private by default and erasable: real files' modes, the cache pruned, retention, `forget`.

Modes are read from the real files the door writes (SQLite's own -wal, -shm and -journal included),
under a permissive umask (022), so the modes come from the writers themselves, not from the CLI's umask.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import stat
import subprocess
import sys
import time
from contextlib import closing

import numpy as np
import pytest

from door_access.config import AccessLogConfig, ConfigError
from door_access.core import DENIED, UNLOCK, Event, Notice
from door_access.door.access_log import AccessLog, spool_path
from door_access.faces.photos import load_rgb
from door_access.recognition.enrollment import Quality, Shot, write_photos
from door_access.recognition.gallery import EmbeddingCache
from door_access.tools.forget import _drop_policy, _rename_detail, _rewrite_spool

from conftest import FR_IMAGES, REPO, make_config, wait_for, write_site

DOOR = [sys.executable, "-m", "door_access"]
CLI_ENV = dict(os.environ, PYTHONPATH=str(REPO))


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def open_umask():
    """A permissive umask, as a service manager or a shell may give: the writers must not rely on the CLI's."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_log_spool_and_sqlite_side_files_are_created_0600_in_a_0700_folder(tmp_path, open_umask):
    path = tmp_path / "logs" / "log.sqlite"
    log = AccessLog(path)
    try:
        for i in range(3):
            assert log.record(Event(DENIED, float(i), time.time(), "alice", 0.5, i, "unknown face (closest: alice)"))
        assert log.flush(10)
        files = {p.name: mode(p) for p in path.parent.iterdir()}
    finally:
        log.close()
    assert mode(path.parent) == 0o700
    assert files == {"log.sqlite": 0o600, "log.sqlite-wal": 0o600, "log.sqlite-shm": 0o600,
                     "log.sqlite.spool.jsonl": 0o600}, files


def test_embedding_cache_its_journal_and_moved_aside_copies_are_0600(tmp_path, open_umask):
    path = tmp_path / "cache" / "embeddings.sqlite"
    cache = EmbeddingCache(path, "key")
    cache.put([("a" * 64, np.ones(128, np.float32), None)])
    assert mode(path.parent) == 0o700 and mode(path) == 0o600
    with closing(sqlite3.connect(path, isolation_level=None)) as db:  # a write in progress: the rollback journal
        db.execute("BEGIN IMMEDIATE")
        db.execute("DELETE FROM embeddings")
        journal = path.with_name(path.name + "-journal")
        assert journal.exists() and mode(journal) == 0o600
        db.execute("ROLLBACK")

    old = tmp_path / "old" / "embeddings.sqlite"  # an unusable cache left 0644 by an older version
    old.parent.mkdir()
    old.write_bytes(b"not a database" * 100)
    os.chmod(old, 0o644)
    EmbeddingCache(old, "key")
    asides = list(old.parent.glob("embeddings.sqlite.bad-*"))
    assert len(asides) == 1 and mode(asides[0]) == 0o600 and mode(old) == 0o600


def _shot() -> Shot:
    photo = load_rgb(FR_IMAGES / "obama.jpg", 10**8)
    return Shot("straight", photo, np.zeros((160, 160, 3), np.uint8), Quality(""))


def test_enrollment_photos_are_0600_or_group_readable_in_a_group_shared_folder(tmp_path, open_umask):
    images = tmp_path / "images"
    written = write_photos(images, "alice", [_shot()])
    assert mode(images) == 0o700 and mode(images / "alice") == 0o700 and mode(written[0]) == 0o600
    assert load_rgb(written[0], 10**8).shape == _shot().photo.shape  # a real JPEG

    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o2750)  # several doors' users in one group (setgid: new files keep the folder's group)
    written = write_photos(shared, "bob", [_shot()])
    assert mode(shared / "bob") == 0o750 and mode(written[0]) == 0o640  # never readable by others


def test_snapshots_are_written_0600_in_a_0700_folder(tmp_path, open_umask):
    from door_access.door.actions import Actions
    from door_access.door.speech import Speaker

    snaps = tmp_path / "snaps"
    cfg = make_config(tmp_path, access_log=AccessLogConfig(path=str(tmp_path / "log.sqlite"),
                                                           snapshots_dir=str(snaps)))
    log = AccessLog(cfg.resolve(cfg.access_log.path))
    speaker = Speaker(dataclasses.replace(cfg.tts, enabled=False), None)
    actions = Actions(cfg, log, speaker, emit=lambda e: None, clock=lambda: (time.monotonic(), time.time()))
    actions.start()
    try:
        face = np.full((120, 100, 3), 128, np.uint8)
        actions.submit(Notice(Event(DENIED, time.monotonic(), time.time(), None, 1.2, 4, "x"), face))
        assert wait_for(lambda: len(list(snaps.glob("denied-*.jpg"))) == 1)
    finally:
        actions.stop(5.0)
        log.close()
    assert mode(snaps) == 0o700 and [mode(p) for p in snaps.iterdir()] == [0o600]


def test_keep_days_deletes_older_events_and_snapshots_at_start(tmp_path):
    path, snaps = tmp_path / "log.sqlite", tmp_path / "snaps"
    snaps.mkdir()
    now = time.time()
    log = AccessLog(path)
    for i, age_days in enumerate((40, 31, 29, 0)):
        log.record(Event(UNLOCK, float(i), now - age_days * 86400, f"p{age_days}", 0.4, i))
    log.close()
    for age_days in (40, 0):
        snap = snaps / f"unlock-{age_days}.jpg"
        snap.write_bytes(b"jpeg")
        os.utime(snap, (now - age_days * 86400,) * 2)

    log = AccessLog(path, keep_days=30, snapshots_dir=snaps)  # the writer prunes at start, off the caller
    try:
        assert wait_for(lambda: [e.name for e in log.last(10)] == ["p29", "p0"])
        assert wait_for(lambda: [p.name for p in snaps.iterdir()] == ["unlock-0.jpg"])  # pruned after the rows
        log.record(Event(UNLOCK, 9.0, now, "later", 0.4, 9))  # the log goes on as before
        assert wait_for(lambda: [e.name for e in log.last(10)] == ["p29", "p0", "later"])
    finally:
        log.close()
    forever = AccessLog(path, keep_days=0, snapshots_dir=snaps)
    forever.close()
    assert len(AccessLog(path).last(10)) == 3


def test_pseudonym_replaces_the_name_only_where_the_decider_wrote_it():
    assert _rename_detail("unknown face (closest: al)", "al", "forgotten-1") == "unknown face (closest: forgotten-1)"
    assert _rename_detail("conflict: one track named al and bo", "al", "F") == "conflict: one track named F and bo"
    assert _rename_detail("conflict: one track named bo and al", "al", "F") == "conflict: one track named bo and F"
    assert _rename_detail("no liveness: al not live", "al", "F") == "no liveness: al not live"  # not a name slot
    assert _rename_detail("unknown face (closest: alice)", "al", "F") == "unknown face (closest: alice)"


def test_forget_renames_queued_events_in_the_spool(tmp_path):
    spool = spool_path(tmp_path / "log.sqlite")
    rows = [{"uid": "u1", "wall": 1.0, "t": 1.0, "event": "unlock", "name": "alice", "distance": 0.3, "track": 1,
             "detail": "", "door": "d"},
            {"uid": "u2", "wall": 2.0, "t": 2.0, "event": "denied", "name": None, "distance": 0.9, "track": 2,
             "detail": "unknown face (closest: alice)", "door": "d"},
            {"uid": "u3", "wall": 3.0, "t": 3.0, "event": "unlock", "name": "bob", "distance": 0.3, "track": 3,
             "detail": "", "door": "d"}]
    spool.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert _rewrite_spool(spool, "alice", "forgotten-x") == 2
    assert b"alice" not in spool.read_bytes()
    log = AccessLog(tmp_path / "log.sqlite")  # the next start replays the renamed events
    try:
        assert wait_for(lambda: [(e.name, e.detail) for e in log.last(10)] == [
            ("forgotten-x", ""), (None, "unknown face (closest: forgotten-x)"), ("bob", "")])
    finally:
        log.close()


def test_forget_cuts_only_the_persons_policy_entry_and_keeps_comments(tmp_path):
    people = tmp_path / "people.yaml"
    people.write_text("# staff\nalice:\n  days: [mon, tue]\n  hours:\n    - \"08:00-12:00\"\n"
                      "# bob works nights\nbob:\n  hours: \"22:00-06:00\"\ncarol:\n\"*\":\n  days: [mon]\n")
    os.chmod(people, 0o640)
    _drop_policy(people, "alice")
    assert people.read_text() == ("# staff\n# bob works nights\nbob:\n  hours: \"22:00-06:00\"\ncarol:\n"
                                  "\"*\":\n  days: [mon]\n")
    _drop_policy(people, "carol")
    assert "carol" not in people.read_text() and mode(people) == 0o640
    flow = tmp_path / "flow.yaml"
    flow.write_text("{alice: {days: [mon]}, bob: {days: [tue]}}\n")
    with pytest.raises(ConfigError, match="by hand"):
        _drop_policy(flow, "alice")
    assert "alice" in flow.read_text()


@pytest.mark.model
def test_the_cache_drops_templates_of_photos_gone_at_build_and_at_poll(cfg, detector, encoder, tmp_path):
    import shutil

    from door_access.recognition.gallery import GalleryBuilder

    cfg = make_config(tmp_path)
    images = tmp_path / "images"
    (images / "obama").mkdir(parents=True)
    for name in ("obama.jpg", "obama3.jpg"):
        shutil.copy(FR_IMAGES / name, images / "obama" / name)
    shutil.copy(FR_IMAGES / "biden.jpg", images / "biden.jpg")
    cache = cfg.path("cache") / "embeddings.sqlite"

    def rows() -> int:
        with closing(sqlite3.connect(cache)) as db:
            return db.execute("SELECT count(*) FROM embeddings").fetchone()[0]

    builder = GalleryBuilder(cfg, detector, encoder)
    builder.build(images)
    assert rows() == 3
    (images / "obama" / "obama3.jpg").unlink()
    change = builder.update(images)  # the running door's poll
    assert [p.name for p in change.removed] == ["obama3.jpg"] and rows() == 2
    (images / "biden.jpg").unlink()
    GalleryBuilder(cfg, detector, encoder).build(images)  # a restart
    assert rows() == 1


@pytest.mark.model
def test_enroll_run_check_then_forget_on_real_photos_and_a_real_run(tmp_path, detector, shared_encoder, capsys,
                                                                   monkeypatch, open_umask):
    """`enroll` two people from photos, run the door on a clip of them, `check`, then `forget` one of them.

    The commands run in this process (`main`, on the session's FaceNet): the same CLI, config, exit codes
    and files as the console script, under a permissive umask (022) that the CLI's own must override."""
    import io

    from door_access.cli import main
    from door_access.tools.democlip import Segment, write_clip

    site = write_site(tmp_path, "tts:\n  enabled: false\nliveness:\n  enabled: false\naccess_log:\n"
                                "  path: log.sqlite\ndoor:\n  unlock_seconds: 0.3\n  cooldown_seconds: 4.0\n")
    for photo in (site / "images" / "obama").iterdir():
        photo.unlink()  # enrolled below, by the real command
    (site / "images" / "obama").rmdir()
    (site / "people.yaml").write_text("# front desk\nobama:\n  days: [mon, tue, wed, thu, fri, sat, sun]\n"
                                      "biden:\n  hours: \"00:00-23:59\"\n")

    monkeypatch.chdir(site)
    monkeypatch.setattr(sys, "stdin", io.StringIO())  # no terminal, as under a service or a pipe

    def cli(*args, check=True):
        capsys.readouterr()
        code = main([*args, "--config", str(site / "config.yaml")])
        out, err = capsys.readouterr()
        assert not check or code == 0, err[-3000:]
        assert os.umask(0o022) == 0o022  # main() puts the caller's umask back
        return subprocess.CompletedProcess(args, code, out, err)

    cli("enroll", "obama", "--from", str(FR_IMAGES / "obama.jpg"), str(FR_IMAGES / "obama3.jpg"))
    cli("enroll", "biden", "--from", str(FR_IMAGES / "biden.jpg"))
    segments = [Segment(FR_IMAGES / "obama2.jpg", 2.5), Segment(None, 1.0), Segment(FR_IMAGES / "biden.jpg", 2.5),
                Segment(None, 1.0), Segment(FR_IMAGES / "obama2.jpg", 2.0), Segment(None, 0.5)]
    clip = write_clip(detector, segments, tmp_path / "door.mp4", fps=15.0)
    events = [json.loads(x) for x in cli("run", "--source", str(clip), "--headless", "--events-json").stdout
              .splitlines() if x.startswith("{")]
    assert [e["name"] for e in events if e["event"] == "unlock"] == ["obama", "biden", "obama"], events

    # everything written is private: photos, their folders, the cache, the log and its side files, snapshots
    written = [p for p in site.rglob("*") if p.parent.name in ("obama", "biden", "cache", "snapshots")
               or p.name in ("obama", "biden", "cache", "snapshots") or p.name.startswith("log.sqlite")]
    snapshots = sorted((site / "snapshots").glob("unlock-*.jpg"))
    assert len(snapshots) == 3 and len(written) >= 3 + 3 + 5 + 1
    assert {str(p.relative_to(site)): oct(mode(p)) for p in written if mode(p) not in (0o600, 0o700)} == {}
    assert all(mode(p) == 0o700 for p in written if p.is_dir())
    check = {c["name"]: c for c in json.loads(cli("check", "--json", check=False).stdout)["checks"]}
    assert check["privacy"]["ok"], check["privacy"]
    os.chmod(snapshots[0], 0o644)
    check = {c["name"]: c for c in json.loads(cli("check", "--json", check=False).stdout)["checks"]}
    assert not check["privacy"]["ok"] and str(snapshots[0]) in check["privacy"]["detail"]
    os.chmod(snapshots[0], 0o600)

    with closing(sqlite3.connect(site / "cache" / "embeddings.sqlite")) as db:
        templates = {blob for (blob,) in db.execute("SELECT embedding FROM embeddings")}
    obama_photos = sorted((site / "images" / "obama").iterdir())
    assert len(templates) == 3 and len(obama_photos) == 2

    refused = cli("forget", "obama", check=False)  # no terminal and no --yes: nothing is removed
    assert refused.returncode == 2 and "nothing removed" in refused.stderr
    assert sorted((site / "images" / "obama").iterdir()) == obama_photos

    log = AccessLog(site / "log.sqlite")
    try:  # two unlocks and their relocks; how many relocks name him depends on when the timer fired
        naming = [e for e in log.last(1000) if e.name == "obama" or "obama" in e.detail]
    finally:
        log.close()
    done = json.loads(cli("forget", "obama", "--yes", "--json").stdout)
    assert sorted(done["photos"]) == [str(p) for p in obama_photos] and done["policy_entry"]
    assert done["cache_rows"] == 2 and len(done["snapshots"]) == 2
    assert done["events_renamed"] == len(naming) >= 3, (done, naming)
    pseudonym = done["pseudonym"]
    assert pseudonym.startswith("forgotten-") and not (site / "images" / "obama").exists()
    assert sorted(p.name for p in (site / "snapshots").iterdir()) == [snapshots[1].name]  # biden's stays

    # the events stay, for the audit, under one pseudonym; nothing in the files still says "obama"
    log = AccessLog(site / "log.sqlite")
    try:
        logged = log.last(1000)
    finally:
        log.close()
    unlocks = [(e.name, e.wall) for e in logged if e.event == UNLOCK]
    assert [n for n, _ in unlocks] == [pseudonym, "biden", pseudonym]
    assert all("obama" not in (e.name or "") + e.detail for e in logged)
    for f in site.glob("log.sqlite*"):
        assert b"obama" not in f.read_bytes(), f  # not in a free page, the WAL or the spool either
    cache_bytes = b"".join(f.read_bytes() for f in (site / "cache").glob("embeddings.sqlite*"))
    with closing(sqlite3.connect(site / "cache" / "embeddings.sqlite")) as db:
        left = {blob for (blob,) in db.execute("SELECT embedding FROM embeddings")}
    assert len(left) == 1 and all(t not in cache_bytes for t in templates - left)  # overwritten, not just unlinked
    assert (site / "people.yaml").read_text() == "# front desk\nbiden:\n  hours: \"00:00-23:59\"\n"

    gallery = json.loads(cli("gallery", "--json").stdout)
    assert gallery["people"] == {"biden": 1}
    again = cli("forget", "obama", "--yes", check=False)  # nothing is left of them
    assert again.returncode == 2 and "nothing of 'obama'" in again.stderr


def test_a_plain_group_readable_images_folder_still_gets_private_photos(tmp_path, open_umask):
    images = tmp_path / "images"
    images.mkdir(mode=0o755)  # what `git clone` or `mkdir` leaves: not a deliberate group share
    written = write_photos(images, "alice", [_shot()])
    assert mode(images / "alice") == 0o700 and mode(written[0]) == 0o600


# The running door's clip: obama, nobody for GAP_S (forget runs then: its settle of 2 s included), obama again.
# forget must be done within BEFORE_BACK_S of the unlock; obama's return is denied later than that.
GAP_S = 6.0
BEFORE_BACK_S = 4.5


@pytest.mark.model
def test_forget_on_a_running_door_stops_admitting_the_person(tmp_path, detector, capsys):
    """The real door (a process) plays a clip at its own rate: obama is let in, `forget obama` (in this
    process: `main`) runs while the door runs, then obama comes back: not let in (the gallery dropped them
    at its poll), and the log names nobody."""
    import threading

    from door_access.cli import main
    from door_access.tools.democlip import Segment, write_clip

    site = write_site(tmp_path, "tts:\n  enabled: false\nliveness:\n  enabled: false\naccess_log:\n"
                                "  path: log.sqlite\ndoor:\n  unlock_seconds: 0.3\n  cooldown_seconds: 1.0\n"
                                "pipeline:\n  gallery_poll_s: 0.5\n")
    obama2 = FR_IMAGES / "obama2.jpg"
    clip = write_clip(detector, [Segment(obama2, 2.5), Segment(None, GAP_S), Segment(obama2, 3.0),
                                 Segment(None, 0.5)], tmp_path / "door.mp4", fps=10.0)
    door = subprocess.Popen([*DOOR, "run", "--config", str(site / "config.yaml"), "--source", str(clip),
                             "--realtime", "--headless", "--events-json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=CLI_ENV, cwd=site)
    events: list[dict] = []
    stderr: list[str] = []
    readers = [threading.Thread(target=lambda: [events.append(json.loads(x)) for x in door.stdout
                                                if x.startswith("{")], daemon=True),
               threading.Thread(target=lambda: stderr.extend(door.stderr), daemon=True)]
    for r in readers:
        r.start()
    try:
        assert wait_for(lambda: any(e["event"] == UNLOCK for e in events), timeout=120), "".join(stderr)[-3000:]
        t_unlock, seen = next(e["t"] for e in events if e["event"] == UNLOCK), time.monotonic()
        capsys.readouterr()
        code = main(["forget", "obama", "--yes", "--json", "--config", str(site / "config.yaml")])
        forgotten_after = time.monotonic() - seen  # the clip plays at its own rate: this is clip time too
        forget_out, forget_err = capsys.readouterr()
        assert code == 0, forget_err[-3000:]
        door.wait(timeout=180)
    finally:
        door.kill()
        door.wait()
    for r in readers:
        r.join(5)
    done = json.loads(forget_out)
    assert done["door_running"] and done["events_renamed"] >= 2 and len(done["snapshots"]) == 1
    # obama came back ~GAP_S s of clip after the unlock; the door dropped them well before (its log says so)
    assert forgotten_after < BEFORE_BACK_S, "forget did not finish before obama came back: the machine is too busy"
    assert door.returncode == 0, "".join(stderr)[-3000:]
    assert any("2 removed" in line for line in stderr), "".join(stderr)[-3000:]
    assert [e["name"] for e in events if e["event"] == UNLOCK] == ["obama"]  # only before forget
    assert any(e["event"] == DENIED and e["t"] > t_unlock + BEFORE_BACK_S for e in events), events  # back: a stranger
    log = AccessLog(site / "log.sqlite")
    try:
        logged = log.last(1000)
    finally:
        log.close()
    assert [e.name for e in logged if e.event == UNLOCK] == [done["pseudonym"]]
    assert all("obama" not in (e.name or "") + e.detail for e in logged), logged


def test_forget_takes_names_from_the_folder_never_a_path(tmp_path, capsys):
    from door_access.cli import main

    site = write_site(tmp_path / "site", "")
    (tmp_path / "outside.jpg").write_bytes(b"not to be touched")
    before = sorted(p for p in tmp_path.rglob("*"))
    for name in ("..", "../outside", "obama/a.jpg", "images/obama"):
        assert main(["forget", name, "--yes", "--config", str(site / "config.yaml")]) == 2
        assert "nothing of" in capsys.readouterr().err
    assert sorted(p for p in tmp_path.rglob("*")) == before

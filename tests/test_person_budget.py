"""Patience does not pay: failed attempts that named a person count against that person, and after
`lockout.person_daily_failures` within 24 h that person is suspended until an admin releases them.

The decider with the ledger on a real SQLite file (restarts, crashes, `forget`), `door-access release`
through the CLI, and the MQTT `release` command against a real mosquitto. No models.
"""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import closing

import pytest
from mqtt_broker import Listener, broker_or_skip

from door_access.cli import main
from door_access.config import ConfigError, DoorConfig, LockoutConfig, MqttConfig, VotingConfig, load_config
from door_access.core import ALARM, DENIED, UNLOCK, Box, Event, LiveVerdict, Match
from door_access.door.access_log import AccessLog, PersonLedger
from door_access.door.decision import RELEASED, Decider, release
from door_access.door.mqtt import MqttBridge, door_commands, parse_command, release_name
from door_access.door.tracking import Track
from door_access.kiosk.display import StatusModel, denial_text

from conftest import wait_for, write_site

BOX = Box(100, 100, 120, 120)
BUDGET = 3


class Clock:
    """The wall clock the decider and the ledger see (hours pass in a test without waiting)."""

    def __init__(self, wall: float = 1_800_000_000.0):
        self.wall = wall

    def __call__(self) -> float:
        return self.wall


def decider(ledger: PersonLedger | None, clock: Clock, budget: int = BUDGET) -> Decider:
    return Decider(VotingConfig(window=5, required=3), DoorConfig(cooldown_seconds=0.0), 1.0,
                   lockout=LockoutConfig(failures=0, person_daily_failures=budget), wall_clock=clock, ledger=ledger)


def attempt(dec: Decider, tid: int, t0: float, name: str, live) -> list:
    """One track: `name` voted on 5 frames, each with the liveness verdict `live(t)`; then the face leaves."""
    tr = Track(tid, BOX, t0, t0)
    out = []
    for i in range(5):
        t = t0 + 0.1 * i
        tr.last_seen = t
        m = Match(name, 0.5, name)
        out += dec.observe(t, [tr], {tr.id: m}, {tr.id: live(t)}, {tr.id: m})
    out += dec.observe(t0 + 5.0, [], {})  # gone: the track ends
    return [(d.event, d.name, d.detail) for d in out]


def FAILED(t: float) -> LiveVerdict:
    return LiveVerdict(None, "challenge failed", None, spoof="challenge failed (asked smile, saw left)")


def LIVE(t: float) -> LiveVerdict:
    return LiveVerdict(t, "challenge passed (asked left, saw left)", 0.5)


def replay(dec: Decider, tries: int, name: str = "kian", first_id: int = 1) -> list:
    """A recording of `name` that fails the challenge `tries` times, one track each, 10 s apart."""
    out = []
    for i in range(tries):
        out += attempt(dec, first_id + i, 10.0 * (first_id + i), name, FAILED)
    return out


def test_a_replay_is_suspended_at_the_budget_and_then_denied_whatever_it_shows():
    clock = Clock()
    dec = decider(PersonLedger(None), clock)
    out = replay(dec, BUDGET)
    assert [e for e in out if e[0] == ALARM] == [
        (ALARM, "kian", "suspended after 3 failed attempts within 24 h: unlocks refused until an admin "
                        "releases them (door-access release)")]
    assert [e[0] for e in out].count(DENIED) == BUDGET
    # the lucky try: the challenge passed; the door still says no, with the reason, and counts nothing more
    lucky = attempt(dec, 9, 100.0, "kian", LIVE)
    assert lucky == [(DENIED, "kian", "suspended after repeated failed attempts: an admin must release them")]
    assert attempt(dec, 10, 110.0, "ana", LIVE) == [(UNLOCK, "ana", "live after 0.50 s (challenge passed (asked "
                                                                     "left, saw left))")]


def test_without_the_budget_a_patient_replay_gets_in():
    """Today's door: the lockout's cool-off is the only limit; the tenth try's luck opens it."""
    dec = decider(None, Clock())
    replay(dec, 9)
    assert attempt(dec, 20, 200.0, "kian", LIVE)[0][0] == UNLOCK


def test_a_failure_before_the_track_named_anyone_counts_once_it_does():
    """The challenge failed on the first frame, before the first vote: the track's later votes name kian."""
    clock = Clock()
    ledger = PersonLedger(None)
    dec = decider(ledger, clock, budget=1)
    tr = Track(1, BOX, 0.0, 0.0)
    first = dec.observe(0.0, [tr], {}, {tr.id: FAILED(0.0)})  # no match yet: the denial names nobody
    assert [(d.event, d.name) for d in first] == [(DENIED, None)]
    m = Match("kian", 0.5, "kian")
    named = [d for i in range(3) for d in dec.observe(0.1 * (i + 1), [tr], {tr.id: m}, {tr.id: FAILED(0.0)},
                                                      {tr.id: m})]
    assert [(d.event, d.name) for d in named] == [(ALARM, "kian")] and ledger.suspended("kian")


def test_a_track_that_named_two_people_counts_against_neither():
    """A conflict (a tracker swap between two residents, or photos swapped) names nobody for sure."""
    ledger = PersonLedger(None)
    dec = decider(ledger, Clock(), budget=1)
    tr = Track(1, BOX, 0.0, 0.0)
    out = []
    for i, m in enumerate([Match("kian", 0.5, "kian")] * 3 + [Match("ana", 0.5, "ana")] * 3):
        tr.last_seen = 0.1 * i
        out += dec.observe(0.1 * i, [tr], {tr.id: m}, None, {tr.id: m})
    assert [d.detail for d in out if d.event == DENIED] == ["conflict: one track named kian and ana"]
    assert ledger.failed("kian", 1.0) == 1 and ledger.failed("ana", 1.0) == 1  # each the first counted


def test_the_budget_is_per_person_and_over_a_sliding_24_hours():
    clock = Clock()
    ledger = PersonLedger(None)
    dec = decider(ledger, clock)
    replay(dec, BUDGET - 1)  # two failures now
    replay(dec, BUDGET - 1, name="ana", first_id=20)  # ana's do not add to kian's
    clock.wall += 23 * 3600
    replay(dec, 1, first_id=40)  # 23 h later: the third in 24 h
    assert ledger.suspended("kian") and not ledger.suspended("ana")
    ledger.release("kian")
    replay(dec, BUDGET - 1, first_id=50)
    clock.wall += 24 * 3600 + 1  # a paced attacker: the window has passed, the count starts over
    assert not [e for e in replay(dec, BUDGET - 1, first_id=60) if e[0] == ALARM] and not ledger.suspended("kian")


def test_a_restart_or_a_crash_keeps_the_count_and_the_suspension(tmp_path):
    """The ledger is in the access log's SQLite file: a door killed mid-run (never closed) and started again
    picks the count up where it was, and a suspended person stays suspended."""
    path = tmp_path / "log.sqlite"
    clock = Clock()
    crashed = PersonLedger(path)
    replay(decider(crashed, clock), BUDGET - 1)  # not closed: a crash
    dec = decider(PersonLedger(path), clock)  # the restarted door
    assert [e for e in replay(dec, 1, first_id=30) if e[0] == ALARM]
    again = PersonLedger(path)
    assert attempt(decider(again, clock), 50, 500.0, "kian", LIVE)[0][2].startswith("suspended")
    assert list(again.suspensions()) == ["kian"]
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_a_database_that_fails_keeps_the_suspension_in_the_running_door(tmp_path):
    """Fail closed: once the file is gone bad, what this door counted and decided still holds."""
    path = tmp_path / "log.sqlite"
    ledger = PersonLedger(path)
    dec = decider(ledger, Clock())
    replay(dec, BUDGET)
    ledger.close()
    path.unlink()
    path.mkdir()  # a folder where the database was: nothing can be read or written
    assert attempt(dec, 50, 500.0, "kian", LIVE)[0][2].startswith("suspended")
    assert ledger.failed("ana", 1.0) == 1 and ledger.failed("ana", 2.0) == 2  # counted in memory meanwhile


def test_a_suspension_made_while_the_database_is_busy_is_written_later_not_lost(tmp_path):
    """Another process holds the write lock when the 3rd failure suspends kian: the door keeps him suspended,
    and once the lock is gone the suspension and the failures are in the file (a restart keeps them)."""
    path = tmp_path / "log.sqlite"
    ledger = PersonLedger(path, busy_timeout_s=0.05)
    dec = decider(ledger, Clock())
    replay(dec, BUDGET - 1)
    with closing(sqlite3.connect(path, isolation_level=None)) as other:
        other.execute("BEGIN EXCLUSIVE")  # a long `forget` rewrite, say
        assert [e for e in replay(dec, 1, first_id=30) if e[0] == ALARM]  # counted in memory: still the 3rd
        assert ledger.suspended("kian")  # the file cannot even be read now: what this door knows holds
        other.execute("ROLLBACK")
    assert attempt(dec, 50, 500.0, "kian", LIVE)[0][2].startswith("suspended")  # the file says nothing yet
    restarted = PersonLedger(path)
    assert restarted.suspended("kian") and restarted.failed("kian", Clock().wall) == BUDGET + 1


def suspended_site(tmp_path, clock: Clock):
    site = write_site(tmp_path, "access_log:\n  path: log.sqlite\n")
    ledger, log = PersonLedger(site / "log.sqlite"), AccessLog(site / "log.sqlite")
    for event, name, detail in replay(decider(ledger, clock), BUDGET, name="obama"):  # logged as the door does
        log.record(Event(event, 0.0, clock.wall, name, detail=detail))
    ledger.close()
    log.close()
    return site


def test_release_through_the_cli_ends_the_suspension_with_an_alarm(tmp_path, capsys):
    site = suspended_site(tmp_path, Clock(time.time()))
    config = str(site / "config.yaml")
    assert main(["release", "obama", "--config", config]) == 0
    out = capsys.readouterr().out
    assert out == "obama: released by an admin (door-access release): suspension ended, 3 counted failed " \
                  "attempt(s) cleared\n"
    ledger = PersonLedger(site / "log.sqlite")
    assert ledger.suspended("obama") is None and ledger.failed("obama", time.time()) == 1  # a fresh budget
    log = AccessLog(site / "log.sqlite")
    try:
        logged = [(e.event, e.name, e.detail) for e in log.last(10)]
    finally:
        log.close()
    assert logged[-1] == (ALARM, "obama", out.strip().removeprefix("obama: "))
    assert [e[0] for e in logged] == [DENIED] * 3 + [ALARM, ALARM]  # the door's 3 denials, its alarm, the release
    assert main(["release", "nobody", "--config", config]) == 2
    assert "'nobody' is not suspended" in capsys.readouterr().err


def test_forget_refuses_a_suspended_person_and_enrolling_again_does_not_lift_it(tmp_path, capsys):
    """`forget` then enrolling the same name again would start a fresh budget: forget says so instead."""
    site = suspended_site(tmp_path, Clock(time.time()))
    config = str(site / "config.yaml")
    assert main(["forget", "obama", "--yes", "--config", config]) == 2
    assert "obama is suspended after repeated failed attempts: release them first" in capsys.readouterr().err
    assert (site / "images" / "obama").is_dir() and PersonLedger(site / "log.sqlite").suspended("obama")
    assert main(["release", "obama", "--config", config]) == 0
    capsys.readouterr()
    ledger = PersonLedger(site / "log.sqlite")
    ledger.failed("obama", time.time())  # one more failure after the release, then forget: renamed with the events
    ledger.close()
    assert main(["forget", "obama", "--yes", "--json", "--config", config]) == 0
    pseudonym = json.loads(capsys.readouterr().out)["pseudonym"]
    with closing(sqlite3.connect(site / "log.sqlite")) as db:
        assert db.execute("SELECT name FROM person_failures").fetchall() == [(pseudonym,)]


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    broker = broker_or_skip(tmp_path_factory)
    yield broker
    broker.kill()


def test_release_commands_parse_plain_and_json():
    assert parse_command(b"release kian") == "release" and release_name(b"release kian") == "kian"
    payload = b'{"command": "Release", "name": "Kian O\'Neil"}'
    assert parse_command(payload) == "release" and release_name(payload) == "Kian O'Neil"
    assert parse_command(b"release") == "release" and release_name(b"release") is None
    assert parse_command(b"unlock kian") is None


def test_release_over_mqtt_ends_the_suspension_with_an_alarm(broker, tmp_path):
    ledger = PersonLedger(tmp_path / "log.sqlite")
    replay(decider(ledger, Clock(time.time())), BUDGET)
    alarms: list[str] = []
    refused: list[str] = []
    cfg = MqttConfig(enabled=True, host="127.0.0.1", port=broker.port, reconnect_min_s=0.2, reconnect_max_s=1.0,
                     username="door", commands=("lock", "release"))
    bridge = MqttBridge(cfg, "front", door_commands(
        cfg.commands, lambda kind, detail: refused.append((kind, detail)), lambda: None, lambda: None, lambda: False,
        lambda name: release(ledger, name, alarms.append, "mqtt")))
    sender = Listener(broker.port, "door-access/front/state")
    bridge.start()
    try:
        assert wait_for(lambda: bridge.connected and sender.on(bridge.topics.state) == ["locked"], 10)
        sender.client.publish(bridge.topics.command, "release", qos=1).wait_for_publish(5)  # names nobody
        sender.client.publish(bridge.topics.command, "release ana", qos=1).wait_for_publish(5)  # nothing to release
        sender.client.publish(bridge.topics.command, '{"command": "release", "name": "kian"}',
                              qos=1).wait_for_publish(5)
        assert wait_for(lambda: alarms, 10)
    finally:
        bridge.stop()
        sender.close()
    assert alarms == ["released by an admin (mqtt): suspension ended, 3 counted failed attempt(s) cleared"]
    assert ledger.suspended("kian") is None
    assert refused == [(DENIED, "source: mqtt: release refused: it names nobody (release NAME)")]


def test_release_is_obeyed_only_when_mqtt_commands_allows_it():
    """The allow-list governs release as every command (default: lock only): a refusal is a denied event."""
    ledger = PersonLedger(None)
    ledger.suspend("kian", 1.0, "suspended after 7 failed attempts")
    notes: list = []
    run = door_commands(MqttConfig().commands, lambda kind, detail: notes.append((kind, detail)), lambda: None,
                        lambda: None, lambda: False, lambda name: release(ledger, name, notes.append, "mqtt"))
    run("release", "kian")
    assert notes == [(DENIED, "source: mqtt: command 'release' refused: not in mqtt.commands")]
    assert ledger.suspended("kian")


@pytest.mark.parametrize("mqtt, ok", [("  commands: [release]\n", False),
                                      ("  commands: [release]\n  tls: true\n", True),
                                      ("  commands: [lock, release]\n  username: door\n", True)])
def test_release_over_mqtt_needs_an_authenticated_or_tls_connection(tmp_path, mqtt, ok):
    """An anonymous client that may release would undo every suspension as fast as the door makes them."""
    path = tmp_path / "config.yaml"
    path.write_text("mqtt:\n  enabled: true\n" + mqtt)
    if ok:
        assert "release" in load_config(path).mqtt.commands
    else:
        with pytest.raises(ConfigError, match="allows 'release', but the broker connection is anonymous"):
            load_config(path)


def test_the_door_says_why_a_suspended_person_is_refused_and_a_release_tells_the_door_nothing():
    assert denial_text("suspended after repeated failed attempts: an admin must release them") == \
        "Suspended: ask an admin"
    model = StatusModel(message_s=4.0)
    model.feed(Event(ALARM, 1.0, 0.0, "kian", detail=f"{RELEASED} by an admin (mqtt): suspension ended"))
    assert model.status(2.0, []).text == "Step up to the camera"
    model.feed(Event(ALARM, 3.0, 0.0, "kian", detail="suspended after 7 failed attempts within 24 h"))
    assert model.status(4.0, []).text == "Try again later"


@pytest.mark.model
def test_the_real_door_refuses_a_suspended_person_across_a_restart(tmp_path, detector, shared_encoder, capsys,
                                                                   monkeypatch):
    """The app's own wiring (app.build_pipeline): a suspension in the log's database, made before this
    run, denies obama's face with the reason and no unlock (without it the same clip opens: test_privacy)."""
    import io
    import sys

    from door_access.tools.democlip import Segment, write_clip

    from conftest import FR_IMAGES

    site = write_site(tmp_path, "tts:\n  enabled: false\nliveness:\n  enabled: false\naccess_log:\n"
                                "  path: log.sqlite\n  snapshots_dir: null\n")
    ledger = PersonLedger(site / "log.sqlite")
    ledger.suspend("obama", time.time(), "suspended after 7 failed attempts within 24 h")
    ledger.close()
    monkeypatch.setattr(sys, "stdin", io.StringIO())
    clip = write_clip(detector, [Segment(FR_IMAGES / "obama2.jpg", 2.5), Segment(None, 0.5)], tmp_path / "door.mp4",
                      fps=15.0)

    capsys.readouterr()
    assert main(["run", "--source", str(clip), "--headless", "--events-json", "--config",
                 str(site / "config.yaml")]) == 0
    events = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert [(e["event"], e["name"], e["detail"]) for e in events if e["event"] in (UNLOCK, DENIED)] == [
        (DENIED, "obama", "suspended after repeated failed attempts: an admin must release them")]

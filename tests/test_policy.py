"""Per-person door policy (people.yaml) and the decider's hook that applies it right before an unlock."""

import datetime as dt
import os

import pytest

from door_access.config import ConfigError, DoorConfig, VotingConfig
from door_access.core import Box, Match
from door_access.door.decision import Decider
from door_access.door.policy import PolicyFile, parse_policy
from door_access.door.tracking import Track

PEOPLE = """\
alice:
  days: [mon, tue, wed, thu, fri]
  hours: ["07:30-12:00", "13:00-18:00"]
  doors: [front, lab]
night_guard:
  hours: "22:00-06:00"
temp:
  valid_from: 2026-03-01
  valid_until: 2026-03-31
"*":
  doors: [front]
"""

WED = dt.datetime(2026, 3, 4)  # a Wednesday


def at(day: dt.datetime, hhmm: str) -> dt.datetime:
    h, m = map(int, hhmm.split(":"))
    return day.replace(hour=h, minute=m)


def test_days_hours_dates_and_doors():
    policy = parse_policy(PEOPLE, "people.yaml")
    assert policy.reason_denied("alice", at(WED, "09:00"), "front") is None
    assert policy.reason_denied("alice", at(WED, "12:30"), "lab") == "outside hours (07:30-12:00, 13:00-18:00)"
    assert policy.reason_denied("alice", at(WED, "18:00"), "front").startswith("outside hours")
    assert policy.reason_denied("alice", at(WED + dt.timedelta(days=3), "09:00"), "front") == "not allowed on sat"
    assert policy.reason_denied("alice", at(WED, "09:00"), "garage") == "not allowed at door garage"
    # a range across midnight
    assert policy.reason_denied("night_guard", at(WED, "23:30"), "any") is None
    assert policy.reason_denied("night_guard", at(WED, "05:59"), "any") is None
    assert policy.reason_denied("night_guard", at(WED, "12:00"), "any") == "outside hours (22:00-06:00)"
    # valid_until includes its whole last day
    assert policy.reason_denied("temp", dt.datetime(2026, 3, 31, 23, 59), "x") is None
    assert policy.reason_denied("temp", dt.datetime(2026, 4, 1, 0, 0), "x") == "expired on 2026-03-31"
    assert policy.reason_denied("temp", dt.datetime(2026, 2, 28, 12), "x") == "not valid before 2026-03-01"
    # "*" covers everyone without an entry
    assert policy.reason_denied("bob", at(WED, "03:00"), "front") is None
    assert policy.reason_denied("bob", at(WED, "03:00"), "lab") == "not allowed at door lab"
    assert parse_policy("", "p").reason_denied("bob", WED, "lab") is None


@pytest.mark.parametrize("text, line, words", [
    ("alice:\n  hours: 8-18\n", 2, "time range"),
    ("alice:\n  hours: \"25:00-26:00\"\n", 2, "time range"),
    ("alice:\n  days: [mon, funday]\n", 2, "days"),
    ("alice:\n  doors: [front]\n  dors: [lab]\n", 3, "unknown key 'alice.dors'"),
    ("alice:\n  valid_from: 2026-13-01\n", 2, "date"),
    ("alice:\n  valid_from: 2026-05-01\n  valid_until: 2026-04-01\n", 1, "before"),
    ("alice: {}\nbob: {}\nalice: {}\n", 3, "given twice"),
    ("alice: [front]\n", 1, "mapping"),
])
def test_bad_files_name_the_line(text, line, words):
    with pytest.raises(ConfigError) as err:
        parse_policy(text, "people.yaml")
    assert f"people.yaml line {line}" in str(err.value) and words in str(err.value)


def test_policy_file_rereads_edits_and_fails_closed(tmp_path):
    path = tmp_path / "people.yaml"
    assert PolicyFile(path).reason_denied("alice", WED, "front") is None  # no file: no rules
    path.write_text("alice:\n  doors: [lab]\n")
    policy = PolicyFile(path)
    assert policy.reason_denied("alice", WED, "front") == "not allowed at door front"
    path.write_text("alice:\n  doors: [front]\n")
    os.utime(path, ns=(1, 1))  # an edit within the same mtime tick must still be seen
    assert policy.reason_denied("alice", WED, "front") is None
    path.write_text("alice:\n  doors: [front\n")  # broken while running: everyone is refused
    assert policy.reason_denied("bob", WED, "front").startswith("door policy unusable")
    path.unlink()  # a vanished file (an unmounted share) refuses too
    assert "vanished" in policy.reason_denied("alice", WED, "front")
    path.write_text("bad: {days: [xx]}\n")
    with pytest.raises(ConfigError, match="line 1"):
        PolicyFile(path)  # at start a bad file stops the door, like a bad config.yaml


def kian(d=0.5):
    return Match("kian", d, "kian")


def test_a_failing_policy_hook_keeps_the_door_locked():
    """The decider's own policy test is in test_decision.py; this one: a policy that raises refuses."""
    def allow(name, wall):
        raise RuntimeError("share offline")

    dec = Decider(VotingConfig(window=5, required=3), DoorConfig(cooldown_seconds=0.0), 1.0, allow=allow)
    track = Track(1, Box(100, 100, 120, 120), 0.0, 0.0)
    decisions = []
    for i in range(5):
        track.last_seen = i * 0.1
        decisions += dec.observe(i * 0.1, [track], {1: Match("kian", 0.5, "kian")}, None,
                                 {1: Match("kian", 0.5, "kian")})
    assert [d.event for d in decisions] == ["denied"] and "share offline" in decisions[0].detail


def test_display_names_from_people_yaml_else_the_name_read_out():
    policy = parse_policy("lin-manuel-miranda:\n  display_name: \"Lin-Manuel Miranda\"\nalice:\n  days: [mon]\n",
                          "people.yaml")
    assert policy.display_name("lin-manuel-miranda") == "Lin-Manuel Miranda"
    assert policy.display_name("alice") == "Alice"  # an entry with rules only
    assert policy.display_name("alex_lacamoire") == "Alex Lacamoire"  # no entry
    # a display name is not a rule: it lets in whoever the rules let in
    assert policy.reason_denied("lin-manuel-miranda", at(WED, "03:00"), "back") is None


@pytest.mark.parametrize("text, message", [
    ("a:\n  display_name: \"\"\n", "1-64 printable"),
    ("a:\n  display_name: [x, y]\n", "1-64 printable"),
    ("a:\n  display_name: \"two\\nlines\"\n", "1-64 printable"),
    ("'*':\n  display_name: Everyone\n", "cannot have one display name"),
])
def test_bad_display_names_name_the_line(text, message):
    with pytest.raises(ConfigError, match=message) as info:
        parse_policy(text, "people.yaml")
    assert "people.yaml line" in str(info.value)


def test_a_broken_people_yaml_falls_back_to_the_name_read_out(tmp_path):
    path = tmp_path / "people.yaml"
    path.write_text("kian:\n  display_name: Kian R.\n")
    policy = PolicyFile(path)
    assert policy.display_name("kian") == "Kian R."
    path.write_text("kian: [\n")  # broken while the door runs: everyone denied, names still readable
    os.utime(path, ns=(1, 1))
    assert policy.display_name("kian") == "Kian"
    assert policy.reason_denied("kian", at(WED, "09:00"), "front").startswith("door policy unusable")

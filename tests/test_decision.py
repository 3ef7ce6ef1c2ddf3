"""The voting rule, cooldown and denials, on sequences of matches."""

from door_access.config import DoorConfig, VotingConfig
from door_access.decision import Decider
from door_access.core import LiveVerdict, Match


def decider(window=5, required=3, cooldown=30.0):
    return Decider(VotingConfig(window=window, required=required), DoorConfig(cooldown_seconds=cooldown), 1.0)


def kian(d=0.5):
    return Match("kian", d, "kian")


def stranger(d=1.3):
    return Match(None, d, "kian")


def feed(dec, t0, track, matches, step=0.1):
    out = []
    for i, m in enumerate(matches):
        out += dec.observe(t0 + i * step, [track], {track: m})
    return out


def test_unlocks_on_the_kth_agreeing_vote_and_only_once():
    dec = decider()
    assert feed(dec, 0.0, 1, [kian(), stranger(), kian()]) == []
    [d] = feed(dec, 0.3, 1, [kian(0.8)])
    assert (d.event, d.name, d.track) == ("unlock", "kian", 1)
    assert abs(d.distance - 0.6) < 1e-9
    assert feed(dec, 0.3, 1, [kian()] * 10) == []


def test_one_misread_frame_does_not_unlock():
    dec = decider()
    decisions = feed(dec, 0.0, 1, [stranger(), kian(), stranger(), Match("ana", 0.8, "ana"), stranger()])
    assert [d.event for d in decisions] == ["denied"]


def test_stranger_gets_one_denial():
    dec = decider()
    decisions = feed(dec, 0.0, 7, [stranger()] * 12)
    assert [(d.event, d.name, d.track) for d in decisions] == [("denied", None, 7)]


def test_cooldown_per_person_across_tracks():
    dec = decider(cooldown=10.0)
    assert [d.event for d in feed(dec, 0.0, 1, [kian()] * 3)] == ["unlock"]
    assert feed(dec, 5.0, 2, [kian()] * 5) == []  # back within the cooldown: nothing
    assert [d.event for d in feed(dec, 12.0, 3, [kian()] * 3)] == ["unlock"]


def test_a_lingering_track_unlocks_once_its_cooldown_ends():
    dec = decider(cooldown=2.0)
    feed(dec, 0.0, 1, [kian()] * 3)
    decisions = feed(dec, 0.5, 2, [kian()] * 40, step=0.1)  # track 2 waits at the door
    assert [d.event for d in decisions] == ["unlock"]


def test_no_liveness_waits_then_denies_once():
    dec = Decider(VotingConfig(window=5, required=3), DoorConfig(), 1.0, liveness_timeout_s=2.0)
    out = []
    for i in range(40):  # four seconds of matches, never live
        out += dec.observe(i * 0.1, [1], {1: kian()}, liveness={1: LiveVerdict(None, "no blink")})
    assert [(d.event, d.name) for d in out] == [("denied", "kian")]
    assert "no liveness" in out[0].detail


def test_liveness_arriving_late_still_unlocks():
    dec = Decider(VotingConfig(window=5, required=3), DoorConfig(), 1.0, liveness_timeout_s=2.0)
    out = []
    for i in range(10):
        out += dec.observe(i * 0.1, [1], {1: kian()}, liveness={1: LiveVerdict(None, "no blink")})
    assert out == []
    out = dec.observe(1.0, [1], {1: kian()}, liveness={1: LiveVerdict(1.0, "blink", 0.95)})
    assert [(d.event, d.name) for d in out] == [("unlock", "kian")]
    assert out[0].detail == "live after 0.95 s (blink)"


def test_tracks_expire():
    dec = decider()
    feed(dec, 0.0, 1, [kian()] * 2)
    dec.observe(5.0, [2], {})
    assert 1 not in dec.tracks

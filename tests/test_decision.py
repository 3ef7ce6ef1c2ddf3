"""The door's decision rule on sequences of matches and liveness verdicts: no models, milliseconds.

Each seam of issue 8 has a test here that fails on the old decider: liveness from before
the identity appeared, alternating votes, a stranger's track turning into an enrolled face,
spoof and challenge verdicts, the lockout, and the per-person policy hook.
"""

import numpy as np
import pytest

from door_access.config import DoorConfig, LockoutConfig, VotingConfig
from door_access.core import Box, LiveVerdict, Match
from door_access.door.decision import Decider
from door_access.door.tracking import Track, Tracker, fuse

BOX = Box(100, 100, 120, 120)


def decider(window=5, required=3, cooldown=30.0, liveness_timeout=float("inf"), lockout=None, allow=None):
    return Decider(VotingConfig(window=window, required=required), DoorConfig(cooldown_seconds=cooldown), 1.0,
                   liveness_timeout_s=liveness_timeout, lockout=lockout or LockoutConfig(failures=0), allow=allow)


def track(tid=1, t=0.0):
    return Track(tid, BOX, t, t)


def kian(d=0.5):
    return Match("kian", d, "kian")


def ana(d=0.6):
    return Match("ana", d, "ana")


def stranger(d=1.3):
    return Match(None, d, "kian")


def feed(dec, t0, tr, matches, step=0.1, live=None, fused=None):
    """One frame per match; `live(t)` gives the track's liveness verdict at frame time t, `fused` what the
    track's fused embedding names after each match (default: the same as the match)."""
    out = []
    for i, m in enumerate(matches):
        t = t0 + i * step
        tr.last_seen = t
        out += dec.observe(t, [tr], {tr.id: m}, {tr.id: live(t)} if live else None,
                           {tr.id: fused[i] if fused else m})
    return out


def events(decisions):
    return [(d.event, d.name) for d in decisions]


def test_unlocks_on_the_kth_agreeing_vote_and_only_once():
    dec, tr = decider(), track()
    assert feed(dec, 0.0, tr, [kian(), stranger(), kian()]) == []
    [d] = feed(dec, 0.3, tr, [kian(0.8)])
    assert (d.event, d.name, d.track) == ("unlock", "kian", 1)
    assert abs(d.distance - 0.6) < 1e-9
    assert feed(dec, 0.4, tr, [kian()] * 10) == []


def test_stranger_gets_one_denial():
    dec = decider()
    decisions = feed(dec, 0.0, track(7), [stranger()] * 12)
    assert [(d.event, d.name, d.track) for d in decisions] == [("denied", None, 7)]


def test_cooldown_per_person_across_tracks():
    dec = decider(cooldown=10.0)
    assert events(feed(dec, 0.0, track(1), [kian()] * 3)) == [("unlock", "kian")]
    assert feed(dec, 5.0, track(2, 5.0), [kian()] * 5) == []  # back within the cooldown: nothing
    assert events(feed(dec, 12.0, track(3, 12.0), [kian()] * 3)) == [("unlock", "kian")]


def test_no_liveness_waits_then_denies_once():
    dec = decider(liveness_timeout=2.0)
    out = feed(dec, 0.0, track(), [kian()] * 40, live=lambda t: LiveVerdict(None, "no blink"))
    assert events(out) == [("denied", "kian")]
    assert "no liveness" in out[0].detail


def test_liveness_arriving_late_still_unlocks():
    dec, tr = decider(liveness_timeout=2.0), track()
    assert feed(dec, 0.0, tr, [kian()] * 10, live=lambda t: LiveVerdict(None, "no blink")) == []
    out = feed(dec, 1.0, tr, [kian()], live=lambda t: LiveVerdict(1.0, "blink", 0.95))
    assert events(out) == [("unlock", "kian")]
    assert out[0].detail == "live after 0.95 s (blink)"


# ---- seam 1: liveness belongs to the votes it unlocks -------------------------------------------


def test_a_blink_before_the_identity_appeared_does_not_unlock_it():
    """A live stranger blinks at 0.2 s, then holds up kian's photo: the old decider took the blink
    (it was within liveness.window_s); now only evidence from kian's first vote on counts."""
    dec, tr = decider(liveness_timeout=2.0), track()
    blinked = lambda t: LiveVerdict(0.2 if t >= 0.2 else None, "blink", 0.2)  # noqa: E731
    assert feed(dec, 0.0, tr, [stranger(), stranger()], live=blinked) == []
    out = feed(dec, 0.5, tr, [kian()] * 30, live=blinked)  # the photo: no further evidence
    assert ("unlock", "kian") not in events(out)
    assert events(out) == [("denied", "kian")] and "no liveness" in out[0].detail


def test_evidence_after_the_first_vote_unlocks():
    dec, tr = decider(), track()
    out = feed(dec, 0.0, tr, [kian()] * 3, live=lambda t: LiveVerdict(0.15 if t >= 0.15 else None, "blink", 0.15))
    assert events(out) == [("unlock", "kian")]


def test_an_established_stranger_that_names_someone_is_split():
    """K unknown votes, then a vote naming kian: the decider asks the tracker for a fresh track
    (fresh votes, fresh liveness); the rest of this track's frames decide nothing."""
    tracker = Tracker(0.3, 1.0, 8.0)
    dec, [tr] = decider(), tracker.update([BOX], 0.0)
    live = lambda t: LiveVerdict(t, "facial motion", 0.1)  # noqa: E731 - evidence on every frame
    assert feed(dec, 0.0, tr, [stranger()] * 3, live=live) == []
    assert feed(dec, 0.3, tr, [kian()] * 5, live=live) == []
    assert tr.split_requested
    ended = []
    tracker.on_end.append(ended.append)
    [fresh] = tracker.update([BOX], 0.9)
    assert ended == [tr] and tr.ended and fresh.id != tr.id and not fresh.votes


@pytest.mark.parametrize("flag, settled", [("unlocked", True), ("conflict", True), ("spoofed", True),
                                           ("denied", False)])  # a denial can still be followed by an unlock or a split
def test_a_track_that_can_no_longer_unlock_is_encoded_less_often(flag, settled):
    tracker = Tracker(0.3, 1.0, 8.0, settled_encodes_per_second=1.0)
    [tr] = tracker.update([BOX], 0.0)
    second = [i / 30 for i in range(30)]  # one second at 30 FPS
    assert sum(tracker.take_encode_slot(tr, t) for t in second) == 8
    setattr(tr, flag, True)  # the decider's flag
    tr.last_encoded = float("-inf")
    assert sum(tracker.take_encode_slot(tr, 1 + t) for t in second) == (1 if settled else 8)


def test_a_new_track_of_someone_just_let_in_is_encoded_less_often_until_the_cooldown_ends():
    """Someone let in who comes back on a new track (turned away, stepped out of view) cannot
    unlock again within the cooldown: that track is paced like a settled one until it ends."""
    dec, tracker = decider(cooldown=10.0), Tracker(0.3, 1.0, 8.0, settled_encodes_per_second=1.0)
    assert events(feed(dec, 0.0, track(1), [kian()] * 3)) == [("unlock", "kian")]
    [back] = tracker.update([BOX], 2.0)
    assert feed(dec, 2.0, back, [kian()] * 3) == []  # three votes name kian, within the cooldown
    assert back.quiet_until == pytest.approx(10.2)  # the first unlock was at t = 0.2
    second = [i / 30 for i in range(30)]
    assert sum(tracker.take_encode_slot(back, 3 + t) for t in second) == 1
    assert sum(tracker.take_encode_slot(back, 10.5 + t) for t in second) == 8  # cooldown over: full rate


def test_votes_from_a_cooldown_do_not_count_after_it():
    """The sparse votes a track gathered while its person's cooldown ran are stale once it ends:
    a stranger who took that place at the end of it is not let in on kian's old votes."""
    dec = decider(cooldown=10.0)
    assert events(feed(dec, 0.0, track(1), [kian()] * 3)) == [("unlock", "kian")]
    back = track(2, 2.0)
    assert feed(dec, 2.0, back, [kian()] * 4, step=1.0) == []  # one a second while kian cools down
    assert feed(dec, 10.5, back, [stranger()] * 2) == []  # the cooldown is over; not kian any more
    assert events(feed(dec, 11.0, back, [kian()] * 3)) == [("unlock", "kian")]  # three fresh votes


def test_a_box_that_jumps_in_size_starts_a_new_track():
    tracker = Tracker(0.3, 1.0, 8.0)
    ended = []
    tracker.on_end.append(ended.append)
    [a] = tracker.update([Box(100, 100, 100, 100)], 0.0)
    [b] = tracker.update([Box(102, 101, 104, 104)], 0.033)  # a head moving: same track
    [c] = tracker.update([Box(80, 80, 150, 150)], 0.066)  # 1.45x in one frame (IoU 0.48): a new face
    assert a is b and c is not a and ended == [a]


# ---- issue 25: liveness belongs to the face that showed it ---------------------------------------


NOTHING = lambda t: LiveVerdict(None, "no blink, facial motion or parallax")  # noqa: E731


def motion(at, since):
    """The verdict from frame `at` on: facial motion seen at `at`, resting on the frames from `since`."""
    return lambda t: LiveVerdict(at if t >= at else None, "facial motion", 0.1, evidence_from=since)


def test_evidence_shown_while_the_named_track_showed_no_one_does_not_unlock():
    """kian's photo is named, lowered while a live stranger talks (unknown votes, his motion at 0.75 s
    resting on his own frames), then raised again: the old rule took any evidence after kian's first
    vote and unlocked; evidence binds only to frames that encodings name kian on."""
    dec, tr = decider(), track()
    assert feed(dec, 0.0, tr, [kian()] * 4, live=NOTHING) == []  # the photo, no evidence: pending
    talked = motion(0.75, 0.55)
    assert events(feed(dec, 0.5, tr, [stranger()] * 4, live=talked)) == [("denied", None)]  # a stranger
    out = feed(dec, 0.9, tr, [kian()] * 10, live=talked)  # the photo again: the stranger's motion is still the latest
    assert ("unlock", "kian") not in events(out)
    assert tr.identity_t == pytest.approx(0.9)  # liveness for kian starts over at his first vote after no one


def test_evidence_resting_on_frames_before_the_naming_vote_does_not_count():
    """The photo replaced a live stranger at 0.25 s: the motion it shows at 0.35 s is measured against the
    stranger's last shapes (from 0.2 s), before the first vote naming kian (0.3 s)."""
    dec, tr = decider(), track()
    assert feed(dec, 0.0, tr, [stranger(), stranger()]) == []
    assert feed(dec, 0.3, tr, [kian()] * 10, live=motion(0.35, 0.2)) == []


def test_evidence_counts_once_the_next_encoding_names_the_same_person():
    """Evidence between two encodings is bound by the next one: naming kian unlocks, naming no one does not
    (the face that moved may have been another one)."""
    dec, tr = decider(), track()
    assert feed(dec, 0.0, tr, [kian()] * 3, live=NOTHING) == []
    [d] = feed(dec, 0.3, tr, [kian()], live=motion(0.25, 0.1))
    assert (d.event, d.name) == ("unlock", "kian")
    dec, tr = decider(), track()
    assert feed(dec, 0.0, tr, [kian()] * 3, live=NOTHING) == []
    assert feed(dec, 0.3, tr, [stranger()], live=motion(0.25, 0.1)) == []
    assert feed(dec, 0.4, tr, [kian()] * 5, live=motion(0.25, 0.1)) == []


def test_evidence_the_verdict_withdrew_before_it_was_bound_does_not_unlock():
    """`graded`: a blink seen while the attack models passed the face, then the grade leaves PASS (the cue
    no longer counts, a challenge is asked) before the next encoding: that encoding must not bind the
    withdrawn blink and let the face in without answering."""
    dec, tr = decider(), track()
    assert feed(dec, 0.0, tr, [kian()] * 2, live=NOTHING) == []
    tr.last_seen = 0.25
    assert dec.observe(0.25, [tr], {}, {tr.id: LiveVerdict(0.25, "blink", 0.2, evidence_from=0.22)}) == []
    asked = LiveVerdict(None, "challenge: Turn your head left", None, challenge="Turn your head left")
    tr.last_seen = 0.3
    assert dec.observe(0.3, [tr], {tr.id: kian()}, {tr.id: asked}, {tr.id: kian()}) == []
    assert not tr.unlocked


def test_a_misread_frame_of_a_live_person_only_restarts_the_binding():
    """kian turning away reads as no one on one encoding: the votes still stand, and evidence seen after
    the next vote naming him unlocks him."""
    dec, tr = decider(), track()
    assert feed(dec, 0.0, tr, [kian(), kian(), stranger()], live=NOTHING) == []
    out = feed(dec, 0.3, tr, [kian()] * 3, live=motion(0.45, 0.35))
    assert events(out) == [("unlock", "kian")]


def test_a_challenge_answered_before_the_naming_run_splits_the_track():
    """A live stranger answers the challenge (asked from his resting pose at 0.1 s), then kian's photo is
    raised: the pass is no one's; the track is split, so the photo is asked again on a fresh track."""
    dec, tr = decider(), track()
    passed = lambda t: LiveVerdict(0.5, "challenge passed (asked left, saw left)", 0.5, evidence_from=0.1)  # noqa: E731
    assert feed(dec, 0.0, tr, [stranger()] * 2) == []
    assert feed(dec, 0.6, tr, [kian()] * 5, live=passed) == []
    assert tr.split_requested and not tr.unlocked


def test_an_unknown_vote_just_past_the_threshold_leaning_to_the_person_is_a_doubt():
    """A turned head reads as no one, closest to its person, just past the threshold (under threshold +
    margin, `doubt_distance`): it does not restart liveness, and doubts just before the first vote naming
    the person start the run (Lin on the Hamilton clip: 0.89, 0.95, then 0.78). A face further away, or
    leaning to someone else, is another face."""
    near = Match(None, 0.92, "kian")
    dec, tr = Decider(VotingConfig(window=5, required=3), DoorConfig(), 1.0, doubt_distance=1.0), track()
    assert feed(dec, 0.0, tr, [near, kian(), kian()], live=NOTHING) == []
    assert tr.identity_t == 0.0
    assert events(feed(dec, 0.3, tr, [near, kian()], live=motion(0.35, 0.05))) == [("unlock", "kian")]
    dec, tr = Decider(VotingConfig(window=5, required=3), DoorConfig(), 1.0, doubt_distance=1.0), track()
    assert feed(dec, 0.0, tr, [kian(), kian(), stranger()], live=NOTHING) == []  # 1.3: another face
    assert feed(dec, 0.3, tr, [kian()] * 3, live=motion(0.35, 0.05)) == []


def test_another_face_on_a_named_track_starts_the_attack_evidence_over_too():
    """The attack score is evidence too: when a track names its person after showing a face it does not
    name (not a doubt), the decider tells the per-track evidence kept elsewhere (`on_restart`: the spoof
    checker's means) to start over, in both orders; a turned head's near miss (a doubt) does not."""
    restarted = []
    dec, tr = Decider(VotingConfig(window=5, required=3), DoorConfig(), 1.0, doubt_distance=1.0), track()
    dec.on_restart = restarted.append
    feed(dec, 0.0, tr, [kian(), Match(None, 0.92, "kian"), kian()], live=NOTHING)
    assert restarted == []  # named from the first vote, and a doubt is no other face
    feed(dec, 0.3, tr, [stranger(), kian()], live=NOTHING)
    assert restarted == [tr.id]  # named -> another face -> named again
    dec, tr = Decider(VotingConfig(window=5, required=3), DoorConfig(), 1.0, doubt_distance=1.0), track(2)
    dec.on_restart = restarted.append
    feed(dec, 0.0, tr, [stranger(), stranger(), kian()], live=NOTHING)
    assert restarted == [1, 2]  # a stranger first, then the named face


# ---- seam 2: a vote that cannot be mixed ---------------------------------------------------------


def test_alternating_enrolled_names_never_unlock_and_are_one_conflict():
    """alice, bob, alice, bob, alice: Counter.most_common unlocked the first name; now a conflict, once."""
    dec = decider()
    out = feed(dec, 0.0, track(), [kian(), ana(), kian(), ana(), kian(), ana(), kian(), kian(), kian()])
    assert [d.event for d in out] == ["denied"]
    assert out[0].detail.startswith("conflict")


def test_votes_unlock_only_once_the_fused_embedding_names_the_same_person():
    """Three frames that each look like kian are not enough while all the frames together name nobody: a
    stranger who resembles someone on a few frames is still a stranger on all of them."""
    dec, tr = decider(), track()
    assert feed(dec, 0.0, tr, [kian()] * 4, fused=[stranger()] * 4) == []
    [d] = feed(dec, 0.4, tr, [kian()], fused=[kian(0.45)])
    assert (d.event, d.name) == ("unlock", "kian")


def test_a_fused_embedding_naming_someone_else_than_the_votes_is_one_conflict():
    dec, tr = decider(), track()
    out = feed(dec, 0.0, tr, [kian()] * 6, fused=[stranger(), ana(), ana(), kian(), kian(), kian()])
    assert events(out) == [("denied", None)] and out[0].detail.startswith("conflict")
    assert "kian" in out[0].detail and "ana" in out[0].detail
    assert tr.conflict and not tr.unlocked


def test_a_track_fuses_its_encodings_into_their_normalised_mean():
    tr = track()
    a, b = np.eye(128, dtype=np.float32)[0], np.eye(128, dtype=np.float32)[1]
    assert np.allclose(fuse(tr, a), a)
    together = fuse(tr, b)
    assert np.isclose(np.linalg.norm(together), 1.0) and np.allclose(together[:2], [2 ** -0.5] * 2)


def test_voting_required_must_be_a_strict_majority(tmp_path):
    from door_access.config import ConfigError, load_config

    path = tmp_path / "config.yaml"
    path.write_text("voting:\n  window: 6\n  required: 3\n")
    with pytest.raises(ConfigError, match=r"line 3: .voting.required. \(3\) must be a strict majority"):
        load_config(path)
    path.write_text("voting:\n  window: 6\n  required: 4\n")
    assert load_config(path).voting.required == 4


# ---- liveness verdicts: spoof and challenge ------------------------------------------------------


def test_a_spoof_cue_denies_once_and_the_track_never_unlocks():
    dec = decider()
    spoof = lambda t: LiveVerdict(t, "blink", 0.1, spoof="screen glare")  # noqa: E731
    out = feed(dec, 0.0, track(), [kian()] * 10, live=spoof)
    assert [(d.event, d.detail) for d in out] == [("denied", "spoof (screen glare)")]


def test_a_running_challenge_keeps_the_attempt_pending():
    dec, tr = decider(liveness_timeout=1.0), track()
    asking = lambda t: LiveVerdict(None, "no blink", challenge="turn your head left")  # noqa: E731
    assert feed(dec, 0.0, tr, [kian()] * 30, live=asking) == []  # 3 s: past the timeout, yet no denial
    out = feed(dec, 3.0, tr, [kian()], live=lambda t: LiveVerdict(2.95, "challenge: head turned", 2.95))
    assert events(out) == [("unlock", "kian")]


def test_a_challenge_left_unanswered_when_the_face_leaves_is_a_failed_attempt():
    """Taking the phone away and back draws a new challenge: each such draw counts toward the lockout."""
    dec = decider(lockout=LockoutConfig(failures=2, window_s=60.0, cooloff_s=30.0))
    asking = lambda t: LiveVerdict(None, "no blink", challenge="look up")  # noqa: E731
    out = []
    for k in range(2):  # two tracks of kian, each asked and gone before answering
        t0 = 5.0 * k
        out += feed(dec, t0, track(10 + k, t0), [kian()] * 10, live=asking)
        out += dec.observe(t0 + 3.0, [], {})  # 2 s later (past the 1 s track timeout): nobody in view
    assert [(d.event, d.track, d.detail) for d in out] == [
        ("denied", 10, "challenge not answered: the face left (look up)"),
        ("denied", 11, "challenge not answered: the face left (look up)"),
        ("alarm", 11, "2 failed attempts within 60 s: unlocks refused for 30 s")]
    assert out[0].name == "kian"


def test_a_track_that_ends_unasked_let_in_or_never_named_is_no_failure():
    dec = decider(lockout=LockoutConfig(failures=1, window_s=60.0, cooloff_s=30.0))
    asking = lambda t: LiveVerdict(None, "no blink", challenge="look up")  # noqa: E731
    passed = lambda t: LiveVerdict(0.05, "challenge passed", 0.05)  # noqa: E731
    out = feed(dec, 0.0, track(1), [kian()] * 5, live=passed)  # let in, then gone
    out += feed(dec, 0.0, track(2), [stranger(), stranger()], live=asking)  # asked, named nobody yet, gone
    out += feed(dec, 0.0, track(3), [kian()] * 2)  # named kian, no challenge asked (liveness off), gone
    out += feed(dec, 1.0, track(4, 1.0), [kian()] * 2, live=asking)  # kian again, just let in: asked, gone
    out += dec.observe(5.0, [], {})
    assert events(out) == [("unlock", "kian")] and not dec.locked_out(5.0)


# ---- seam 5: repeated failed attempts ------------------------------------------------------------


def test_repeated_failures_raise_one_alarm_and_refuse_unlocks_for_the_cooloff():
    dec = decider(lockout=LockoutConfig(failures=3, window_s=60.0, cooloff_s=30.0))
    out = []
    for i in range(3):  # three strangers, one after the other
        out += feed(dec, i * 2.0, track(10 + i, i * 2.0), [stranger()] * 5)
    assert [d.event for d in out] == ["denied", "denied", "denied", "alarm"]
    assert dec.locked_out_until == pytest.approx(4.4 + 30.0)
    out = feed(dec, 6.0, track(20, 6.0), [kian()] * 20)  # then kian, during the cool-off
    assert [(d.event, d.detail.split()[0]) for d in out] == [("denied", "locked")]
    out = feed(dec, 40.0, track(21, 40.0), [kian()] * 3)  # after it
    assert events(out) == [("unlock", "kian")]


def _strangers(dec, t0, n=3, tid=100):
    """`n` strangers one after the other from t0 (each denied within 0.5 s); their decisions."""
    out = []
    for i in range(n):
        out += feed(dec, t0 + i * 2.0, track(tid + i, t0 + i * 2.0), [stranger()] * 5)
    return out


def _alarms(decisions):
    return [d for d in decisions if d.event == "alarm"]


def test_lockouts_double_while_failures_go_on_up_to_the_cap_with_an_alarm_each_time():
    dec = decider(lockout=LockoutConfig(failures=3, window_s=60.0, cooloff_s=30.0, max_cooloff_s=100.0))
    t, lengths, details = 0.0, [], []
    for k in range(5):  # each round: three strangers as soon as the last cool-off ends
        [alarm] = _alarms(_strangers(dec, t, tid=100 + 10 * k))
        lengths.append(round(dec.locked_out_until - (t + 4.4), 6))
        details.append(alarm.detail)
        t = dec.locked_out_until + 1.0
    assert lengths == [30.0, 60.0, 100.0, 100.0, 100.0]  # doubled, then capped
    assert details[0] == "3 failed attempts within 60 s: unlocks refused for 30 s"
    assert details[2] == "3 failed attempts within 60 s: unlocks refused for 100 s (lockout 3 in a row)"


def test_a_success_starts_the_lockout_over():
    dec = decider(lockout=LockoutConfig(failures=3, window_s=60.0, cooloff_s=30.0, max_cooloff_s=1000.0))
    _strangers(dec, 0.0)
    _strangers(dec, 40.0)
    assert dec.locked_out_until == pytest.approx(44.4 + 60.0)  # the second lockout: doubled
    assert events(feed(dec, 110.0, track(1, 110.0), [kian()] * 3)) == [("unlock", "kian")]
    _strangers(dec, 120.0)
    assert dec.locked_out_until == pytest.approx(124.4 + 30.0)  # after kian got in: the base cool-off again


def test_a_quiet_window_after_a_lockout_starts_it_over():
    dec = decider(lockout=LockoutConfig(failures=3, window_s=60.0, cooloff_s=30.0, max_cooloff_s=1000.0))
    _strangers(dec, 0.0)  # locked out till 34.4
    _strangers(dec, 34.4 + 61.0)  # the attempts stopped for a whole window after it: not a continuation
    assert dec.locked_out_until == pytest.approx(95.4 + 4.4 + 30.0)


def test_failures_during_a_lockout_continue_the_streak():
    dec = decider(lockout=LockoutConfig(failures=3, window_s=60.0, cooloff_s=30.0, max_cooloff_s=1000.0))
    _strangers(dec, 0.0)  # locked out till 34.4
    out = _strangers(dec, 10.0)  # more strangers while locked out: denied, no second alarm yet
    assert not _alarms(out)
    [alarm] = _alarms(feed(dec, 40.0, track(200, 40.0), [stranger()] * 5))  # the first failure after it
    assert dec.locked_out_until == pytest.approx(40.4 + 60.0) and "60 s (lockout 2 in a row)" in alarm.detail


def test_lockout_zero_is_off():
    dec = decider(lockout=LockoutConfig(failures=0))
    out = []
    for i in range(10):
        out += feed(dec, i * 2.0, track(10 + i, i * 2.0), [stranger()] * 5)
    assert [d.event for d in out] == ["denied"] * 10 and dec.locked_out_until == float("-inf")


# ---- the per-person policy hook (issue 12 writes the real policy) --------------------------------


def test_policy_can_refuse_an_unlock_with_its_reason():
    dec = decider(allow=lambda name, wall: "outside office hours" if name == "kian" else None)
    out = feed(dec, 0.0, track(1), [kian()] * 6)
    assert [(d.event, d.detail) for d in out] == [("denied", "policy: outside office hours")]
    assert events(feed(dec, 0.0, track(2), [ana()] * 3)) == [("unlock", "ana")]

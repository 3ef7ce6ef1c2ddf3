"""The liveness challenge, the blink state machine and the parallax cue as pure logic: landmark arrays in,
verdicts out, no dlib and no TensorFlow (milliseconds).

The face is one real dlib 68-point shape (g06 of the liveness dev set, frame 0, frontal) given a rough
depth per point, so head turns are real rotations projected to the image, and a photo is that shape
kept flat (z = 0) and moved by a homography.
"""

from __future__ import annotations

import collections

import numpy as np
import pytest

from door_access.config import LivenessConfig
from door_access.faces.geometry import eye_distance, homography_residual
from door_access.liveness import challenge as challenge_module
from door_access.liveness.challenge import (
    ACTIONS,
    BLINK_TWICE,
    FAILED,
    LEFT,
    OPEN_MOUTH,
    PASSED,
    RIGHT,
    RUNNING,
    SMILE,
    UP,
    Challenge,
    ChallengeSequence,
    Sample,
    Thresholds,
    choose_action,
    choose_actions,
    head_pose,
    pose_action,
    scores,
)
from door_access.liveness.cues import LivenessChecker, eye_aspect_ratio
from door_access.tools.challenge_eval import Trace, bound, judge_trace, response_times

FRONT = np.array([
    [111, 363], [115, 399], [120, 433], [128, 467], [137, 500], [152, 530], [175, 554], [203, 572], [237, 578],
    [271, 573], [299, 555], [321, 528], [337, 498], [348, 466], [356, 431], [362, 397], [365, 361], [127, 352],
    [139, 329], [165, 319], [192, 320], [216, 329], [260, 325], [286, 314], [313, 313], [338, 324], [351, 346],
    [240, 360], [240, 382], [241, 403], [241, 425], [215, 447], [228, 451], [241, 454], [254, 450], [267, 446],
    [157, 371], [171, 361], [189, 360], [205, 370], [189, 377], [171, 378], [274, 368], [290, 358], [307, 358],
    [321, 366], [309, 374], [291, 374], [193, 496], [211, 488], [228, 483], [240, 487], [254, 482], [269, 487],
    [284, 495], [269, 506], [253, 513], [240, 515], [226, 514], [210, 509], [201, 496], [228, 493], [240, 495],
    [254, 493], [277, 495], [253, 496], [239, 498], [227, 497]], np.float64)
CENTRE = FRONT.mean(axis=0)
ED = eye_distance(FRONT)
DEPTH = np.zeros(68)  # toward the camera, in eye distances: a rough average head
DEPTH[0:17] = -0.45 + 0.25 * np.sin(np.linspace(0, np.pi, 17))  # the outline wraps around the head
DEPTH[27:31] = [0.15, 0.3, 0.42, 0.55]  # nose bridge to tip
DEPTH[31:36] = 0.3
DEPTH[48:68] = 0.15


def head(yaw_deg: float = 0.0, pitch_deg: float = 0.0, roll_deg: float = 0.0) -> np.ndarray:
    """The shape of a real head turned by yaw (+: to the person's left, image right), pitched (+: looking up)
    and rolled, seen by an orthographic camera."""
    p = np.hstack([(FRONT - CENTRE) / ED, DEPTH[:, None]])
    y, x, r = np.deg2rad([yaw_deg, pitch_deg, roll_deg])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rx = np.array([[1, 0, 0], [0, np.cos(x), -np.sin(x)], [0, np.sin(x), np.cos(x)]])
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    q = p @ (rz @ rx @ ry).T
    return q[:, :2] * ED + CENTRE


def photo(h: np.ndarray) -> np.ndarray:
    """The frontal shape printed on paper and moved by the homography `h` (tilted, turned, shifted)."""
    pts = np.hstack([FRONT, np.ones((68, 1))]) @ h.T
    return pts[:, :2] / pts[:, 2:]


def closed(shape: np.ndarray, factor: float = 0.2) -> np.ndarray:
    out = shape.copy()
    for eye in (list(range(36, 42)), list(range(42, 48))):
        centre = shape[eye, 1].mean()
        out[eye, 1] = centre + (shape[eye, 1] - centre) * factor
    return out


TH = Thresholds.of(LivenessConfig())  # the shipped thresholds
TILTED_PHOTO = np.array([[0.9, 0.08, 30], [-0.05, 1.0, 10], [3e-4, 1e-4, 1.0]])  # a photo turned ~25 degrees, close up


# ---- head pose -----------------------------------------------------------------------------------------


def test_head_pose_follows_a_real_turn_and_ignores_roll():
    neutral = head_pose(head())
    assert abs(neutral.yaw) < 0.02
    assert head_pose(head(yaw_deg=25)).yaw > 0.2 > -0.2 > head_pose(head(yaw_deg=-25)).yaw
    assert head_pose(head(pitch_deg=20)).pitch < neutral.pitch - 0.08  # looking up: the nose rises toward the eyes
    rolled = head_pose(head(yaw_deg=25, roll_deg=20))
    assert rolled.yaw == pytest.approx(head_pose(head(yaw_deg=25)).yaw, abs=0.01)


def test_a_photo_turned_as_a_whole_shows_no_head_turn():
    assert abs(head_pose(photo(TILTED_PHOTO)).yaw - head_pose(FRONT).yaw) < 0.1  # perspective only; a turn is 0.3


def test_pose_action_names_the_clear_movement_only():
    n = head_pose(head())
    assert pose_action(head_pose(head(yaw_deg=35)), n, TH) == LEFT
    assert pose_action(head_pose(head(yaw_deg=-35)), n, TH) == RIGHT
    assert pose_action(head_pose(head(pitch_deg=25)), n, TH) == UP
    assert pose_action(head_pose(head(yaw_deg=8, pitch_deg=4)), n, TH) is None


def mouth_open(shape: np.ndarray, gap: float) -> np.ndarray:
    """`shape` with the jaw dropped: the lower lip (55-59, 65-67) `gap` eye distances further down."""
    out = shape.copy()
    out[[55, 56, 57, 58, 59, 65, 66, 67], 1] += gap * ED
    return out


def smiling(shape: np.ndarray, wider: float) -> np.ndarray:
    """`shape` with the mouth corners (48, 54 and the inner 60, 64) `wider` eye distances apart, and raised."""
    out = shape.copy()
    for corner, side in ((48, -1), (60, -1), (54, 1), (64, 1)):
        out[corner] += (side * wider / 2 * ED, -wider / 3 * ED)
    return out


def test_an_open_mouth_and_a_smile_are_told_apart_from_each_other_and_from_head_actions():
    n = head_pose(head())
    assert pose_action(head_pose(mouth_open(head(), 0.4)), n, TH) == OPEN_MOUTH
    assert pose_action(head_pose(smiling(head(), 0.3)), n, TH) == SMILE
    assert pose_action(head_pose(mouth_open(head(), 0.15)), n, TH) is None  # talking opens it by up to 0.16
    assert pose_action(head_pose(smiling(head(), 0.1)), n, TH) is None
    assert pose_action(head_pose(smiling(head(yaw_deg=35), 0.3)), n, TH) == LEFT  # turned: no smile is judged


def test_a_photo_moved_as_a_whole_shows_no_open_mouth_or_smile():
    n = head_pose(FRONT)
    for h in (TILTED_PHOTO, np.array([[1.3, 0.0, -40], [0.0, 1.3, -60], [0.0, 0.0, 1.0]]),
              np.array([[0.97, -0.26, 80], [0.26, 0.97, -30], [0.0, 0.0, 1.0]])):  # tilted, closer, rotated 15 deg
        s = scores(head_pose(photo(h)), n, TH)
        assert s[OPEN_MOUTH] < 0.5 and s[SMILE] < 0.5, s


def test_an_open_mouth_then_a_smile_passes_and_smiling_twice_needs_a_rest_between():
    frames = REST + [mouth_open(head(), 0.4)] * 5 + REST + [smiling(head(), 0.3)] * 5
    seq, texts = _sequence((OPEN_MOUTH, SMILE), frames)
    assert seq.state == PASSED and texts[0] == "open your mouth" and texts[12] == "smile"
    seq, texts = _sequence((SMILE, SMILE), REST + [smiling(head(), 0.3)] * 30)
    assert seq.state == RUNNING and len(seq.steps) == 2 and texts[-1] == "again, smile"
    seq, _ = _sequence((LEFT,), REST + [smiling(head(), 0.3)] * 5)
    assert seq.state == FAILED and seq.outcome() == "asked left, saw smile"


def test_the_asked_action_is_drawn_from_a_secure_source_and_covers_every_action():
    draws = collections.Counter(choose_action() for _ in range(400))
    assert set(draws) == set(ACTIONS)


# ---- the challenge state machine -----------------------------------------------------------------------


def _run(action, shapes, fps=15.0, blinks=None):
    c = Challenge(action, 0.0, 6.0, head_pose(head()), 0, TH, hold_s=0.2)
    for i, shape in enumerate(shapes):
        c.update((i + 1) / fps, head_pose(shape), blinks[i] if blinks else 0)
    return c


def test_turning_the_asked_way_passes_and_the_other_way_fails():
    turn_left = [head()] * 5 + [head(yaw_deg=a) for a in (10, 20, 30, 40, 40, 40, 40, 40)]
    assert _run(LEFT, turn_left).state == PASSED
    failed = _run(RIGHT, turn_left)
    assert failed.state == FAILED and failed.outcome() == "asked right, saw left"


def test_one_glitchy_frame_answers_nothing():
    glitch = [head()] * 5 + [head(yaw_deg=40)] + [head()] * 5
    assert _run(LEFT, glitch).state == RUNNING
    assert _run(RIGHT, glitch).state == RUNNING


def test_no_response_by_the_deadline_fails():
    c = _run(UP, [head()] * 100)  # 6.7 s at 15 FPS against a 6 s deadline
    assert c.state == FAILED and c.seen == "nothing"


def test_blink_twice_counts_blinks_after_the_ask():
    shapes = [head()] * 30
    assert _run(BLINK_TWICE, shapes, blinks=[0] * 10 + [1] * 10 + [2] * 10).state == PASSED
    once = _run(BLINK_TWICE, shapes * 4, blinks=[0] * 10 + [1] * 110)
    assert once.state == FAILED and once.outcome() == "asked blink twice, saw blink once"


def test_blinking_never_fails_a_head_turn_challenge():
    c = _run(LEFT, [head()] * 20 + [head(yaw_deg=40)] * 5, blinks=[0] * 5 + [1] * 5 + [2] * 15)
    assert c.state == PASSED


# ---- the checker: blink timing, parallax, challenge flow ------------------------------------------------


def _observe(checker, shapes, fps, track=1):
    return [checker.observe(track, i / fps, s) for i, s in enumerate(shapes)]


def _quiet(**kw):
    """Only the cue under test: facial motion off, challenge off unless given."""
    return LivenessConfig(**{"motion_threshold": 2.0, "challenge": "off", **kw})


def test_a_blink_needs_the_eyes_closed_for_a_minimum_time_not_a_frame():
    checker = LivenessChecker(_quiet(), None)
    one_frame = _observe(checker, [FRONT] * 10 + [closed(FRONT)] + [FRONT] * 5, fps=30, track=1)
    assert one_frame[-1].evidence_t is None  # a single low-EAR frame is landmark jitter
    two_frames = _observe(checker, [FRONT] * 10 + [closed(FRONT)] * 2 + [FRONT] * 5, fps=30, track=2)
    assert two_frames[-1].evidence_t is not None and two_frames[-1].cue == "blink"
    slow = _observe(checker, [FRONT] * 4 + [closed(FRONT)] + [FRONT] * 3, fps=2, track=3)
    assert slow[-1].evidence_t is None  # one frame at 2 FPS is still one frame: no time seen closed


def test_a_blink_needs_reopening():
    checker = LivenessChecker(_quiet(), None)
    verdicts = _observe(checker, [FRONT] * 10 + [closed(FRONT)] * 20, fps=30)
    assert all(v.evidence_t is None for v in verdicts)


def test_a_relative_dip_above_the_absolute_ear_level_is_no_blink():
    wide = closed(FRONT, factor=1.6)  # wide-open eyes (EAR ~0.45) narrowing to ~0.24: a squint, not a blink
    squint = closed(FRONT, factor=0.85)
    assert eye_aspect_ratio(squint) < 0.55 * eye_aspect_ratio(wide) and eye_aspect_ratio(squint) > 0.21
    checker = LivenessChecker(_quiet(), None)
    assert _observe(checker, [wide] * 10 + [squint] * 4 + [wide] * 5, fps=30)[-1].evidence_t is None
    checker = LivenessChecker(_quiet(closed_ear=0.3), None)
    assert _observe(checker, [wide] * 10 + [squint] * 4 + [wide] * 5, fps=30)[-1].cue == "blink"


def test_a_plane_leaves_no_homography_residual_and_a_turned_head_does():
    assert homography_residual(FRONT, photo(TILTED_PHOTO)) < 1e-6
    assert homography_residual(head(), head(yaw_deg=25)) > LivenessConfig().parallax_threshold


def test_parallax_confirms_a_head_turn_but_not_a_photo_turned_as_a_whole():
    checker = LivenessChecker(_quiet(), None)
    turn = [head(yaw_deg=a) for a in np.linspace(0, 30, 20)]
    verdicts = _observe(checker, [head()] * 5 + turn, fps=15, track=1)
    assert verdicts[-1].cue == "3D parallax"
    tilts = [photo(np.array([[1, 0, 0], [0, 1, 0], [k * 1e-3, 0, 1]]) @ TILTED_PHOTO) for k in np.linspace(-1, 1, 20)]
    assert all(v.evidence_t is None for v in _observe(checker, [FRONT] * 5 + tilts, fps=15, track=2))


def test_on_doubt_asks_after_the_wait_and_a_wrong_answer_is_a_spoof():
    cfg = _quiet(challenge="on_doubt", challenge_after_s=1.0)
    checker = LivenessChecker(cfg, None, challenge_action=RIGHT)
    still = _observe(checker, [head()] * 20, fps=10)
    assert still[5].challenge is None and still[-1].challenge == "turn right"
    assert still[-1].evidence_t is None and still[-1].spoof is None  # pending
    wrong = [checker.observe(1, 2.0 + i / 10, head(yaw_deg=40)) for i in range(5)]
    assert wrong[-1].spoof == "challenge failed (asked right, saw left)" and wrong[-1].evidence_t is None


def test_a_right_answer_is_evidence_and_cues_during_the_challenge_are_not():
    cfg = LivenessConfig(challenge="on_doubt", challenge_after_s=1.0, motion_threshold=2.0)
    checker = LivenessChecker(cfg, None, challenge_action=UP)
    _observe(checker, [head()] * 12, fps=10)
    blink = [checker.observe(1, 1.2 + i / 30, s) for i, s in enumerate([closed(head())] * 3 + [head()] * 3)]
    assert blink[-1].evidence_t is None and blink[-1].challenge == "look up"  # asked: only the answer counts
    up = [checker.observe(1, 1.5 + i / 10, head(pitch_deg=25)) for i in range(5)]
    assert up[-1].evidence_t is not None and up[-1].cue == "challenge passed (asked up, saw up)"
    assert up[-1].challenge is None and up[-1].spoof is None


def test_always_asks_even_when_a_cue_fired():
    checker = LivenessChecker(_quiet(challenge="always"), None, challenge_action=LEFT)
    verdicts = _observe(checker, [head()] * 10 + [closed(head())] * 3 + [head()] * 5, fps=15)
    assert verdicts[-1].evidence_t is None and verdicts[-1].challenge == "turn left"


def test_a_nod_is_no_answer_but_looking_up_when_asked_to_turn_is_a_wrong_one():
    nod = [head()] * 5 + [head(pitch_deg=-25)] * 5 + [head()] * 5
    assert _run(LEFT, nod).state == RUNNING
    looked_up = _run(LEFT, [head()] * 5 + [head(pitch_deg=25)] * 5)
    assert looked_up.state == FAILED and looked_up.seen == UP


def test_a_fixed_challenge_action_must_be_a_real_one():
    with pytest.raises(ValueError, match="unknown challenge action"):
        LivenessChecker(LivenessConfig(), None, challenge_action="wave")


# ---- a sequence of asked actions ---------------------------------------------------------------------


def _sequence(actions, frames, fps=10.0, deadline=6.0):
    """Feed `frames` ((shape, blinks) or shape) at `fps`; returns the sequence and the instruction at each frame."""
    seq = ChallengeSequence(tuple(actions), 0.0, deadline, head_pose(head()), 0, TH, hold_s=0.2)
    texts = []
    for i, frame in enumerate(frames):
        shape, blinks = frame if isinstance(frame, tuple) else (frame, 0)
        seq.update((i + 1) / fps, head_pose(shape), blinks)
        texts.append(seq.text if seq.state == RUNNING else None)
    return seq, texts


LEFT_TURN = [head(yaw_deg=40)] * 5
UP_LOOK = [head(pitch_deg=25)] * 5
REST = [head()] * 5


def test_a_sequence_is_asked_one_step_at_a_time_and_passes_in_order():
    seq, texts = _sequence((LEFT, UP), REST + LEFT_TURN + REST + UP_LOOK)
    assert seq.state == PASSED and seq.outcome() == "asked left, saw left; asked up, saw up"
    assert texts[0] == "turn left" and texts[12] == "look up"  # step 2 asked once step 1 passed


def test_the_right_actions_in_the_wrong_order_fail():
    seq, _ = _sequence((LEFT, UP), REST + UP_LOOK + REST + LEFT_TURN)
    assert seq.state == FAILED and seq.outcome() == "asked left, saw up"
    assert len(seq.steps) == 1  # the second step was never asked


def test_a_wrong_second_action_fails_the_whole_sequence():
    seq, _ = _sequence((LEFT, RIGHT), REST + LEFT_TURN + REST + UP_LOOK)
    assert seq.state == FAILED and seq.outcome() == "asked left, saw left; asked right, saw up"


def test_each_step_has_its_own_deadline_from_its_own_ask():
    # step 1 answered at ~5 s of a 6 s deadline; step 2 at ~9 s: 4 s after its ask, past the first deadline
    slow = [head()] * 45 + LEFT_TURN + [head()] * 35 + UP_LOOK
    seq, _ = _sequence((LEFT, UP), slow)
    assert seq.state == PASSED and seq.done_t > 6.0
    seq, _ = _sequence((LEFT, UP), [head()] * 45 + LEFT_TURN + [head()] * 70)
    assert seq.state == FAILED and seq.steps[1].seen == "nothing"
    assert seq.done_t == pytest.approx(seq.steps[1].asked_t + 6.0, abs=0.11)


def test_a_repeated_action_needs_the_head_back_at_rest_first():
    held = REST + [head(yaw_deg=40)] * 30  # turned once and held: one answer, not two
    seq, texts = _sequence((LEFT, LEFT), held)
    assert seq.state == RUNNING and len(seq.steps) == 2 and texts[-1] == "again, turn left"
    seq, _ = _sequence((LEFT, LEFT), REST + LEFT_TURN + REST + LEFT_TURN)
    assert seq.state == PASSED


def test_blinks_before_a_blink_step_was_asked_do_not_count_for_it():
    frames = [(s, 0) for s in REST] + [(s, 2) for s in LEFT_TURN] + [(s, 2) for s in REST]
    seq, _ = _sequence((LEFT, BLINK_TWICE), frames)
    assert seq.state == RUNNING and len(seq.steps) == 2
    seq, _ = _sequence((LEFT, BLINK_TWICE), frames + [(head(), 3), (head(), 4)])
    assert seq.state == PASSED


def test_sequences_are_drawn_with_secrets_and_cover_all_thirty_six(monkeypatch):
    assert len(ACTIONS) == 6
    draws = collections.Counter(choose_actions(2) for _ in range(1000))
    assert set(draws) == {(a, b) for a in ACTIONS for b in ACTIONS}  # P(one missing) < 36 * (35/36)**1000
    calls = []
    monkeypatch.setattr(challenge_module.secrets, "choice", lambda seq: calls.append(tuple(seq)) or seq[-1])
    assert choose_actions(3) == (ACTIONS[-1],) * 3 and calls == [ACTIONS] * 3


def test_one_pass_over_a_trace_judges_every_sequence_as_asking_each_would():
    shapes = REST + LEFT_TURN + REST + UP_LOOK + REST
    samples = [Sample((i + 1) / 10, head_pose(s), 0, False) for i, s in enumerate(shapes)]
    trace = Trace(0.0, head_pose(head()), 0, samples)
    every = [(a, b) for a in ACTIONS for b in ACTIONS]
    runs = judge_trace(trace, every, 6.0, TH, 0.2)
    assert [seq for seq, run in runs.items() if run.state == PASSED] == [(LEFT, UP)]
    for seq in every:  # the same verdict as asking that one sequence
        assert runs[seq].state == _sequence(seq, shapes)[0].state


def test_response_time_runs_from_the_start_of_the_movement_to_the_pass():
    shapes = [head()] * 10 + [head(yaw_deg=a) for a in (10, 20, 30, 40)] + [head(yaw_deg=40)] * 5
    samples = [Sample(i / 10, head_pose(s), 0, False) for i, s in enumerate(shapes)]
    trace = Trace(0.0, head_pose(head()), 0, samples)
    [(seq, run)] = judge_trace(trace, [(LEFT,)], 6.0, TH, 0.2).items()
    times = response_times(trace, {LEFT: run.done_t}, TH)
    assert run.state == PASSED and 0.3 <= times[LEFT] <= 0.6  # 10 degrees at 1.0 s; passed 0.2 s after 30 degrees


def test_a_turn_hovering_at_its_threshold_stays_held_but_a_real_return_restarts_the_hold():
    hover = REST + [head(yaw_deg=a) for a in (35, 27, 34, 26, 33, 28, 33)]  # 26-27 degrees: under 0.3, over 0.7 of it
    assert _sequence((LEFT,), hover)[0].state == PASSED
    back = REST + [head(yaw_deg=a) for a in (35, 5, 34, 5, 33, 5, 33)]  # back to rest between: never held 0.2 s
    assert _sequence((LEFT,), back)[0].state == RUNNING


def test_an_answer_is_bound_only_when_encodings_naming_the_person_bracket_it():
    """`eval-liveness --challenges all` credits an answer as the door does (issue 25): named at or before its
    resting pose, and on every encoding until one at or after its pass."""
    named = [(0.0, "kian"), (0.125, "kian"), (0.25, "kian"), (0.375, "kian")]
    assert bound(named, "kian", 0.1, 0.3)
    assert not bound(named, "kian", 0.1, 0.4)  # no encoding after the pass yet
    assert not bound(named[1:], "kian", 0.1, 0.3)  # the resting pose came before the first vote naming him
    gap = [(0.0, "kian"), (0.125, None), (0.25, "kian"), (0.375, "kian")]
    assert not bound(gap, "kian", 0.1, 0.3)  # the face named no one in between: another face may have answered
    assert bound(gap, "kian", 0.3, 0.35)  # evidence from after the gap binds again
    assert not bound([(0.0, "kian"), (0.125, "ana"), (0.25, "kian")], "kian", 0.0, 0.2)  # a conflict
    assert not bound([(0.0, None), (0.125, None)], "kian", 0.0, 0.1)  # a stranger's answer is no one's
    doubts = [(0.0, None, True), (0.125, "kian", False), (0.25, None, True), (0.375, "kian", False)]
    assert bound(doubts, "kian", 0.0, 0.3)  # doubts leaning to kian neither break the run, and start it

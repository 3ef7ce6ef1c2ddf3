"""Liveness: CONFIRM evidence that a track is a live face, and the spoken challenge when there is none.

Three cues from dlib's 68 landmarks, any of which confirms:
- a blink: the eye aspect ratio (EAR, eye height over width) falls under both a fraction of the
  track's own open-eye level and an absolute level, stays there for `min_closed_s` seconds (one
  glitchy frame is never a blink, whatever the frame rate) and comes back (hysteresis);
- non-rigid motion: after aligning each shape on points a hand cannot deform (nose, eye
  corners) with an affine fit, the mouth and eyelid points still move relative to them, as
  they do when someone talks or changes expression. A photo moved as a whole (shifted,
  rotated, scaled, tilted, lit differently) is one plane: the affine fit absorbs all of it;
- 3D parallax: when the head turns, the nose tip, the eye corners and the face outline move
  in a way no plane can (a homography fit leaves a residual); a photo turned as a whole is a
  plane, and the homography absorbs it exactly.
When none fired after `challenge_after_s` (or always, by config), the track is asked for a
random sequence of `challenge_steps` actions (challenge.py); once asked, only the answers count,
and a wrong or missing one is reported as a spoof. Absence of evidence only keeps the attempt
pending: the decider denies.
`graded` (the default): the attack models' grade of the track (spoof.py `Grade`, fed by `set_grade`)
decides. PASS: a CONFIRM cue is enough (the challenge only when none comes within
`challenge_after_s`); CHALLENGE: asked as `always` does, with the grade's extra steps; no grade
(too few judged frames, no model) is a challenge too. A track whose grade leaves PASS loses the
CONFIRM cues it had and is asked.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from door_access.config import LivenessConfig
from door_access.core import LiveVerdict
from door_access.faces.geometry import EYE_CORNERS, NOSE, eye_distance, homography_residual
from door_access.liveness.challenge import (
    ACTIONS,
    FAILED,
    PASSED,
    ChallengeSequence,
    Pose,
    Sample,
    Thresholds,
    choose_actions,
    head_pose,
    neutral_pose,
)
from door_access.liveness.spoof import PASS, Grade

log = logging.getLogger(__name__)

SHAPE_PREDICTOR_68 = "shape_predictor_68_face_landmarks.dat"
ANCHORS = NOSE + EYE_CORNERS  # nose bridge and tip, eye corners
DEFORMABLE = list(range(48, 68)) + [37, 38, 40, 41, 43, 44, 46, 47]  # lips, eyelids
HISTORY_S = 1.0  # motion and parallax are measured against the shapes of the last second
BASELINE_S = 2.0  # the open-eye EAR is the 80th percentile of the last two seconds of open eyes
MIN_BASELINE = 3  # EAR samples needed before a blink can be judged
PARALLAX_FRAMES = 3  # frames in a row over the parallax threshold
MAX_YAW_STEP = 0.08  # yaw change between two frames beyond which the newer shape is a landmark glitch, not a turn
NEUTRAL_S = 0.5  # `always`: the resting pose is taken from at least this long before asking


def _streak(froms: deque, since: float, frames: int) -> float:
    """Add one frame of a cue's streak (`since`: the older shape it was measured against); the earliest
    such shape over the streak's last `frames` frames, the ones that make the cue count."""
    froms.append(since)
    while len(froms) > frames:
        froms.popleft()
    return min(froms)


def eye_aspect_ratio(points: np.ndarray) -> float:
    """Mean EAR of both eyes (Soukupova and Cech 2016): ~0.3 open, under ~0.15 closed."""
    def one(e):
        return (np.linalg.norm(e[1] - e[5]) + np.linalg.norm(e[2] - e[4])) / (2.0 * np.linalg.norm(e[0] - e[3]))

    return float((one(points[36:42]) + one(points[42:48])) / 2.0)


def non_rigid_motion(a: np.ndarray, b: np.ndarray) -> float | np.ndarray:
    """How far the lips and eyelids of shape `b` moved relative to `a`, once `b` is mapped onto `a`
    by the affine transform that best fits their anchor points; RMS, in eye distances. `b` may be
    a stack of shapes (K, 68, 2): one value each, in one batched least-squares fit (a track
    compares each frame with the ~30 shapes of the last second)."""
    stack = np.asarray(b, np.float64).reshape(-1, *np.shape(b)[-2:])
    ones = np.ones((len(stack), len(ANCHORS), 1))
    affine = np.linalg.pinv(np.concatenate([stack[:, ANCHORS], ones], axis=2)) @ a[ANCHORS]  # (K, 3, 2)
    mapped = np.concatenate([stack[:, DEFORMABLE], ones[:, :1].repeat(len(DEFORMABLE), axis=1)], axis=2) @ affine
    rms = np.sqrt(((mapped - a[DEFORMABLE]) ** 2).sum(axis=2).mean(axis=1)) / max(eye_distance(a), 1e-6)
    return float(rms[0]) if np.ndim(b) == 2 else rms


@dataclass
class _TrackLiveness:
    first_seen: float
    ears: deque = field(default_factory=deque)  # (t, ear) of open-eye frames: the baseline
    shapes: deque = field(default_factory=deque)  # (t, points, pose)
    closed_since: float | None = None  # first frame of the current eye closure
    closed_last: float | None = None  # latest frame of it
    blinks: int = 0
    motion_frames: int = 0
    parallax_frames: int = 0
    motion_from: deque = field(default_factory=deque)  # per frame of the motion streak's last `motion_frames`:
    parallax_from: deque = field(default_factory=deque)  # the latest older shape it moved from (the same for parallax)
    first_evidence_t: float | None = None  # for reporting how long a person waited
    last_evidence_t: float | None = None
    last_evidence_from: float | None = None  # the first frame the latest evidence rests on
    challenge_from: float | None = None  # the first frame of the resting pose the challenge is judged from
    cue: str = ""  # the first cue seen
    doubt: bool = False  # a DENY cue was borderline: ask now
    grade: Grade | None = None  # `graded`: what the attack models ask of this track (None: not judged yet)
    challenge: ChallengeSequence | None = None


class LivenessChecker:
    """Per-track liveness state. Lives in the detector thread (it needs the frame's pixels).

    `challenge_action` fixes the asked action (one, a one-step challenge) or sequence (tests,
    `eval-liveness` on clips that perform a known action); it is a constructor argument, never a
    config key an attacker could set. `trace=True` keeps each track's frames (`traces`), so any
    challenge asked at any moment can be judged on them afterwards.
    `models_dir=None` builds a checker that only takes landmark arrays (`observe`).
    """

    def __init__(self, cfg: LivenessConfig, models_dir: Path | None,
                 challenge_action: str | tuple[str, ...] | None = None, trace: bool = False):
        fixed = (challenge_action,) if isinstance(challenge_action, str) else challenge_action
        if fixed is not None and (not fixed or any(a not in ACTIONS for a in fixed)):
            raise ValueError(f"unknown challenge action {challenge_action!r} (one of: {', '.join(ACTIONS)})")
        self.cfg = cfg
        self.challenge_actions = tuple(fixed) if fixed is not None else None
        self.traces: dict[int, list[Sample]] | None = {} if trace else None
        self._predictor = None
        if models_dir is not None:
            import dlib

            from door_access.faces.detection import load_dlib_model

            self._predictor = load_dlib_model(dlib.shape_predictor, Path(models_dir) / SHAPE_PREDICTOR_68)
        self.tracks: dict[int, _TrackLiveness] = {}

    def landmarks(self, rgb: np.ndarray, rect) -> np.ndarray:
        """dlib's 68 points of the face in `rect`, (68, 2) float pixels; `rgb` may be BGR too (dlib
        reads a pixel's intensity as (r + g + b) / 3)."""
        return np.array([[p.x, p.y] for p in self._predictor(rgb, rect).parts()], np.float64)

    def update(self, track: int, t: float, rgb: np.ndarray, rect) -> LiveVerdict:
        """Feed one frame of a track; returns what liveness knows about it now."""
        return self.observe(track, t, self.landmarks(rgb, rect))

    def request_challenge(self, track: int) -> None:
        """A DENY cue was borderline on this track: ask at once instead of waiting."""
        if track in self.tracks:
            self.tracks[track].doubt = True

    def set_grade(self, track: int, grade: Grade | None) -> None:
        """`graded`: the attack models' latest grade of this track (spoof.SpoofChecker.grade). Out of
        PASS, CONFIRM cues seen without a challenge no longer count: the track is asked instead."""
        s = self.tracks.get(track)
        if s is None:
            return
        s.grade = grade
        if self.cfg.challenge == "graded" and s.challenge is None and not self._passive(s):
            s.first_evidence_t = s.last_evidence_t = None
            s.cue = ""

    def _passive(self, s: _TrackLiveness) -> bool:
        """Whether a CONFIRM cue alone can let this track in (no challenge asked)."""
        mode = self.cfg.challenge
        return mode in ("off", "on_doubt") or (mode == "graded" and s.grade is not None and s.grade.band == PASS)

    def observe(self, track: int, t: float, points: np.ndarray) -> LiveVerdict:
        cfg = self.cfg
        s = self.tracks.setdefault(track, _TrackLiveness(first_seen=t))
        pose = head_pose(points)
        closed_since = s.closed_since
        if self._blink(s, t, eye_aspect_ratio(points)):
            self._evidence(s, t, "blink", closed_since)

        moved = non_rigid_motion(points, np.stack([old for _, old, _ in s.shapes])) if s.shapes else np.zeros(0)
        over = np.flatnonzero(moved >= cfg.motion_threshold)
        s.motion_frames = s.motion_frames + 1 if len(over) else 0
        if s.motion_frames:  # it rests on the frames that count and the latest older shapes they moved from
            since = _streak(s.motion_from, s.shapes[over[-1]][0], cfg.motion_frames)
        else:
            s.motion_from.clear()
        if s.motion_frames >= cfg.motion_frames:
            self._evidence(s, t, "facial motion", since)

        parallax, since = 0.0, t
        if s.shapes and abs(s.shapes[-1][2].yaw - pose.yaw) <= MAX_YAW_STEP:  # a jump is a landmark glitch
            turned = max(s.shapes, key=lambda old: abs(old[2].yaw - pose.yaw))
            if abs(turned[2].yaw - pose.yaw) >= cfg.parallax_min_turn:
                parallax, since = homography_residual(turned[1], points), turned[0]
        s.parallax_frames = s.parallax_frames + 1 if parallax >= cfg.parallax_threshold else 0
        if s.parallax_frames:
            since = _streak(s.parallax_from, since, PARALLAX_FRAMES)
        else:
            s.parallax_from.clear()
        if s.parallax_frames >= PARALLAX_FRAMES:
            self._evidence(s, t, "3D parallax", since)

        self._maybe_ask(track, s, t)
        if self.traces is not None:
            self._trace(track, s, t, pose)
        s.shapes.append((t, points, pose))
        while s.shapes and t - s.shapes[0][0] > HISTORY_S:
            s.shapes.popleft()
        return self._verdict(s, t, pose)

    def _blink(self, s: _TrackLiveness, t: float, ear: float) -> bool:
        """One frame of the blink state machine; True when a blink has just ended."""
        cfg = self.cfg
        while s.ears and t - s.ears[0][0] > BASELINE_S:
            s.ears.popleft()
        if len(s.ears) < MIN_BASELINE:
            s.ears.append((t, ear))
            return False
        open_level = float(np.percentile([e for _, e in s.ears], 80))
        if ear < min(cfg.blink_ratio * open_level, cfg.closed_ear):
            if s.closed_since is None:
                s.closed_since = t
            s.closed_last = t
            return False  # the baseline is frozen while the eyes are shut
        if ear > cfg.reopen_ratio * open_level:
            blinked = s.closed_since is not None and s.closed_last - s.closed_since >= cfg.min_closed_s
            s.closed_since = s.closed_last = None
            s.ears.append((t, ear))
            if blinked:
                s.blinks += 1
            return blinked
        if s.closed_since is None:
            s.ears.append((t, ear))
        return False

    def _evidence(self, s: _TrackLiveness, t: float, cue: str, since: float) -> None:
        """Evidence at `t` resting on the frames from `since` on: the decider credits it only if every
        encoding of the track from `since` to after `t` names the same person (decision.py)."""
        if s.challenge is not None and s.challenge.state != PASSED:
            return  # once asked, only the answer counts: a replay moves its lips too
        if s.challenge is None and not self._passive(s):
            return
        if s.first_evidence_t is None:
            s.first_evidence_t, s.cue = t, cue
        s.last_evidence_t, s.last_evidence_from = t, since

    def _maybe_ask(self, track: int, s: _TrackLiveness, t: float) -> None:
        cfg = self.cfg
        if cfg.challenge == "off" or s.challenge is not None or not s.shapes:
            return
        if self._passive(s):
            due = s.last_evidence_t is None and (s.doubt or t - s.first_seen >= cfg.challenge_after_s)
        else:
            due = t - s.first_seen >= NEUTRAL_S
        if not due:
            return
        neutral = neutral_pose([pose for _, _, pose in s.shapes])
        s.challenge_from = s.shapes[0][0]  # the answer is judged against this face's rest, so it rests on it too
        extra = s.grade.extra_steps if cfg.challenge == "graded" and s.grade is not None else 0
        actions = self.challenge_actions or choose_actions(cfg.challenge_steps + extra)
        s.challenge = ChallengeSequence(actions, t, cfg.challenge_deadline_s, neutral, s.blinks,
                                        Thresholds.of(cfg), cfg.challenge_hold_s)
        log.info("challenge asked of track %d: %d step(s), first %r", track, len(actions), s.challenge.text)

    def _trace(self, track: int, s: _TrackLiveness, t: float, pose: Pose) -> None:
        """Record the track frame by frame (`eval-liveness --challenges all`), kept after it ends:
        any challenge, asked at any moment (`challenge.asked_at`), can be judged on it afterwards."""
        self.traces.setdefault(track, []).append(Sample(t, pose, s.blinks, s.closed_since is not None))

    def _verdict(self, s: _TrackLiveness, t: float, pose: Pose) -> LiveVerdict:
        c = s.challenge
        if c is not None and c.done_t is None:
            state = c.update(t, pose, s.blinks)
            if state == PASSED:
                self._evidence(s, t, f"challenge passed ({c.outcome()})", s.challenge_from)
        if c is not None and c.state == FAILED:
            failed = f"challenge failed ({c.outcome()})"
            return LiveVerdict(None, failed, None, spoof=failed)
        if c is not None and c.state != PASSED:
            return LiveVerdict(None, f"challenge: {c.text}", None, challenge=c.text, challenge_step=len(c.steps))
        if s.last_evidence_t is not None:
            return LiveVerdict(s.last_evidence_t, s.cue, s.first_evidence_t - s.first_seen,
                               evidence_from=s.last_evidence_from)
        return LiveVerdict(None, f"no blink, facial motion or parallax in {t - s.first_seen:.1f} s")

    def forget(self, alive: set[int]) -> None:
        """Drop the state of tracks that have ended."""
        self.tracks = {i: s for i, s in self.tracks.items() if i in alive}

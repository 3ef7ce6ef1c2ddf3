"""The spoken liveness challenge: head pose and expression from 68 landmarks, and the ask-and-verify state machine.

A recording cannot follow an instruction chosen at random after it started. The door asks for
a sequence of `liveness.challenge_steps` actions, each drawn with `secrets` from six (turn the
head left or right, look up, blink twice, open the mouth, smile), one at a time, and checks each
response against the track's own neutral pose within that step's own deadline. The right action
held briefly passes the step; any other clear action, or nothing by the deadline, fails the whole
challenge. With 2 steps there are 36 equally likely sequences: a recording that happens to show
some actions in some order passes at most the few that match it (`eval-liveness --challenges all`
measures it; docs/liveness.md gives the measured chance and the thresholds).

Directions are the person's own: "left" is their left, which is the image's right on a camera
that does not mirror its picture (a door camera). Pose and expression are measured as ratios of
landmark positions, not angles: no camera model is needed, and a photo tilted or turned as a
whole keeps its ratios (so it shows no head turn, open mouth or smile at all). A head tilt (roll)
is not an action: a photo rotated in the hand shows one, and a replayed head turn rolls by up to
18 degrees on its own.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass

import numpy as np

from door_access.faces.geometry import eye_centres

log = logging.getLogger(__name__)

LEFT, RIGHT, UP, BLINK_TWICE = "left", "right", "up", "blink twice"
OPEN_MOUTH, SMILE = "open mouth", "smile"
DOWN = "down"  # never asked, and no wrong answer either (people nod while they listen)
ACTIONS = (LEFT, RIGHT, UP, BLINK_TWICE, OPEN_MOUTH, SMILE)
HELD = (LEFT, RIGHT, UP, OPEN_MOUTH, SMILE)  # actions shown by a pose held for `hold_s` (a blink is counted)
# Said short (voiced in 0.5-0.9 s: the person waits less); the kiosk shows "Turn your head left".
SPOKEN = {LEFT: "turn left", RIGHT: "turn right", UP: "look up", BLINK_TWICE: "blink twice",
          OPEN_MOUTH: "open your mouth", SMILE: "smile"}
NOTHING = "nothing"

RUNNING, PASSED, FAILED = "running", "passed", "failed"
KEEP = 0.7  # a head action once seen stays held while it keeps this fraction of its threshold (hysteresis:
# g03's own right turn hovers at 0.25-0.33 against 0.3, and landmark noise is ~0.02-0.05)


@dataclass(frozen=True)
class Pose:
    """Head pose and mouth as landmark ratios: yaw > 0 when the nose points to the person's left (image
    right), pitch grows when they look down. Yaw is about 0.2 for a 20 degree turn, pitch changes ~0.1.
    mouth: the lips' inner gap, smile: the mouth's width, both in eye distances (0.0 when not measured)."""

    yaw: float
    pitch: float
    mouth: float = 0.0
    smile: float = 0.0


@dataclass(frozen=True)
class Thresholds:
    """How far from the track's neutral pose each held action must go (`liveness.challenge_*`)."""

    turn: float  # yaw
    look_up: float  # pitch
    open_mouth: float  # inner lip gap, eye distances
    smile: float  # mouth width, eye distances

    @classmethod
    def of(cls, cfg) -> Thresholds:
        """From a `LivenessConfig`."""
        return cls(cfg.challenge_turn, cfg.challenge_look_up, cfg.challenge_open_mouth, cfg.challenge_smile)


def head_pose(points: np.ndarray) -> Pose:
    """Pose from dlib's 68 points, measured along the eye axis so a tilted head (roll) changes nothing.

    yaw: the nose tip's (30) offset from the midpoint between the eyes, along the eye axis, in eye
    distances (inner points only: the face outline's points jump between two fits on a turned face);
    pitch: the nose tip's drop below the eye line over the chin's (8) drop below it; mouth: the mean
    gap between the inner lips (61-67, 62-66, 63-65); smile: the distance between the mouth corners
    (48, 54).
    """
    left_eye, right_eye = eye_centres(points)  # corners: lids move
    u = right_eye - left_eye
    distance = max(float(np.linalg.norm(u)), 1e-6)
    u = u / distance
    v = np.array([-u[1], u[0]])  # image "down" in the face's frame
    mid = (left_eye + right_eye) / 2.0
    yaw = (points[30] - mid) @ u / distance
    chin = (points[8] - mid) @ v
    pitch = float((points[30] - mid) @ v / chin) if chin > 1e-6 else 0.0
    gap = np.linalg.norm(points[[61, 62, 63]] - points[[67, 66, 65]], axis=1).mean() / distance
    width = np.linalg.norm(points[48] - points[54]) / distance
    return Pose(float(yaw), pitch, float(gap), float(width))


def neutral_pose(poses: list[Pose]) -> Pose:
    """The track's resting pose: the median of recent poses, so one glitchy frame cannot move it."""
    return Pose(*(float(np.median([getattr(p, k) for p in poses])) for k in ("yaw", "pitch", "mouth", "smile")))


def scores(pose: Pose, neutral: Pose, th: Thresholds) -> dict[str, float]:
    """Each held action's (and DOWN's) movement from `neutral` in units of its threshold. A smile counts
    only with the face to the camera (yaw within half a turn): a turned head narrows the eye line more
    than the mouth (g03's turns widen the mouth by up to 0.24 eye distances, his frontal frames 0.14)."""
    dyaw, dup = pose.yaw - neutral.yaw, neutral.pitch - pose.pitch
    frontal = abs(dyaw) < th.turn / 2
    return {LEFT: dyaw / th.turn, RIGHT: -dyaw / th.turn, UP: dup / th.look_up, DOWN: -dup / th.look_up,
            OPEN_MOUTH: (pose.mouth - neutral.mouth) / th.open_mouth,
            SMILE: (pose.smile - neutral.smile) / th.smile if frontal else 0.0}


def pose_action(pose: Pose, neutral: Pose, th: Thresholds) -> str | None:
    """The held action `pose` shows against `neutral`, if any clears its threshold; the strongest wins."""
    score = scores(pose, neutral, th)
    best = max(score, key=score.get)
    return best if score[best] >= 1.0 else None


def choose_action() -> str:
    """An unpredictable action: a recording made before the ask cannot know it."""
    return secrets.choice(ACTIONS)


def choose_actions(steps: int) -> tuple[str, ...]:
    """`steps` independent draws (repeats allowed): 6**steps sequences, each as likely."""
    return tuple(choose_action() for _ in range(steps))


class Challenge:
    """One asked action for one track, verified frame by frame.

    `update` takes the frame's pose and the track's blink count so far; the state goes from
    RUNNING to PASSED (the asked action seen for `hold_s`) or FAILED (another action that could
    have been asked, held for `hold_s`, or nothing by the deadline). Blinks never fail a head-turn
    challenge and looking down fails nothing: people blink and nod while they listen.
    `after`: the held action of the step before (a later step of a sequence): the face may still
    show it, which answers nothing here, so held actions count only once it has been released (back
    under half of it: turning left then right releases it on the way; left twice, or smile twice,
    means going back first).
    """

    def __init__(self, action: str, t: float, deadline_s: float, neutral: Pose, blinks: int,
                 th: Thresholds, hold_s: float, after: str | None = None):
        if action not in ACTIONS:
            raise ValueError(f"unknown challenge action {action!r}")
        self.action, self.asked_t, self.deadline = action, t, t + deadline_s
        self.neutral, self.blinks_at_ask = neutral, blinks
        self.th, self.hold_s = th, hold_s
        self.state = RUNNING
        self.seen = NOTHING
        self.done_t: float | None = None
        self._held: tuple[str, float] | None = None  # (held action, since when)
        self._after = after if after in HELD else None

    @property
    def text(self) -> str:
        return SPOKEN[self.action]

    def update(self, t: float, pose: Pose | None, blinks: int) -> str:
        if self.state != RUNNING:
            return self.state
        blinked = blinks - self.blinks_at_ask
        if blinked:
            self.seen = "blink twice" if blinked >= 2 else "blink once"
        if self.action == BLINK_TWICE and blinked >= 2:
            return self._finish(t, PASSED)
        head = pose_action(pose, self.neutral, self.th) if pose is not None else None
        if head is None and self._held is not None and pose is not None and \
                scores(pose, self.neutral, self.th)[self._held[0]] >= KEEP:
            head = self._held[0]  # still held: a turn hovering at its threshold does not restart the hold
        if self._after is not None and pose is not None and \
                scores(pose, self.neutral, self.th)[self._after] < 0.5:
            self._after = None  # the step before's action released
        if self._after is not None:
            head = None
        if head is None or head == DOWN:  # never asked: people nod while they listen, so it is no answer
            self._held = None
        else:
            if self._held is None or self._held[0] != head:
                self._held = (head, t)
            if t - self._held[1] >= self.hold_s:
                self.seen = head
                return self._finish(t, PASSED if head == self.action else FAILED)
        if t >= self.deadline:
            return self._finish(t, FAILED)
        return RUNNING

    def _finish(self, t: float, state: str) -> str:
        self.state, self.done_t = state, t
        log.info("challenge %s: asked %r, saw %r after %.2f s", state, self.action, self.seen, t - self.asked_t)
        return state

    def outcome(self) -> str:
        """For verdicts and logs: "asked X, saw Y"."""
        return f"asked {self.action}, saw {self.seen}"


class ChallengeSequence:
    """Several asked actions in order, one `Challenge` step at a time: each step is asked (spoken and
    shown) when the one before passes, has its own deadline from then, and counts head actions only
    once the step before's is released (so "left, left" means turning left twice). Any failed step
    fails the sequence. `text` is the current step's instruction; it changes when a new step is asked."""

    def __init__(self, actions: tuple[str, ...], t: float, deadline_s: float, neutral: Pose, blinks: int,
                 th: Thresholds, hold_s: float):
        if not actions:
            raise ValueError("a challenge needs at least one action")
        self.actions = tuple(actions)
        self._step_args = (deadline_s, neutral)
        self._thresholds = (th, hold_s)
        self.asked_t = t
        self.steps = [Challenge(self.actions[0], t, deadline_s, neutral, blinks, th, hold_s)]
        self.state = RUNNING
        self.done_t: float | None = None

    @property
    def step(self) -> Challenge:
        return self.steps[-1]

    @property
    def text(self) -> str:
        """The current step's instruction; "again, ..." when it repeats the step before (a new ask)."""
        again = len(self.steps) > 1 and self.steps[-2].action == self.step.action
        return f"again, {self.step.text}" if again else self.step.text

    def update(self, t: float, pose: Pose | None, blinks: int) -> str:
        if self.state != RUNNING:
            return self.state
        state = self.step.update(t, pose, blinks)
        if state == PASSED and len(self.steps) < len(self.actions):
            deadline_s, neutral = self._step_args
            self.steps.append(Challenge(self.actions[len(self.steps)], t, deadline_s, neutral, blinks,
                                        *self._thresholds, after=self.step.action))
            return RUNNING
        if state != RUNNING:
            self.state, self.done_t = state, t
        return self.state

    def outcome(self) -> str:
        """For verdicts and logs: each step asked so far, "asked X, saw Y; asked Z, saw W"."""
        return "; ".join(step.outcome() for step in self.steps)


@dataclass(frozen=True)
class Sample:
    """One frame of a track, for judging challenges afterwards (`eval-liveness --challenges all`)."""

    t: float
    pose: Pose | None
    blinks: int  # blinks counted on the track so far
    eyes_closed: bool  # inside an eye closure that may become a blink

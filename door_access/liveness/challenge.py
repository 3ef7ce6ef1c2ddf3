"""The spoken liveness challenge: head pose from 68 landmarks, and the ask-and-verify state machine.

A recording cannot follow an instruction chosen at random after it started. The door asks for
one action drawn with `secrets` (turn the head left or right, look up, blink twice) and checks
the response against the track's own neutral pose within a deadline. The right action held
briefly passes; any other clear action, or nothing by the deadline, fails.

Directions are the person's own: "left" is their left, which is the image's right on a camera
that does not mirror its picture (a door camera). Pose is measured as ratios of landmark
positions, not angles: no camera model is needed, and a photo tilted or turned as a whole
keeps its ratios (so it shows no head turn at all).
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

LEFT, RIGHT, UP, BLINK_TWICE = "left", "right", "up", "blink twice"
DOWN = "down"  # never asked, and no wrong answer either (people nod while they listen)
ACTIONS = (LEFT, RIGHT, UP, BLINK_TWICE)
SPOKEN = {LEFT: "turn your head left", RIGHT: "turn your head right", UP: "look up", BLINK_TWICE: "blink twice"}
NOTHING = "nothing"

RUNNING, PASSED, FAILED = "running", "passed", "failed"


@dataclass(frozen=True)
class Pose:
    """Head pose as landmark ratios: yaw > 0 when the nose points to the person's left (image right),
    pitch grows when they look down. Yaw is about 0.2 for a 20 degree turn, pitch changes ~0.1."""

    yaw: float
    pitch: float


def head_pose(points: np.ndarray) -> Pose:
    """Pose from dlib's 68 points, measured along the eye axis so a tilted head (roll) changes nothing.

    yaw: the nose tip's (30) offset from the midpoint between the eyes, along the eye axis, in eye
    distances (inner points only: the face outline's points jump between two fits on a turned face);
    pitch: the nose tip's drop below the eye line over the chin's (8) drop below it.
    """
    left_eye, right_eye = points[[36, 39]].mean(axis=0), points[[42, 45]].mean(axis=0)  # corners: lids move
    u = right_eye - left_eye
    distance = max(float(np.linalg.norm(u)), 1e-6)
    u = u / distance
    v = np.array([-u[1], u[0]])  # image "down" in the face's frame
    mid = (left_eye + right_eye) / 2.0
    yaw = (points[30] - mid) @ u / distance
    chin = (points[8] - mid) @ v
    pitch = float((points[30] - mid) @ v / chin) if chin > 1e-6 else 0.0
    return Pose(float(yaw), pitch)


def neutral_pose(poses: list[Pose]) -> Pose:
    """The track's resting pose: the median of recent poses, so one glitchy frame cannot move it."""
    return Pose(float(np.median([p.yaw for p in poses])), float(np.median([p.pitch for p in poses])))


def pose_action(pose: Pose, neutral: Pose, turn: float, look_up: float) -> str | None:
    """The head action `pose` shows against `neutral`, if any clears its threshold; the strongest wins."""
    dyaw, dup = pose.yaw - neutral.yaw, neutral.pitch - pose.pitch
    scores = {LEFT: dyaw / turn, RIGHT: -dyaw / turn, UP: dup / look_up, DOWN: -dup / look_up}
    best = max(scores, key=scores.get)
    return best if scores[best] >= 1.0 else None


def choose_action() -> str:
    """An unpredictable action: a recording made before the ask cannot know it."""
    return secrets.choice(ACTIONS)


class Challenge:
    """One asked action for one track, verified frame by frame.

    `update` takes the frame's pose and the track's blink count so far; the state goes from
    RUNNING to PASSED (the asked action seen for `hold_s`) or FAILED (another action that could
    have been asked, held for `hold_s`, or nothing by the deadline). Blinks never fail a head-turn
    challenge and looking down fails nothing: people blink and nod while they listen.
    """

    def __init__(self, action: str, t: float, deadline_s: float, neutral: Pose, blinks: int,
                 turn: float, look_up: float, hold_s: float):
        if action not in ACTIONS:
            raise ValueError(f"unknown challenge action {action!r}")
        self.action, self.asked_t, self.deadline = action, t, t + deadline_s
        self.neutral, self.blinks_at_ask = neutral, blinks
        self.turn, self.look_up, self.hold_s = turn, look_up, hold_s
        self.state = RUNNING
        self.seen = NOTHING
        self.done_t: float | None = None
        self._held: tuple[str, float] | None = None  # (head action, since when)

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
        head = pose_action(pose, self.neutral, self.turn, self.look_up) if pose is not None else None
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

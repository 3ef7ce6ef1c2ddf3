"""Liveness: evidence that a track is a live face, not a photo held up to the camera.

Two cues from dlib's 68 landmarks, either of which counts:
- a blink: the eye aspect ratio (EAR, eye height over width) falls well below the track's own
  open-eye level and comes back (hysteresis), which a printed face never does;
- non-rigid motion: after aligning each shape on points a hand cannot deform (nose, eye
  corners) with an affine fit, the mouth and eyelid points still move relative to them, as
  they do when someone talks or changes expression. A photo moved as a whole (shifted,
  rotated, scaled, tilted, lit differently) is one plane: the affine fit absorbs all of it.
Each frame's verdict carries the time of the latest evidence; the decider judges whether it is recent enough.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import dlib
import numpy as np

from .config import LivenessConfig
from .core import LiveVerdict
from .detection import load_dlib_model

SHAPE_PREDICTOR_68 = "shape_predictor_68_face_landmarks.dat"
ANCHORS = list(range(27, 36)) + [36, 39, 42, 45]  # nose bridge and tip, eye corners
DEFORMABLE = list(range(48, 68)) + [37, 38, 40, 41, 43, 44, 46, 47]  # lips, eyelids
HISTORY_S = 1.0  # motion is measured against the shapes of the last second
BASELINE_S = 2.0  # the open-eye EAR is the 80th percentile of the last two seconds


def eye_aspect_ratio(points: np.ndarray) -> float:
    """Mean EAR of both eyes (Soukupova and Cech 2016): ~0.3 open, under ~0.15 closed."""
    def one(e):
        return (np.linalg.norm(e[1] - e[5]) + np.linalg.norm(e[2] - e[4])) / (2.0 * np.linalg.norm(e[0] - e[3]))

    return float((one(points[36:42]) + one(points[42:48])) / 2.0)


def non_rigid_motion(a: np.ndarray, b: np.ndarray) -> float:
    """How far the lips and eyelids of shape `b` moved relative to `a`, once `b` is mapped onto `a`
    by the affine transform that best fits their anchor points; RMS, in eye distances."""
    src = np.hstack([b[ANCHORS], np.ones((len(ANCHORS), 1))])
    affine, *_ = np.linalg.lstsq(src, a[ANCHORS], rcond=None)
    mapped = np.hstack([b[DEFORMABLE], np.ones((len(DEFORMABLE), 1))]) @ affine
    eye_distance = np.linalg.norm(a[36:42].mean(axis=0) - a[42:48].mean(axis=0))
    return float(np.sqrt(((mapped - a[DEFORMABLE]) ** 2).sum(axis=1).mean()) / max(eye_distance, 1e-6))


@dataclass
class _TrackLiveness:
    first_seen: float
    ears: deque = field(default_factory=deque)  # (t, ear)
    shapes: deque = field(default_factory=deque)  # (t, points)
    eyes_closed_frames: int = 0
    closed: bool = False
    motion_frames: int = 0
    first_evidence_t: float | None = None  # for reporting how long a person waited
    last_evidence_t: float | None = None  # for the window
    cue: str = ""  # the first cue seen


class LivenessChecker:
    """Per-track liveness state. Lives in the detector thread (it needs the frame's pixels)."""

    def __init__(self, cfg: LivenessConfig, models_dir: Path):
        self.cfg = cfg
        self._predictor = load_dlib_model(dlib.shape_predictor, Path(models_dir) / SHAPE_PREDICTOR_68)
        self.tracks: dict[int, _TrackLiveness] = {}

    def update(self, track: int, t: float, rgb: np.ndarray, rect: dlib.rectangle) -> LiveVerdict:
        """Feed one frame of a track; returns what liveness knows about it now."""
        points = np.array([[p.x, p.y] for p in self._predictor(rgb, rect).parts()], np.float64)
        self.points = points  # the latest shape, for the DENY cues (spoof.py) to reuse
        return self.observe(track, t, points)

    def observe(self, track: int, t: float, points: np.ndarray) -> LiveVerdict:
        cfg = self.cfg
        s = self.tracks.setdefault(track, _TrackLiveness(first_seen=t))
        ear = eye_aspect_ratio(points)
        s.ears.append((t, ear))
        while s.ears and t - s.ears[0][0] > BASELINE_S:
            s.ears.popleft()
        open_level = float(np.percentile([e for _, e in s.ears], 80))
        if ear < cfg.blink_ratio * open_level:
            s.eyes_closed_frames += 1
            if s.eyes_closed_frames >= cfg.min_closed_frames:
                s.closed = True
        elif ear > cfg.reopen_ratio * open_level:
            if s.closed:
                self._evidence(s, t, "blink")
            s.closed, s.eyes_closed_frames = False, 0

        motion = max((non_rigid_motion(points, old) for _, old in s.shapes), default=0.0)
        s.motion_frames = s.motion_frames + 1 if motion >= cfg.motion_threshold else 0
        if s.motion_frames >= cfg.motion_frames:
            self._evidence(s, t, "facial motion")
        s.shapes.append((t, points))
        while s.shapes and t - s.shapes[0][0] > HISTORY_S:
            s.shapes.popleft()

        if s.last_evidence_t is not None:
            return LiveVerdict(s.last_evidence_t, s.cue, s.first_evidence_t - s.first_seen)
        return LiveVerdict(None, f"no blink or facial motion in {t - s.first_seen:.1f} s")

    @staticmethod
    def _evidence(s: _TrackLiveness, t: float, cue: str) -> None:
        if s.first_evidence_t is None:
            s.first_evidence_t, s.cue = t, cue
        s.last_evidence_t = t

    def forget(self, alive: set[int]) -> None:
        """Drop the state of tracks that have ended."""
        self.tracks = {i: s for i, s in self.tracks.items() if i in alive}

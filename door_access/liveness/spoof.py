"""Liveness DENY cues: signs that the face in front of the camera is a picture of a face.

A face shown on a phone, a laptop or a sheet of paper is a flat image inside a flat object.
Each cue is a small pure function of one frame (or of two landmark shapes) that measures one
physical consequence of that:
- `enclosing_edges` (cue "screen or paper frame"): a device or a sheet has straight borders
  around the face (a bezel, a video window, a paper edge); a head has no frame around it;
- `planar_residual` (cue "flat face"): as a photo turns, all its landmarks follow one
  homography (a plane); a turning head shows parallax between nose, eye corners and outline
  that no homography fits (exact on clean points, but dlib's landmarks of a tilted photo are
  too unsteady for it to fire on the dev set: see docs/liveness.md);
- `screen_glow` and `fine_detail` (cue "screen light"): a screen is a light source, so the face
  on it is brighter than the room the camera exposes for, and a picture of a picture has lost
  the fine detail of skin (display pixels, a camera focused on a glass surface, two rounds of
  compression). A real face is lit by the room it stands in and keeps its detail.
`SpoofChecker` turns these into a DENY only when one holds over a sustained stretch of a
track, so one odd frame (motion blur, a hand passing) never denies anyone.
Everything here is numpy/OpenCV: it is tested without TensorFlow or dlib.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field

import cv2
import numpy as np

from door_access.config import SpoofConfig
from door_access.core import Box

log = logging.getLogger(__name__)

# the points of a head that a face cannot deform much: outline, brows, nose, eye corners
RIGID = list(range(0, 27)) + list(range(27, 36)) + [36, 39, 42, 45]
WORK_SIDE = 320  # frames are measured at this longest side: edges and glow are coarse properties
DETAIL_SIDE = 128  # faces are measured at this size, so fine detail does not depend on distance

FRAME_EDGES = "screen or paper frame"
FLAT_FACE = "flat face"
SCREEN_LIGHT = "screen light"


def _eye_distance(points: np.ndarray) -> float:
    return float(max(np.linalg.norm(points[36:42].mean(axis=0) - points[42:48].mean(axis=0)), 1e-6))


def _similarity_fit(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares shift + rotation + scale mapping src onto dst (points as complex numbers)."""
    zs, zd = src[:, 0] + 1j * src[:, 1], dst[:, 0] + 1j * dst[:, 1]
    a = np.vstack([zs, np.ones_like(zs)]).T
    (rot, shift), *_ = np.linalg.lstsq(a, zd, rcond=None)
    mapped = rot * zs + shift
    return np.stack([mapped.real, mapped.imag], axis=1)


def planar_residual(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """How shape `b` (68 landmarks) moved to `a`: (motion, planar residual), both RMS in eye distances.

    `motion` is what a similarity (shift, turn in the image plane, scale) leaves unexplained,
    i.e. out-of-plane movement; `planar residual` is what one homography leaves unexplained.
    A photo tilted or turned is a plane: the homography explains nearly all of its motion.
    """
    src, dst = b[RIGID].astype(np.float64), a[RIGID].astype(np.float64)
    ed = _eye_distance(a)
    by_sim = _similarity_fit(src, dst)
    hom, _ = cv2.findHomography(src, dst, 0)
    if hom is None:
        return 0.0, 0.0
    by_hom = cv2.perspectiveTransform(src[None], hom)[0]
    rms = lambda p: float(np.sqrt(((p - dst) ** 2).sum(axis=1).mean()) / ed)  # noqa: E731
    return rms(by_sim), rms(by_hom)


def _work_gray(bgr: np.ndarray, box: Box, shrunk: np.ndarray | None = None) -> tuple[np.ndarray, Box]:
    """The frame in grey at WORK_SIDE, and the box in its pixels.

    `shrunk`, the same BGR frame already made smaller (the detector's copy), is shrunk further
    instead of the frame itself: at 1080p that is 0.1 ms instead of 3.4 ms a measure."""
    h, w = bgr.shape[:2]
    scale = min(1.0, WORK_SIDE / max(h, w))
    size = (round(w * scale), round(h * scale))
    source = shrunk if shrunk is not None and max(shrunk.shape[:2]) >= max(size) else bgr
    if source.shape[1::-1] != size:
        source = cv2.resize(source, size, interpolation=cv2.INTER_AREA)
    gray = cv2.cvtColor(source, cv2.COLOR_BGR2GRAY)
    return gray, Box(round(box.x * scale), round(box.y * scale), max(1, round(box.w * scale)),
                     max(1, round(box.h * scale)))


def enclosing_edges(bgr: np.ndarray, box: Box, reach: float = 1.6, min_length: float = 1.2) -> int:
    """How many sides of the face (left, right, top, bottom) have a long straight line beside them.

    A line counts for a side when it runs parallel to that side (within 20 degrees), lies within
    `reach` face widths of the box, is at least `min_length` face heights (or widths) long and
    spans the middle of the face. A phone, a tablet, a video window or a sheet around a face
    gives 3-4 sides; a head in a room rarely more than 1-2 (a door frame, a picture, a shelf).
    """
    return len(_edge_lines(*_work_gray(bgr, box), reach, min_length))


def _edge_lines(gray: np.ndarray, b: Box, reach: float, min_length: float) -> dict[str, float]:
    """Side -> where its nearest line is: distance from the face centre, in face widths."""
    edges = cv2.Canny(cv2.GaussianBlur(gray, (0, 0), 1.0), 40, 100)
    lines = cv2.HoughLinesP(edges, 1, np.pi / 180, threshold=max(8, int(0.6 * b.h)),
                            minLineLength=max(8, int(0.6 * min_length * b.h)), maxLineGap=max(2, b.h // 4))
    if lines is None:
        return {}
    found: dict[str, float] = {}
    cx, cy = b.x + b.w / 2, b.y + b.h / 2

    def add(side: str, offset: float) -> None:
        found[side] = min(found.get(side, offset), offset)

    for x1, y1, x2, y2 in lines.reshape(-1, 4):
        dx, dy = abs(int(x2) - int(x1)), abs(int(y2) - int(y1))
        if dx < 0.36 * dy and dy >= min_length * b.h and min(y1, y2) < b.y + 0.3 * b.h < b.y + 0.7 * b.h < max(y1, y2):
            xm = (x1 + x2) / 2
            if b.x - reach * b.w <= xm <= b.x - 0.1 * b.w:
                add("left", (cx - xm) / b.w)
            elif b.x + 1.1 * b.w <= xm <= b.x + b.w + reach * b.w:
                add("right", (xm - cx) / b.w)
        elif (dy < 0.36 * dx and dx >= min_length * b.w
              and min(x1, x2) < b.x + 0.3 * b.w < b.x + 0.7 * b.w < max(x1, x2)):
            ym = (y1 + y2) / 2
            if b.y - reach * b.h <= ym <= b.y - 0.1 * b.h:
                add("top", (cy - ym) / b.w)
            elif b.y + 1.1 * b.h <= ym <= b.y + b.h + reach * b.h:
                add("bottom", (ym - cy) / b.w)
    return found


def screen_glow(bgr: np.ndarray, box: Box) -> float:
    """Median brightness of the inner face over the median brightness of the whole frame."""
    return _glow(*_work_gray(bgr, box))


def _glow(gray: np.ndarray, b: Box) -> float:
    inner = gray[max(0, b.y + b.h // 5): b.y + b.h * 4 // 5, max(0, b.x + b.w // 5): b.x + b.w * 4 // 5]
    if inner.size == 0:
        return 1.0
    return float(np.median(inner)) / max(float(np.median(gray)), 8.0)


def fine_detail(bgr: np.ndarray, box: Box) -> float:
    """Fine texture of the face: with the face scaled to DETAIL_SIDE px, the standard deviation of
    what a 1 px Gaussian blur removes, over the face's median brightness (inner 70% of the box).
    Live faces on the dev set: 0.015-0.06; faces filmed off a screen: 0.005-0.017."""
    h, w = bgr.shape[:2]
    x0, y0, x1, y1 = max(0, box.x), max(0, box.y), min(w, box.x + box.w), min(h, box.y + box.h)
    if x1 - x0 < 8 or y1 - y0 < 8:
        return 1.0  # nothing to measure: never evidence of a screen
    gray = cv2.cvtColor(bgr[y0:y1, x0:x1], cv2.COLOR_BGR2GRAY)
    face = cv2.resize(gray, (DETAIL_SIDE, DETAIL_SIDE), interpolation=cv2.INTER_AREA).astype(np.float32)
    high = face - cv2.GaussianBlur(face, (0, 0), 1.0)
    m = round(0.15 * DETAIL_SIDE)
    inner = face[m:-m, m:-m]
    return float(high[m:-m, m:-m].std()) / max(float(np.median(inner)), 8.0)


@dataclass
class _TrackSpoof:
    measured_t: float = float("-inf")  # when this track was last measured
    hits: dict = field(default_factory=dict)  # cue -> deque of (t, hit)
    shapes: deque = field(default_factory=deque)  # (t, 68 landmarks), for the flat-face cue
    lines: dict = field(default_factory=dict)  # side -> offset of its line at the last measure
    fired: str | None = None


class SpoofChecker:
    """Per-track DENY evidence. Lives in the detector thread next to LivenessChecker.

    Each cue's per-frame test is recorded over the last `sustain_s` seconds; a cue fires when
    the track has been measured for that long and at least `sustain_fraction` of its tests hit.
    Once fired, the track keeps the cue (a replay does not become live by pausing).
    """

    def __init__(self, cfg: SpoofConfig):
        self.cfg = cfg
        self.tracks: dict[int, _TrackSpoof] = {}
        self.values: dict[int, dict[str, float]] = {}  # track -> latest measures, for reports and tuning

    def measure(self, bgr: np.ndarray, box: Box, shrunk: np.ndarray | None = None) -> dict[str, float]:
        """The per-frame measures behind the cues (also reported by eval-liveness, for tuning);
        `shrunk`: the frame already made smaller, if there is such a copy (see `_work_gray`)."""
        c = self.cfg
        gray, b = _work_gray(bgr, box, shrunk)
        lines = _edge_lines(gray, b, c.frame_reach, c.frame_min_length)
        return {"sides": float(len(lines)), "glow": _glow(gray, b), "detail": fine_detail(bgr, box),
                **{f"edge_{side}": offset for side, offset in lines.items()}}

    def judge(self, v: dict[str, float]) -> dict[str, bool]:
        """The per-frame tests of the cues that need one frame only."""
        c = self.cfg
        return {FRAME_EDGES: v["sides"] >= c.frame_sides,
                SCREEN_LIGHT: v["glow"] >= c.glow_ratio and v["detail"] <= c.detail_max}

    def update(self, track: int, t: float, bgr: np.ndarray, box: Box, points: np.ndarray | None,
               shrunk: np.ndarray | None = None) -> str | None:
        """Feed one frame of a track (`shrunk`: see `measure`); returns the DENY cue once one has
        fired for it, else None."""
        c = self.cfg
        s = self.tracks.setdefault(track, _TrackSpoof())
        if s.fired or t - s.measured_t < c.measure_every_s or box.w < c.min_face_px:
            return s.fired
        s.measured_t = t
        v = self.measure(bgr, box, shrunk)
        hits = self.judge(v)
        hits[FRAME_EDGES] = self._rigid_frame(s, v)
        if points is not None:
            flat = self._flat(s, t, points, v)
            if flat is not None:
                hits[FLAT_FACE] = flat
        self.values[track] = v
        for cue, hit in hits.items():
            q = s.hits.setdefault(cue, deque())
            q.append((t, hit))
            while q and t - q[0][0] > c.sustain_s:
                q.popleft()
        for cue, q in s.hits.items():
            if self._sustained(cue, q, t):
                s.fired = cue
                log.info("track %d: DENY cue '%s' (%s)", track, cue,
                         ", ".join(f"{k} {x:.3f}" for k, x in v.items() if not k.startswith("edge_")))
                break
        return s.fired

    def doubtful(self, track: int) -> str | None:
        """A cue that held on at least `doubt_fraction` of the track's recent tests without firing:
        a borderline DENY, for the liveness challenge (`on_doubt`) to settle. None if none."""
        s = self.tracks.get(track)
        if s is None or s.fired:
            return None
        for cue, q in s.hits.items():  # judged, like a DENY, only over a whole sustain_s of tests
            if (q and q[-1][0] - q[0][0] >= 0.8 * self.cfg.sustain_s
                    and sum(hit for _, hit in q) >= self.cfg.doubt_fraction * len(q)):
                return cue
        return None

    def _rigid_frame(self, s: _TrackSpoof, v: dict[str, float]) -> bool:
        """Enough sides whose lines kept their place relative to the face since the last measure:
        a frame held round the face moves with it, a door frame or a waving arm does not."""
        lines = {k: x for k, x in v.items() if k.startswith("edge_")}
        kept = [k for k, x in lines.items() if k in s.lines and abs(x - s.lines[k]) <= self.cfg.frame_rigid]
        s.lines = lines
        return len(kept) >= self.cfg.frame_sides

    def _flat(self, s: _TrackSpoof, t: float, points: np.ndarray, v: dict[str, float]) -> bool | None:
        """Compare with the oldest shape of the last second: None when the face barely moved out
        of the image plane (nothing to judge), else whether one homography explains the motion."""
        c = self.cfg
        s.shapes.append((t, points))
        while s.shapes and t - s.shapes[0][0] > 1.0:
            s.shapes.popleft()
        motion, planar = planar_residual(points, s.shapes[0][1])
        v["motion"], v["planar"] = motion, planar
        if motion < c.flat_motion:
            return None
        return planar <= c.flat_ratio * motion

    def _sustained(self, cue: str, q: deque, t: float) -> bool:
        c = self.cfg
        if len(q) < 3:
            return False
        if cue != FLAT_FACE and t - q[0][0] < 0.8 * c.sustain_s:
            return False  # the track has not been watched long enough
        return sum(hit for _, hit in q) >= c.sustain_fraction * len(q)

    def forget(self, alive: set[int]) -> None:
        """Drop the state of tracks that have ended."""
        self.tracks = {i: s for i, s in self.tracks.items() if i in alive}
        self.values = {i: v for i, v in self.values.items() if i in alive}

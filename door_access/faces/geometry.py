"""Face geometry on dlib's 68 landmarks: the one home of the point sets, the eye distance and the
plane tests that the liveness cues, the spoof checks, the challenge and enrollment all share.

Every distance is in eye distances (the pixels between the two eyes' corner midpoints), so a
threshold means the same for a face near the camera and one far from it. The eye corners, not
the lids, define it: a blink moves the lids and would shrink the face for a frame.
No TensorFlow, no dlib here.
"""

from __future__ import annotations

import cv2
import numpy as np

OUTLINE = list(range(0, 17))  # the jaw line
NOSE = list(range(27, 36))  # bridge and tip
EYE_CORNERS = [36, 39, 42, 45]
# the points a face cannot deform much with expression (brows and lips can): outline, nose, eye corners
RIGID = OUTLINE + NOSE + EYE_CORNERS
LEFT_EYE_CORNERS, RIGHT_EYE_CORNERS = [36, 39], [42, 45]  # the image's left and right eye


def eye_centres(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The midpoints of each eye's two corners (image left, image right)."""
    return points[LEFT_EYE_CORNERS].mean(axis=0), points[RIGHT_EYE_CORNERS].mean(axis=0)


def eye_distance(points: np.ndarray) -> float:
    """Pixels between the eye-corner midpoints: the face's size, the unit of every measure here."""
    left, right = eye_centres(points)
    return float(np.linalg.norm(right - left))


def _rms(mapped: np.ndarray, dst: np.ndarray, unit: float) -> float:
    return float(np.sqrt(((mapped - dst) ** 2).sum(axis=1).mean()) / max(unit, 1e-6))


def homography_residual(a: np.ndarray, b: np.ndarray) -> float:
    """How far the rigid points of `b` stay from `a` after the best homography (a plane seen from
    anywhere) maps one onto the other; RMS, in eye distances of `a`. About 0.02 for landmark noise;
    a photo turned or tilted as a whole is a plane and leaves nothing, a turning head leaves parallax."""
    src, dst = b[RIGID].astype(np.float64), a[RIGID].astype(np.float64)
    h, _ = cv2.findHomography(src, dst, 0)
    if h is None:
        return 0.0
    mapped = cv2.perspectiveTransform(src.reshape(-1, 1, 2), h).reshape(-1, 2)
    return _rms(mapped, dst, eye_distance(a))


def similarity_residual(a: np.ndarray, b: np.ndarray) -> float:
    """What a similarity (shift, rotation in the image plane, scale) leaves unexplained of the rigid
    points' move from `b` to `a`: out-of-plane motion; RMS, in eye distances of `a`."""
    src, dst = b[RIGID].astype(np.float64), a[RIGID].astype(np.float64)
    zs, zd = src[:, 0] + 1j * src[:, 1], dst[:, 0] + 1j * dst[:, 1]
    (rot, shift), *_ = np.linalg.lstsq(np.vstack([zs, np.ones_like(zs)]).T, zd, rcond=None)
    mapped = rot * zs + shift
    return _rms(np.stack([mapped.real, mapped.imag], axis=1), dst, eye_distance(a))

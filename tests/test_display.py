"""The kiosk window's overlay, drawn on a real frame (no display needed to draw)."""

import cv2
import numpy as np

from door_access.capture import Frame
from door_access.core import Box
from door_access.display import GREEN, RED, annotate
from door_access.pipeline import FaceObs, FrameFaces

from conftest import FR_IMAGES


def test_overlay_marks_known_and_unknown_faces_and_the_door_state():
    image = cv2.resize(cv2.imread(str(FR_IMAGES / "obama.jpg")), (640, 360))
    item = FrameFaces(Frame(0, 0.0, image), [FaceObs(1, Box(300, 60, 120, 120)), FaceObs(2, Box(40, 200, 80, 80))])
    out = annotate(item, {1: ("obama", 0.41), 2: (None, 1.3)}, fps=29.7, unlocked=True)
    assert out.shape == image.shape and not np.array_equal(out, image)
    assert np.array_equal(image, cv2.resize(cv2.imread(str(FR_IMAGES / "obama.jpg")), (640, 360)))  # a copy
    assert tuple(out[60 + 60, 300]) == GREEN  # left edge of the known face's box
    assert tuple(out[200 + 40, 40]) == RED  # left edge of the unknown face's box
    locked = annotate(item, {}, fps=0.0, unlocked=False)
    assert not np.array_equal(locked[25:45, 8:120], out[25:45, 8:120])  # LOCKED vs UNLOCKED

"""Cutting a face out of a frame with room around it: the door's snapshots and the enrollment photos it saves.

No dlib or TensorFlow here: the enrollment rules and the pipeline's decider use it without a model.
"""

from __future__ import annotations

import numpy as np

from door_access.core import Box


def grown_crop(image: np.ndarray, box: Box, grow: float) -> np.ndarray:
    """A copy of `image` inside `box` grown by `grow` of its width and height on each side, clipped to the image.

    The room matters: a saved photo is read again by the photo detector, which needs some surroundings
    to find a face, and a snapshot shows an admin who was at the door."""
    h, w = image.shape[:2]
    gx, gy = int(box.w * grow), int(box.h * grow)
    x0, y0 = max(0, box.x - gx), max(0, box.y - gy)
    x1, y1 = min(w, box.x + box.w + gx), min(h, box.y + box.h + gy)
    return image[y0:y1, x0:x1].copy()

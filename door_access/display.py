"""The kiosk window: the camera picture with boxes, names, distances, FPS and the door state."""

from __future__ import annotations

import cv2
import numpy as np

from .pipeline import FrameFaces

GREEN, RED, GREY, WHITE = (60, 200, 60), (40, 40, 220), (160, 160, 160), (255, 255, 255)


def annotate(item: FrameFaces, names: dict[int, tuple[str | None, float]], fps: float, unlocked: bool) -> np.ndarray:
    """A copy of the frame with overlays; `names` holds each track's latest match."""
    img = item.frame.image.copy()
    for face in item.faces:
        b = face.box
        name, distance = names.get(face.track, (None, float("nan")))
        known = name is not None
        color = GREEN if known else (GREY if distance != distance else RED)
        label = f"{name if known else 'unknown'} {distance:.2f}" if distance == distance else f"#{face.track}"
        cv2.rectangle(img, (b.x, b.y), (b.x + b.w, b.y + b.h), color, 2)
        cv2.putText(img, label, (b.x, max(12, b.y - 6)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, color, 1, cv2.LINE_AA)
    state, color = ("UNLOCKED", GREEN) if unlocked else ("LOCKED", RED)
    cv2.putText(img, f"{fps:4.1f} FPS", (8, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, WHITE, 1, cv2.LINE_AA)
    cv2.putText(img, state, (8, 40), cv2.FONT_HERSHEY_SIMPLEX, 0.7, color, 2, cv2.LINE_AA)
    return img


class Window:
    """An OpenCV window on the main thread (GUI toolkits want that); `show` returns False on q/Esc."""

    TITLE = "door-access"

    def __init__(self):
        cv2.namedWindow(self.TITLE, cv2.WINDOW_NORMAL)

    def show(self, image: np.ndarray) -> bool:
        cv2.imshow(self.TITLE, image)
        return (cv2.waitKey(15) & 0xFF) not in (ord("q"), 27)

    def close(self) -> None:
        cv2.destroyWindow(self.TITLE)

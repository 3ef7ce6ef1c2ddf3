"""Finding faces with dlib and cutting them out as aligned 160x160 chips for FaceNet.

Alignment uses dlib's 5-point landmarks: eyes and nose are mapped onto a fixed template,
so every chip shows the face at the same scale and angle, whatever the head's roll.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import dlib
import numpy as np

from door_access.config import DetectionConfig
from door_access.core import INPUT_SIZE, Box

SHAPE_PREDICTOR_5 = "shape_predictor_5_face_landmarks.dat"
SHAPE_PREDICTOR_68 = "shape_predictor_68_face_landmarks.dat"
CNN_DETECTOR = "mmod_human_face_detector.dat"
CNN_FALLBACK_SIDE = 400  # px: finds faces down to ~1/8 of the photo in under a second on one core


@dataclass(frozen=True)
class Face:
    box: Box
    chip: np.ndarray  # (160, 160, 3) uint8 RGB, aligned
    landmarks: np.ndarray  # (5, 2) float32, frame pixels


class FaceDetector:
    """dlib's HOG (or CNN) detector plus the 5-point aligner. Not thread-safe: one per thread."""

    def __init__(self, cfg: DetectionConfig, models_dir: Path):
        self.cfg = cfg
        models_dir = Path(models_dir)
        self._predictor = load_dlib_model(dlib.shape_predictor, models_dir / SHAPE_PREDICTOR_5)
        self._cnn_path = models_dir / CNN_DETECTOR
        self._cnn = None  # only loaded when needed: most photos and every frame use HOG
        if cfg.model == "cnn":
            self._cnn = load_dlib_model(dlib.cnn_face_detection_model_v1, self._cnn_path)
        elif not self._cnn_path.is_file():
            raise FileNotFoundError(f"dlib model {self._cnn_path} not found: run `door-access setup`")
        self._hog = dlib.get_frontal_face_detector()

    def _detect(self, img: np.ndarray, upsample: int, model: str) -> list[dlib.rectangle]:
        if model == "hog":
            return list(self._hog(img, upsample))
        if self._cnn is None:
            self._cnn = load_dlib_model(dlib.cnn_face_detection_model_v1, self._cnn_path)
        return [d.rect for d in self._cnn(img, upsample)]

    def video_scale(self, shape) -> float:
        """How much a video frame is shrunk before detection: to `max_side` on its longest side."""
        return shrink_factor(shape, self.cfg.max_side)

    def detect(self, rgb: np.ndarray, downscale: float | None = None, upsample: int | None = None,
               model: str | None = None) -> list[dlib.rectangle]:
        """Face rectangles in `rgb`'s own pixels; detection runs on a copy shrunk by `downscale`.

        The defaults are the video-frame settings (shrunk to `max_side`); photos pass their own
        (see `photo_faces`).
        """
        scale = self.video_scale(rgb.shape) if downscale is None else downscale
        rects = self._detect(shrink(rgb, scale), self.cfg.upsample if upsample is None else upsample,
                             model or self.cfg.model)
        return scale_rects(rects, scale)

    def detect_small(self, img: np.ndarray) -> list[tuple[int, int, int, int]]:
        """(left, top, right, bottom) of the faces in `img`, a frame already shrunk (or a region of
        one), with the video settings."""
        found = self._detect(img, self.cfg.upsample, self.cfg.model)
        return [(r.left(), r.top(), r.right(), r.bottom()) for r in found]

    def align(self, rgb: np.ndarray, rect: dlib.rectangle) -> Face:
        """Landmarks inside `rect`, then the aligned chip with `margin` padding around the face."""
        shape = self._predictor(rgb, rect)
        chip = dlib.get_face_chip(rgb, shape, size=INPUT_SIZE, padding=self.cfg.margin)
        points = np.array([[p.x, p.y] for p in shape.parts()], np.float32)
        box = _clipped_box(rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1, rgb.shape)
        return Face(box=box, chip=np.ascontiguousarray(chip), landmarks=points)

    def align_box(self, rgb: np.ndarray, box: Box) -> Face:
        """`align` on a face box (one from `photo_faces`, or the caller's own): the chip the door encodes."""
        return self.align(rgb, box_rect(box))

    def video_chip(self, bgr: np.ndarray, rect: dlib.rectangle) -> np.ndarray:
        """The aligned RGB chip of a face in a BGR video frame, without converting the whole frame:
        dlib's landmarks read a pixel's intensity as (r + g + b) / 3, the same in either order, so
        only the chip's channels are swapped (identical to `align` on the RGB frame: every face of
        the Hamilton clip at 1080p and of g11, where converting the frame cost 0.5 ms)."""
        chip = dlib.get_face_chip(bgr, self._predictor(bgr, rect), size=INPUT_SIZE, padding=self.cfg.margin)
        return np.ascontiguousarray(chip[..., ::-1])

    def eye_distance(self, rgb: np.ndarray, rect: dlib.rectangle) -> float:
        """Pixels between the eyes (midpoints of each eye's two corners, 5-point landmarks): the face
        size that decides whether a video face may vote."""
        p = self._predictor(rgb, rect).parts()
        return float(np.hypot((p[0].x + p[1].x - p[2].x - p[3].x) / 2, (p[0].y + p[1].y - p[2].y - p[3].y) / 2))

    def faces(self, rgb: np.ndarray, downscale: float | None = None) -> list[Face]:
        return [self.align(rgb, r) for r in self.detect(rgb, downscale)]

    def photo_faces(self, rgb: np.ndarray) -> list[Face]:
        """Faces in a still photo, where thoroughness beats speed.

        Large photos are shrunk for detection. When the configured detector finds nothing,
        dlib's CNN detector gets a second look, on a copy with a border of edge pixels: it
        finds turned heads that HOG misses, and the border gives a photo that is nothing but
        a face (an ID-style crop) the surroundings a detector needs. Landmarks and the chip
        come from the same padded copy, so the face pixels themselves are never altered.
        """
        h, w = rgb.shape[:2]
        rects = self.detect(rgb, shrink_factor(rgb.shape, self.cfg.photo_max_side), self.cfg.photo_upsample)
        if rects:
            return [self.align(rgb, r) for r in rects]
        grow = CNN_FALLBACK_SIDE / max(h, w)
        resized = cv2.resize(rgb, None, fx=grow, fy=grow, interpolation=cv2.INTER_CUBIC if grow > 1 else cv2.INTER_AREA)
        pad = CNN_FALLBACK_SIDE // 4
        padded = cv2.copyMakeBorder(resized, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        faces = []
        for r in self._detect(padded, 0, "cnn"):
            face = self.align(padded, r)
            edges = ((v - pad) / grow for v in (r.left(), r.top(), r.right() + 1, r.bottom() + 1))
            box = _clipped_box(*edges, rgb.shape)
            faces.append(Face(box=box, chip=face.chip, landmarks=(face.landmarks - pad) / grow))
        return faces


def shrink_factor(shape, max_side: int) -> float:
    """How much an image of `shape` is shrunk to bring its longest side to `max_side` (never enlarged)."""
    return max(1.0, max(shape[:2]) / max_side)


def shrink(img: np.ndarray, scale: float) -> np.ndarray:
    """`img` shrunk by `scale` (>= 1; 1 returns it as is), to `round(side / scale)` on each side.

    Halved by pixel averaging (INTER_AREA) while at least a halving is left and the sides are
    even, then resized linearly the rest of the way (by less than 2; by pixel averaging when more
    is left). OpenCV vectorises INTER_AREA only for exact halving: a 1080p frame shrunk by 3 in
    one INTER_AREA step costs 6.4 ms, halved then resized by 1.5 1.7 ms, and the two differ by
    0.1 grey level on average (measured on the real clip, 2 cores).
    """
    if scale <= 1.0:
        return img
    h, w = img.shape[:2]
    size = (max(1, round(w / scale)), max(1, round(h / scale)))
    while w >= 2 * size[0] and h >= 2 * size[1] and w % 2 == 0 and h % 2 == 0:
        w, h = w // 2, h // 2
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
    if (w, h) == size:
        return img
    linear = w < 2 * size[0] and h < 2 * size[1]
    return cv2.resize(img, size, interpolation=cv2.INTER_LINEAR if linear else cv2.INTER_AREA)


def scale_rects(rects, scale: float) -> list[dlib.rectangle]:
    """Rectangles (dlib's, or (left, top, right, bottom) tuples) found on a copy shrunk by `scale`,
    in the original's pixels."""
    out = []
    for r in rects:
        edges = (r.left(), r.top(), r.right(), r.bottom()) if isinstance(r, dlib.rectangle) else r
        out.append(dlib.rectangle(*(round(v * scale) for v in edges)) if scale > 1.0 else dlib.rectangle(*edges))
    return out


def box_rect(box: Box) -> dlib.rectangle:
    """dlib's rectangle of a face box: the inverse of the box a `Face` carries (dlib's right and bottom are inside)."""
    return dlib.rectangle(box.x, box.y, box.x + box.w - 1, box.y + box.h - 1)


def load_dlib_model(loader, path: Path):
    """A dlib model file, or an error that says how to get a good one."""
    if not path.is_file():
        raise FileNotFoundError(f"dlib model {path} not found: run `door-access setup`")
    try:
        return loader(str(path))
    except RuntimeError as exc:  # dlib's word for a truncated or corrupt file
        raise ValueError(f"dlib model {path} is unreadable ({str(exc).strip().splitlines()[0]}): "
                         "run `door-access setup`") from None


def _clipped_box(left, top, right, bottom, shape) -> Box:
    h, w = shape[:2]
    x0, y0 = max(0, round(left)), max(0, round(top))
    x1, y1 = min(w, round(right)), min(h, round(bottom))
    return Box(x0, y0, max(0, x1 - x0), max(0, y1 - y0))

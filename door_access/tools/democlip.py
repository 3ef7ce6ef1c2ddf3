"""Generated video clips made from real photos: the stand-in for a person walking up to the camera.

Used by `make demo` and the tests. Each segment shows one photo (cropped around its face,
drifting and zooming slightly so that frames differ as in a video) or an empty scene.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from door_access.faces.detection import FaceDetector
from door_access.faces.photos import load_rgb

WIDTH, HEIGHT = 640, 360


@dataclass(frozen=True)
class Segment:
    photo: Path | None  # None: nobody in front of the camera
    seconds: float


def write_clip(detector: FaceDetector, segments: list[Segment], out: Path, fps: float = 15.0,
               face_px: int = 130) -> Path:
    """Write an MP4 (mp4v) of the segments; each photo is scaled so its face is about `face_px` wide."""
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps, (WIDTH, HEIGHT))
    if not writer.isOpened():
        raise RuntimeError(f"cannot write video {out}")
    background = np.full((HEIGHT, WIDTH, 3), (70, 80, 90), np.uint8)
    try:
        for seg in segments:
            scene = _scene(detector, seg.photo, face_px) if seg.photo else None
            n = max(1, round(seg.seconds * fps))
            for i in range(n):
                if scene is None:
                    writer.write(background)
                    continue
                phase = i / max(1, n - 1)
                dx, dy = 12 * np.sin(2 * np.pi * phase), 6 * np.cos(2 * np.pi * phase)
                zoom = 1.0 + 0.04 * np.sin(np.pi * phase)
                m = cv2.getRotationMatrix2D((WIDTH / 2, HEIGHT / 2), 0, zoom)
                m[:, 2] += (dx, dy)
                writer.write(cv2.warpAffine(scene, m, (WIDTH, HEIGHT), borderMode=cv2.BORDER_REPLICATE))
    finally:
        writer.release()
    return out


def _scene(detector: FaceDetector, photo: Path, face_px: int) -> np.ndarray:
    """The photo on a 640x360 canvas, face centred and about face_px wide (BGR)."""
    rgb = load_rgb(photo, 40_000_000)
    faces = detector.photo_faces(rgb)
    if not faces:
        raise ValueError(f"{photo}: no face to build a clip from")
    box = max(faces, key=lambda f: f.box.w).box
    scale = face_px / box.w
    img = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    cx, cy = (box.x + box.w / 2) * scale, (box.y + box.h / 2) * scale
    m = np.float32([[1, 0, WIDTH / 2 - cx], [0, 1, HEIGHT / 2 - cy]])
    canvas = cv2.warpAffine(img, m, (WIDTH, HEIGHT), borderMode=cv2.BORDER_CONSTANT, borderValue=(90, 80, 70))
    return cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR)


def build_demo(detector: FaceDetector, testdata: Path, out_dir: Path) -> tuple[Path, Path]:
    """A demo gallery (Obama enrolled from two photos) and a clip: Obama (a third photo), Biden
    (a stranger), then Obama again. Returns (images_dir, clip)."""
    import shutil

    photos = testdata / "face_recognition"
    images = out_dir / "images"
    (images / "obama").mkdir(parents=True, exist_ok=True)
    shutil.copy(photos / "obama.jpg", images / "obama" / "1.jpg")
    shutil.copy(photos / "obama3.jpg", images / "obama" / "2.jpg")
    segments = [Segment(None, 0.5), Segment(photos / "obama2.jpg", 2.5), Segment(None, 1.0),
                Segment(photos / "biden.jpg", 2.5), Segment(None, 1.0), Segment(photos / "obama2.jpg", 2.5)]
    return images, write_clip(detector, segments, out_dir / "demo.mp4", fps=30.0)


def write_photo_attack(detector: FaceDetector, photo: Path, out: Path, seconds: float = 6.0, fps: float = 15.0,
                       face_px: int = 130) -> Path:
    """A printed photo held up to the camera: held still, then moved as a whole (translation,
    rotation, scaling, a slight perspective tilt, changing brightness). Everything a hand can
    do to a photo, nothing a face can do by itself (blink, talk, change expression)."""
    scene = _scene(detector, photo, face_px)
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps, (WIDTH, HEIGHT))
    if not writer.isOpened():
        raise RuntimeError(f"cannot write video {out}")
    n = max(2, round(seconds * fps))
    still = n // 4
    src = np.float32([[0, 0], [WIDTH, 0], [WIDTH, HEIGHT], [0, HEIGHT]])
    try:
        for i in range(n):
            if i < still:
                writer.write(scene)
                continue
            p = (i - still) / max(1, n - still - 1)
            wave = np.sin(2 * np.pi * p)
            m = cv2.getRotationMatrix2D((WIDTH / 2, HEIGHT / 2), 12 * wave, 1.0 + 0.15 * np.sin(np.pi * p))
            m[:, 2] += (40 * wave, 15 * np.cos(2 * np.pi * p))
            moved = cv2.warpAffine(scene, m, (WIDTH, HEIGHT), borderMode=cv2.BORDER_REPLICATE)
            tilt = 25 * np.sin(3 * np.pi * p)  # one edge of the photo leans away from the camera
            dst = src + np.float32([[tilt, tilt / 2], [-tilt, -tilt / 2], [-tilt, tilt / 2], [tilt, -tilt / 2]])
            warped = cv2.warpPerspective(moved, cv2.getPerspectiveTransform(src, dst), (WIDTH, HEIGHT),
                                         borderMode=cv2.BORDER_REPLICATE)
            gain = 1.0 + 0.35 * np.sin(2 * np.pi * p + 1.0)
            writer.write(cv2.convertScaleAbs(warped, alpha=gain, beta=0))
    finally:
        writer.release()
    return out

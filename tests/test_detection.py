"""dlib detection and alignment on real photos."""

import cv2
import numpy as np

from door_access.core import INPUT_SIZE
from door_access.faces.photos import load_rgb

from conftest import FR_IMAGES

LIMIT = 40_000_000


def test_one_face_found_and_aligned(detector):
    rgb = load_rgb(FR_IMAGES / "obama.jpg", LIMIT)
    faces = detector.photo_faces(rgb)
    assert len(faces) == 1
    face = faces[0]
    assert face.chip.shape == (INPUT_SIZE, INPUT_SIZE, 3) and face.chip.dtype == np.uint8
    # the five landmarks lie inside the face box
    b = face.box
    assert np.all((face.landmarks[:, 0] >= b.x - 5) & (face.landmarks[:, 0] <= b.x + b.w + 5))
    assert np.all((face.landmarks[:, 1] >= b.y - 5) & (face.landmarks[:, 1] <= b.y + b.h + 5))


def test_two_people_side_by_side(detector):
    a = load_rgb(FR_IMAGES / "obama.jpg", LIMIT)
    b = load_rgb(FR_IMAGES / "biden.jpg", LIMIT)
    b = cv2.resize(b, (round(b.shape[1] * a.shape[0] / b.shape[0]), a.shape[0]))
    faces = detector.photo_faces(np.hstack([a, b]))
    assert len(faces) == 2
    assert faces[0].box.iou(faces[1].box) == 0


def test_tight_face_crop_is_found(detector, encoder):
    rgb = load_rgb(FR_IMAGES / "obama.jpg", LIMIT)
    full = detector.photo_faces(rgb)[0]
    b = full.box
    crop = cv2.resize(rgb[b.y:b.y + b.h, b.x:b.x + b.w], (96, 96), interpolation=cv2.INTER_AREA)
    faces = detector.photo_faces(crop)
    assert len(faces) == 1
    assert faces[0].box.w > 60  # the face fills the crop
    a, c = encoder.encode(np.stack([full.chip, faces[0].chip]))
    assert np.linalg.norm(a - c) < 0.9  # the crop still matches the full photo


def test_rotated_head_aligns_to_the_same_embedding(detector, encoder):
    rgb = load_rgb(FR_IMAGES / "obama.jpg", LIMIT)
    h, w = rgb.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), 20, 1.0)
    tilted = cv2.warpAffine(rgb, m, (w, h), borderMode=cv2.BORDER_REPLICATE)
    upright, rolled = detector.photo_faces(rgb)[0], detector.photo_faces(tilted)[0]
    a, b = encoder.encode(np.stack([upright.chip, rolled.chip]))
    assert np.linalg.norm(a - b) < 0.6


def test_partial_faces_and_downscaled_detection(detector):
    for name in ("obama_partial_face.jpg", "obama_partial_face2.jpg"):
        faces = detector.photo_faces(load_rgb(FR_IMAGES / name, LIMIT))
        assert len(faces) == 1, name
        b = faces[0].box
        assert b.x >= 0 and b.y >= 0 and b.w > 0 and b.h > 0
    rgb = load_rgb(FR_IMAGES / "obama.jpg", LIMIT)
    full, half = detector.detect(rgb, 1.0), detector.detect(rgb, 2.0)
    assert len(full) == len(half) == 1
    assert abs(full[0].center().x - half[0].center().x) < 20


def test_shrink_matches_pixel_averaging_at_any_size():
    """The two-step shrink (halvings, then linear) gives the size asked for and, on a real photo,
    the picture a one-step INTER_AREA shrink gives: it is only faster."""
    from door_access.faces.detection import shrink

    rgb = load_rgb(FR_IMAGES / "obama.jpg", LIMIT)
    for w, h in [(1920, 1080), (1280, 720), (961, 541), (3001, 1999), (641, 361)]:
        img = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_CUBIC)
        scale = max(w, h) / 640
        size = (round(w / scale), round(h / scale))
        out = shrink(img, scale)
        assert (out.shape[1], out.shape[0]) == size and out.dtype == np.uint8, (w, h)
        ref = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
        assert np.abs(out.astype(np.int16) - ref).mean() < 1.0, (w, h)
    assert shrink(rgb, 1.0) is rgb

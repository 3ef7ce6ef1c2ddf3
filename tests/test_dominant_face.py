"""Enrolling the dominant face of a photo with a bystander in the background (issue 8, seam 4).

On LFW, 13-16 of 300 enrollment photos were refused for a second, small face at the edge;
`detection.dominant_ratio` enrolls the largest face when it clearly dominates, and still
refuses two faces of similar size (which of them is the person is a guess).
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from door_access.faces.photos import load_rgb
from door_access.recognition.gallery import GalleryBuilder

from conftest import FR_IMAGES

pytestmark = pytest.mark.model


def _with_bystander(detector, scale: float) -> np.ndarray:
    """obama.jpg with Biden's face pasted into a corner at `scale` times Obama's face width (BGR)."""
    host = load_rgb(FR_IMAGES / "obama.jpg", 40_000_000)
    guest = load_rgb(FR_IMAGES / "biden.jpg", 40_000_000)
    [h] = detector.photo_faces(host)
    [g] = detector.photo_faces(guest)
    pad = int(0.4 * g.box.w)
    crop = guest[max(0, g.box.y - pad):g.box.y + g.box.h + pad, max(0, g.box.x - pad):g.box.x + g.box.w + pad]
    s = scale * h.box.w / g.box.w
    crop = cv2.resize(crop, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
    out = host.copy()
    out[10:10 + crop.shape[0], 10:10 + crop.shape[1]] = crop[:out.shape[0] - 10, :out.shape[1] - 10]
    return cv2.cvtColor(out, cv2.COLOR_RGB2BGR)


@pytest.mark.parametrize("ratio, scale, enrolled", [(0.0, 0.45, False), (2.0, 0.45, True), (2.0, 0.9, False)])
def test_dominant_face_enrollment(tmp_path, cfg, detector, encoder, ratio, scale, enrolled):
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "obama.jpg"), _with_bystander(detector, scale))
    cfg = dataclasses.replace(cfg, detection=dataclasses.replace(cfg.detection, dominant_ratio=ratio),
                              paths=dataclasses.replace(cfg.paths, cache=str(tmp_path / "cache")))
    gallery = GalleryBuilder(cfg, detector, encoder).build(images)
    if enrolled:
        assert gallery.names == ["obama"] and not gallery.skipped
        # the enrolled face is Obama's, not the bystander's: close to another photo of him
        [other] = detector.photo_faces(load_rgb(FR_IMAGES / "obama2.jpg", 40_000_000))
        d = np.linalg.norm(gallery.embeddings[0] - encoder.encode(other.chip[None])[0])
        assert d < 0.85
    else:
        assert gallery.names == [] and "2 faces found" in gallery.skipped[0].reason

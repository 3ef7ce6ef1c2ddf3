"""Speed measurements that print numbers: `door-access bench ...`. Medians of repeated runs."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from .assets import testdata_dir
from .config import Config

BATCH_SIZES = (1, 8, 32)


def _median_s(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_encoder(cfg: Config, photo: Path | None, repeats: int) -> dict:
    """Faces/s of the encoder at several batch sizes, and per-stage ms for one photo."""
    from .detection import FaceDetector
    from .facenet import FaceEncoder
    from .photos import load_rgb

    photo = photo or testdata_dir(cfg.path("cache")) / "face_recognition" / "obama.jpg"
    detector = FaceDetector(cfg.detection, cfg.path("weights"))
    encoder = FaceEncoder(cfg.path("weights") / "facenet_keras3.weights.h5")

    rgb = load_rgb(photo, cfg.photo.max_pixels)
    rects = detector.detect(rgb)
    if not rects:
        raise ValueError(f"{photo}: no face found by the live detector; pick another --photo")
    chip = detector.align(rgb, rects[0]).chip[None]
    encoder.encode(chip)  # build the graph before timing
    stage_ms = {
        "decode": _median_s(lambda: load_rgb(photo, cfg.photo.max_pixels), repeats) * 1e3,
        "detect": _median_s(lambda: detector.detect(rgb), repeats) * 1e3,
        "align": _median_s(lambda: detector.align(rgb, rects[0]), repeats) * 1e3,
        "encode": _median_s(lambda: encoder.encode(chip), repeats) * 1e3,
    }
    faces_per_s = {}
    for batch in BATCH_SIZES:
        chips = np.repeat(chip, batch, axis=0)
        encoder.encode(chips)
        faces_per_s[str(batch)] = round(batch / _median_s(lambda c=chips: encoder.encode(c), repeats), 2)
    return {"faces_per_s": faces_per_s, "stage_ms": {k: round(v, 2) for k, v in stage_ms.items()}}

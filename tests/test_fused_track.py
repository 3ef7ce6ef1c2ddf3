"""A track's fused embedding on real frames: the Hamilton clip's faces, tracked and encoded by the real models,
matched against its two reference photos, and decided by the real decider."""

import shutil

import cv2
import numpy as np
import pytest

from door_access.config import DoorConfig, LockoutConfig, VotingConfig
from door_access.core import Box, LiveVerdict
from door_access.door.decision import Decider
from door_access.door.tracking import Track, Tracker, fuse
from door_access.faces.photos import load_rgb
from door_access.recognition.gallery import GalleryBuilder
from door_access.recognition.recognizer import Recognizer

from conftest import FR_IMAGES, SHARED_DATA

HAMILTON = SHARED_DATA / "face_recognition_examples"
pytestmark = pytest.mark.skipif(not (HAMILTON / "short_hamilton_clip.mp4").is_file(),
                                reason="../shared/data is not present")
LIN = "lin-manuel-miranda"


@pytest.fixture(scope="module")
def recognizer(cfg, detector, encoder, tmp_path_factory):
    """Lin-Manuel Miranda and Alex Lacamoire from their reference photos, and Obama from a package photo."""
    images = tmp_path_factory.mktemp("fused_images")
    for name in ("lin-manuel-miranda.png", "alex-lacamoire.png"):
        shutil.copy(HAMILTON / name, images / name)
    shutil.copy(FR_IMAGES / "obama.jpg", images / "obama.jpg")
    gallery = GalleryBuilder(cfg, detector, encoder).build(images)
    return Recognizer(gallery, cfg.recognition.threshold, cfg.recognition.margin)


@pytest.fixture(scope="module")
def lin_frames(detector, encoder):
    """The encodings of the clip's longest track (every third frame, as the door paces encodings)."""
    capture = cv2.VideoCapture(str(HAMILTON / "short_hamilton_clip.mp4"))
    tracker, chips, i = Tracker(0.3, 1.0, 1000.0), {}, 0
    while True:
        ok, bgr = capture.read()
        if not ok:
            break
        i += 1
        if i % 3:
            continue
        rects = detector.detect(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        boxes = [Box(r.left(), r.top(), r.width(), r.height()) for r in rects]
        for rect, track in zip(rects, tracker.update(boxes, i / 30.0)):
            chips.setdefault(track.id, []).append(detector.video_chip(bgr, rect))
    capture.release()
    longest = max(chips.values(), key=len)
    assert len(longest) >= 20
    return encoder.encode(np.stack(longest))


def play(recognizer, decider, track, embeddings, t0=0.0, live=None, votes_only=False):
    """Each encoding as the pipeline's decider stage handles it: matched alone and fused, then decided
    (`votes_only`: as the decider did before fusing, the fused match replaced by the frame's own)."""
    out, singles, together = [], [], []
    for k, e in enumerate(embeddings):
        t = t0 + k * 0.1
        track.last_seen = t
        single, whole = recognizer.identify(np.stack([e, fuse(track, e)]))
        singles.append(single)
        together.append(whole)
        out += [(k, d) for d in decider.observe(t, [track], {track.id: single}, {track.id: live} if live else None,
                                                 {track.id: single if votes_only else whole})]
    return out, singles, together


def decider():
    return Decider(VotingConfig(window=5, required=3), DoorConfig(cooldown_seconds=0.0), 10.0,
                   lockout=LockoutConfig(failures=0))


def test_a_real_track_fused_names_its_person_closer_than_its_frames_and_unlocks(recognizer, lin_frames):
    out, singles, together = play(recognizer, decider(), Track(1, Box(0, 0, 90, 90), 0.0, 0.0), lin_frames)
    assert ("unlock", LIN) in [(d.event, d.name) for _, d in out]
    # the same decisions on the same encodings as the votes alone: fusing costs a genuine track no time
    # (the clip's first frames, a turned head, are an "unknown face" either way)
    votes, _, _ = play(recognizer, decider(), Track(1, Box(0, 0, 90, 90), 0.0, 0.0), lin_frames, votes_only=True)
    assert [(k, d.event, d.name) for k, d in out] == [(k, d.event, d.name) for k, d in votes]
    # all the frames together are a closer likeness than the typical frame, and never name anyone else
    assert together[-1].name == LIN
    assert together[-1].distance < np.median([m.distance for m in singles])
    assert {m.name for m in together} <= {LIN, None}


def test_a_track_swapped_onto_another_enrolled_face_is_one_conflict_and_never_unlocks(recognizer, lin_frames,
                                                                                       detector, encoder, cfg):
    """Lin's frames (liveness still pending), then the tracker's box lands on Obama (real photos): the track
    is denied once as a conflict and never unlocks, with Obama's liveness or without."""
    chips = [max(detector.photo_faces(load_rgb(FR_IMAGES / n, cfg.photo.max_pixels)), key=lambda f: f.box.w).chip
             for n in ("obama2.jpg", "obama3.jpg")]
    obama = encoder.encode(np.stack(chips * 3))
    dec, track = decider(), Track(2, Box(0, 0, 90, 90), 0.0, 0.0)
    waiting = LiveVerdict(None, "no blink yet")
    first, _, _ = play(recognizer, dec, track, lin_frames[:12], live=waiting)
    assert "unlock" not in [d.event for _, d in first] and track.identity == LIN
    then, singles, together = play(recognizer, dec, track, obama, t0=1.2, live=LiveVerdict(1.3, "blink"))
    assert [(d.event, d.detail.split(":")[0]) for _, d in then] == [("denied", "conflict")]
    assert track.conflict and not track.unlocked
    assert "obama" in {m.name for m in singles}  # Obama's photos name him: the swap shows

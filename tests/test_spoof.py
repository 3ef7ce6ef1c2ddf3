"""DENY cues (spoof.py): each cue on real frames of the liveness dev set, and the door on real clips.

Frames come from ../shared/data/liveness (real recordings: see its README); the tests that
need it are skipped with a reason when it is absent.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from door_access.config import Config, SpoofConfig
from door_access.core import Box
from door_access.faces.detection import shrink
from door_access.liveness.spoof import (
    RIGID,
    SCREEN_LIGHT,
    SpoofChecker,
    enclosing_edges,
    fine_detail,
    planar_residual,
    screen_glow,
)

from conftest import SHARED_DATA

LIVE = SHARED_DATA / "liveness"
needs_data = pytest.mark.skipif(not (LIVE / "truth.csv").is_file(), reason="../shared/data/liveness is not present")
CFG = SpoofConfig()


def _frame(name: str, index: int) -> np.ndarray:
    cap = cv2.VideoCapture(str(LIVE / name))
    cap.set(cv2.CAP_PROP_POS_FRAMES, index)
    ok, bgr = cap.read()
    cap.release()
    assert ok, f"cannot read frame {index} of {name}"
    return bgr


def _box(detector, bgr: np.ndarray) -> Box:
    rects = detector.detect(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    assert rects, "the dev frame has a face the door's detector finds"
    r = max(rects, key=lambda q: q.width())
    return Box(r.left(), r.top(), r.width(), r.height())


def _screen_light(bgr, box) -> bool:
    return SpoofChecker(CFG).judge(SpoofChecker(CFG).measure(bgr, box))[SCREEN_LIGHT]


# ---- pure functions, no model ----------------------------------------------------------------

def _head(depth: float) -> np.ndarray:
    """68 points of a face-like 3D shape: the rigid points spread over a face, the nose `depth` in front."""
    rng = np.random.default_rng(7)
    pts = np.zeros((68, 3))
    pts[:, :2] = rng.uniform(-1, 1, (68, 2))
    pts[36:42, :2], pts[42:48, :2] = [-0.4, -0.3], [0.4, -0.3]  # eye centres one unit apart... roughly
    pts[36:48, :2] += rng.normal(0, 0.05, (12, 2))
    pts[27:36, 2] = depth  # nose ridge and tip stand out
    pts[0:17, 2] = -depth  # the outline lies behind the eyes
    return pts


def _turn(pts: np.ndarray, degrees: float) -> np.ndarray:
    a = np.radians(degrees)
    rot = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    p = pts @ rot.T
    p[:, 2] += 6.0  # camera 6 units away: perspective projection
    return 100 * p[:, :2] / p[:, 2:3] + 200


def test_a_turning_photo_follows_one_homography_and_a_turning_head_does_not():
    flat, head = _head(0.0), _head(0.5)
    motion, planar = planar_residual(_turn(flat, 0), _turn(flat, 35))
    assert motion > CFG.flat_motion and planar < 1e-3 * motion  # a plane: one homography explains it
    motion, planar = planar_residual(_turn(head, 0), _turn(head, 35))
    assert motion > CFG.flat_motion and planar > CFG.flat_ratio * motion  # parallax a plane cannot show


def test_a_head_that_only_shifts_and_rolls_is_no_evidence_of_anything():
    head = _turn(_head(0.5), 0)
    a = np.radians(10)
    moved = (head - 200) @ np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]).T * 1.2 + 230
    motion, _ = planar_residual(head, moved)
    assert motion < 1e-6  # in-plane movement is not "out of plane": the flat cue does not judge it
    assert set(RIGID).isdisjoint(range(48, 68))  # lips move when talking: never used for the plane test


def test_a_track_is_not_doubtful_before_a_whole_sustain_window():
    """A borderline DENY asks the challenge at once, so doubt needs as long a look as a DENY does:
    a glint on the first tests of a live face (a vlog's lights, arms and hair) is not doubt."""
    checker = SpoofChecker(dataclasses.replace(CFG, measure_every_s=0.0))
    checker.measure = lambda bgr, box, shrunk=None: {  # noqa: E731
        "sides": 0.0, "glow": 2.0 if bgr is screen else 1.0, "detail": 0.01}
    live, screen = np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4, 3), np.uint8)
    box = Box(0, 0, CFG.min_face_px, CFG.min_face_px)
    for i, frame in enumerate([screen, live, live]):  # 1 of 3 tests, in the first 0.13 s
        checker.update(1, i / 15, frame, box, None)
    assert checker.doubtful(1) is None


def test_one_screen_frame_among_live_frames_does_not_deny():
    checker = SpoofChecker(dataclasses.replace(CFG, measure_every_s=0.0))
    checker.measure = lambda bgr, box, shrunk=None: {  # noqa: E731
        "sides": 0.0, "glow": 2.0 if bgr is screen else 1.0, "detail": 0.01}
    live, screen = np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4, 3), np.uint8)
    box = Box(0, 0, CFG.min_face_px, CFG.min_face_px)  # the measures are given: only the box size counts
    for i in range(30):
        assert checker.update(1, i / 15, screen if i == 10 else live, box, None) is None
    assert checker.doubtful(1) is None  # one frame in a second is not even borderline
    for i, frame in zip(range(30, 45), [screen, live] * 8):  # every other frame: borderline, not a DENY
        assert checker.update(1, i / 15, frame, box, None) is None
    assert checker.doubtful(1) == SCREEN_LIGHT
    for i in range(45, 60):  # a live second clears the doubt
        assert checker.update(1, i / 15, live, box, None) is None
    assert checker.doubtful(1) is None
    for i in range(60, 90):  # then a sustained screen: fires once it has held for most of sustain_s
        cue = checker.update(1, i / 15, screen, box, None)
        assert cue is None or (i - 60) / 15 >= 0.5 * CFG.sustain_s  # never on the first frames
    assert cue == SCREEN_LIGHT
    assert checker.update(1, 91 / 15, live, box, None) == SCREEN_LIGHT  # a replay does not become live by pausing
    assert checker.doubtful(1) is None  # fired, not borderline
    checker.forget(set())
    assert checker.update(1, 92 / 15, live, box, None) is None
    small = Box(0, 0, CFG.min_face_px - 1, CFG.min_face_px - 1)  # too few pixels to judge: never a DENY
    assert all(checker.update(2, i / 15, screen, small, None) is None for i in range(60))


def test_the_spoof_section_is_parsed_and_checked(tmp_path):
    from door_access.config import ConfigError, load_config

    path = tmp_path / "config.yaml"
    path.write_text("spoof:\n  glow_ratio: 1.6\n  enabled: false\n")
    cfg = load_config(path)
    assert cfg.spoof.glow_ratio == 1.6 and not cfg.spoof.enabled and Config().spoof.enabled
    path.write_text("spoof:\n  glow_ratio: 0.5\n")
    with pytest.raises(ConfigError, match=r"line 2: 'spoof.glow_ratio'"):
        load_config(path)


# ---- cues on real frames ---------------------------------------------------------------------

@pytest.mark.model
@needs_data
@pytest.mark.parametrize("attack, genuine", [
    ("attack/a02_lestari_phone_photo.mp4", "genuine/g02_lestari_webcam_still.mp4"),  # same man, same webcam
    ("attack/a04_tranvanluyt_laptop_video_replay.mp4", "genuine/g03_tranvanluyt_selfie_headturn.mp4"),  # same man
])
def test_screen_light_fires_on_a_screen_and_not_on_the_same_person_live(detector, attack, genuine):
    for index in (30, 60):
        bgr = _frame(attack, index)
        box = _box(detector, bgr)
        assert screen_glow(bgr, box) >= CFG.glow_ratio and fine_detail(bgr, box) <= CFG.detail_max
        live = _frame(genuine, index)
        assert not _screen_light(live, _box(detector, live))


@pytest.mark.model
@needs_data
def test_a_bright_live_face_in_a_dark_room_keeps_its_detail(detector):
    """g08: a man in a dim room, face brighter than the frame like a screen, but with skin detail."""
    bgr = _frame("genuine/g08_mounish_webcam_blink.mp4", 100)
    box = _box(detector, bgr)
    assert screen_glow(bgr, box) > 1.3  # as bright, relative to the room, as some screens...
    assert fine_detail(bgr, box) > 2 * CFG.detail_max  # ...but a real face's fine texture is there
    assert not _screen_light(bgr, box)


@pytest.mark.model
@needs_data
def test_fine_detail_does_not_depend_on_the_face_size(detector):
    bgr = _frame("genuine/g06_repeating_selfie_blink.mp4", 50)
    box = _box(detector, bgr)
    half = cv2.resize(bgr, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    small = Box(box.x // 2, box.y // 2, box.w // 2, box.h // 2)
    assert abs(fine_detail(half, small) - fine_detail(bgr, box)) < 0.5 * fine_detail(bgr, box)


@pytest.mark.model
@needs_data
@pytest.mark.parametrize("name, index", [
    ("attack/a02_lestari_phone_photo.mp4", 30),  # 1080x720: shrunk by a non-integer factor
    ("genuine/g02_lestari_webcam_still.mp4", 30),
    ("genuine/g08_mounish_webcam_blink.mp4", 100),  # 1280x720
    ("genuine/g21_vlog_woman_talking.mp4", 60),
])
def test_the_cues_measure_the_same_on_the_detectors_shrunk_copy(detector, name, index):
    """The pipeline hands the cues the frame the detector already shrunk (at 1080p that saves a
    3 ms resize a measure): the measures and verdicts match those of the full frame (eval-liveness:
    the same outcome on every clip)."""
    bgr = _frame(name, index)
    box = _box(detector, bgr)
    shrunk = shrink(bgr, detector.video_scale(bgr.shape))
    assert max(shrunk.shape[:2]) == detector.cfg.max_side < max(bgr.shape[:2])
    checker = SpoofChecker(CFG)
    full, quick = checker.measure(bgr, box), checker.measure(bgr, box, shrunk)
    assert quick["detail"] == full["detail"]  # read off the full frame either way
    assert quick["glow"] == pytest.approx(full["glow"], rel=0.03)
    assert abs(quick["sides"] - full["sides"]) <= 1  # a borderline line may come or go (a02: 2 against 1)
    assert checker.judge(quick) == checker.judge(full)


@pytest.mark.model
@needs_data
def test_a_device_border_around_a_real_face_is_a_frame(detector):
    """A real frame (plain wall, 0 sides) and the same frame with a phone's bezel drawn round the face."""
    bgr = _frame("genuine/g06_repeating_selfie_blink.mp4", 50)
    box = _box(detector, bgr)
    assert enclosing_edges(bgr, box) < CFG.frame_sides
    framed = bgr.copy()
    pad = box.w // 5  # a bezel close round the face, as on a phone held up to the camera
    cv2.rectangle(framed, (box.x - pad, box.y - pad), (box.x + box.w + pad, box.y + box.h + pad), (15, 15, 15),
                  max(4, box.w // 12))
    assert enclosing_edges(framed, box) >= CFG.frame_sides


def _first_seconds(src, out, seconds: float):
    """The first `seconds` of a real clip, re-written (keeps the suite's share of CPU small)."""
    cap = cv2.VideoCapture(str(src))
    fps = cap.get(cv2.CAP_PROP_FPS)
    writer = None
    for _ in range(round(seconds * fps)):
        ok, bgr = cap.read()
        if not ok:
            break
        if writer is None:
            writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps, (bgr.shape[1], bgr.shape[0]))
        writer.write(bgr)
    writer.release()
    cap.release()
    return out


@pytest.mark.model
@needs_data
def test_the_door_denies_a_phone_photo_and_lets_a_live_person_in(cfg, encoder, tmp_path):
    """Two short real clips through the real pipeline (eval-liveness's own code): the phone photo
    (a02, the whole 2.6 s) gets a DENY and no unlock; a live man blinking (g06, its first 2.5 s,
    he blinks at 0.6 s) unlocks with no DENY cue."""
    from door_access.tools.liveness_eval import _quiet, eval_video, read_truth

    rows = {r["file"]: r for r in read_truth(LIVE)}
    run_cfg = _quiet(cfg)

    def play(name, clip):
        row = rows[name]
        return eval_video(run_cfg, encoder, clip, LIVE / row["person_photo"], row, realtime=False)

    attack = play("attack/a02_lestari_phone_photo.mp4", LIVE / "attack/a02_lestari_phone_photo.mp4")
    assert SCREEN_LIGHT in attack["deny_cues"] and not attack["unlocked"], attack
    live_clip = _first_seconds(LIVE / "genuine/g06_repeating_selfie_blink.mp4", tmp_path / "g06.mp4", 2.5)
    live = play("genuine/g06_repeating_selfie_blink.mp4", live_clip)
    assert live["unlocked"] and not live["deny_cues"], live


@pytest.mark.model
@needs_data
def test_a_track_let_in_is_tracked_but_no_longer_checked_for_liveness(cfg, encoder, tmp_path):
    """Once a track has unlocked, nothing it shows can change a decision: its 68 landmarks and DENY
    cues (2-3 ms a face a frame) stop, while it is still tracked. The live man of g06 (first 2.5 s,
    let in within the first second) through the real pipeline."""
    import shutil

    from door_access.app import build_pipeline
    from door_access.core import UNLOCK
    from door_access.faces.capture import Capture
    from door_access.tools.liveness_eval import _quiet, read_truth

    name = "genuine/g06_repeating_selfie_blink.mp4"
    photo = LIVE / {r["file"]: r for r in read_truth(LIVE)}[name]["person_photo"]
    (tmp_path / "images").mkdir()
    shutil.copy(photo, tmp_path / "images" / ("person" + photo.suffix.lower()))
    run_cfg = _quiet(cfg)
    run_cfg = dataclasses.replace(run_cfg, access_log=dataclasses.replace(run_cfg.access_log,
                                                                          path=str(tmp_path / "log.sqlite")))
    c = cfg.camera
    capture = Capture(str(_first_seconds(LIVE / name, tmp_path / "g06.mp4", 2.5)), False,
                      c.lost_after_s, c.reconnect_min_s, c.reconnect_max_s)
    events, checked = [], []  # checked: (track, has a liveness verdict) per face, frame by frame
    pipeline = build_pipeline(run_cfg, tmp_path / "images", capture, events.append, encoder=encoder)
    pipeline.observers.append(lambda item, _: checked.extend((f.track, f.live is not None) for f in item.faces))
    pipeline.start()
    try:
        pipeline.wait(120)
    finally:
        pipeline.stop()
    [unlock] = [e for e in events if e.event == UNLOCK]
    mine = [live for track, live in checked if track == unlock.track]
    assert False in mine, "every frame of the track let in was still checked for liveness"
    stopped = mine.index(False)  # frames already past the detector when the decider let him in are checked
    assert all(mine[:stopped]) and stopped >= 5, mine
    assert not any(mine[stopped:]) and len(mine) - stopped >= 15, mine


def test_eval_liveness_needs_a_truth_csv(tmp_path, capsys):
    from door_access.cli import main

    assert main(["eval-liveness", str(tmp_path)]) == 2
    assert "truth.csv" in capsys.readouterr().err
    (tmp_path / "truth.csv").write_text("file,kind,person_photo\nclip.mp4,replay,p.png\n")
    assert main(["eval-liveness", str(tmp_path)]) == 2
    assert "line 2" in capsys.readouterr().err


@pytest.mark.model
def test_the_synthetic_photo_attack_still_never_unlocks(cfg, encoder, photo_attack_clip):
    """The generated photo attack (a print moved, tilted and re-lit by hand) with the DENY cues on:
    no DENY cue claims it (no screen light, no frame in view, dlib's landmarks of a tilted photo are
    not planar enough for the flat-face cue), and it stays denied for want of a CONFIRM cue."""
    from door_access.tools.liveness_eval import _quiet, eval_video

    from conftest import FR_IMAGES

    run_cfg = _quiet(cfg)  # no challenge: this is about the DENY cues staying quiet, and no CONFIRM cue
    run_cfg = dataclasses.replace(run_cfg, liveness=dataclasses.replace(run_cfg.liveness, challenge="off"))
    result = eval_video(run_cfg, encoder, photo_attack_clip, FR_IMAGES / "obama.jpg",
                        {"file": "attack.mp4", "kind": "attack_print"}, realtime=False)
    assert not result["unlocked"] and not result["pipeline_unlocked"], result
    assert result["outcome"].startswith("denied: no liveness"), result

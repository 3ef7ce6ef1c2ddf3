"""Enrollment (camera sweep on a real head-turn clip, photos, snapshots), review, and their checks."""

import itertools
import json
import logging
import shutil
import time

import cv2
import numpy as np
import pytest

from door_access.cli import main
from door_access.config import EnrollConfig
from door_access.core import DENIED, Event
from door_access.door.access_log import AccessLog
from door_access.door.actions import snapshot_pattern
from door_access.faces.photos import load_rgb
from door_access.recognition.enrollment import (
    Enroller,
    EnrollError,
    KioskEnroller,
    Quality,
    collisions,
    enroll_from_frame,
    head_pose,
    safe_name,
    video_frames,
    write_photos,
)

from conftest import FR_IMAGES, REPO, SHARED_DATA

HEADTURN = SHARED_DATA / "liveness" / "genuine" / "g03_tranvanluyt_selfie_headturn.mp4"
needs_clip = pytest.mark.skipif(not HEADTURN.is_file(), reason=f"shared real data not found at {HEADTURN}")


# ---- pure logic (no models) ---------------------------------------------------------------

@pytest.mark.parametrize("name", ["Kian", "Anne-Marie O.", "zoë_2", "Younes Benali"])
def test_safe_names_are_kept(name):
    assert safe_name(f"  {name} ") == name


@pytest.mark.parametrize("name", ["", "../x", "a/b", ".hidden", "$(reboot)", "x;rm -rf", "a" * 65, "a..b", "tab\there",
                                  "-rf", "--help"])
def test_unsafe_names_are_refused(name):
    with pytest.raises(EnrollError):
        safe_name(name)


def face_points(nose_x: float = 0.0, nose_y: float = 0.6, roll_deg: float = 0.0) -> np.ndarray:
    """68 landmarks reduced to what the pose rule reads: eyes at x = -1 and 1, mouth 1 below them."""
    p = np.zeros((68, 2))
    p[36:42] = (-1.0, 0.0)
    p[42:48] = (1.0, 0.0)
    p[48:68] = (0.0, 1.0)
    p[30] = (nose_x, nose_y)
    a = np.radians(roll_deg)
    return p @ np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]]) + (300.0, 200.0)


def test_head_pose_reads_turns_and_tilts_and_ignores_roll():
    assert head_pose(face_points()) == pytest.approx((0.0, 0.6))
    assert head_pose(face_points(nose_x=0.4)) == pytest.approx((0.2, 0.6))  # eye distance is 2
    assert head_pose(face_points(nose_x=0.4, nose_y=0.3, roll_deg=25)) == pytest.approx((0.2, 0.3))


def test_each_pose_is_judged_from_the_persons_own_straight_pose():
    rule = Enroller.pose_reached
    enroller = Enroller.__new__(Enroller)  # the rule needs only the config: no models
    enroller.cfg = EnrollConfig()
    straight = Quality("", yaw=0.05, pitch=0.5)
    assert rule(enroller, "straight", straight, None)
    assert not rule(enroller, "straight", Quality("", yaw=0.3), None)
    assert not rule(enroller, "left", Quality("", yaw=0.5, pitch=0.5), None)  # no straight shot yet
    assert rule(enroller, "left", Quality("", yaw=0.25, pitch=0.5), straight)
    assert not rule(enroller, "left", Quality("", yaw=0.15, pitch=0.5), straight)  # only 0.10 from straight
    assert rule(enroller, "right", Quality("", yaw=-0.15, pitch=0.5), straight)
    assert rule(enroller, "up", Quality("", yaw=0.05, pitch=0.35), straight)
    assert rule(enroller, "down", Quality("", yaw=0.05, pitch=0.65), straight)
    assert not rule(enroller, "down", Quality("", yaw=0.05, pitch=0.35), straight)


# ---- real frames, real models ---------------------------------------------------------------

def clip_frame(index: int):
    cap = cv2.VideoCapture(str(HEADTURN))
    cap.set(cv2.CAP_PROP_POS_FRAMES, index)
    ok, frame = cap.read()
    cap.release()
    assert ok
    return frame


@pytest.fixture(scope="module")
def enroller(cfg, detector):
    return Enroller(EnrollConfig(), detector, cfg.path("weights"))


@pytest.mark.model
@needs_clip
def test_each_quality_check_refuses_its_fault_on_a_real_frame(enroller):
    rgb = cv2.cvtColor(clip_frame(30), cv2.COLOR_BGR2RGB)  # facing the camera, eyes open
    good, _ = enroller.check(rgb)
    assert good.ok, good.problem
    blurred, _ = enroller.check(cv2.GaussianBlur(rgb, (0, 0), 4))
    assert blurred.problem.startswith("blurred") and blurred.sharpness < good.sharpness
    strict = Enroller(EnrollConfig(min_face_px=good.face_px + 1), enroller.detector, REPO / "weights")
    assert strict.check(rgb)[0].problem.startswith("face too small")
    two, _ = enroller.check(np.hstack([rgb, rgb]))
    assert two.problem.startswith("2 faces")
    lidded, _ = enroller.check(cv2.cvtColor(clip_frame(450), cv2.COLOR_BGR2RGB))  # looking down the nose, eyes lidded
    assert lidded.problem.startswith("eyes closed"), lidded


@pytest.mark.model
@needs_clip
def test_sweep_on_a_real_head_turn_clip_takes_each_pose_once(enroller, encoder, tmp_path):
    statuses = []
    frames = itertools.islice(video_frames(str(HEADTURN), None), 0, None, 3)  # every third frame: quicker
    shots, missing = enroller.sweep(frames, lambda text, frame, q: statuses.append(text) or True)
    poses = [s.pose for s in shots]
    assert poses[:3] == ["straight", "left", "right"], (poses, missing)
    assert set(poses) | set(missing) == {"straight", "left", "right", "up", "down"}
    assert any("Turn your head" in s for s in statuses) and "straight: taken" in statuses
    straight, left, right = (s.quality for s in shots[:3])
    assert left.yaw - straight.yaw >= EnrollConfig().turn and straight.yaw - right.yaw >= EnrollConfig().turn

    written = write_photos(tmp_path / "images", "tran", shots)
    assert [p.parent.name for p in written] == ["tran"] * len(shots)
    assert not list((tmp_path / "images" / "tran").glob(".*"))  # no temporary file left behind
    # each saved photo is a usable enrollment photo of the same person
    chips = []
    for path in written:
        faces = enroller.detector.photo_faces(load_rgb(path, 40_000_000))
        assert len(faces) == 1, path
        chips.append(faces[0].chip)
    e = encoder.encode(np.stack(chips))
    assert np.linalg.norm(e[0] - e[1:], axis=1).max() < 1.1


@pytest.mark.model
def test_collision_names_the_other_person_and_the_kiosk_key_writes_nothing(enroller, encoder, cfg, tmp_path):
    from door_access.recognition.gallery import GalleryBuilder
    from door_access.recognition.recognizer import Recognizer

    images = tmp_path / "images"
    (images / "obama").mkdir(parents=True)
    shutil.copy(FR_IMAGES / "obama.jpg", images / "obama" / "a.jpg")
    recognizer = Recognizer(GalleryBuilder(cfg, enroller.detector, encoder).build(images), cfg.recognition.threshold)
    frame = cv2.imread(str(FR_IMAGES / "obama2.jpg"))

    result = enroll_from_frame(frame, "barack", enroller, encoder, recognizer, images)
    assert [c.person for c in result.collisions] == ["obama"] and not result.written
    assert "obama" in result.problem and not (images / "barack").exists()

    accepted = enroll_from_frame(frame, "barack", enroller, encoder, recognizer, images, accept_collision=True)
    assert len(accepted.written) == 1 and accepted.written[0].parent == images / "barack"
    # the same face under its own name is no collision
    shot = enroller.from_frame(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    assert collisions(recognizer, "obama", encoder.encode(shot.chip[None])) == []


@pytest.fixture
def site(tmp_path):
    (tmp_path / "images" / "obama").mkdir(parents=True)
    shutil.copy(FR_IMAGES / "obama.jpg", tmp_path / "images" / "obama" / "a.jpg")
    (tmp_path / "config.yaml").write_text(f"paths:\n  weights: {REPO / 'weights'}\n  cache: cache\n")
    return tmp_path


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.model
def test_enroll_from_photos_checks_each_and_refuses_a_collision_without_yes(capsys, site, shared_encoder):
    config = site / "config.yaml"
    code, _, err = run(capsys, "enroll", "barack", "--config", config, "--from", FR_IMAGES / "obama2.jpg")
    assert code == 2 and "within the threshold of obama" in err and "--yes" in err
    assert not (site / "images" / "barack").exists()

    a, b = cv2.imread(str(FR_IMAGES / "obama.jpg")), cv2.imread(str(FR_IMAGES / "biden.jpg"))
    b = cv2.resize(b, (round(b.shape[1] * a.shape[0] / b.shape[0]), a.shape[0]))
    cv2.imwrite(str(site / "two.jpg"), np.hstack([a, b]))
    code, out, err = run(capsys, "enroll", "joe", "--config", config, "--json", "--from", FR_IMAGES / "biden.jpg",
                         REPO / "setup.cfg", site / "two.jpg")
    assert code == 0, err
    result = json.loads(out)
    assert len(result["written"]) == 1 and result["collisions"] == []
    assert any("setup.cfg" in s for s in result["skipped"]) and any("2 faces" in s for s in result["skipped"])

    code, out, _ = run(capsys, "enroll", "barack", "--config", config, "--json", "--yes",
                       "--from", FR_IMAGES / "obama2.jpg")
    assert code == 0 and json.loads(out)["collisions"][0]["person"] == "obama"


@pytest.mark.model
def test_review_lists_a_denied_attempt_and_enroll_from_snapshot_adds_it(capsys, site, shared_encoder):
    log_path = site / "access_log.sqlite"
    snaps = site / "snapshots"
    snaps.mkdir()
    access_log = AccessLog(log_path)
    event = Event(DENIED, 3.0, time.time(), None, 1.21, 4, "unknown face (closest: obama)")
    assert access_log.record(event)
    access_log.close()
    face = cv2.imread(str(FR_IMAGES / "biden.jpg"))
    cv2.imwrite(str(snaps / snapshot_pattern(event).replace("*", "000001")), face)

    code, out, _ = run(capsys, "review", "--config", site / "config.yaml", "--json")
    assert code == 0
    (row,) = [json.loads(line) for line in out.splitlines()]
    assert row["closest"] == "obama" and row["distance"] == 1.21 and row["snapshot"].endswith(".jpg")

    code, out, err = run(capsys, "enroll", "joe", "--config", site / "config.yaml", "--json",
                         "--from-snapshot", row["id"])
    assert code == 0, err
    assert len(json.loads(out)["written"]) == 1 and (site / "images" / "joe").is_dir()
    code, _, err = run(capsys, "enroll", "joe", "--config", site / "config.yaml", "--from-snapshot", 999)
    assert code == 2 and "no event with id 999" in err


def test_unlock_snapshots_are_kept_and_review_lists_them(capsys, site, tmp_path):
    import dataclasses

    from door_access.config import AccessLogConfig, Config, TtsConfig
    from door_access.core import UNLOCK, Notice
    from door_access.door.actions import Actions
    from door_access.door.speech import Speaker

    from conftest import wait_for

    cfg = dataclasses.replace(Config(base_dir=site), tts=TtsConfig(enabled=False),
                              access_log=AccessLogConfig(path=str(site / "access_log.sqlite"),
                                                         snapshots_dir=str(site / "snapshots"), snapshots_keep=5))
    access_log = AccessLog(site / "access_log.sqlite")
    speaker = Speaker(cfg.tts, None)
    actions = Actions(cfg, access_log, speaker)
    actions.start()
    face = cv2.imread(str(FR_IMAGES / "obama.jpg"))
    actions.submit(Notice(Event(UNLOCK, 1.0, time.time(), "obama", 0.41, 2, "live after 0.8 s"), face))
    assert wait_for(lambda: list((site / "snapshots").glob("unlock-*-track2.jpg")), timeout=10)
    actions.stop(1.0)
    access_log.close()

    code, out, _ = run(capsys, "review", "--config", site / "config.yaml", "--unlocks", "--json")
    (row,) = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and row["event"] == UNLOCK and row["closest"] == "obama" and row["snapshot"].endswith(".jpg")


@pytest.mark.model
@needs_clip
def test_enroll_command_sweeps_a_real_clip_headless(capsys, site, shared_encoder):
    code, out, err = run(capsys, "enroll", "tran", "--config", site / "config.yaml", "--json", "--headless",
                         "--source", HEADTURN)
    assert code == 0, err
    result = json.loads(out)
    assert result["poses"][:3] == ["straight", "left", "right"] and result["collisions"] == []
    assert sorted(p.name for p in (site / "images" / "tran").iterdir()) == sorted(
        p.split("/")[-1] for p in result["written"])
    assert all(f"pose not reached: {p}" in result["skipped"] for p in {"up", "down"} - set(result["poses"]))


def test_bad_bench_sizes_are_one_line_and_exit_2(capsys):
    code, _, err = run(capsys, "bench", "pipeline", "--source", HEADTURN, "--sizes", "1280x720,720p")
    assert code == 2 and "--sizes" in err and "'720p'" in err


@pytest.mark.model
def test_the_kiosk_enroll_key_writes_a_photo_the_watcher_picks_up_and_asks_before_a_look_alike(
        enroller, encoder, cfg, tmp_path, caplog):
    """Keys as the window delivers them, the enrollment on the kiosk's worker thread, real photos as frames."""
    from door_access.recognition.enroll_prompt import WORKING
    from door_access.recognition.gallery import GalleryBuilder, GalleryWatcher, apply_update
    from door_access.recognition.recognizer import Recognizer

    from conftest import wait_for

    images = tmp_path / "images"
    (images / "obama").mkdir(parents=True)
    shutil.copy(FR_IMAGES / "obama.jpg", images / "obama" / "a.jpg")
    watcher = GalleryWatcher(GalleryBuilder(cfg, enroller.detector, encoder), images, 60.0)
    recognizer = Recognizer(watcher.load(), cfg.recognition.threshold)
    watcher.on_change = lambda update: apply_update(recognizer, update)
    kiosk = KioskEnroller(cfg, encoder, recognizer, images)
    biden, obama2 = cv2.imread(str(FR_IMAGES / "biden.jpg")), cv2.imread(str(FR_IMAGES / "obama2.jpg"))
    blank = np.full_like(biden, 128)

    def keys(text, frame, enter=True):
        for k in text:
            assert kiosk.key(ord(k), 0.0, frame)
        if enter:
            kiosk.key(13, 0.0, frame)

    def outcome():
        assert wait_for(lambda: kiosk.line(0.0) is not None and kiosk.prompt.state != WORKING, timeout=120)
        return kiosk.line(0.0)[0]

    try:
        keys("ejoe", biden)
        assert outcome() == "Enrolled joe"
        (photo,) = (images / "joe").iterdir()
        assert photo.suffix == ".jpg" and not photo.name.startswith(".")
        assert watcher.poll() and "joe" in recognizer.people  # the running gallery's own hot reload

        keys("ebarack", blank)
        assert outcome() == "No face. Enter to retry, Esc to cancel"
        keys("", obama2)  # Enter again: the newest frame
        assert outcome() == "Looks like obama: Enter again to confirm, Esc to cancel"
        kiosk.key(27, 0.0, obama2)
        assert kiosk.line(0.0) is None and not (images / "barack").exists()

        keys("ebarack", obama2)
        assert outcome().startswith("Looks like obama")
        with caplog.at_level(logging.INFO, logger="door_access.recognition.enrollment"):
            keys("", None)  # the confirmation enrolls the frame that was checked, not the newest
            assert outcome() == "Enrolled barack"
        assert len(list((images / "barack").glob("*.jpg"))) == 1
        assert any(r.levelno == logging.WARNING and "within the threshold of obama" in r.getMessage()
                   for r in caplog.records)
    finally:
        kiosk.close()

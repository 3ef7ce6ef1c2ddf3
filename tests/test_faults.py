"""Faults and bad input while the door runs: the app keeps going (or stops loudly), the door stays locked.

Everything is real: the models, photos, generated clips played by real `cv2.VideoCapture`s,
SQLite files, subprocesses. Where a test needs to play the camera (pull its cable, point it at
someone else) it hands `Capture` an `opener` returning a `ClipCamera`: a real capture on a
generated clip, paced at the clip's frame rate like a webcam, that the test can switch or silence.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest
import tensorflow as tf

from door_access.app import build_pipeline
from door_access.config import AccessLogConfig, Config, DoorConfig, PipelineConfig, TtsConfig
from door_access.core import CAMERA_BACK, CAMERA_LOST, DENIED, FAULT, GALLERY, UNLOCK, Event
from door_access.door.access_log import AccessLog
from door_access.faces.capture import Capture
from door_access.pipeline import Pipeline
from door_access.tools.democlip import Segment, write_clip

from conftest import FR_IMAGES, REPO, make_config, wait_for

# This checkout's code, whatever the venv's editable install points at
DOOR = [sys.executable, "-m", "door_access"]
CLI_ENV = dict(os.environ, PYTHONPATH=str(REPO))
FPS = 15.0
WAIT_S = 60  # generous bound on every wait, so a broken app fails a test instead of hanging it
WEIGHT_FILES = ("shape_predictor_5_face_landmarks.dat", "mmod_human_face_detector.dat",
                "shape_predictor_68_face_landmarks.dat", "facenet_keras3.weights.h5")
# Liveness (where the config has it) would deny a clip made of still photos; these tests are about faults.
HAS_LIVENESS = "liveness" in {f.name for f in dataclasses.fields(Config)}
LIVENESS_OFF_YAML = "liveness:\n  enabled: false\n" if HAS_LIVENESS else ""
# A relock hook that appends its argv to the file named by its first argument.
RECORD_HOOK = "import json, sys; open(sys.argv[1], 'a').write(json.dumps(sys.argv[2:]) + '\\n')"


# ---- helpers --------------------------------------------------------------------------------------


def kinds(events: list[Event], kind: str, name: str | None = ...) -> list[Event]:
    return [e for e in events if e.event == kind and (name is ... or e.name == name)]


def logged_events(path: Path) -> list[Event]:
    """The access log read back through a fresh connection, as after a restart."""
    access_log = AccessLog(path)
    try:
        return access_log.last(1000)
    finally:
        access_log.close()


def as_logged(events: list[Event]) -> list[Event]:
    """`events` as the log keeps them: the enrolled name, not the display name (events only)."""
    return [dataclasses.replace(e, display_name=None) for e in events]


def site_config(tmp_path: Path, cache: Path, **sections) -> Config:
    """The real weights, a shared embedding cache, no speech, the access log in tmp_path; liveness off
    where the config has it (a clip made of still photos is not a live person)."""
    cfg = make_config(tmp_path)
    sections.setdefault("tts", TtsConfig(enabled=False))
    sections.setdefault("access_log", AccessLogConfig(path=str(tmp_path / "log.sqlite"), snapshots_dir=None))
    if HAS_LIVENESS:
        sections.setdefault("liveness", dataclasses.replace(cfg.liveness, enabled=False))
    return dataclasses.replace(cfg, paths=dataclasses.replace(cfg.paths, cache=str(cache)), **sections)


def enroll(tmp_path: Path, *photos: str) -> Path:
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    for photo in photos:
        shutil.copy(FR_IMAGES / photo, images / photo)
    return images


def file_capture(cfg: Config, clip: Path) -> Capture:
    c = cfg.camera
    return Capture(str(clip), False, c.lost_after_s, c.reconnect_min_s, c.reconnect_max_s)


def make_pipeline(cfg, capture, encoder, images, events: list[Event]) -> Pipeline:
    return build_pipeline(cfg, images, capture, events.append, encoder=encoder)


def run_to_end(pipeline: Pipeline) -> None:
    """Play the whole file through the running app, then stop it (bounded, never hangs)."""
    pipeline.start()
    try:
        pipeline.wait(WAIT_S)
        assert pipeline.finished.is_set() or pipeline.failure, "the clip did not finish within WAIT_S"
    finally:
        pipeline.stop()


class ClipCamera:
    """A webcam stand-in: a real cv2.VideoCapture on `clips[scene]`, looped, one frame per 1/FPS s.

    The test points it at another scene by setting `scene`; after `fail_after` frames it goes
    silent (read() fails, as a camera whose cable was pulled), without saying it is closed.
    """

    def __init__(self, clips: dict[str, Path], scene: str, fail_after: int | None = None):
        self.clips = clips
        self.scene = scene
        self.fail_after = fail_after
        self.delivered = 0
        self._cap: cv2.VideoCapture | None = None
        self._showing: str | None = None
        self._next = 0.0
        self._released = False

    def isOpened(self) -> bool:  # cv2.VideoCapture's spelling
        return not self._released

    def get(self, prop: int) -> float:
        return FPS if prop == cv2.CAP_PROP_FPS else 0.0

    def read(self):
        now = time.monotonic()
        if self._next > now:
            time.sleep(self._next - now)
        self._next = max(self._next, now) + 1.0 / FPS
        if self._released or self.fail_after is not None and self.delivered >= self.fail_after:
            return False, None
        scene = self.scene
        if scene != self._showing or self._cap is None:
            self._reopen(scene)
        ok, image = self._cap.read()
        if not ok:  # end of the clip: loop
            self._reopen(scene)
            ok, image = self._cap.read()
        self.delivered += ok
        return ok, image

    def _reopen(self, scene: str) -> None:
        if self._cap is not None:
            self._cap.release()
        self._cap = cv2.VideoCapture(str(self.clips[scene]))
        self._showing = scene

    def release(self) -> None:
        self._released = True
        if self._cap is not None:
            self._cap.release()


@pytest.fixture(scope="module")
def clips(tmp_path_factory, detector) -> dict[str, Path]:
    """`door`: obama (a photo not in any gallery here), nobody, biden, nobody. `obama`/`empty`: camera scenes."""
    root = tmp_path_factory.mktemp("fault_clips")
    obama2, biden = FR_IMAGES / "obama2.jpg", FR_IMAGES / "biden.jpg"
    door = [Segment(None, 0.3), Segment(obama2, 2.0), Segment(None, 1.2), Segment(biden, 2.0), Segment(None, 0.3)]
    return {"door": write_clip(detector, door, root / "door.mp4", FPS),
            "obama": write_clip(detector, [Segment(obama2, 3.0)], root / "obama.mp4", FPS),
            "empty": write_clip(detector, [Segment(None, 1.0)], root / "empty.mp4", FPS)}


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One embedding cache for the module: each photo is encoded once."""
    return tmp_path_factory.mktemp("fault_cache")


# ---- 1. the camera drops out ----------------------------------------------------------------------


def test_camera_drop_out_is_logged_and_frames_flow_again(tmp_path, clips, cache, detector, encoder):
    opened: list[ClipCamera] = []

    def opener(source):
        assert source == 0
        opened.append(ClipCamera(clips, "obama", fail_after=20 if not opened else None))
        return opened[-1]

    cfg = site_config(tmp_path, cache)
    capture = Capture(0, False, lost_after_s=0.2, reconnect_min_s=0.05, reconnect_max_s=1.0, opener=opener)
    assert capture.live
    events: list[Event] = []
    pipeline = make_pipeline(cfg, capture, encoder, enroll(tmp_path, "obama.jpg"), events)
    pipeline.start()
    try:
        assert wait_for(lambda: kinds(events, CAMERA_BACK)), f"no camera_back: {events}"
        frames, processed = capture.frames_in, pipeline.stats.processed
        assert wait_for(lambda: capture.frames_in >= frames + 15 and pipeline.stats.processed > processed)
        assert pipeline.failure is None
    finally:
        pipeline.stop()
    assert len(opened) == 2 and opened[0].delivered == 20 and opened[1].delivered >= 15

    logged = [e for e in logged_events(tmp_path / "log.sqlite") if e.event in (CAMERA_LOST, CAMERA_BACK)]
    assert [e.event for e in logged] == [CAMERA_LOST, CAMERA_BACK]  # one episode, no flapping
    assert "stopped delivering frames" in logged[0].detail and "after 1 attempt(s)" in logged[1].detail
    assert logged[0].t <= logged[1].t


def test_reconnect_backoff_grows_between_failed_attempts(tmp_path, clips):
    unplugged = str(tmp_path / "unplugged.mp4")  # never exists: a real capture that does not open
    calls: list[float] = []

    def opener(source):
        calls.append(time.monotonic())
        if len(calls) == 1:
            return ClipCamera(clips, "empty", fail_after=3)
        if len(calls) <= 5:
            return cv2.VideoCapture(unplugged)
        return ClipCamera(clips, "empty")

    status: list[tuple[str, str]] = []
    errors: list[BaseException] = []
    capture = Capture(0, False, lost_after_s=0.1, reconnect_min_s=0.05, reconnect_max_s=10.0,
                      on_status=lambda kind, detail: status.append((kind, detail)), opener=opener)
    capture.start(errors.append)
    try:
        assert wait_for(lambda: any(kind == "camera_back" for kind, _ in status), 30)
        frames = capture.frames_in
        assert wait_for(lambda: capture.frames_in > frames)
    finally:
        capture.stop()
    assert errors == []
    assert [kind for kind, _ in status] == ["camera_lost", "camera_back"]  # one report, not one per attempt
    assert "after 5 attempt(s)" in status[1][1]
    attempts = calls[1:]  # calls[0] opened the camera at start
    gaps = [b - a for a, b in zip(attempts, attempts[1:])]
    assert len(gaps) == 4 and all(a < b for a, b in zip(gaps, gaps[1:])), gaps  # each wait longer than the last


# ---- 2. hot enroll, bad files and removal while running ---------------------------------------------


BAD_NAMES = {  # file name -> the person it enrolls verbatim (each holds a real photo)
    "$(touch PWNED).jpg": "$(touch PWNED)",
    "Zoë 李.jpg": "Zoë 李",
}
REFUSED_NAMES = ["-rf.jpg",  # would read as an option to a hook
                 os.fsdecode(b"latin1 \xe9t\xe9.jpg")]  # not UTF-8: undecodable bytes
QUOTED_FOLDER = "O'Brien \"Bob\""  # a person folder


def gallery_counts(event: Event) -> tuple[int, int, int]:
    """(people, photos, skipped) from a gallery event's detail."""
    people, photos, skipped = (int(part.split()[0]) for part in event.detail.split(", "))
    return people, photos, skipped


def test_hot_enroll_bad_files_and_removal_while_running(tmp_path, clips, cache, detector, encoder):
    images = enroll(tmp_path, "biden.jpg")  # obama, in front of the camera, is not enrolled yet
    cfg = site_config(tmp_path, cache, pipeline=PipelineConfig(gallery_poll_s=0.3),
                      door=DoorConfig(cooldown_seconds=0.0))
    camera = ClipCamera(clips, "obama")
    capture = Capture(0, False, 3.0, 0.5, 10.0, opener=lambda source: camera)
    events: list[Event] = []
    pipeline = make_pipeline(cfg, capture, encoder, images, events)
    pipeline.start()
    try:
        # a stranger is denied; then a different photo of them is dropped in: enrolled without a restart
        assert wait_for(lambda: kinds(events, DENIED)), events
        assert not kinds(events, UNLOCK)
        shutil.copy(FR_IMAGES / "obama.jpg", images / "obama.jpg")
        assert wait_for(lambda: kinds(events, UNLOCK, "obama")), events
        reloads = kinds(events[:events.index(kinds(events, UNLOCK)[0])], GALLERY)
        assert reloads and gallery_counts(reloads[-1]) == (2, 2, 0)  # the reload came first, and enrolled obama

        # bad files while running: skipped with a reason or enrolled verbatim, and the app goes on
        (images / "empty.jpg").write_bytes(b"")
        (images / "notes.jpg").write_text("not a photo, just text\n")
        (images / "truncated.jpg").write_bytes((FR_IMAGES / "obama3.jpg").read_bytes()[:5000])
        (images / "ghost.jpg").symlink_to(tmp_path / "nowhere.jpg")
        os.mkfifo(images / "fifo.jpg")  # reading it would block forever
        for name in [*BAD_NAMES, *REFUSED_NAMES]:
            shutil.copy(FR_IMAGES / "biden.jpg", images / name)
        (images / QUOTED_FOLDER).mkdir()
        shutil.copy(FR_IMAGES / "biden.jpg", images / QUOTED_FOLDER / "1.jpg")
        people = {"biden", "obama", QUOTED_FOLDER, *BAD_NAMES.values()}
        assert wait_for(lambda: gallery_counts(kinds(events, GALLERY)[-1]) == (len(people), len(people), 7)), \
            [e.detail for e in kinds(events, GALLERY)]
        assert set(pipeline.recognizer.people) == people
        processed = pipeline.stats.processed
        assert wait_for(lambda: pipeline.stats.processed > processed + 5)
        assert pipeline.failure is None

        # obama's photo removed: once their track is over, their next appearance is denied, not unlocked
        unlocked = kinds(events, UNLOCK, "obama")[0]
        (images / "obama.jpg").unlink()
        assert wait_for(lambda: "obama" not in pipeline.recognizer.people)
        removed_at = len(events)
        camera.scene = "empty"
        assert wait_for(lambda: not pipeline.decider.tracks)
        camera.scene = "obama"
        assert wait_for(lambda: any(e.track > unlocked.track for e in kinds(events[removed_at:], DENIED))), events
        assert pipeline.failure is None
    finally:
        pipeline.stop()
    assert kinds(events, UNLOCK) == [unlocked]
    assert kinds(events, GALLERY)[-1].detail == f"{len(people) - 1} people, {len(people) - 1} photos, 7 skipped"
    for where in (tmp_path, images, REPO, Path.cwd()):
        assert not (where / "PWNED").exists()
    assert not list(tmp_path.rglob("PWNED"))


# ---- 3. the access log is unusable while running ---------------------------------------------------


@pytest.mark.parametrize("fault", ["parent_is_a_file", "locked_by_another_connection"])
def test_unusable_access_log_does_not_stop_the_door(tmp_path, clips, cache, detector, encoder, caplog, fault):
    if fault == "parent_is_a_file":
        (tmp_path / "logs").write_text("a regular file where the log's folder should be")
        path, other = tmp_path / "logs" / "log.sqlite", None
    else:
        path = tmp_path / "log.sqlite"
        AccessLog(path).close()  # an existing log (WAL mode), held by another writer for the whole run
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
    relocks = tmp_path / "relock.jsonl"
    cfg = site_config(tmp_path, cache, access_log=AccessLogConfig(path=str(path), snapshots_dir=None),
                      door=DoorConfig(relock_command=(sys.executable, "-c", RECORD_HOOK, str(relocks), "{name}"),
                                      unlock_seconds=600))
    events: list[Event] = []
    try:
        with caplog.at_level(logging.WARNING):
            pipeline = make_pipeline(cfg, file_capture(cfg, clips["door"]), encoder,
                                     enroll(tmp_path, "obama.jpg"), events)
            pipeline.start()
            try:
                pipeline.wait(WAIT_S)
                assert pipeline.finished.is_set()
                # decisions are made and emitted although none can be logged yet
                assert wait_for(lambda: kinds(events, UNLOCK) and kinds(events, DENIED))
            finally:
                started = time.monotonic()
                pipeline.stop()
                stop_s = time.monotonic() - started
        assert pipeline.failure is None and stop_s < 30
        assert [e.name for e in kinds(events, UNLOCK)] == ["obama"] and kinds(events, DENIED)[0].name is None
        # the door was locked at start-up, and relocked as the app stopped
        assert [json.loads(line) for line in relocks.read_text().splitlines()] == [[""], ["obama"]]
        warnings = [r.getMessage() for r in caplog.records if r.name == "door_access.door.access_log"
                    and r.levelno == logging.WARNING]
        assert str(path) in warnings[0], warnings
        if other is not None:  # one "cannot write" warning, one "kept in the spool for the next start"
            assert len(warnings) == 2 and "spool" in warnings[1], warnings
            assert [e.event for e in logged_events(path)] == []  # nothing was written behind the lock's back
    finally:
        if other is not None:
            other.execute("ROLLBACK")
            other.close()
    if other is not None:  # the lock is gone: the next start replays the spool, and nothing is lost
        logged = logged_events(path)
        assert logged == as_logged(events), (logged, events)  # every event, in order, exactly once
        assert logged_events(path) == as_logged(events)  # replayed once only


def test_stopping_while_a_locked_log_holds_up_the_actions_still_relocks(tmp_path, clips, cache, detector, encoder):
    path = tmp_path / "log.sqlite"
    AccessLog(path).close()
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # every write to the log now waits out its busy timeout
    hooks = tmp_path / "hooks.jsonl"
    cfg = site_config(tmp_path, cache, access_log=AccessLogConfig(path=str(path), snapshots_dir=None),
                      door=DoorConfig(unlock_command=(sys.executable, "-c", RECORD_HOOK, str(hooks), "unlock"),
                                      relock_command=(sys.executable, "-c", RECORD_HOOK, str(hooks), "relock"),
                                      unlock_seconds=600))
    events: list[Event] = []
    try:
        pipeline = make_pipeline(cfg, file_capture(cfg, clips["door"]), encoder,
                                 enroll(tmp_path, "obama.jpg"), events)
        pipeline.start()
        try:
            assert wait_for(lambda: hooks.exists() and hooks.read_text().strip())  # the door is open
            assert wait_for(lambda: pipeline.finished.is_set() and kinds(events, DENIED))  # the worker is idle
            pipeline.notify(CAMERA_LOST, detail="camera unplugged")  # a notice to log: the worker waits on the lock
            time.sleep(0.3)
        finally:
            pipeline.stop()
            # the door must be locked by the time the app is done stopping (the process may exit right after)
            calls = [json.loads(line) for line in hooks.read_text().splitlines()]
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert calls == [["relock"], ["unlock"], ["relock"]]  # locked at start-up, unlocked, relocked at stop
    assert logged_events(path) == as_logged(events)  # and once the lock was gone, nothing was lost


# ---- 4. speech without an audio player ----------------------------------------------------------------


def test_speech_without_an_audio_player_is_one_warning_and_unlocks_go_on(tmp_path, clips, cache, detector,
                                                                           encoder, caplog, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty_bin"))  # no `aplay`: pyttsx3 would fail silently
    cfg = site_config(tmp_path, cache, tts=TtsConfig(enabled=True, wav_dir=None),
                      door=DoorConfig(cooldown_seconds=0.0))
    events: list[Event] = []
    with caplog.at_level(logging.WARNING):
        pipeline = make_pipeline(cfg, file_capture(cfg, clips["door"]), encoder,
                                 enroll(tmp_path, "obama.jpg", "biden.jpg"), events)
        run_to_end(pipeline)
    assert pipeline.failure is None
    assert [e.name for e in kinds(events, UNLOCK)] == ["obama", "biden"]  # two welcomes could not be spoken
    speech = [r.getMessage() for r in caplog.records if "speech" in r.getMessage() and r.levelno >= logging.WARNING]
    assert len(speech) == 1 and "aplay" in speech[0], speech
    assert [e.event for e in logged_events(tmp_path / "log.sqlite")].count(UNLOCK) == 2


# ---- 5. config errors through the CLI --------------------------------------------------------------


def door_access(*argv: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*DOOR, *argv], capture_output=True, text=True, env=CLI_ENV, timeout=timeout, cwd=cwd)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


CONFIG_MISTAKES = [
    pytest.param(None, ["config file not found"], id="missing_file"),
    pytest.param("camera:\n  lost_after_s: 1.0\nrecognition:\n\tthreshold: 0.5\n", ["line 4", "YAML syntax error"],
                 id="yaml_syntax"),
    pytest.param("recognition:\n  treshold: 0.5\n", ["line 2", "'recognition.treshold'", "unknown key"],
                 id="unknown_key"),
    pytest.param("pipeline:\n  queue_size: 4\n  batch_size: many\n", ["line 3", "'pipeline.batch_size'", "must be int"],
                 id="wrong_type"),
    pytest.param("door:\n  unlock_command: /usr/bin/relay open\n", ["line 2", "'door.unlock_command'", "list"],
                 id="string_for_a_list"),
    pytest.param("recognition:\n  threshold: 3.5\n", ["line 2", "'recognition.threshold'", "out of range"],
                 id="threshold_out_of_range"),
    pytest.param("recognition:\n  threshold: .nan\n", ["line 2", "'recognition.threshold'"], id="threshold_nan"),
    pytest.param("door:\n  unlock_seconds: .nan\n", ["line 2", "'door.unlock_seconds'"], id="unlock_seconds_nan"),
    pytest.param("recognition:\n  threshold: 0.5\n  threshold: 1.5\n", ["line 3", "'recognition.threshold'"],
                 id="duplicate_key"),
]


@pytest.mark.parametrize("text,needles", CONFIG_MISTAKES)
def test_config_mistakes_exit_2_with_one_line_naming_key_and_line(tmp_path, clips, text, needles):
    config = tmp_path / "config.yaml"
    if text is not None:
        config.write_text(text)
    proc = door_access("run", "--config", str(config), "--headless", "--source", str(clips["door"]), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = one_error_line(proc)
    assert str(config) in line
    for needle in needles:
        assert needle in line, line
    assert proc.stdout == ""


# ---- 6. weights missing or corrupt through the CLI -------------------------------------------------


def weights_dir(root: Path, truncate: str | None = None, leave_out: tuple[str, ...] = ()) -> Path:
    """The real weight files symlinked into `root`, except `leave_out`; `truncate` copied cut short."""
    root.mkdir()
    for name in WEIGHT_FILES:
        if name in leave_out:
            continue
        if name == truncate:
            with open(REPO / "weights" / name, "rb") as f:
                (root / name).write_bytes(f.read(200_000))
        else:
            (root / name).symlink_to(REPO / "weights" / name)
    return root


@pytest.mark.parametrize("case", [
    "empty",
    "facenet_truncated",
    "landmarks_truncated",
    "cnn_truncated",
])
def test_missing_or_corrupt_weights_exit_2_naming_setup(tmp_path, case):
    leave_out = WEIGHT_FILES if case == "empty" else ()
    truncate = {"facenet_truncated": "facenet_keras3.weights.h5",
                "landmarks_truncated": "shape_predictor_5_face_landmarks.dat",
                "cnn_truncated": "mmod_human_face_detector.dat"}.get(case)
    weights = weights_dir(tmp_path / "weights", truncate, leave_out)
    enroll(tmp_path, "obama.jpg")
    model = "cnn" if case == "cnn_truncated" else "hog"
    (tmp_path / "config.yaml").write_text(f"paths:\n  weights: {weights}\n  cache: cache\n"
                                          f"detection:\n  model: {model}\n")
    proc = door_access("identify", "--config", str(tmp_path / "config.yaml"), str(FR_IMAGES / "obama2.jpg"),
                       cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = one_error_line(proc)
    assert "door-access setup" in line and str(weights) in line, line


# ---- 7. a stage that fails stops the app, loudly ----------------------------------------------------


def test_a_failing_encoder_stops_the_app_with_the_stage_name(tmp_path, clips, cache, detector, encoder, caplog):
    broken = copy.copy(encoder)  # shares the real model and its traced graph: warm-up at start() works
    cfg = site_config(tmp_path, cache)
    events: list[Event] = []
    pipeline = make_pipeline(cfg, file_capture(cfg, clips["door"]), broken,
                             enroll(tmp_path, "obama.jpg"), events)
    started = time.monotonic()
    pipeline.start()
    # the model goes away under the running stage; a fresh graph makes the next batch really call it
    broken.model = None
    broken._forward = tf.function(broken._embed, reduce_retracing=True)
    try:
        with caplog.at_level(logging.ERROR):
            pipeline.wait(WAIT_S)
        assert time.monotonic() - started < WAIT_S  # stopped by the failure, not by the bound
        assert pipeline.failure is not None and pipeline.failure[0] == "encoder", pipeline.failure
        assert pipeline.stop_event.is_set() and not pipeline.finished.is_set()
    finally:
        pipeline.stop()
    assert not kinds(events, UNLOCK)
    assert any("stage 'encoder' failed" in r.getMessage() for r in caplog.records)
    faults = kinds(logged_events(tmp_path / "log.sqlite"), FAULT)
    assert len(faults) == 1 and faults[0].detail.startswith("stage encoder failed"), faults
    assert faults == kinds(events, FAULT)


def test_run_refuses_to_start_with_a_corrupt_model(tmp_path, clips):
    """A corrupt detector model is found before the door starts, not on the first frame."""
    weights = weights_dir(tmp_path / "weights", truncate="mmod_human_face_detector.dat")
    (tmp_path / "images").mkdir()
    (tmp_path / "config.yaml").write_text(f"paths:\n  weights: {weights}\n  cache: cache\ndetection:\n  model: cnn\n"
                                          "tts:\n  enabled: false\naccess_log:\n  path: log.sqlite\n"
                                          + LIVENESS_OFF_YAML)
    proc = door_access("run", "--config", str(tmp_path / "config.yaml"), "--headless", "--events-json",
                       "--source", str(clips["door"]), cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = one_error_line(proc)
    assert "mmod_human_face_detector.dat" in line and "door-access setup" in line
    assert proc.stdout == ""


def test_detector_processes_that_cannot_start_leave_the_door_locked_and_say_why(tmp_path, clips, door_run,
                                                                                 monkeypatch):
    """The detector processes fork from a fork server reached through a socket in a temporary folder:
    on a machine where that fails (no writable temporary folder), the run is a failed stage like any
    other (a fault event, exit 1, an error line that names the folder), never READY, the door relocked."""
    import multiprocessing.forkserver

    def unreachable(fds):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(multiprocessing.forkserver, "connect_to_new_process", unreachable)
    marker = tmp_path / "relocked"
    enroll(tmp_path, "obama.jpg")
    (tmp_path / "config.yaml").write_text(
        f"paths:\n  weights: {REPO / 'weights'}\n  cache: cache\ntts:\n  enabled: false\n"
        f"access_log:\n  path: log.sqlite\ndoor:\n  relock_command: {json.dumps(['touch', str(marker)])}\n"
        + LIVENESS_OFF_YAML)
    code, events, err = door_run(tmp_path / "config.yaml", clips["door"])
    assert code == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: stage 'detector processes' failed: ") and "temporary folder" in last, err[-2000:]
    assert "Read-only file system" in last and " ready: " not in err
    assert [e["event"] for e in events if e["event"] != "relock"] == ["fault"]  # no unlock, no decision
    assert events[0]["event"] == "relock" and marker.is_file()

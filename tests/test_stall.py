"""The watchdog on the real door: a stage that blocks forever, and a detector process frozen with SIGSTOP.

Each run: the stage is named in the log and in a `fault` event, the relock hook runs, and the
door stops (the app exits 3, for a service manager to restart it) instead of hanging on. The
waits are bounded generously (a loaded CI machine); the stall-to-exit times are measured in
docs/incoming-watchdog.md, not asserted here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from door_access.app import build_pipeline
from door_access.config import AccessLogConfig, DetectionConfig, DoorConfig, TtsConfig, WatchdogConfig
from door_access.core import CAMERA_LOST, FAULT, RELOCK, Event
from door_access.faces.capture import Capture, Frame
from door_access.faces.detection import FaceDetector
from door_access.faces.parallel_detection import DetectedFrames
from door_access.tools.democlip import Segment, write_clip
from door_access.watchdog import EXIT_STALLED, Stalled

from conftest import FR_IMAGES, REPO, Datagrams, make_config, wait_for, write_site

DOOR = [sys.executable, "-m", "door_access"]
CLI_ENV = dict(os.environ, PYTHONPATH=str(REPO))
FPS = 15.0
STALL_S = 3.0
BOUND_S = STALL_S + 30  # how long a test waits at most for what must happen within about STALL_S + 2
# A relock hook that appends its argv to the file named by its first argument.
RECORD_HOOK = "import json, sys; open(sys.argv[1], 'a').write(json.dumps(sys.argv[2:]) + '\\n')"


@pytest.fixture(scope="module")
def clip(tmp_path_factory, detector):
    """obama (enrolled: a first decision early on), nobody, then obama long enough to freeze a stage in."""
    root = tmp_path_factory.mktemp("stall_clip")
    obama2 = FR_IMAGES / "obama2.jpg"
    return write_clip(detector, [Segment(obama2, 3.0), Segment(None, 1.0), Segment(obama2, 10.0)],
                      root / "door.mp4", FPS)


def test_a_stage_that_blocks_forever_relocks_records_a_fault_and_stops_the_door(tmp_path, clip, encoder):
    """The decider's observer blocks forever once the first frame is decided: the watchdog names the
    decider, the `fault` goes out through the actions, the relock hook runs, and stop() returns."""
    relocked = tmp_path / "relocked.jsonl"
    cfg = make_config(tmp_path, door=DoorConfig(relock_command=(sys.executable, "-c", RECORD_HOOK, str(relocked))),
                      watchdog=WatchdogConfig(stall_s=STALL_S), tts=TtsConfig(enabled=False),
                      access_log=AccessLogConfig(path=str(tmp_path / "log.sqlite"), snapshots_dir=None))
    cfg = dataclasses.replace(cfg, liveness=dataclasses.replace(cfg.liveness, enabled=False))  # still photos
    c = cfg.camera
    capture = Capture(str(clip), True, c.lost_after_s, c.reconnect_min_s, c.reconnect_max_s)  # live, at 15 FPS
    events: list[Event] = []
    (tmp_path / "images").mkdir()
    shutil.copy(FR_IMAGES / "obama.jpg", tmp_path / "images" / "obama.jpg")
    pipeline = build_pipeline(cfg, tmp_path / "images", capture, events.append, encoder=encoder)
    forever = threading.Event()
    blocked_at: list[float] = []

    def stuck(item, decisions):
        if not blocked_at:
            blocked_at.append(time.monotonic())
            forever.wait()

    pipeline.observers.append(stuck)
    pipeline.start()
    try:
        assert wait_for(lambda: pipeline.failure is not None, BOUND_S), "no stall detected"
        stage, exc = pipeline.failure
        assert stage == "decider" and isinstance(exc, Stalled)
        assert wait_for(lambda: [e for e in events if e.event == FAULT], 10)
    finally:
        pipeline.stop()
        forever.set()
    [fault] = [e for e in events if e.event == FAULT]
    assert "'decider' stalled" in fault.detail
    assert [e.detail for e in events if e.event == RELOCK][-1] == "stage 'decider' stalled"
    assert len(relocked.read_text().splitlines()) == 2  # at start-up, then at the stall
    assert pipeline.watchdog.stalled[1] >= STALL_S


def _start_door(tmp_path, clip, settings: str, **env) -> tuple[subprocess.Popen, Path]:
    """The real door as a process on `clip` in real time, its site config the common part plus
    `settings` (YAML); stderr goes to a file (returned) so a test can read it while the door runs."""
    site = write_site(tmp_path, """
tts:
  enabled: false
access_log:
  path: log.sqlite
liveness:
  enabled: false   # the clip is made of still photos
""" + settings)
    err_path = tmp_path / "stderr.log"
    with open(err_path, "w") as err:
        proc = subprocess.Popen([*DOOR, "run", "--config", str(site / "config.yaml"), "--source", str(clip),
                                 "--realtime", "--headless", "--events-json"], stdout=subprocess.PIPE, stderr=err,
                                text=True, env=dict(CLI_ENV, **env), cwd=site)
    return proc, err_path


def _detector_pids(err_path: Path) -> list[int]:
    """The detector processes' pids, from the door's "detection: 2 HOG processes, pids A B" line."""
    line = next(x for x in err_path.read_text().splitlines() if "HOG processes" in x)
    return [int(p) for p in line.split("pids ")[1].split()]


def _left_behind(pid: int | None) -> bool:
    """Kill `pid` if the app left it running (the bug these tests guard); whether it was."""
    if pid is None:
        return False
    try:
        os.kill(pid, signal.SIGKILL)
        return True
    except ProcessLookupError:
        return False


def test_a_detector_process_frozen_with_sigstop_makes_the_door_exit_3_relocked(tmp_path, clip):
    notify = Datagrams(str(tmp_path / "notify"))  # listening before the door can say READY
    proc, err_path = _start_door(tmp_path, clip, f"""
door:
  relock_command: {json.dumps([sys.executable, "-c", RECORD_HOOK, str(tmp_path / "relocked.jsonl")])}
  unlock_seconds: 1.0
watchdog:
  stall_s: {STALL_S}
""", NOTIFY_SOCKET=str(tmp_path / "notify"))
    frozen = None
    try:
        while (line := proc.stdout.readline()) and json.loads(line)["event"] == "relock":
            pass  # the start-up relock; then the first decision: the app is fully up
        assert line, err_path.read_text()[-3000:]
        assert "READY=1" in notify.messages() and "WATCHDOG=1" in notify.messages()
        frozen = _detector_pids(err_path)[0]
        os.kill(frozen, signal.SIGSTOP)
        out, _ = proc.communicate(timeout=BOUND_S)
    finally:
        proc.kill()
        left_behind = _left_behind(frozen)
        notify.close()
    stderr = err_path.read_text()
    assert proc.returncode == EXIT_STALLED, stderr[-3000:]
    assert "stage 'detector process 0' stalled" in stderr
    assert not left_behind, "the frozen detector process outlived the app"
    events = [json.loads(x) for x in (line + out).splitlines() if x.startswith("{")]
    faults = [e for e in events if e["event"] == "fault"]
    assert len(faults) == 1 and "'detector process 0' stalled" in faults[0]["detail"]
    assert [e["detail"] for e in events if e["event"] == "relock"][-1] == "stage 'detector process 0' stalled"
    assert len((tmp_path / "relocked.jsonl").read_text().splitlines()) >= 2  # start-up, the stall (and stop)
    got = notify.messages()
    assert got[got.index("READY=1"):][-1] == "STOPPING=1"  # no ping after the stall
    assert "WATCHDOG=1" not in got[got.index("STOPPING=1"):]


def test_sigterm_with_a_frozen_detector_process_still_exits_and_kills_it(tmp_path, clip):
    """The hang this replaces: a frozen child kept the app from exiting after "stopped"."""
    proc, err_path = _start_door(tmp_path, clip, """
watchdog:
  stall_s: 600.0   # the watchdog stays out of this: the stop itself must not hang
""")
    frozen = None
    try:
        assert wait_for(lambda: "ready:" in err_path.read_text(), 300), err_path.read_text()[-3000:]  # models load
        frozen = _detector_pids(err_path)[1]
        os.kill(frozen, signal.SIGSTOP)
        time.sleep(1.0)  # a search is sent to it and never answered
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=BOUND_S)
    finally:
        proc.kill()
        left_behind = _left_behind(frozen)
    assert proc.returncode == 0, err_path.read_text()[-3000:]  # stopped on request, the door locked
    assert not left_behind, "the frozen detector process outlived the app"
    assert "killing it" in err_path.read_text()


class SilentCamera:
    """A webcam stand-in that opens but never delivers a frame (read() fails at 15 FPS): a pulled cable."""

    def isOpened(self) -> bool:  # cv2.VideoCapture's spelling
        return True

    def get(self, prop: int) -> float:
        return FPS if prop == cv2.CAP_PROP_FPS else 0.0

    def read(self):
        time.sleep(1.0 / FPS)
        return False, None

    def release(self) -> None:
        pass


def test_a_camera_that_delivers_nothing_is_camera_lost_not_a_stall(tmp_path, encoder):
    """Silent for many times stall_s, reconnects failing: `camera_lost` once, no fault, the app keeps running."""
    cfg = make_config(tmp_path, watchdog=WatchdogConfig(stall_s=1.0), tts=TtsConfig(enabled=False),
                      access_log=AccessLogConfig(path=str(tmp_path / "log.sqlite"), snapshots_dir=None))
    capture = Capture(0, False, lost_after_s=0.3, reconnect_min_s=0.2, reconnect_max_s=2.0,
                      opener=lambda source: SilentCamera())
    events: list[Event] = []
    (tmp_path / "images").mkdir()
    pipeline = build_pipeline(cfg, tmp_path / "images", capture, events.append, encoder=encoder)
    pipeline.start()
    try:
        assert wait_for(lambda: [e for e in events if e.event == CAMERA_LOST], BOUND_S)
        # silent for 4x stall_s more, the watchdog checking 4 times a second: longer than the backoff's cap
        # (2 s), through backoffs of 0.2, 0.4, 0.8 and 1.6 s (the last longer than stall_s) into the 2 s one
        time.sleep(4 * cfg.watchdog.stall_s)
        assert pipeline.failure is None and not pipeline.stop_event.is_set()
    finally:
        pipeline.stop()
    assert [e.event for e in events].count(CAMERA_LOST) == 1 and not [e for e in events if e.event == FAULT]
    assert capture.reads > 0 and pipeline.monitor.worst()["capture"] < cfg.watchdog.stall_s


def test_stop_ends_frozen_detector_processes_and_the_lanes_blocked_sending_to_them():
    """Frozen before reading a frame, a process leaves its lane stuck in send() (a 640x360 frame is more
    than the pipe holds): close() kills it, the lane ends quietly, nothing is left behind."""
    detector = FaceDetector(DetectionConfig(full_scan_every=1), REPO / "weights")
    frames, stop = queue.Queue(), threading.Event()
    detected = DetectedFrames(frames, detector, 2, stop)
    detected.start_processes()
    pids = detected.pids()
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    errors: list[BaseException] = []

    def lane(body):
        try:
            body()
        except BaseException as exc:
            errors.append(exc)

    lanes = [threading.Thread(target=lane, args=(body,), daemon=True) for body in detected.lanes()]
    for t in lanes:
        t.start()
    noise = np.random.default_rng(0).integers(0, 255, (720, 1280, 3), np.uint8)
    for i in range(4):
        frames.put(Frame(i, i / FPS, noise))
    assert wait_for(lambda: all(detected.searching), BOUND_S)
    stop.set()
    detected.close()
    for t in lanes:
        t.join(BOUND_S)
    assert not errors and not any(t.is_alive() for t in lanes)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

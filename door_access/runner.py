"""`door-access run`: the app's lifecycle around the pipeline: signals, the window, exit codes.

The order at start-up: the door is locked first (after a crash or `kill -9` in the unlock window
it may be open, and a restart that then fails must not leave it so), then the camera is opened,
then the models load (this module imports neither TensorFlow nor dlib at the top), so a missing
camera is reported in well under a second, not after the models.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from door_access.config import Config
from door_access.core import Event
from door_access.door.controller import LOCKED
from door_access.faces.capture import Capture, parse_source
from door_access.watchdog import EXIT_STALLED, Stalled

if TYPE_CHECKING:
    from door_access.door.actions import Actions
    from door_access.kiosk.display import StatusModel, Window
    from door_access.pipeline import Pipeline
    from door_access.recognition.enrollment import KioskEnroller

log = logging.getLogger(__name__)


def open_capture(cfg: Config, source: str, realtime: bool) -> Capture:
    """The camera, file or stream, opened and checked (raises SourceError); loads no model."""
    c = cfg.camera
    return Capture(parse_source(source), realtime, c.lost_after_s, c.reconnect_min_s, c.reconnect_max_s,
                   open_timeout_s=c.open_timeout_s, request=(c.width, c.height, c.fps))


def json_printer() -> Callable[[Event], None]:
    lock = threading.Lock()

    def emit(event: Event) -> None:
        with lock:
            sys.stdout.write(event.to_json() + "\n")
            sys.stdout.flush()

    return emit


def run_door(cfg: Config, images_dir: Path, source: str, realtime: bool, headless: bool, events_json: bool,
             max_seconds: float | None, fullscreen: bool = False) -> int:
    """Run until Ctrl-C, SIGTERM, q/Esc in the window, the end of a file or `max_seconds`; 1 if a stage failed
    or the door could not be locked, EXIT_STALLED (3) if one stalled."""
    window = status = enroll = None
    if not headless:
        if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            log.warning("no display found: running headless (use --headless to silence this)")
        else:
            from door_access.kiosk.display import StatusModel

            status = StatusModel(cfg.display.message_seconds)
    printer = json_printer() if events_json else None

    def emit(event: Event) -> None:
        if status is not None:
            status.feed(event)
        if printer is not None:
            printer(event)

    from door_access.app import open_door

    actions = open_door(cfg, emit)
    pipeline = None
    try:
        pipeline = _build(cfg, actions, images_dir, source, realtime)
    finally:
        if pipeline is None:  # it never runs: the door relocked (or said why not), the log closed
            actions.stop()
            actions.access_log.close(1.0)
    if pipeline is None:  # never READY=1 with the door open: the service manager restarts it, which relocks first
        print("error: the door could not be locked at start-up (the relock hook failed; see the fault in the "
              "access log)", file=sys.stderr)
        return 1
    capture = pipeline.capture
    if status is not None:
        from door_access.kiosk.display import Window

        width, height = capture.size
        scale = max(1.0, 720 / height) if height else 1.0  # a small frame gets a readable window
        window = Window(cfg.display.fullscreen or fullscreen, (int(width * scale), int(height * scale)))

    # Ctrl-C and SIGTERM only ask the pipeline to stop; a second one while stopping is logged and
    # ignored, so it can never cut the relock short (the handlers stay until the door is locked).
    handler = _stop_handler(pipeline)
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        # made before the stages start (see KioskEnroller); never touches the door
        if window and cfg.display.enroll_key:
            from door_access.recognition.enrollment import KioskEnroller

            enroll = KioskEnroller(cfg, pipeline.encoder, pipeline.recognizer, images_dir)
        pipeline.start()
        if pipeline.failure is None:  # else a stage could not start: reported below, never READY
            pipeline.watchdog.notifier.notify("READY=1")  # systemd (Type=notify): camera and models are up
            width, height = capture.size
            log.info("ready: %s %s at %dx%d, %d people enrolled%s",
                     "camera" if isinstance(capture.source, int) else "source", source, width, height,
                     len(pipeline.recognizer.people),
                     ("; e enrolls" if enroll else "") + ("; q or Esc quits" if window else ""))
            pipeline.wait(max_seconds, tick=_window_tick(pipeline, window, status, cfg, enroll) if window else None)
    finally:
        pipeline.stop_event.set()
        pipeline.watchdog.notifier.notify("STOPPING=1")
        if enroll:
            enroll.close()
        pipeline.stop()
        for sig, old in previous.items():
            signal.signal(sig, old)
        if window:
            window.close()
    s = pipeline.stats
    log.info("stopped: %d frames in, %d processed, %d dropped, %d faces encoded in %d batches",
             pipeline.capture.frames_in, s.processed, pipeline.capture.dropped, s.encoded, s.batches)
    if pipeline.failure:
        stage, exc = pipeline.failure
        if isinstance(exc, Stalled):  # a distinct code: the service manager restarts the door
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_STALLED
        print(f"error: stage '{stage}' failed: {exc}", file=sys.stderr)
        return 1
    if pipeline.door.state() != LOCKED:  # fail loudly: a supervisor must know the door may be open
        print("error: the door could not be relocked (the relock hook kept failing; see the faults in the "
              "access log)", file=sys.stderr)
        return 1
    return 0


def _build(cfg: Config, actions: Actions, images_dir: Path, source: str, realtime: bool) -> Pipeline | None:
    """Lock the door, then open the camera, then load the models; None when the door could not be locked.

    In this order because after a crash the door may be open: a restart that then fails (no camera,
    a model file missing) has locked it all the same."""
    if not actions.door.start():  # the relock hook, and the timer that retries it
        return None
    capture = open_capture(cfg, source, realtime)  # before any model: no camera -> SourceError at once
    try:
        from door_access.app import build_pipeline

        return build_pipeline(cfg, images_dir, capture, actions=actions)
    except BaseException:
        capture.stop(0.1)
        raise


def _stop_handler(pipeline: Pipeline):
    def handler(signum, _frame) -> None:
        name = signal.Signals(signum).name
        if pipeline.stop_event.is_set():
            log.warning("%s while stopping: ignored, the door is locked first", name)
        else:
            log.info("%s: stopping", name)
        pipeline.stop_event.set()

    return handler


def _window_tick(pipeline: Pipeline, window: Window, status: StatusModel, cfg: Config,
                 enroll: KioskEnroller | None) -> Callable[[], bool]:
    """Keys (the enroll prompt's first, then q/Esc quit) at every poll; render on the main thread at most
    `display.fps` times a second, and only when something changed."""
    from door_access.kiosk.display import FaceView, Ticker, enroll_status, render
    from door_access.recognition.enroll_prompt import QUIT_KEYS

    ticker = Ticker(cfg.display.fps)
    shown, shown_state = None, None

    def tick() -> bool:
        nonlocal shown, shown_state
        key = window.poll(ticker.wait_ms())
        t = pipeline.clock()[0]
        item = pipeline.latest
        taken = enroll is not None and enroll.key(key, t, item.frame.image if item is not None else None)
        if not taken and key in QUIT_KEYS:
            return False
        if not ticker.due():
            return True
        if item is None:
            return True
        labels = pipeline.labels
        faces = [FaceView(f.track, f.box, *labels.get(f.track, (None, None)),
                          challenge=f.live.challenge if f.live is not None else None) for f in item.faces]
        now = (enroll_status(enroll.line(t)) if enroll is not None else None) or status.status(t, faces)
        door = pipeline.door.state()  # the door controller owns it: locked, unlocked or relock failing
        if item is not shown or (now, door) != shown_state:
            window.show(render(item.frame.image, now, faces, door, cfg.display.mirror))
            shown, shown_state = item, (now, door)
        return True

    return tick

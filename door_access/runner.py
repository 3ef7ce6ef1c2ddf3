"""`door-access run`: the app's lifecycle around the pipeline: signals, the window, exit codes."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .capture import Capture, parse_source
from .config import Config
from .core import Event
from .pipeline import Pipeline

log = logging.getLogger(__name__)


def build_pipeline(cfg: Config, images_dir: Path, source: str, realtime: bool,
                   emit: Callable[[Event], None] | None = None) -> Pipeline:
    """Models, capture and every stage, from the config (raises SourceError for a bad source)."""
    from .detection import FaceDetector
    from .facenet import FaceEncoder
    from .gallery import GalleryBuilder

    c = cfg.camera
    capture = Capture(parse_source(source), realtime, c.lost_after_s, c.reconnect_min_s, c.reconnect_max_s,
                      request=(c.width, c.height, c.fps))
    encoder = FaceEncoder(cfg.path("weights") / "facenet_keras3.weights.h5")
    builder = GalleryBuilder(cfg, FaceDetector(cfg.detection, cfg.path("weights")), encoder)
    return Pipeline(cfg, capture, encoder, builder, images_dir, emit=emit)


def json_printer() -> Callable[[Event], None]:
    lock = threading.Lock()

    def emit(event: Event) -> None:
        with lock:
            sys.stdout.write(event.to_json() + "\n")
            sys.stdout.flush()

    return emit


def run_door(cfg: Config, images_dir: Path, source: str, realtime: bool, headless: bool, events_json: bool,
             max_seconds: float | None) -> int:
    """Run until Ctrl-C, SIGTERM, the end of a file or `max_seconds`; 1 if a stage failed."""
    pipeline = build_pipeline(cfg, images_dir, source, realtime, json_printer() if events_json else None)
    window = None
    if not headless:
        if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            log.warning("no display found: running headless (use --headless to silence this)")
        else:
            from .display import Window

            window = Window()

    previous = signal.signal(signal.SIGTERM, lambda *_: pipeline.stop_event.set())
    pipeline.start()
    log.info("door running on %s with %d people enrolled", source, len(pipeline.recognizer.people))
    try:
        pipeline.wait(max_seconds, tick=_window_tick(pipeline, window) if window else None)
    except KeyboardInterrupt:
        log.info("interrupted: stopping")
    finally:
        pipeline.stop()
        signal.signal(signal.SIGTERM, previous)
        if window:
            window.close()
    s = pipeline.stats
    log.info("stopped: %d frames in, %d processed, %d dropped, %d faces encoded in %d batches",
             pipeline.capture.frames_in, s.processed, pipeline.capture.dropped, s.encoded, s.batches)
    if pipeline.failure:
        stage, exc = pipeline.failure
        print(f"error: stage '{stage}' failed: {exc}", file=sys.stderr)
        return 1
    return 0


def _window_tick(pipeline: Pipeline, window) -> Callable[[], bool]:
    from .display import annotate

    started = time.monotonic()

    def tick() -> bool:
        item = pipeline.latest
        if item is None:
            time.sleep(0.02)
            return True
        fps = pipeline.stats.processed / max(1e-6, time.monotonic() - started)
        return window.show(annotate(item, pipeline.labels, fps, pipeline.door_unlocked()))

    return tick

"""The capture loop: frames from a webcam, a video file or a stream URL, on their own thread.

A live source (camera, URL, or a file played with `realtime`) keeps only the newest frame:
when the pipeline is busy, older frames are dropped and counted, so a slow stage never
builds a backlog and decisions are made on what the camera sees now. A file played
without `realtime` hands over every frame, as fast as the pipeline takes them.
A live source that stops delivering is reopened with exponential backoff.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

log = logging.getLogger(__name__)


class SourceError(RuntimeError):
    """The source cannot be opened at all; the message suggests what to do."""


@dataclass(frozen=True)
class Frame:
    index: int  # frames read from the source so far (for a file: its position)
    t: float  # time.monotonic() when it was read; for a file played as fast as possible, its video time
    image: np.ndarray  # BGR, as OpenCV delivers it


END = None  # put on the queue when a file ends


def parse_source(spec: str) -> int | str:
    """`"0"` -> camera 0; a URL or a device path (`/dev/video2`) stays as it is; anything else must be
    an existing file."""
    spec = str(spec).strip()
    if spec.isdigit():
        return int(spec)
    if "://" in spec or is_device(spec):
        return spec
    if not Path(spec).is_file():
        raise SourceError(f"video source '{spec}' is not a camera index, a URL or an existing file")
    return spec


def is_device(source: int | str) -> bool:
    return isinstance(source, str) and source.startswith("/dev/")


def open_source(source: int | str, open_timeout_s: float, read_timeout_s: float) -> cv2.VideoCapture:
    """Open a camera index, device path, file or stream URL (the one place a source is opened).

    A stream gets FFmpeg's open and read timeouts, so a server that accepts and then stalls
    makes `read()` fail after `read_timeout_s` (and `camera_lost` fire) instead of blocking."""
    if isinstance(source, str) and "://" in source:
        return cv2.VideoCapture(source, cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(open_timeout_s * 1000),
                                                         cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(read_timeout_s * 1000)])
    return cv2.VideoCapture(source)


class Capture:
    """Reads a source on a thread into `frames` (a queue); `None` marks the end of a file."""

    def __init__(self, source: int | str, realtime: bool, lost_after_s: float, reconnect_min_s: float,
                 reconnect_max_s: float, on_status: Callable[[str, str], None] | None = None,
                 opener: Callable[[int | str], cv2.VideoCapture] | None = None, open_timeout_s: float = 10.0,
                 request: tuple[int, int, float] = (0, 0, 0.0)):
        self.source = source
        self.is_file = isinstance(source, str) and "://" not in source and not is_device(source)
        self.live = not self.is_file or realtime
        self.lost_after_s = lost_after_s
        self.reconnect = (reconnect_min_s, reconnect_max_s)
        self.on_status = on_status or (lambda kind, detail: None)
        self._open = opener or (lambda src: open_source(src, open_timeout_s, lost_after_s))
        self.request = request  # (width, height, fps) asked of a webcam after opening; 0 = its default
        self.frames: queue.Queue[Frame | None] = queue.Queue(maxsize=1 if self.live else 4)
        self.frames_in = 0
        self.dropped = 0
        self.reads = 0  # read() calls returned, frame or not: the watchdog's progress count
        self.reconnecting = False  # the camera_lost path: waiting to reopen is not a stall
        self.fps = 0.0
        self.size = (0, 0)  # (width, height) as opened, so no other thread touches the device
        self.started_at = 0.0  # monotonic time of the first read: frame i of a realtime file is due i/fps later
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cap = self._open_checked()

    def _open_checked(self) -> cv2.VideoCapture:
        cap = self._open(self.source)
        if isinstance(self.source, int) and cap.isOpened():
            request_format(cap, *self.request)
        if not cap.isOpened():
            cap.release()
            if isinstance(self.source, int):
                raise SourceError(f"no camera at index {self.source}: plug one in, or use --source FILE_OR_URL")
            if is_device(self.source):
                raise SourceError(f"no camera at {self.source}: plug one in, or use --source FILE_OR_URL")
            raise SourceError(f"cannot open video source '{self.source}'")
        self.size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))  # (w, h)
        self.fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
        if not 1.0 <= self.fps <= 240.0:
            self.fps = 30.0
        return cap

    def start(self, on_error: Callable[[BaseException], None]) -> None:
        def run():
            try:
                self._loop()
            except BaseException as exc:  # reported to the pipeline, which stops the app
                on_error(exc)
            finally:
                self._cap.release()  # here, never from another thread while read() may be running

        self._thread = threading.Thread(target=run, name="capture", daemon=True)
        self._thread.start()

    def reading(self) -> bool:
        """True while the capture thread should be returning from read() (not reconnecting, not ended,
        not waiting for room in a full queue, as a file read flat out does)."""
        return (self._thread is not None and self._thread.is_alive() and not self.reconnecting
                and not self._stop.is_set() and (self.live or not self.frames.full()))

    def stop(self, timeout: float = 1.0) -> None:
        """Ask the capture thread to end; it releases the source itself once its read() returns."""
        self._stop.set()
        if self._thread is None:
            self._cap.release()  # never started: nothing else touches it
            return
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("capture: %s is still inside read(); it is released when that returns", self.source)

    def _loop(self) -> None:
        started = self.started_at = time.monotonic()
        index = 0
        last_frame_at = time.monotonic()
        while not self._stop.is_set():
            ok, image = self._cap.read()
            self.reads += 1
            now = time.monotonic()
            if not ok or image is None:
                if self.is_file:
                    self._put(END)
                    return
                if now - last_frame_at >= self.lost_after_s or not self._cap.isOpened():
                    self.reconnecting = True
                    try:
                        self._reconnect()
                    finally:
                        self.reconnecting = False
                    last_frame_at = time.monotonic()
                else:
                    self._stop.wait(0.01)
                continue
            last_frame_at = now
            if self.is_file and self.live:  # play at the file's own rate, like a camera would
                due = started + index / self.fps
                if due > now:
                    self._stop.wait(due - now)
                    now = time.monotonic()
            if self.is_file and not self.live:
                now = started + index / self.fps  # video time: decisions don't depend on how fast this machine is
            self.frames_in += 1
            self._put(Frame(index, now, image))
            index += 1

    def _put(self, item: Frame | None) -> None:
        if self.live and item is not END:
            try:
                self.frames.put_nowait(item)
            except queue.Full:
                try:
                    self.frames.get_nowait()
                    self.dropped += 1
                except queue.Empty:
                    pass
                self.frames.put_nowait(item)
            return
        while not self._stop.is_set():
            try:
                self.frames.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _reconnect(self) -> None:
        """The camera stopped delivering: report it, then reopen with exponential backoff."""
        log.warning("camera lost: %s stopped delivering frames", self.source)
        self.on_status("camera_lost", f"{self.source} stopped delivering frames")
        delay, limit = self.reconnect
        attempts = 0
        while not self._stop.is_set():
            self._cap.release()
            if self._stop.wait(delay):
                return
            attempts += 1
            cap = self._open(self.source)
            if isinstance(self.source, int) and cap.isOpened():
                request_format(cap, *self.request)
            ok, _ = cap.read() if cap.isOpened() else (False, None)
            if ok:
                self._cap = cap
                log.warning("camera back: %s after %d attempt(s)", self.source, attempts)
                self.on_status("camera_back", f"{self.source} back after {attempts} attempt(s)")
                return
            cap.release()
            delay = min(limit, delay * 2)


def request_format(cap: cv2.VideoCapture, width: int, height: int, fps: float) -> str:
    """Ask an opened webcam for a frame size and rate (0 = leave it), and say what it gives.

    With a size, MJPG is asked for first: most USB webcams deliver 720p and 1080p at 30 FPS
    only compressed, and fall back to 5-10 FPS in raw YUYV. A device may ignore any of it.
    """
    if width and height:
        cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*"MJPG"))
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, width)
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
    if fps:
        cap.set(cv2.CAP_PROP_FPS, fps)
    got = (f"{int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))}x{int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))} "
           f"at {cap.get(cv2.CAP_PROP_FPS):g} FPS")
    if width and height or fps:
        log.info("camera: asked for %sx%s at %g FPS, got %s", width, height, fps, got)
    return got

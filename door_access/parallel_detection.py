"""Face detection on more than one core, with the frames handed on in their own order.

dlib's HOG detector holds the GIL: two threads detect no faster than one (measured on the
real clip: 40 frames took 1.24 s on one thread and 1.24 s on two). So with `workers` >= 2
each lane is a thread that feeds its own detector *process*: a lane takes the next frame
from the capture queue, shrinks it to `detection.max_side`, sends it to its process and
waits (without the GIL) for the rectangles. Lanes finish out of order; `get()` hands frames
on strictly in the order they were taken, so tracking and liveness downstream see time run
forwards. With one worker (or the CNN model) the lane detects in its own thread, as before.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import threading
from collections.abc import Callable

import cv2

from .capture import END
from .detection import FaceDetector, scale_rects, shrink

log = logging.getLogger(__name__)

POLL_S = 0.1
JOIN_S = 1.0
READY_S = 60.0


def _hog_process(conn, upsample: int) -> None:
    """A detector process: frames in, (left, top, right, bottom) tuples out, until None or EOF."""
    import dlib

    hog = dlib.get_frontal_face_detector()
    conn.send("ready")
    while True:
        try:
            small = conn.recv()
        except (EOFError, OSError):
            return
        if small is None:
            return
        conn.send([(r.left(), r.top(), r.right(), r.bottom()) for r in hog(small, upsample)])


class DetectedFrames:
    """(frame, rgb, rects) for each frame taken from `frames`, in order, from `workers` lanes at once.

    `get(timeout)` behaves like `queue.Queue.get` (raises `queue.Empty`) and returns END after
    the last frame of a file. `lanes()` gives the thread bodies; the pipeline runs them, so a lane
    that fails (e.g. its process died) stops the app like any other stage.
    """

    def __init__(self, frames: queue.Queue, detector: FaceDetector, workers: int, stop: threading.Event):
        self.frames = frames
        self.detector = detector
        self.stop = stop
        self.workers = workers if detector.cfg.model == "hog" else 1
        self._take = threading.Lock()  # a lane takes a frame and its sequence number together
        self._ready = threading.Condition()
        self._results: dict[int, object] = {}
        self._taken = 0
        self._next = 0
        self._procs: list = []
        self._conns: list = []

    def start_processes(self) -> None:
        if self.workers < 2:
            return
        ctx = multiprocessing.get_context("spawn")  # never fork a process that has TensorFlow's threads
        for i in range(self.workers):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_hog_process, args=(child, self.detector.cfg.upsample),
                               name=f"door-detector-{i}", daemon=True)
            proc.start()
            child.close()
            self._procs.append(proc)
            self._conns.append(parent)
        for i, conn in enumerate(self._conns):  # ready before the first frame, so none is lost to start-up
            if not conn.poll(READY_S) or conn.recv() != "ready":
                self.close()
                raise RuntimeError(f"detector process {i} did not start within {READY_S:.0f} s")
        log.debug("detection: %d HOG processes", self.workers)

    def lanes(self) -> list[Callable[[], None]]:
        return [lambda i=i: self._lane(i) for i in range(self.workers)]

    def _lane(self, i: int) -> None:
        conn = self._conns[i] if self._conns else None
        while not self.stop.is_set():
            with self._take:
                try:
                    frame = self.frames.get(timeout=POLL_S)
                except queue.Empty:
                    continue
                seq = self._taken
                self._taken += 1
            if frame is END:
                self._deposit(seq, END)
                return
            rgb = cv2.cvtColor(frame.image, cv2.COLOR_BGR2RGB)
            if conn is None:
                rects = self.detector.detect(rgb)
            else:
                scale = self.detector.video_scale(rgb.shape)
                proc = self._procs[i]
                try:
                    conn.send(shrink(rgb, scale))
                    while not conn.poll(POLL_S):
                        if self.stop.is_set():
                            return
                        if not proc.is_alive():
                            raise EOFError
                    rects = scale_rects(conn.recv(), scale)
                except (EOFError, OSError) as exc:
                    if self.stop.is_set():  # closed while stopping
                        return
                    proc.join(JOIN_S)
                    raise RuntimeError(f"detector process {i} died (exit code {proc.exitcode})") from exc
            self._deposit(seq, (frame, rgb, rects))

    def _deposit(self, seq: int, item) -> None:
        with self._ready:
            # a lane ahead of the consumer waits, so a file read flat out never piles up frames here
            while seq - self._next >= 2 * self.workers and not self.stop.is_set():
                self._ready.wait(POLL_S)
            self._results[seq] = item
            self._ready.notify_all()

    def get(self, timeout: float):
        with self._ready:
            if not self._ready.wait_for(lambda: self._next in self._results, timeout):
                raise queue.Empty
            item = self._results.pop(self._next)
            self._next += 1
            self._ready.notify_all()
            return item

    def processes_cpu_s(self) -> float:
        """CPU seconds the detector processes have used so far (Linux /proc; 0 elsewhere), for the bench."""
        total = 0.0
        for proc in self._procs:
            try:
                fields = open(f"/proc/{proc.pid}/stat").read().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            except (OSError, ValueError, IndexError):
                pass
        return total

    def close(self) -> None:
        for conn in self._conns:
            try:
                conn.send(None)
            except (OSError, ValueError):
                pass
        for proc in self._procs:
            proc.join(JOIN_S)
            if proc.is_alive():
                proc.terminate()
                proc.join(JOIN_S)
        for conn in self._conns:
            conn.close()
        self._procs, self._conns = [], []

"""Face detection on more than one core, with the frames handed on in their own order.

Each frame is shrunk to `detection.max_side` and searched whole every `full_scan_every` frames;
in between only around the faces found just before (scan.py): HOG costs what it scans.

dlib's HOG detector holds the GIL: two threads detect no faster than one (measured on the
real clip: 40 frames took 1.24 s on one thread and 1.24 s on two). So with `workers` >= 2
each lane is a thread that feeds its own detector *process*: a lane takes the next frame
from the capture queue, shrinks it to `detection.max_side`, sends it to its process and
waits (without the GIL) for the rectangles. Lanes finish out of order; `get()` hands frames
on strictly in the order they were taken, so tracking and liveness downstream see time run
forwards. With one worker (or the CNN model) the lane detects in its own thread, as before.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

import cv2
import numpy as np

from door_access.core import Box
from door_access.faces.capture import END, Frame
from door_access.faces.detection import FaceDetector, scale_rects, shrink
from door_access.faces.scan import REGION_PAD, is_full_scan, regions_around, searched_after, to_frame

log = logging.getLogger(__name__)

POLL_S = 0.1
JOIN_S = 1.0
READY_S = 60.0


@functools.cache
def hog_detector():
    """dlib's HOG face detector (building it takes about 0.3 s of CPU): built once in the fork server
    (`hog_preload`), so each detector process forked from it starts with it built."""
    import dlib

    return dlib.get_frontal_face_detector()


def _hog_process(conn, upsample: int) -> None:
    """A detector process: a list of images in, a list of (left, top, right, bottom) tuples per image
    out, until None or EOF."""
    hog = hog_detector()
    conn.send("ready")
    while True:
        try:
            images = conn.recv()
        except (EOFError, OSError):
            return
        if images is None:
            return
        conn.send([[(r.left(), r.top(), r.right(), r.bottom()) for r in hog(img, upsample)] for img in images])


class Detected(NamedTuple):
    frame: Frame
    rects: list  # dlib rectangles, in the full frame's pixels


class DetectedFrames:
    """A `Detected` for each frame taken from `frames`, in order, from `workers` lanes at once.

    `get(timeout)` behaves like `queue.Queue.get` (raises `queue.Empty`) and returns END after
    the last frame of a file. `lanes()` gives the thread bodies; the pipeline runs them, so a lane
    that fails (e.g. its process died) stops the app like any other stage.

    What a frame between full scans searches depends only on earlier frames' results (`scan.
    searched_after`), never on how far another lane has got: a file gives the same faces on any
    machine, at any load.
    """

    def __init__(self, frames: queue.Queue, detector: FaceDetector, workers: int, stop: threading.Event):
        self.frames = frames
        self.detector = detector
        self.stop = stop
        self.every = detector.cfg.full_scan_every
        self.workers = workers if detector.cfg.model == "hog" else 1
        self._take = threading.Lock()  # a lane takes a frame and its sequence number together
        self._ready = threading.Condition()
        self._results: dict[int, object] = {}
        self._taken = 0
        self._next = 0
        self._found: dict[int, list[Box]] = {}  # sequence number -> faces found, for the last few frames
        self._procs: list = []
        self._conns: list = []
        self.searches = [0] * self.workers  # per lane: searches done (the watchdog's progress count)
        self.searching = [False] * self.workers  # per lane: a search sent and not answered yet

    def start_processes(self) -> None:
        if self.workers < 2:
            return
        # forked from a fork server: a fresh interpreter started at the first use, which has imported this
        # module and built the detector (never a fork of this process, which has TensorFlow's threads);
        # a spawned process would import cv2 and dlib and build the detector again, about 0.5 s of CPU each
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["__main__", "door_access.faces.hog_preload"])
        for i in range(self.workers):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_hog_process, args=(child, self.detector.cfg.upsample),
                               name=f"door-detector-{i}", daemon=True)
            try:
                proc.start()
            except OSError as exc:  # the fork server is reached through a socket in a temporary folder
                parent.close()
                self.close()
                raise RuntimeError(f"detector process {i} could not start ({exc}): the fork server needs a "
                                   "writable temporary folder ($TMPDIR or /tmp)") from exc
            finally:
                child.close()
            self._procs.append(proc)
            self._conns.append(parent)
        for i, conn in enumerate(self._conns):  # ready before the first frame, so none is lost to start-up
            if not conn.poll(READY_S) or conn.recv() != "ready":
                self.close()
                raise RuntimeError(f"detector process {i} did not start within {READY_S:.0f} s")
        log.info("detection: %d HOG processes, pids %s", self.workers, " ".join(str(p) for p in self.pids()))

    @property
    def processes(self) -> bool:
        """True when the lanes detect in processes of their own (else in their threads)."""
        return self.workers >= 2

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
            scale = self.detector.video_scale(frame.image.shape)
            shrunk = shrink(frame.image, scale)
            # only the shrunk copy is turned to RGB (resizing works per channel, so this is the RGB
            # frame shrunk): HOG, which keeps the strongest channel's gradient, breaks its rare ties by
            # channel order (2 of 200 frames of the g11 clip)
            small = cv2.cvtColor(shrunk, cv2.COLOR_BGR2RGB)
            h, w = small.shape[:2]
            if is_full_scan(seq, self.every):
                regions = [(0, 0, w, h)]
            else:
                known = self._known(seq)
                if known is None:
                    return  # stopping
                regions = regions_around(known, scale, REGION_PAD, w, h)
            crops = [small if r == (0, 0, w, h) else np.ascontiguousarray(small[r[1]:r[3], r[0]:r[2]]) for r in regions]
            found = self._search(i, conn, crops) if crops else []
            if found is None:
                return  # stopping
            rects = scale_rects([e for r, f in zip(regions, found) for e in to_frame(f, r)], scale)
            boxes = [Box(r.left(), r.top(), r.width(), r.height()) for r in rects]
            self._deposit(seq, Detected(frame, rects), boxes)

    def _known(self, seq: int) -> list[Box] | None:
        """The faces found in the earlier frames that frame `seq` searches around, once they are
        all done (`scan.searched_after`). None when stopping."""
        sources = searched_after(seq, self.every)
        with self._ready:
            while not all(j in self._found for j in sources):
                if self.stop.is_set():
                    return None
                self._ready.wait(POLL_S)
            return [box for j in sources for box in self._found[j]]

    def _search(self, i: int, conn, crops: list[np.ndarray]) -> list[list[tuple]] | None:
        """HOG on each crop, in this thread or in lane i's process; None when stopping."""
        self.searching[i] = True
        try:
            found = self._search_in(i, conn, crops)
        finally:
            self.searching[i] = False
        self.searches[i] += 1
        return found

    def _search_in(self, i: int, conn, crops: list[np.ndarray]) -> list[list[tuple]] | None:
        if conn is None:
            return [self.detector.detect_small(c) for c in crops]
        proc = self._procs[i]
        try:
            conn.send(crops)
            while not conn.poll(POLL_S):
                if self.stop.is_set():
                    return None
                if not proc.is_alive():
                    raise EOFError
            return conn.recv()
        except (EOFError, OSError) as exc:
            if self.stop.is_set():  # the process ended at stop (EPIPE, EOF)
                return None
            proc.join(JOIN_S)
            raise RuntimeError(f"detector process {i} died (exit code {proc.exitcode})") from exc

    def _deposit(self, seq: int, item, found: list[Box] | None = None) -> None:
        with self._ready:
            if found is not None:
                self._found[seq] = found
                oldest = min(searched_after(self._next, self.every), default=0)  # later frames search later ones
                for old in [j for j in self._found if j < oldest]:
                    del self._found[old]  # no frame not yet handed on searches these
            # a lane ahead of the consumer waits, so a file read flat out never piles up frames here
            while seq - self._next >= 2 * self.workers and not self.stop.is_set():
                self._ready.wait(POLL_S)
            self._results[seq] = item
            self._ready.notify_all()

    def ready(self) -> bool:
        """True when the next frame in order is detected and waits to be taken."""
        return self._next in self._results

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
        """End the processes within about JOIN_S, whatever state they are in: SIGTERM (a HOG process
        holds nothing worth a graceful exit), then SIGKILL for one that is frozen (SIGSTOP: a stopped
        process acts on SIGTERM only once continued). Left alive, multiprocessing's exit handler would
        wait on it forever."""
        for proc in self._procs:
            proc.terminate()
        deadline = time.monotonic() + JOIN_S / 4
        for proc in self._procs:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                log.warning("detection: %s did not end on SIGTERM (frozen?); killing it", proc.name)
                proc.kill()
                proc.join(JOIN_S)
        deadline = time.monotonic() + JOIN_S
        for i, conn in enumerate(self._conns):
            # a lane still inside send() to the process just killed wakes with EPIPE; closing its pipe
            # under it could hand the fd number to another file mid-write, so wait for it, or leave it open
            while self.searching[i] and time.monotonic() < deadline:
                time.sleep(0.01)
            if not self.searching[i]:
                conn.close()
        self._procs, self._conns = [], []

    def pids(self) -> list[int]:
        """The detector processes' ids (empty when detecting in threads)."""
        return [proc.pid for proc in self._procs]

"""The running door: capture -> detect -> encode -> decide -> actions, wired here and only here.

Each stage is a thread joined to the next by a bounded queue. A camera keeps only its newest
frame, so when detection is slow frames are dropped at the source instead of queueing; the
encoder batches chips from several frames and tracks (up to `batch_size` chips or
`batch_wait_ms`), which is where FaceNet is cheapest per face. Any stage that fails stops
the whole app with its name in the log and a non-zero exit, never a silent hang; a stage
that stops making progress with work waiting (watchdog.py) relocks the door and stops it too.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from door_access.config import Config
from door_access.core import (
    CAMERA_BACK,
    CAMERA_LOST,
    CHALLENGE,
    FAULT,
    GALLERY,
    INPUT_SIZE,
    UNLOCK,
    Box,
    Event,
    LiveVerdict,
    Match,
    Notice,
)
from door_access.door.access_log import PersonLedger
from door_access.door.actions import Actions
from door_access.door.decision import Decider
from door_access.door.policy import PolicyFile
from door_access.door.tracking import Track, Tracker, fuse
from door_access.faces.capture import END, Capture, Frame
from door_access.faces.crop import grown_crop
from door_access.faces.detection import FaceDetector
from door_access.faces.facenet import FaceEncoder
from door_access.faces.geometry import eye_distance
from door_access.faces.parallel_detection import DetectedFrames
from door_access.liveness.challenge import PASSED
from door_access.liveness.cues import LivenessChecker
from door_access.liveness.live_samples import VerifiedLive
from door_access.liveness.spoof import ATTACK, SpoofChecker
from door_access.recognition.gallery import Gallery, GalleryChange, GalleryWatcher, apply_update
from door_access.recognition.recognizer import Recognizer
from door_access.watchdog import Monitor, Stage, Stalled, Watchdog

log = logging.getLogger(__name__)

V4L2_READ_S = 10.0  # OpenCV's V4L2 backend waits this long for a frame before a webcam's read() fails
POLL_S = 0.1  # how often blocked stages look at the stop flag: bounds shutdown time
SNAPSHOT_GROW = 0.3  # a snapshot is the face box grown by this much on each side: who was at the door, and how


@dataclass
class FaceObs:
    """One face in one frame, as it travels from the detector to the decider."""

    track: int
    box: Box
    chip: np.ndarray | None = None  # set when this track is due for an encoding
    embedding: np.ndarray | None = None
    match: Match | None = None
    live: LiveVerdict | None = None  # when liveness is checked
    record: Track | None = None  # the track's one record (votes, liveness, label, flags)


@dataclass
class FrameFaces:
    frame: Frame
    faces: list[FaceObs] = field(default_factory=list)


@dataclass
class Stats:
    processed: int = 0
    encoded: int = 0
    batches: int = 0


@dataclass
class Parts:
    """What the running door is built from: models loaded, gallery built, log opened (see app.py)."""

    encoder: FaceEncoder
    detector: FaceDetector  # the detect stage's own
    liveness: LivenessChecker | None
    spoof: SpoofChecker | None
    policy: PolicyFile
    watcher: GalleryWatcher  # the gallery as first built is in `recognizer`
    recognizer: Recognizer
    actions: Actions  # with the door controller, made (and the door locked) before everything else
    ledger: PersonLedger | None = None  # per-person failed attempts and suspensions (decision.py)
    learner: VerifiedLive | None = None  # keeps verified entries' features (live_samples.py)


class Pipeline:
    """Runs the stages until stopped, the file ends, or a stage fails; `app.build_pipeline` builds it."""

    def __init__(self, cfg: Config, capture: Capture, parts: Parts):
        self.cfg = cfg
        self.capture = capture
        self.encoder = parts.encoder
        self.detector = parts.detector
        self.liveness = parts.liveness
        self.spoof = parts.spoof
        self.actions = parts.actions
        self.access_log = parts.actions.access_log
        self.speaker = parts.actions.speaker
        self.learner = parts.learner
        self.policy = parts.policy
        self.recognizer = parts.recognizer
        self.watcher = parts.watcher
        self.watcher.on_change = self._swap_gallery
        self.t0 = time.monotonic()
        self.stop_event = threading.Event()
        self.failure: tuple[str, BaseException] | None = None
        self.finished = threading.Event()
        self.stats = Stats()
        self.latest: FrameFaces | None = None  # for the window

        q = cfg.pipeline.queue_size
        self.to_encoder: queue.Queue[FrameFaces | None] = queue.Queue(maxsize=q)
        self.to_decider: queue.Queue[FrameFaces | None] = queue.Queue(maxsize=q)

        p, live = cfg.pipeline, cfg.liveness
        self.tracker = Tracker(p.track_iou, p.track_timeout_s, p.encodes_per_second, p.track_max_scale_step,
                               p.settled_encodes_per_second)
        self.tracker.on_end.append(self._track_ended)
        self._asked: dict[int, int] = {}  # track -> the challenge step last announced (spoken and shown)
        self.observers: list[Callable[[FrameFaces, list], None]] = []  # (frame, decisions): eval-liveness
        self.decider = Decider(cfg.voting, cfg.door, p.track_timeout_s,
                               live.timeout_s if live.enabled else float("inf"), live.window_s, cfg.lockout,
                               allow=parts.policy.allow(cfg.door.id), ledger=parts.ledger,
                               doubt_distance=cfg.recognition.threshold + cfg.recognition.margin)
        if self.spoof:
            self.decider.on_restart = self.spoof.restart
        self.door = self.actions.door  # the one owner of the lock state: window, remote lock/unlock
        self.actions.clock = self.door.clock = self.clock  # one time origin for every event from here on
        self.mqtt = None
        self.capture.on_status = self._camera_status
        self.detected = DetectedFrames(capture.frames, self.detector, cfg.detection.workers, self.stop_event)
        self._threads: list[threading.Thread] = []
        self.monitor, self.stages = self._watch()
        self.watchdog = Watchdog(self.monitor, self._stalled)

    def _watch(self) -> tuple[Monitor, dict[str, Stage]]:
        """Every stage's progress count and "work is waiting" test (see watchdog.py).

        A stage blocked on a full queue downstream is waiting for that stage, not stalled itself.
        Two stages get longer than `stall_s`: a camera's read() may legitimately block until its own
        timeout (then it is `camera_lost`), and the actions worker runs an unlock hook for up to
        `door.hook_timeout_s`, possibly after a relock hook that took as long; the door's relock timer
        may wait as long for an unlock hook, then run its own."""
        cfg, monitor, d = self.cfg, Monitor(), self.detected
        stall = cfg.watchdog.stall_s
        stages = {"capture": monitor.watch("capture", self.capture.reading,
                                           stall + max(cfg.camera.lost_after_s, V4L2_READ_S),
                                           progress=lambda: self.capture.reads)}
        for i in range(d.workers):
            name = f"detector process {i}" if d.processes else f"detector lane {i}"
            stages[name] = monitor.watch(name, lambda i=i: d.searching[i], stall, progress=lambda i=i: d.searches[i])
        stages["detector"] = monitor.watch("detector", lambda: d.ready() and not self.to_encoder.full(), stall)
        stages["encoder"] = monitor.watch("encoder", lambda: not self.to_encoder.empty() and not self.to_decider.full(),
                                          stall)
        stages["decider"] = monitor.watch("decider", lambda: not self.to_decider.empty(), stall)
        stages["actions"] = monitor.watch("actions", self.actions.waiting, stall + 2 * cfg.door.hook_timeout_s,
                                          progress=lambda: self.actions.handled)
        # the relock timer: a relock due and not attempted, or its thread dead (see DoorController.overdue)
        stages["relock timer"] = monitor.watch("relock timer", self.door.overdue, stall + 2 * self.door.hook_bound_s,
                                               progress=lambda: self.door.attempts)
        return monitor, stages

    def _stalled(self, stage: Stage, quiet_s: float) -> None:
        """The watchdog found `stage` stuck: say which, record a `fault`, relock, and stop the app."""
        if self.stop_event.is_set():  # already stopping (a signal, a failed stage): stages end on their own
            return
        detail = f"stage '{stage.name}' stalled: no progress for {quiet_s:.1f} s with work waiting"
        log.error("watchdog: %s; relocking and stopping", detail)
        if self.failure is None:
            self.failure = (stage.name, Stalled(detail))
        if stage.name == "actions":  # its worker is the one stuck: record the fault without it
            t, wall = self.clock()
            self.actions.publish(Event(FAULT, t, wall, detail=detail))
        else:
            self.notify(FAULT, detail=detail)  # the access log, MQTT, --events-json, the webhook
        self.door.lock(f"stage '{stage.name}' stalled")  # the relock hook runs now, not only at stop
        self.stop_event.set()

    def attach_mqtt(self, bridge) -> None:
        """Publish every event to `bridge` too; it starts and stops with the pipeline."""
        self.mqtt = bridge
        self.actions.emit = fan_out(self.actions.emit, bridge.publish)

    # ---- plumbing -------------------------------------------------------------------------

    def clock(self) -> tuple[float, float]:
        return time.monotonic() - self.t0, time.time()

    def notify(self, kind: str, name=None, distance=None, track=None, detail="", snapshot=None) -> None:
        t, wall = self.clock()
        shown = self.policy.display_name(name) if name else None
        self.actions.submit(Notice(Event(kind, t, wall, name, distance, track, detail, shown), snapshot))

    def _fail(self, stage: str, exc: BaseException) -> None:
        if self.failure is None:
            self.failure = (stage, exc)
            log.error("stage '%s' failed: %s", stage, exc, exc_info=exc)
            try:
                self.notify(FAULT, detail=f"stage {stage} failed: {exc}")
            except Exception:  # the actions worker may be the one that failed
                pass
        self.stop_event.set()

    def _spawn(self, name: str, body: Callable[[], None]) -> None:
        def run():
            try:
                body()
            except _Stopped:
                pass
            except BaseException as exc:
                self._fail(name, exc)

        thread = threading.Thread(target=run, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _get(self, q: queue.Queue):
        """Next item, or raise _Stopped once the app is stopping."""
        while not self.stop_event.is_set():
            try:
                return q.get(timeout=POLL_S)
            except queue.Empty:
                continue
        raise _Stopped

    def _put(self, q: queue.Queue, item) -> None:
        while not self.stop_event.is_set():
            try:
                q.put(item, timeout=POLL_S)
                return
            except queue.Full:
                continue
        raise _Stopped

    def _camera_status(self, kind: str, detail: str) -> None:
        self.notify(CAMERA_LOST if kind == "camera_lost" else CAMERA_BACK, detail=detail)

    def _swap_gallery(self, update: Gallery | GalleryChange) -> None:
        """Hot enroll: the photos added or removed are spliced into the matcher; a full rebuild replaces it."""
        skipped = apply_update(self.recognizer, update)
        r = self.recognizer
        self.notify(GALLERY, detail=f"{len(r.people)} people, {r.photo_count} photos, {skipped} skipped")

    def _track_ended(self, track: Track) -> None:
        """The one place a track's per-stage state goes when the tracker ends (or splits) it."""
        alive = set(self.tracker.tracks)
        if self.liveness:
            self.liveness.forget(alive)
        if self.spoof:
            self.spoof.forget(alive)
        if self.learner:
            self.learner.forget(alive)
        self._asked.pop(track.id, None)

    def reload_gallery(self) -> None:
        """A full rebuild from the folder (the MQTT `reload_gallery` command), on the watcher's thread."""
        self.watcher.reload()

    # ---- stages ---------------------------------------------------------------------------

    def _detect_stage(self) -> None:
        """Find faces, tie them to tracks, and cut chips for the tracks due for an encoding."""
        tick = self.stages["detector"].tick
        while True:
            item = self._get(self.detected)  # frames in order, with rects from the detector lanes
            tick()
            if item is END:
                self._put(self.to_encoder, END)
                return
            frame, rects = item  # a parallel_detection.Detected
            image = frame.image  # BGR: landmarks read (r + g + b) / 3, chips are turned to RGB
            boxes = [Box(r.left(), r.top(), r.width(), r.height()) for r in rects]
            out = FrameFaces(frame)
            for rect, track in zip(rects, self.tracker.update(boxes, frame.t)):
                obs = FaceObs(track.id, track.box, record=track)
                out.faces.append(obs)
                if track.decided:  # e.g. let in and still in view: its liveness no longer matters, so its
                    # 68 landmarks and DENY cues (2-3 ms a face a frame) are skipped; only its sparse votes go on
                    if self.tracker.take_encode_slot(track, frame.t) and not self._too_small(image, rect, None):
                        obs.chip = self.detector.video_chip(image, rect)
                    if self.liveness and self.liveness.traces is not None:  # eval-liveness --challenges all:
                        self._trace_only(track, frame.t, image, rect)  # the clip's answers after the door decided
                    continue
                points = self.liveness.landmarks(image, rect) if self.liveness else None
                if self._too_small(image, rect, points):
                    continue  # too small to judge: tracked and drawn, but no vote and no liveness
                if self.tracker.take_encode_slot(track, frame.t):
                    obs.chip = self.detector.video_chip(image, rect)
                if self.liveness:
                    obs.live = self.liveness.observe(track.id, frame.t, points)
                    if self.spoof:
                        cue = self.spoof.update(track.id, frame.t, frame.image, track.box, points)
                        if cue:
                            obs.live = dataclasses.replace(obs.live, spoof=cue)
                        elif self.spoof.doubtful(track.id):  # a borderline DENY cue: ask for an action now
                            self.liveness.request_challenge(track.id)
                        self.liveness.set_grade(track.id, self.spoof.grade(track.id))  # `graded`: how much proof
                    asked = self.liveness.tracks[track.id].challenge
                    if self.learner and asked is not None:  # only a challenged track can teach (on a pass)
                        judged = self.spoof.judged(track.id, frame.t) if self.spoof else None
                        self.learner.observe(track.id, frame.t, image, track.box, asked.state == PASSED,
                                             judged.get(ATTACK) if judged else None)
                    if obs.live.challenge and self._asked.get(track.id) != obs.live.challenge_step:
                        self._asked[track.id] = obs.live.challenge_step
                        self.notify(CHALLENGE, track=track.id, detail=obs.live.challenge)
            self._put(self.to_encoder, out)

    def _trace_only(self, track: Track, t: float, image: np.ndarray, rect) -> None:
        """Feed a decided track's landmarks to the liveness trace only: its verdict reaches no one."""
        points = self.liveness.landmarks(image, rect)
        if not self._too_small(image, rect, points):
            self.liveness.observe(track.id, t, points)

    def _too_small(self, image: np.ndarray, rect, points: np.ndarray | None) -> bool:
        """Eyes closer than `detection.min_eye_px`: landmarks too coarse to vote or judge liveness on."""
        least = self.cfg.detection.min_eye_px
        if not least:
            return False
        return (eye_distance(points) if points is not None else self.detector.eye_distance(image, rect)) < least

    def _encode_stage(self) -> None:
        """Batch chips across frames: up to batch_size chips or batch_wait_ms, whichever comes first."""
        p = self.cfg.pipeline
        pending: list[FrameFaces] = []
        chips = 0
        deadline = 0.0
        tick = self.stages["encoder"].tick
        while True:
            timeout = max(0.0, deadline - time.monotonic()) if chips else POLL_S
            try:
                item = self.to_encoder.get(timeout=timeout)
                tick()
            except queue.Empty:
                if self.stop_event.is_set():
                    raise _Stopped from None
                if chips:
                    self._flush(pending)
                    pending, chips = [], 0
                continue
            if item is END:
                self._flush(pending)
                self._put(self.to_decider, END)
                return
            pending.append(item)
            new = sum(f.chip is not None for f in item.faces)
            if new and not chips:
                deadline = time.monotonic() + p.batch_wait_ms / 1000.0
            chips += new
            if chips == 0 or chips >= p.batch_size or time.monotonic() >= deadline:
                self._flush(pending)
                pending, chips = [], 0

    def _flush(self, pending: list[FrameFaces]) -> None:
        wanting = [f for item in pending for f in item.faces if f.chip is not None]
        if wanting:
            embeddings = self.encoder.encode(np.stack([f.chip for f in wanting]))
            for face, e in zip(wanting, embeddings):
                face.embedding = e
            self.stats.encoded += len(wanting)
            self.stats.batches += 1
        for item in pending:
            self._put(self.to_decider, item)

    def _decide_stage(self) -> None:
        tick = self.stages["decider"].tick
        while True:
            item = self._get(self.to_decider)
            tick()
            if item is END:
                self.finished.set()
                return
            encoded = [f for f in item.faces if f.embedding is not None]
            fused = {}
            if encoded:  # each face, and each of their tracks' fused embeddings, in one product
                together = [fuse(f.record, f.embedding) for f in encoded]
                matches = self.recognizer.identify(np.stack([f.embedding for f in encoded] + together))
                for face, match, whole in zip(encoded, matches, matches[len(encoded):]):
                    face.match = match
                    fused[face.track] = whole
            decisions = self.decider.observe(item.frame.t, [f.record for f in item.faces],
                                             {f.track: f.match for f in encoded},
                                             {f.track: f.live for f in item.faces if f.live is not None}, fused)
            for d in decisions:
                face = next((f for f in item.faces if f.track == d.track), None)
                keep = d.event in ("denied", "unlock") and face
                snapshot = grown_crop(item.frame.image, face.box, SNAPSHOT_GROW) if keep else None
                self.notify(d.event, d.name, d.distance, d.track, d.detail, snapshot)
                if d.event == UNLOCK and self.learner and d.name and d.track is not None:
                    self.learner.unlocked(d.track, d.name, time.time())
            for observer in self.observers:
                observer(item, decisions)
            self.stats.processed += 1
            self.latest = item

    # ---- running --------------------------------------------------------------------------

    def start(self) -> None:
        """Warm the encoder up (its one graph, for every batch size, takes seconds to trace), then start
        every thread; detector processes that cannot start are a failed stage (`failure`)."""
        self.encoder.encode(np.zeros((1, INPUT_SIZE, INPUT_SIZE, 3), np.uint8))
        self.t0 = time.monotonic()
        self.speaker.start()
        self.actions.start()
        if self.mqtt:
            self.mqtt.start()
        try:
            self.detected.start_processes()
        except RuntimeError as exc:  # no detection, no door: stopped as a failed stage (the door stays locked)
            self._fail("detector processes", exc)
            return
        for i, lane in enumerate(self.detected.lanes()):
            self._spawn(f"detector-lane-{i}", lane)
        self.capture.start(lambda exc: self._fail("capture", exc))
        self._spawn("detector", self._detect_stage)
        self._spawn("encoder", self._encode_stage)
        self._spawn("decider", self._decide_stage)
        self.watcher.start()
        self.watchdog.start()

    def wait(self, max_seconds: float | None = None, tick: Callable[[], bool] | None = None) -> None:
        """Block until the file ends, a stage fails, `max_seconds` pass or `tick()` returns False."""
        deadline = time.monotonic() + max_seconds if max_seconds else None
        while not (self.finished.is_set() or self.stop_event.is_set()):
            if deadline and time.monotonic() >= deadline:
                break
            if tick is not None:
                if not tick():
                    break
            else:
                self.finished.wait(POLL_S)

    def stop(self) -> None:
        """Stop every stage within about 2 s, plus what the relock hook needs (up to `door.hook_timeout_s`)."""
        self.stop_event.set()
        self.watchdog.stop(0.5)
        log.info("watchdog: longest wait without progress (s): %s",
                 ", ".join(f"{k} {v:.2f}" for k, v in self.monitor.worst().items()))
        self.watcher.stop(0.5)
        self.capture.stop(0.5)
        for thread in self._threads:
            thread.join(0.5)
        self.detected.close()
        self.actions.stop(1.0)  # relocks with the full door.hook_timeout_s, then logs what is queued
        if self.mqtt:
            self.mqtt.stop(1.0)  # after the actions: their last relock goes out first
        self.speaker.stop(0.5)
        self.access_log.close(1.0)  # what is not in SQLite by then stays in the spool, replayed at next start
        if self.decider.ledger is not None:
            self.decider.ledger.close()

    @property
    def labels(self) -> dict[int, tuple[str | None, float]]:
        """Track -> latest (display name, distance), for the window (read from the tracks' records)."""
        shown = self.policy.display_name
        return {i: (shown(tr.label[0]) if tr.label[0] else None, tr.label[1])
                for i, tr in list(self.tracker.tracks.items()) if tr.label is not None}


def fan_out(*sinks: Callable[[Event], None] | None) -> Callable[[Event], None] | None:
    """One event sink feeding several (`--events-json`, MQTT, ...); a failing sink does not starve the others."""
    sinks = tuple(s for s in sinks if s is not None)
    if len(sinks) <= 1:
        return sinks[0] if sinks else None

    def emit(event: Event) -> None:
        for sink in sinks:
            try:
                sink(event)
            except Exception:
                log.exception("event sink %r failed", sink)

    return emit


class _Stopped(Exception):
    """Raised inside a stage when the app is stopping; ends the stage quietly."""

"""The composition root: opens the access log and the door, loads the models, builds the gallery, wires them.

Everything that reads a model, a folder or a database, or talks to the network, is made here,
once, and handed to the `Pipeline`, which only runs the stages. The door comes first (`open_door`):
`run` locks it before the camera is opened (`runner.open_capture`) and before any model loads, so
a restart that cannot start (no camera, a model file missing) still relocks a door a crash left open.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import cv2

from door_access.config import Config
from door_access.core import ALARM, Event
from door_access.faces.capture import Capture
from door_access.quiet import native_stderr_silenced

if TYPE_CHECKING:
    from door_access.door.actions import Actions
    from door_access.faces.facenet import FaceEncoder
    from door_access.pipeline import Pipeline


def open_door(cfg: Config, emit: Callable[[Event], None] | None = None) -> Actions:
    """The access log, the speaker (not started) and the door's actions with their `DoorController`
    (`.door`, the one owner of the lock state): nothing here loads a model or opens a camera, so the
    door can be locked (`.door.start()`) before anything that may fail."""
    from door_access.door.access_log import AccessLog
    from door_access.door.actions import Actions
    from door_access.door.speech import Speaker

    access_log = AccessLog(cfg.resolve(cfg.access_log.path), door_id=cfg.door.id, keep_days=cfg.access_log.keep_days,
                           snapshots_dir=cfg.resolve(cfg.access_log.snapshots_dir)
                           if cfg.access_log.snapshots_dir else None)
    speaker = Speaker(cfg.tts, cfg.resolve(cfg.tts.wav_dir) if cfg.tts.wav_dir else None)
    return Actions(cfg, access_log, speaker, emit=emit)


def build_pipeline(cfg: Config, images_dir: Path, capture: Capture, emit: Callable[[Event], None] | None = None,
                   *, actions: Actions | None = None, encoder: FaceEncoder | None = None,
                   challenge_action: str | tuple[str, ...] | None = None, trace_challenges: bool = False) -> Pipeline:
    """The door, wired and ready to `start()`. `actions`: from `open_door` (the door already locked by `run`),
    else made here with `emit`, and the door locked at `start()`. `encoder` reuses a loaded model (tests, evaluations);
    `challenge_action` fixes the liveness challenge (evaluations on clips that perform a known action);
    `trace_challenges` keeps each track's response to any challenge (`eval-liveness --challenges all`)."""
    with native_stderr_silenced():  # TensorFlow's import and first use print a page of notices
        from door_access.faces.facenet import FaceEncoder
        from door_access.pipeline import Parts, Pipeline

        weights = cfg.path("weights") / "facenet_keras3.weights.h5"
        encoder = encoder or FaceEncoder(weights, cfg.pipeline.encoder_threads)
    from door_access.door.access_log import PersonLedger
    from door_access.door.policy import PolicyFile
    from door_access.faces.detection import FaceDetector
    from door_access.liveness.cues import LivenessChecker
    from door_access.liveness.live_samples import verified_live
    from door_access.liveness.spoof import SpoofChecker, load_scorers
    from door_access.recognition.gallery import GalleryBuilder, GalleryWatcher
    from door_access.recognition.recognizer import Recognizer

    weights, live = cfg.path("weights"), cfg.liveness
    # dlib objects are not thread-safe: the gallery watcher gets a detector of its own
    watcher = GalleryWatcher(GalleryBuilder(cfg, FaceDetector(cfg.detection, weights), encoder), images_dir,
                             cfg.pipeline.gallery_poll_s)
    recognizer = Recognizer(watcher.load(), cfg.recognition.threshold, cfg.recognition.margin)
    parts = Parts(
        encoder=encoder,
        detector=FaceDetector(cfg.detection, weights),
        liveness=LivenessChecker(live, weights, challenge_action, trace_challenges) if live.enabled else None,
        spoof=SpoofChecker(cfg.spoof, load_scorers(cfg)) if live.enabled and cfg.spoof.enabled else None,
        policy=PolicyFile(cfg.path("people")),  # per-person days/hours/doors (people.yaml)
        watcher=watcher,
        recognizer=recognizer,
        actions=actions or open_door(cfg, emit),
        ledger=PersonLedger(cfg.resolve(cfg.access_log.path), door_id=cfg.door.id),
        learner=verified_live(cfg),
    )
    pipeline = Pipeline(cfg, capture, parts)
    # the stages and detector processes already keep the cores busy: OpenCV's own worker threads
    # (a 1080p frame's resize spread over two) only add switching (measured: 4% fewer frames/s)
    cv2.setNumThreads(1)
    if cfg.mqtt.enabled:  # events out, commands in; the door never waits for the broker
        from door_access.door.decision import release
        from door_access.door.mqtt import MqttBridge, door_commands

        pipeline.attach_mqtt(MqttBridge(cfg.mqtt, cfg.door.id, door_commands(
            cfg.mqtt.commands, pipeline.notify, lambda: pipeline.door.lock("remote lock"), pipeline.reload_gallery,
            pipeline.decider.locked_out,
            lambda name: release(parts.ledger, name, lambda detail: pipeline.notify(ALARM, name=name, detail=detail),
                                 "mqtt")),
            base_dir=cfg.base_dir, enrolled=lambda: pipeline.recognizer.people))
    return pipeline


"""What the door does about a decision: speak (`speech.py`), open the door (through `DoorController`), call
the webhook (`webhook.py`), log, snapshot.

Everything here runs off the video path: the decision stage only `submit()`s a `Notice` and
moves on. Nothing a hook, a web server, the speech engine or the disk does can stop the app:
failures become a warning plus a FAULT event in the access log, and the next notice is handled.

Who owns what: the caller creates, starts and stops the `Speaker` and closes the `AccessLog`;
`Actions` creates the `DoorController` (`actions.door`) and stops it (relocking); `run` starts it
(locking the door) before anything else, else `start()` does.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable

import cv2
import numpy as np

from door_access.config import Config
from door_access.core import ALARM, CHALLENGE, DENIED, FAULT, UNLOCK, Event, Notice, readable_name
from door_access.door.access_log import AccessLog
from door_access.door.controller import DoorController
from door_access.door.decision import RELEASED
from door_access.door.speech import Speaker, welcome_text
from door_access.door.webhook import WebhookSender
from door_access.files import private_dir, write_private
from door_access.redaction import Redactor

log = logging.getLogger(__name__)

ALARM_TEXT = "Too many failed attempts. Please try again later."
_STOP = object()  # queue sentinel: the worker drains nothing after it


# ---- the actions worker ---------------------------------------------------------------------------


class Actions:
    """The worker that turns notices into door actions, one at a time, in its own thread.

    - Every notice's event is published: queued for the access log (whose own writer thread
      deals with the database, so nothing here waits on it), then passed to `emit`.
    - UNLOCK: welcome spoken, webhook posted (its own thread), `door.unlock()` run (the hook).
    - ALARM, FAULT (a stage failed or stalled): webhook posted.
    - DENIED: the face crop saved as a JPEG in `snapshots_dir`, keeping the newest `snapshots_keep`
      (0 keeps none, so nothing is written).
    - Anything else: recorded and emitted.

    The lock state belongs to `self.door` (a `DoorController`), which publishes its own relock
    and fault events through `publish`. `submit()` never blocks: when the queue is full the new
    notice is dropped with a warning. `stop()` locks the door first (the full hook timeout),
    then logs the notices still queued, as far as its timeout allows; an unlock among them
    does not open the door.
    """

    def __init__(self, cfg: Config, access_log: AccessLog, speaker: Speaker,
                 emit: Callable[[Event], None] | None = None,
                 clock: Callable[[], tuple[float, float]] | None = None, queue_size: int = 64):
        self.cfg = cfg
        self.access_log = access_log
        self.speaker = speaker
        self.emit = emit
        t0 = time.monotonic()
        self.clock = clock or (lambda: (time.monotonic() - t0, time.time()))
        self._redact = Redactor.from_config(cfg)  # every event is redacted where it is recorded and emitted
        self.door = DoorController(cfg.door, self.publish, self.clock)
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None
        self._webhook: WebhookSender | None = None
        self._stopping = threading.Event()
        self._publishing = threading.Lock()  # the worker, the door's timer and the webhook all publish
        self._dropping = False  # a "queue full" warning was logged and nothing has been queued since
        self._emit_failing = False
        self._snapshots = itertools.count(1)
        self.handled = 0  # notices handled: the watchdog's progress count

    # ---- the caller's side ----------------------------------------------------------------

    def start(self) -> None:
        """Lock the door first (its state is unknown after a crash), then start the worker."""
        if self._thread is not None:
            return
        self.door.start()
        d = self.cfg.door
        if d.webhook_url:
            self._webhook = WebhookSender(d.webhook_url, d.webhook_secret, d.hook_timeout_s, self._webhook_failed,
                                           self._redact)
            self._webhook.start()
        self._thread = threading.Thread(target=self._run, name="actions", daemon=True)
        self._thread.start()

    def submit(self, notice: Notice) -> None:
        """Queue `notice` for the worker; never blocks (a full queue drops it, with a warning)."""
        try:
            self._queue.put_nowait(notice)
        except queue.Full:
            if not self._dropping:
                log.warning("actions queue full (%d): dropping %s for %r and later notices until it drains",
                            self._queue.maxsize, notice.event.event, notice.event.name)
                self._dropping = True
            return
        self._dropping = False

    def stop(self, timeout: float = 2.0) -> None:
        """Lock the door (as long as the relock hook needs), then end the worker within about `timeout`,
        after it has handled the notices queued so far."""
        if self._thread is None:  # never started (the app failed on its way up): the door is locked all the same
            self.door.stop()
            return
        self._stopping.set()  # unlocks still queued are recorded, but do not open the door
        self.door.stop()  # kills a running unlock hook, then relocks with the full hook timeout
        deadline = time.monotonic() + timeout
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            pass
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            log.warning("actions worker did not stop within %.1f s; leaving it behind", timeout)
        if self._webhook is not None:
            self._webhook.stop(max(0.0, deadline - time.monotonic()))

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def waiting(self) -> bool:
        """True when notices wait for the worker (the watchdog's "work waiting")."""
        return self._thread is not None and not self._queue.empty()

    def publish(self, event: Event) -> None:
        """Queue `event` for the access log, then `emit` it (the `--events-json` line, MQTT); from any thread.
        Its detail is redacted first: a hook's stderr or an error may quote a URL or a password."""
        event = self._redact.event(event)
        with self._publishing:
            self.access_log.record(event)  # spooled and queued: never waits on the database
            if self.emit is None:
                return
            try:
                self.emit(event)
                self._emit_failing = False
            except Exception as exc:
                if not self._emit_failing:
                    log.warning("actions: emitting events failed (%s: %s)", type(exc).__name__, exc)
                    self._emit_failing = True

    # ---- the worker -----------------------------------------------------------------------

    def _run(self) -> None:
        while (item := self._queue.get()) is not _STOP:
            self._handle(item)
            self.handled += 1

    def _handle(self, notice: Notice) -> None:
        event = self._redact.event(notice.event)  # the webhook posts it too
        try:
            self.publish(event)
            if event.event == UNLOCK and not self._stopping.is_set():  # no door opening while the app exits
                self._unlock(event)
            if event.event in (DENIED, UNLOCK):  # unlock snapshots: the audit trail of who was let in
                self._snapshot(event, notice.snapshot)
            elif event.event == ALARM:  # one per lockout or suspension (said once) or release; posted
                if not event.detail.startswith(RELEASED):
                    self.speaker.say(ALARM_TEXT)
                if self._webhook is not None:
                    self._webhook.post(event)
            elif event.event == FAULT and self._webhook is not None:  # a stage failed or stalled: nobody
                self._webhook.post(event)  # gets in until the door restarts, so someone must be told
            elif event.event == CHALLENGE:  # the liveness challenge, spoken through the welcome voice
                self.speaker.say(event.detail)
        except Exception as exc:  # a bug in one action must not end the worker
            log.exception("actions: handling %s failed", event.event)
            self.publish(self._event(FAULT, detail=f"actions: handling {event.event} failed: {exc}"))

    def _event(self, kind: str, name: str | None = None, track: int | None = None, detail: str = "") -> Event:
        t, wall = self.clock()
        return Event(kind, t, wall, name=name, track=track, detail=detail)

    def _unlock(self, event: Event) -> None:
        name = event.name or ""
        if name:  # a remote unlock has nobody to welcome
            self.speaker.say(welcome_text(self.cfg.tts.template, event.display_name or readable_name(name)))
        if self._webhook is not None:
            self._webhook.post(event)
        # a face unlock always names someone; an unlock without a name came from a remote command
        self.door.unlock(name, event.distance, event.track, source="face" if event.name else "remote")

    def _webhook_failed(self, event: Event, detail: str) -> None:
        """Called from the webhook thread: the FAULT is published from there (publishing never blocks)."""
        self.publish(self._event(FAULT, name=event.name, track=event.track, detail=detail))

    def _snapshot(self, event: Event, image: np.ndarray | None) -> None:
        """Save a denied or admitted face as JPEG; the name is event + time + counter + track, never text
        from a user (`snapshot_pattern` finds it again from the logged event)."""
        folder_setting = self.cfg.access_log.snapshots_dir
        keep = self.cfg.access_log.snapshots_keep
        if not folder_setting or keep == 0 or not _is_image(image):
            return
        folder = self.cfg.resolve(folder_setting)
        path = folder / snapshot_pattern(event).replace("*", f"{next(self._snapshots):06d}")
        try:
            private_dir(folder)
            ok, data = cv2.imencode(".jpg", image)
            if not ok:
                raise OSError("cv2.imencode returned False")
            write_private(path, data.tobytes())  # a face: 0600 from its first byte
            for old in sorted(folder.glob(f"{event.event}-*.jpg"))[:-keep]:  # names sort oldest first
                old.unlink(missing_ok=True)
        except (OSError, cv2.error) as exc:
            log.warning("actions: cannot save %s snapshot %s (%s)", event.event, path, exc)


def snapshot_pattern(event: Event) -> str:
    """The glob pattern of `event`'s snapshot file name (`*` stands for the writer's counter)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(event.wall)) + f"-{int(event.wall * 1000) % 1000:03d}"
    track = "x" if event.track is None else str(int(event.track))
    return f"{event.event}-{stamp}-*-track{track}.jpg"


def _is_image(image) -> bool:
    return (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.size > 0
            and (image.ndim == 2 or image.ndim == 3 and image.shape[2] in (1, 3, 4)))

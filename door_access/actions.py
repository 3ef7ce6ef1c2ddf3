"""What the door does about a decision: speak, run the unlock/relock hooks, call the webhook, log, snapshot.

Everything here runs off the video path: the decision stage only `submit()`s a `Notice` and
moves on. Nothing a hook, a web server, the speech engine or the disk does can stop the app:
failures become a warning plus a FAULT event in the access log, and the next notice is handled.

Who owns what: the caller creates, starts and stops the `Speaker` and closes the `AccessLog`;
`Actions` only uses them.
"""

from __future__ import annotations

import importlib
import itertools
import json
import logging
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unicodedata
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from .access_log import AccessLog
from .config import Config, TtsConfig
from .core import DENIED, FAULT, RELOCK, UNLOCK, Event, Notice

log = logging.getLogger(__name__)

_STOP = object()  # queue sentinel: the worker drains nothing after it
_POLL_S = 0.05  # how often a waiting hook checks whether the app is stopping
_STDERR_TAIL = 300  # characters of a failed hook's stderr kept in the FAULT detail


# ---- text helpers -------------------------------------------------------------------------------


def welcome_text(template: str, name: str) -> str:
    """The spoken welcome: `{name}` filled by plain replacement (a name may contain braces), `_` read as a space."""
    return template.replace("{name}", name.replace("_", " "))


def fill_argv(argv: tuple[str, ...] | list[str], name: str, distance: float | None) -> list[str]:
    """A hook's argv with `{name}` and `{distance}` filled in, in one pass, so a name containing
    "{distance}" stays as it is. No shell ever sees the result."""
    values = {"name": name, "distance": "" if distance is None else f"{distance:.4f}"}
    return [re.sub(r"\{(name|distance)\}", lambda m: values[m.group(1)], arg) for arg in argv]


def safe_slug(text: str, max_len: int = 40) -> str:
    """Only ASCII letters, digits, `-` and `_`, never starting with `-`: safe in any file name and command line."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", ascii_text).strip("_-")[:max_len].strip("_-")
    return slug or "speech"


# ---- speech ---------------------------------------------------------------------------------------


def _driver_print(*args, **_kwargs) -> None:
    log.debug("pyttsx3: %s", " ".join(map(str, args)))


class Speaker:
    """Speaks welcomes with pyttsx3 (espeak-ng) in its own thread; `say()` only queues.

    pyttsx3 engines must be created and used in one thread, and speaking takes a while, so the
    engine lives in this thread. With `wav_dir` every welcome is written to a WAV file there
    instead of being played (for headless machines and tests). When the engine cannot start or
    fails, one warning is logged and further speech is dropped: the door works without a voice.

    espeak-ng is a process-wide singleton inside pyttsx3, so use one Speaker per process.
    """

    MAX_PENDING = 8  # welcomes older than this backlog are not worth saying

    def __init__(self, cfg: TtsConfig, wav_dir: Path | None, driver_name: str = "espeak"):
        self.cfg = cfg
        self.wav_dir = Path(wav_dir) if wav_dir is not None else None
        self.driver_name = driver_name
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._broken = False
        self._counter = itertools.count(1)

    def start(self) -> None:
        if not self.cfg.enabled or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="speaker", daemon=True)
        self._thread.start()

    def say(self, text: str) -> None:
        """Queue `text`; never blocks, never raises."""
        if not self.cfg.enabled or self._broken or self._thread is None:
            return
        if self._queue.qsize() >= self.MAX_PENDING:
            log.debug("speech backlog full; dropping %r", text)
            return
        self._queue.put(text)

    def stop(self, timeout: float = 2.0) -> None:
        """Say what is already queued, as far as `timeout` allows, then end the thread."""
        if self._thread is None:
            return
        self._queue.put(_STOP)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("speech did not finish within %.1f s; leaving it behind", timeout)
        self._thread = None

    def _run(self) -> None:
        engine = self._open_engine()
        while engine is not None:
            text = self._queue.get()
            if text is _STOP:
                break
            try:
                self._speak(engine, text)
            except Exception as exc:
                self._give_up(f"speaking failed ({type(exc).__name__}: {exc})")
                break
        del engine  # pyttsx3 releases espeak when the engine goes, here in its own thread

    def _open_engine(self):
        try:
            if self.wav_dir is not None:
                self.wav_dir.mkdir(parents=True, exist_ok=True)
            elif self.driver_name == "espeak" and sys.platform.startswith("linux") and not shutil.which("aplay"):
                # pyttsx3's espeak driver plays through `os.system("aplay ...")` and ignores its failure
                raise RuntimeError("no audio player: pyttsx3 plays through 'aplay', which is not on PATH")
            import pyttsx3

            engine = pyttsx3.init(self.driver_name)
            # pyttsx3 2.99's espeak driver print()s "Audio saved to ..." on stdout, where it would
            # corrupt `--events-json`; send its prints to the debug log instead.
            importlib.import_module(f"pyttsx3.drivers.{self.driver_name}").print = _driver_print
            engine.setProperty("rate", self.cfg.rate)
            return engine
        except Exception as exc:  # any driver, any platform: the door works without a voice
            self._give_up(f"cannot start pyttsx3 driver {self.driver_name!r} ({type(exc).__name__}: {exc})")
            return None

    def _speak(self, engine, text: str) -> None:
        if self.wav_dir is None:
            engine.say(text)
            engine.runAndWait()
            return
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = self.wav_dir / f"{stamp}-{next(self._counter):04d}-{safe_slug(text)}.wav"
        # The driver writes the file from a ctypes callback, where its exceptions are swallowed,
        # and on a loaded machine it now and then ends its loop before the audio arrives: one retry.
        for attempt in (1, 2):
            engine.save_to_file(text, str(path))
            engine.runAndWait()
            if path.is_file() and path.stat().st_size > 44:  # 44 bytes: a WAV header with no samples
                log.debug("welcome written to %s", path)
                return
            log.debug("pyttsx3 wrote no audio to %s (attempt %d)", path, attempt)
        raise RuntimeError(f"pyttsx3 wrote no audio to {path}")

    def _give_up(self, reason: str) -> None:
        self._broken = True
        log.warning("speech disabled: %s", reason)


# ---- the actions worker ---------------------------------------------------------------------------


class Actions:
    """The worker that turns notices into door actions, one at a time, in its own thread.

    - Every notice's event is recorded in the access log, then passed to `emit`.
    - UNLOCK: welcome spoken, webhook posted (its own thread), unlock hook run, relock scheduled
      `unlock_seconds` later; a new unlock while open extends that (one relock at the end).
    - DENIED: the face crop saved as a JPEG in `snapshots_dir`, keeping the newest `snapshots_keep`
      (0 keeps none, so nothing is written).
    - Anything else: recorded and emitted.

    `submit()` never blocks: when the queue is full (the worker is stuck on a slow access log),
    the new notice is dropped with a warning. `stop()` runs a pending relock at once, so the door
    never stays unlocked after the app exits, and returns within its timeout even if a hook hangs
    (a running unlock hook is killed). Notices still queued then are recorded and emitted, but an
    unlock among them does not open the door.
    """

    def __init__(self, cfg: Config, access_log: AccessLog, speaker: Speaker,
                 emit: Callable[[Event], None] | None = None,
                 clock: Callable[[], tuple[float, float]] | None = None, queue_size: int = 64):
        self.cfg = cfg
        self.door = cfg.door
        self.access_log = access_log
        self.speaker = speaker
        self.emit = emit
        t0 = time.monotonic()
        self.clock = clock or (lambda: (time.monotonic() - t0, time.time()))
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None
        self._webhook: _WebhookSender | None = None
        self._stopping = threading.Event()
        self._stop_deadline = float("inf")  # monotonic time by which stop() wants the worker gone
        self._relock_due: float | None = None  # monotonic time of the pending relock
        self._unlocked_by: Event | None = None  # the latest unlock, whose name the relock carries
        self._relock_lock = threading.Lock()  # the worker and stop() may both go for the pending relock
        self._dropping = False  # a "queue full" warning was logged and nothing has been queued since
        self._emit_failing = False
        self._snapshots = itertools.count(1)

    # ---- the caller's side ----------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        if self.door.webhook_url:
            self._webhook = _WebhookSender(self.door.webhook_url, self.door.hook_timeout_s, self._webhook_failed)
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
        """Run a pending relock, end the worker; returns within about `timeout` whatever the hooks do."""
        if self._thread is None:
            return
        deadline = time.monotonic() + timeout
        self._stop_deadline = deadline
        self._stopping.set()
        # lock the door from here: the worker may be stuck on a notice (a locked access log waits its busy timeout)
        self._relock("app stopping")
        try:
            self._queue.put_nowait(_STOP)
        except queue.Full:
            pass  # the worker is busy, and checks `_stopping` after each notice
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            log.warning("actions worker did not stop within %.1f s; leaving it behind", timeout)
        if self._webhook is not None:
            self._webhook.stop(max(0.0, deadline - time.monotonic()))

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ---- the worker -----------------------------------------------------------------------

    def _run(self) -> None:
        stop_seen = False
        while not self._stopping.is_set():
            # sleep until the next notice or the pending relock, whichever comes first
            due = self._relock_due  # stop() may clear it at any moment
            wait = None if due is None else max(0.0, due - time.monotonic())
            try:
                item = self._queue.get(timeout=wait)
            except queue.Empty:
                item = None
            if item is _STOP:
                stop_seen = True
                break
            if item is not None:
                self._handle(item)
            due = self._relock_due
            if due is not None and time.monotonic() >= due:
                self._relock("after unlock_seconds")
        # stopping: lock the door first (unless stop() did), then log what is still queued, as far as the timeout
        # allows: at least up to stop()'s _STOP, which follows the relock event that stop() may have queued
        self._relock("app stopping")
        while (left := self._stop_deadline - time.monotonic()) > 0:
            try:
                item = self._queue.get_nowait() if stop_seen else self._queue.get(timeout=left)
            except queue.Empty:
                break
            if item is _STOP:
                stop_seen = True
            else:
                self._handle(item)

    def _handle(self, notice: Notice) -> None:
        event = notice.event
        try:
            self._publish(event)
            if event.event == UNLOCK and not self._stopping.is_set():  # no door opening while the app exits
                self._unlock(event)
            if event.event in (DENIED, UNLOCK):  # unlock snapshots: the audit trail of who was let in
                self._snapshot(event, notice.snapshot)
        except Exception as exc:  # a bug in one action must not end the worker
            log.exception("actions: handling %s failed", event.event)
            self._publish(self._event(FAULT, detail=f"actions: handling {event.event} failed: {exc}"))

    def _publish(self, event: Event) -> None:
        """Access log first, then `emit` (the `--events-json` line)."""
        if threading.current_thread() is not self._thread:  # stop() relocking: the worker records it, if it can
            self.submit(Notice(event))
            return
        self.access_log.record(event)
        if self.emit is None:
            return
        try:
            self.emit(event)
            self._emit_failing = False
        except Exception as exc:
            if not self._emit_failing:
                log.warning("actions: emitting events failed (%s: %s)", type(exc).__name__, exc)
                self._emit_failing = True

    def _event(self, kind: str, name: str | None = None, track: int | None = None, detail: str = "") -> Event:
        t, wall = self.clock()
        return Event(kind, t, wall, name=name, track=track, detail=detail)

    def _unlock(self, event: Event) -> None:
        name = event.name or ""
        self.speaker.say(welcome_text(self.cfg.tts.template, name))
        if self._webhook is not None:
            self._webhook.post(event)
        self._run_hook("unlock", event, name, event.distance)
        with self._relock_lock:
            self._unlocked_by = event
            self._relock_due = time.monotonic() + self.door.unlock_seconds  # a later unlock moves it

    def _relock(self, why: str) -> None:
        """Run the pending relock, if any, once: whichever of the worker and stop() gets here first does it."""
        with self._relock_lock:
            unlock, self._unlocked_by, self._relock_due = self._unlocked_by, None, None
        if unlock is None:
            return
        self._run_hook("relock", unlock, unlock.name or "", unlock.distance)
        self._publish(self._event(RELOCK, name=unlock.name, track=unlock.track, detail=why))

    def _run_hook(self, which: str, cause: Event, name: str, distance: float | None) -> None:
        """Run the `which` command (no shell), bounded by hook_timeout_s; failures become FAULT events."""
        template = self.door.unlock_command if which == "unlock" else self.door.relock_command
        if not template:
            return
        argv = fill_argv(template, name, distance)
        env = {**os.environ, "DOOR_EVENT": which, "DOOR_NAME": name,
               "DOOR_DISTANCE": "" if distance is None else f"{distance:.4f}",
               "DOOR_TRACK": "" if cause.track is None else str(cause.track)}
        track = cause.track
        # stderr goes to a file, not a pipe: a grandchild holding a pipe open could block us forever
        with tempfile.TemporaryFile() as err:
            try:
                proc = subprocess.Popen(argv, shell=False, start_new_session=True, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=err, env=env)
            except (OSError, ValueError) as exc:
                self._fault(f"{which} hook {argv[0]!r} could not start: {exc}", name, track)
                return
            code, why_killed = self._wait_or_kill(proc, which)
            err.seek(max(0, err.seek(0, os.SEEK_END) - _STDERR_TAIL))
            tail = err.read().decode("utf-8", "replace").strip()
        if why_killed:
            self._fault(f"{which} hook {argv[0]!r} {why_killed}; killed", name, track)
        elif code != 0:
            self._fault(f"{which} hook {argv[0]!r} exited with code {code}" + (f": {tail}" if tail else ""),
                        name, track)
        else:
            log.debug("%s hook done: %s", which, argv)

    def _wait_or_kill(self, proc: subprocess.Popen, which: str) -> tuple[int | None, str]:
        """(exit code, "") when the hook ends by itself; (None, why) when it had to be killed.

        A relock may use what is left of stop()'s timeout; any other hook is killed as soon as the
        app stops, since the relock that follows matters more."""
        deadline = time.monotonic() + self.door.hook_timeout_s
        why = ""
        while True:
            try:
                return proc.wait(timeout=_POLL_S), ""
            except subprocess.TimeoutExpired:
                pass
            now = time.monotonic()
            if now >= deadline:
                why = f"timed out after {self.door.hook_timeout_s:g} s"
            elif self._stopping.is_set() and (which != "relock" or now >= self._stop_deadline - 0.2):
                why = "was still running when the app stopped"
            if why:
                break
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the whole group: a shell script's children too
        except ProcessLookupError:
            pass
        proc.wait()
        return None, why

    def _webhook_failed(self, event: Event, detail: str) -> None:
        """Called from the webhook thread: the FAULT goes through the queue, to be recorded by the worker."""
        self.submit(Notice(self._event(FAULT, name=event.name, track=event.track, detail=detail)))

    def _fault(self, detail: str, name: str | None, track: int | None) -> None:
        log.warning("actions: %s", detail)
        self._publish(self._event(FAULT, name=name, track=track, detail=detail))

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
            folder.mkdir(parents=True, exist_ok=True)
            if not cv2.imwrite(str(path), image):
                raise OSError("cv2.imwrite returned False")
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


class _WebhookSender:
    """POSTs unlock events from its own thread, so a slow server never holds up the door.

    A failure is logged and handed to `report(event, detail)`, which queues a FAULT for the worker,
    so it is recorded and emitted like any other event."""

    MAX_PENDING = 16

    def __init__(self, url: str, timeout_s: float, report: Callable[[Event, str], None]):
        self.url = url
        self.timeout_s = timeout_s
        self.report = report
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="webhook", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def post(self, event: Event) -> None:
        if self._queue.qsize() >= self.MAX_PENDING:
            self._failed(event, f"{self.MAX_PENDING} webhook calls still waiting; this one is dropped")
            return
        self._queue.put(event)

    def stop(self, timeout: float) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def _run(self) -> None:
        while (event := self._queue.get()) is not _STOP:
            try:
                self._send(event)
            except Exception as exc:  # refused, timed out, HTTP error, bad URL: all the same to the door
                self._failed(event, f"{type(exc).__name__}: {exc}")

    def _send(self, event: Event) -> None:
        if urllib.parse.urlsplit(self.url).scheme not in ("http", "https"):
            raise ValueError("webhook_url must start with http:// or https://")
        body = json.dumps({"event": event.event, "name": event.name, "distance": event.distance,
                           "track": event.track, "t": event.t, "wall": event.wall}, ensure_ascii=False)
        request = urllib.request.Request(self.url, data=body.encode("utf-8"), method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # raises HTTPError on 4xx/5xx
            response.read(65536)

    def _failed(self, event: Event, reason: str) -> None:
        detail = f"webhook {self.url} failed for {event.event}: {reason}"
        log.warning("actions: %s", detail)
        self.report(event, detail)

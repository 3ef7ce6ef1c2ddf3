"""The door's voice: welcomes and challenge instructions spoken by pyttsx3 (espeak-ng) in a thread of
their own, or written to WAV files where a machine has no speaker."""

from __future__ import annotations

import importlib
import itertools
import logging
import queue
import re
import shutil
import sys
import threading
import time
import unicodedata
from pathlib import Path

from door_access.config import TtsConfig

log = logging.getLogger(__name__)

_STOP = object()  # queue sentinel: the thread says nothing after it


def welcome_text(template: str, name: str) -> str:
    """The spoken welcome: `{name}` filled with the display name by plain replacement (a name may contain braces)."""
    return template.replace("{name}", name)


def safe_slug(text: str, max_len: int = 40) -> str:
    """Only ASCII letters, digits, `-` and `_`, never starting with `-`: safe in any file name and command line."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", ascii_text).strip("_-")[:max_len].strip("_-")
    return slug or "speech"


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

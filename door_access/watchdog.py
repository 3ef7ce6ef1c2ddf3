"""The progress monitor behind the door's watchdog (systemd is told through `sd_notify.py`).

A stage that hangs (a frozen detector process, a deadlocked native call, a stuck hook) leaves
the door locked but useless, with nothing in the log. So every stage counts the units of work
it completes (`Stage.tick`), and says whether work is waiting for it (`waiting`, a callable:
input queued, a search sent to its process). A stage is *stalled* when work waited for it and
its count did not move for its limit; a stage with nothing to do is idle, never stalled.

`Monitor.check()` is pure (a clock is passed in), so it is tested with a fake clock; the
pipeline calls it from its own watchdog thread, and only a check that finds no stall sends
systemd its `WATCHDOG=1`: the ping means "the stages progress", not "a timer still runs".

This module imports neither TensorFlow nor dlib.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from door_access.sd_notify import Notifier

log = logging.getLogger(__name__)

EXIT_STALLED = 3  # `door-access run` exit code when a stage stalled (1: a stage failed, 2: usage)


class Stalled(RuntimeError):
    """A stage made no progress for its limit with work waiting: the app exits with EXIT_STALLED."""


class Stage:
    """One stage's progress: `tick()` from the stage's thread, read by the monitor."""

    def __init__(self, name: str, waiting: Callable[[], bool], limit_s: float,
                 progress: Callable[[], int] | None = None):
        self.name = name
        self.waiting = waiting
        self.limit_s = limit_s
        self.count = 0  # an int bumped by one thread and read by another: no lock needed under the GIL
        self.progress = progress or (lambda: self.count)  # or a counter the stage keeps itself
        self._seen = -1
        self._since = 0.0  # when the count last moved or the stage was last idle
        self.worst_s = 0.0  # the longest it waited without progress so far (for choosing stall_s)

    def tick(self) -> None:
        self.count += 1


class Monitor:
    """Stages registered with `watch()`; `check(now)` names the first one stalled, if any."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.stages: list[Stage] = []

    def watch(self, name: str, waiting: Callable[[], bool], limit_s: float,
              progress: Callable[[], int] | None = None) -> Stage:
        stage = Stage(name, waiting, limit_s, progress)
        stage._since = self.clock()
        self.stages.append(stage)
        return stage

    def check(self, now: float | None = None) -> tuple[Stage, float] | None:
        """(the stage, seconds without progress) for the first stage past its limit, else None."""
        now = self.clock() if now is None else now
        stalled = None
        for stage in self.stages:
            count = stage.progress()
            if count != stage._seen or not stage.waiting():
                stage._seen, stage._since = count, now
                continue
            quiet = now - stage._since
            stage.worst_s = max(stage.worst_s, quiet)
            if stalled is None and quiet >= stage.limit_s:
                stalled = (stage, quiet)
        return stalled

    def worst(self) -> dict[str, float]:
        """Per stage, the longest time work waited for it without progress (seconds, 3 decimals)."""
        return {s.name: round(s.worst_s, 3) for s in self.stages}


class Watchdog:
    """Checks `monitor` every `every_s` on its own thread; pings systemd while no stage is stalled and
    calls `on_stall(stage, seconds)` once (then stops checking and pinging) when one is."""

    def __init__(self, monitor: Monitor, on_stall: Callable[[Stage, float], None], every_s: float = 0.25,
                 notifier: Notifier | None = None):
        self.monitor = monitor
        self.on_stall = on_stall
        self.every_s = every_s
        self.notifier = notifier or Notifier()
        self.stalled: tuple[Stage, float] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            found = self.monitor.check()
            if found is None:
                self.notifier.notify("WATCHDOG=1")
                continue
            self.stalled = found
            self.on_stall(*found)
            return

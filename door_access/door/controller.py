"""The door's lock state, owned here and only here: unlock, relock on a timer, at start-up and at stop.

One owner, because a door app is trusted to leave the door locked whatever happens: the
window, `--events-json`, the access log and a remote lock/unlock all read or change the
state through `DoorController`, never through a copy of it.

- `start()` runs the relock hook once before anything else: after a crash or `kill -9` the
  lock state is unknown, so the door is locked first (`run` calls it before the camera, the models
  or the gallery, so a restart that cannot start still relocks).
- `unlock()` runs the unlock hook and schedules the relock `door.unlock_seconds` after it
  (a later unlock moves it); `lock()` relocks now. Both may be called from any thread.
- A relock is recorded (`relock`) only when its hook succeeded. A failed relock is a `fault`,
  the state becomes `relock_failing`, and it is retried with exponential backoff.
- `stop()` relocks with the full `door.hook_timeout_s` (a running unlock hook is killed first;
  a relock hook never is, for stopping).
- Nothing on the relock path may end it: any error (no file for a hook's stderr, no file
  descriptor left, a bug) is a `fault` and the relock is retried; a hook past its timeout gets
  SIGTERM, then SIGKILL, and is waited for a bounded time only. The watchdog watches the timer
  thread (`overdue()`, `attempts`) like every stage.

This module imports neither TensorFlow nor dlib (tests run it in milliseconds).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from door_access.config import DoorConfig
from door_access.core import FAULT, RELOCK, Event
from door_access.door.hooks import KILL_GRACE_S, REAP_S, fill_argv, hook_env, run_hook

log = logging.getLogger(__name__)

LOCKED, UNLOCKED, RELOCK_FAILING = "locked", "unlocked", "relock_failing"

STOP_ATTEMPTS = 2  # relock attempts at stop (the second after RETRY_MIN_S)
RETRY_MIN_S, RETRY_MAX_S = 1.0, 30.0  # backoff between relock retries while the app runs


class DoorController:
    """Owns the lock state and its relock timer (its own thread). See the module docstring."""

    def __init__(self, door: DoorConfig, publish: Callable[[Event], None],
                 clock: Callable[[], tuple[float, float]] | None = None,
                 retry_min_s: float = RETRY_MIN_S, retry_max_s: float = RETRY_MAX_S):
        self.cfg = door
        self.publish = publish  # records and emits an event; never blocks on the database
        t0 = time.monotonic()
        self.clock = clock or (lambda: (time.monotonic() - t0, time.time()))
        self.retry = (retry_min_s, retry_max_s)
        self._cond = threading.Condition()  # guards the fields below and wakes the timer
        self._hooks = threading.Lock()  # one hook at a time: a relock never races an unlock
        self._state = UNLOCKED  # unknown until start() has locked it: treat as open
        self._until: float | None = None  # monotonic time the pending relock is due
        self._by: tuple[str, float | None, int | None, str] = ("", None, None, "start")  # name, distance, track, source
        self._retry_at: float | None = None
        self._delay = retry_min_s
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.attempts = 0  # relock attempts finished: the watchdog's progress count
        self.hook_bound_s = door.hook_timeout_s + KILL_GRACE_S + REAP_S  # the longest one hook holds the door

    # ---- reading the state (any thread) ------------------------------------------------------

    def state(self) -> str:
        """`locked`, `unlocked` or `relock_failing` (the door may be open: shown as such)."""
        with self._cond:
            return self._state

    def unlocked_until(self) -> float | None:
        """Monotonic time the pending relock is due, or None when locked."""
        with self._cond:
            return None if self._state == LOCKED else self._until

    def overdue(self) -> bool:
        """The watchdog's "work waiting": a relock (or its retry) is due, or the timer thread has died."""
        if self._thread is None or self._stopping.is_set():
            return False
        if not self._thread.is_alive():
            return True
        with self._cond:
            due = self._due_at()
        return due is not None and due <= time.monotonic()

    # ---- lifecycle -----------------------------------------------------------------------------

    def start(self) -> bool:
        """Lock the door (state unknown after a crash), then start the relock timer (which retries a
        failed relock); True when the door is locked. A second call only says whether it is."""
        if self._thread is not None:
            return self.state() == LOCKED
        locked = self._relock("start-up: lock state unknown", force=True, quiet_without_hook=True)
        self._thread = threading.Thread(target=self._timer, name="door", daemon=True)
        self._thread.start()
        return locked

    def stop(self) -> bool:
        """Relock if the door may be open, with the full hook timeout; True when it is locked.

        Call it once the app is stopping; a second call (a second signal) does the same work, never less."""
        self._stopping.set()  # kills a running unlock hook; refuses new unlocks
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(self.hook_bound_s + 1.0)  # it may be running a relock: let it finish
        for attempt in range(STOP_ATTEMPTS):
            if self.state() == LOCKED:
                return True
            if attempt:
                time.sleep(self.retry[0])
            self._relock("app stopping", force=True)
        locked = self.state() == LOCKED
        if not locked:
            log.error("door: the relock failed at stop; the door may be UNLOCKED")
        return locked

    # ---- changing the state (any thread) -----------------------------------------------------

    def unlock(self, name: str, distance: float | None = None, track: int | None = None,
               source: str = "face") -> bool:
        """Run the unlock hook and schedule the relock; False when refused (stopping) or the hook failed."""
        if self._stopping.is_set():
            return False
        with self._hooks:
            if self._stopping.is_set():
                return False
            with self._cond:  # open from the moment the hook starts: a relock must follow whatever happens
                self._state, self._until, self._retry_at = UNLOCKED, float("inf"), None
                self._by = (name, distance, track, source)
            ok = False
            try:
                ok = self._run_hook("unlock", name, distance, track, source)
            finally:  # the relock is scheduled even if the hook raised
                with self._cond:
                    self._until = time.monotonic() + self.cfg.unlock_seconds
                    self._cond.notify_all()
        return ok

    def lock(self, reason: str) -> bool:
        """Relock now (a remote `lock`, an alarm); True when the door is locked."""
        return self._relock(reason, force=True)

    # ---- internals ---------------------------------------------------------------------------------

    def _due_at(self) -> float | None:
        """Monotonic time the next relock (or its retry) is due; inf while an unlock hook runs. Hold _cond."""
        return self._retry_at if self._state == RELOCK_FAILING else (self._until if self._state == UNLOCKED else None)

    def _timer(self) -> None:
        while not self._stopping.is_set():
            try:
                with self._cond:
                    due = self._due_at()
                    wait = None if due is None or due == float("inf") else due - time.monotonic()
                    if wait is None or wait > 0:
                        self._cond.wait(wait)
                        continue
                self._relock("retry" if self.state() == RELOCK_FAILING else "after unlock_seconds")
            except Exception as exc:  # a bug or the unforeseen: the timer outlives it and tries again
                log.exception("door: relock timer")
                self._fault(f"relock timer: {type(exc).__name__}: {exc}", None, None)
                self._stopping.wait(self.retry[0])

    def _relock(self, why: str, force: bool = False, quiet_without_hook: bool = False) -> bool:
        # bounded: a hook that never ends is killed within hook_bound_s, so waiting longer means a stuck thread
        if not self._hooks.acquire(timeout=self.hook_bound_s + 1.0):
            self._fault(f"relock ({why}) waited {self.hook_bound_s + 1.0:g} s for another hook to end", None, None)
            return self._relocked(False)
        try:
            with self._cond:
                if self._state == LOCKED and not force:
                    return True
                if not force and self._state == UNLOCKED and (self._until or 0) > time.monotonic():
                    return False  # an unlock moved the relock while this one waited for the hook lock
                name, distance, track, source = self._by
            ran = bool(self.cfg.relock_command)
            ok = self._relocked(self._run_hook("relock", name, distance, track, source))
            if ok and (ran or not quiet_without_hook):
                self._publish(RELOCK, name or None, track, why)
            return ok
        finally:
            self._hooks.release()

    def _relocked(self, ok: bool) -> bool:
        """Record a relock attempt's outcome: locked, or failing with the next retry after the backoff."""
        with self._cond:
            if ok:
                self._state, self._until, self._retry_at, self._delay = LOCKED, None, None, self.retry[0]
            else:
                self._state, self._retry_at = RELOCK_FAILING, time.monotonic() + self._delay
                self._delay = min(self.retry[1], self._delay * 2)
            self.attempts += 1
            self._cond.notify_all()
        return ok

    def _run_hook(self, which: str, name: str, distance: float | None, track: int | None, source: str) -> bool:
        """Run the `which` command (no shell, minimal environment), bounded by hook_timeout_s.

        True when there is none or it exited 0; a failure, whatever it is, is logged and published as a
        FAULT, never raised."""
        template = self.cfg.unlock_command if which == "unlock" else self.cfg.relock_command
        if not template:
            return True
        argv = [str(template[0])]
        try:
            argv = fill_argv(template, name, distance)
            code, why_killed, tail = run_hook(which, argv, hook_env(which, name, distance, track, source),
                                              self.cfg.hook_timeout_s,
                                              stop_early=self._stopping.is_set if which == "unlock" else bool)
        except Exception as exc:  # EMFILE, ENOMEM, a missing program, a bug: a fault, never a dead thread
            self._fault(f"{which} hook {argv[0]!r} could not start: {type(exc).__name__}: {exc}", name, track)
            return False
        if why_killed:
            self._fault(f"{which} hook {argv[0]!r} {why_killed}", name, track)
        elif code != 0:
            self._fault(f"{which} hook {argv[0]!r} exited with code {code}" + (f": {tail}" if tail else ""),
                        name, track)
        else:
            log.debug("%s hook done: %s", which, argv)
        return not why_killed and code == 0

    def _fault(self, detail: str, name: str | None, track: int | None) -> None:
        log.warning("door: %s", detail)
        self._publish(FAULT, name or None, track, detail)

    def _publish(self, kind: str, name: str | None, track: int | None, detail: str) -> None:
        t, wall = self.clock()
        try:
            self.publish(Event(kind, t, wall, name=name, track=track, detail=detail))
        except Exception:  # recording must never stop a relock
            log.exception("door: publishing %s failed", kind)

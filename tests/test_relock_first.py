"""The door relocks before anything can fail, and nothing on the relock path can stop it (issue 25).

- A restart after a crash in the unlock window that cannot start (no camera, a model file missing)
  has run the relock hook before it exits; a relock that fails at start-up is a `fault`, exit 1,
  and never READY=1. `door-access lock` relocks by hand.
- The relock timer survives what used to kill it (no file for a hook's stderr, an unexpected
  error), a hook that will not die does not hang the controller, and the watchdog names a dead
  relock timer like any stalled stage.

The hooks are real processes (`touch`, small Python scripts); the door is the real `door-access`
command. Waits are bounded polls, never timing assertions.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from door_access.config import AccessLogConfig, DoorConfig, TtsConfig, WatchdogConfig
from door_access.core import FAULT, RELOCK, Event
from door_access.door import hooks
from door_access.door.access_log import AccessLog
from door_access.door.controller import LOCKED, DoorController
from door_access.watchdog import Stalled

from conftest import FR_IMAGES, REPO, Datagrams, make_config, wait_for

DOOR = [sys.executable, "-m", "door_access"]
CLI_ENV = dict(os.environ, PYTHONPATH=str(REPO))
NO_CAMERA = "9"  # a webcam index with nothing plugged in
# Appends one line (its last argument) to the file named by its first: a relock hook that leaves a trace.
RECORD_HOOK = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + '\\n')"


def site(tmp_path: Path, relock: list[str], weights: Path = REPO / "weights") -> Path:
    """A door's config.yaml (models in `weights`, its own access log, obama enrolled) with `relock` as the
    relock hook."""
    (tmp_path / "images").mkdir()
    shutil.copy(FR_IMAGES / "obama.jpg", tmp_path / "images" / "obama.jpg")
    config = tmp_path / "config.yaml"
    config.write_text(f"paths:\n  weights: {weights}\n  cache: cache\n  images: images\n"
                      f"tts:\n  enabled: false\naccess_log:\n  path: log.sqlite\n"
                      f"door:\n  relock_command: {json.dumps(relock)}\n  hook_timeout_s: 5.0\n")
    return config


def door_access(*argv: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*DOOR, *argv], capture_output=True, text=True, env=env or CLI_ENV, cwd=cwd, timeout=300)


def logged(tmp_path: Path) -> list[Event]:
    log = AccessLog(tmp_path / "log.sqlite")
    try:
        return log.last(100)
    finally:
        log.close()


# ---- relock first: the restarts that cannot start ------------------------------------------------


def test_a_restart_with_the_camera_unplugged_relocks_before_it_exits(tmp_path):
    """kill -9 in the unlock window, then a restart with no camera: exit 2, and the relock hook has run."""
    marker = tmp_path / "relocked"
    config = site(tmp_path, ["touch", str(marker)])
    proc = door_access("run", "--config", str(config), "--source", NO_CAMERA, "--headless", cwd=tmp_path)
    assert proc.returncode == 2 and "no camera at index 9" in proc.stderr, proc.stderr
    assert marker.exists()  # the door was locked before the camera was looked for
    assert [(e.event, e.detail) for e in logged(tmp_path)] == [(RELOCK, "start-up: lock state unknown")]


def test_a_restart_with_a_model_file_missing_relocks_before_it_exits(tmp_path):
    """The same restart with the FaceNet weights gone (an empty weights folder): exit 2, relocked first."""
    marker, weights = tmp_path / "relocked", tmp_path / "weights"
    weights.mkdir()
    config = site(tmp_path, ["touch", str(marker)], weights=weights)
    proc = door_access("run", "--config", str(config), "--source", str(FR_IMAGES / "obama.jpg"), "--headless",
                       cwd=tmp_path)
    assert proc.returncode == 2 and "FaceNet weights not found" in proc.stderr, proc.stderr
    assert marker.exists()
    assert [e.event for e in logged(tmp_path)] == [RELOCK]


def test_a_start_up_relock_that_fails_is_a_fault_exit_1_and_never_ready(tmp_path):
    """A relock hook that fails at start-up: a `fault` in the access log, exit 1, and systemd is never told
    READY=1 (on a source that would otherwise have run: the models are not even loaded)."""
    sock = Datagrams(str(tmp_path / "notify.sock"))
    try:
        config = site(tmp_path, [sys.executable, "-c", "import sys; sys.exit(4)"])
        proc = door_access("run", "--config", str(config), "--source", str(FR_IMAGES / "obama.jpg"), "--headless",
                           cwd=tmp_path, env=dict(CLI_ENV, NOTIFY_SOCKET=str(tmp_path / "notify.sock")))
    finally:
        sock.close()
    assert "READY=1" not in sock.messages()
    assert proc.returncode == 1 and "could not be locked at start-up" in proc.stderr, proc.stderr
    events = logged(tmp_path)
    assert events and all(e.event == FAULT and "exited with code 4" in e.detail for e in events)


def test_door_access_lock_runs_the_relock_hook_and_logs_it(tmp_path):
    marker = tmp_path / "relocked"
    config = site(tmp_path, [sys.executable, "-c", RECORD_HOOK, str(marker), "by hand"])
    proc = door_access("lock", "--config", str(config), cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == "locked", proc.stderr
    assert marker.read_text() == "by hand\n"
    assert [(e.event, e.detail) for e in logged(tmp_path)] == [(RELOCK, "door-access lock")]


def test_door_access_lock_with_a_failing_hook_exits_1_with_a_fault(tmp_path):
    config = site(tmp_path, [sys.executable, "-c", "import sys; sys.exit(4)"])
    proc = door_access("lock", "--config", str(config), cwd=tmp_path)
    assert proc.returncode == 1 and "the door may be UNLOCKED" in proc.stderr
    [fault] = logged(tmp_path)
    assert fault.event == FAULT and "exited with code 4" in fault.detail


# ---- the relock path cannot die ----------------------------------------------------------------


class Recorder:
    def __init__(self):
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def kinds(self) -> list[str]:
        return [e.event for e in self.events]


def recording_door(tmp_path: Path, **door) -> tuple[DoorController, Recorder, Path]:
    marker = tmp_path / "relocks"
    rec = Recorder()
    cfg = DoorConfig(relock_command=(sys.executable, "-c", RECORD_HOOK, str(marker), "relock"), **door)
    return DoorController(cfg, rec, retry_min_s=0.2, retry_max_s=1.0), rec, marker


def relocks(marker: Path) -> int:
    return len(marker.read_text().splitlines()) if marker.exists() else 0


def fail_once(monkeypatch, owner, name: str, exc: BaseException) -> list[int]:
    """`owner.name` raises `exc` on its next call only, then works again; returns the list of failures."""
    real, failed = getattr(owner, name), []

    def once(*args, **kwargs):
        if not failed:
            failed.append(1)
            raise exc
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, once)
    return failed


def test_a_relock_whose_stderr_file_cannot_be_made_still_relocks(tmp_path, monkeypatch):
    """A full or read-only /tmp at the moment the relock is due (TemporaryFile raises OSError): the relock
    hook runs all the same, within unlock_seconds + 5 s. It used to kill the timer thread: no relock ever."""
    door, rec, marker = recording_door(tmp_path, unlock_seconds=1.0)
    door.start()
    try:
        assert door.unlock("ann")
        failed = fail_once(monkeypatch, tempfile, "TemporaryFile", OSError(28, "No space left on device"))
        assert wait_for(lambda: door.state() == LOCKED, 1.0 + 5)
        assert failed and relocks(marker) == 2  # start-up, then after the unlock
        assert rec.kinds() == [RELOCK, RELOCK] and rec.events[-1].name == "ann"
    finally:
        door.stop()


def test_an_unlock_whose_stderr_file_cannot_be_made_is_still_relocked(tmp_path, monkeypatch):
    """The same error during the unlock: it used to leave the relock due at infinity (never)."""
    door, rec, marker = recording_door(tmp_path, unlock_seconds=1.0,
                                       unlock_command=(sys.executable, "-c", "pass"))
    door.start()
    try:
        def no_tmp(*args, **kwargs):
            raise OSError(30, "Read-only file system")

        monkeypatch.setattr(tempfile, "TemporaryFile", no_tmp)
        assert door.unlock("bo")  # the hook ran, without a file for its stderr
        assert wait_for(lambda: door.state() == LOCKED, 1.0 + 5)
        assert relocks(marker) == 2 and rec.kinds() == [RELOCK, RELOCK]
    finally:
        door.stop()


def test_any_error_on_the_relock_path_is_a_fault_and_is_retried(tmp_path, monkeypatch):
    """An error nobody foresaw (here: MemoryError from Popen) on the relock's first attempt: a `fault`, then
    the retry relocks, within unlock_seconds + 5 s."""
    door, rec, marker = recording_door(tmp_path, unlock_seconds=1.0)
    door.start()
    try:
        assert door.unlock("cy")
        fail_once(monkeypatch, subprocess, "Popen", MemoryError("cannot allocate"))
        assert wait_for(lambda: door.state() == LOCKED, 1.0 + 5)
        assert rec.kinds() == [RELOCK, FAULT, RELOCK] and "MemoryError" in rec.events[1].detail
        assert relocks(marker) == 2
    finally:
        door.stop()


# Sleeps; on SIGTERM writes "terminated" to argv[1] and exits (or, with argv[2] == "ignore", ignores it).
STUBBORN_HOOK = """
import signal, sys, time
def on_term(*_):
    open(sys.argv[1], "w").write("terminated")
    sys.exit(0)
signal.signal(signal.SIGTERM, signal.SIG_IGN if sys.argv[2] == "ignore" else on_term)
time.sleep(120)
"""


def test_a_hook_past_its_timeout_gets_sigterm_before_sigkill(tmp_path):
    """A relock hook that hangs is asked to end (SIGTERM: it may release its relay) before it is killed."""
    trace = tmp_path / "trace"
    rec = Recorder()
    door = DoorController(DoorConfig(relock_command=(sys.executable, "-c", STUBBORN_HOOK, str(trace), "clean"),
                                     hook_timeout_s=5.0), rec)  # time enough to start Python on a busy machine
    assert not door.lock("test")
    assert trace.read_text() == "terminated"
    assert rec.kinds() == [FAULT] and rec.events[0].detail.endswith("timed out after 5 s; killed")


def test_a_hook_that_cannot_be_killed_does_not_hang_the_controller(tmp_path, monkeypatch):
    """A hook that ignores SIGTERM and that the door may not signal (a setuid relay tool: EPERM): the
    controller gives up after a bounded wait, says so in a `fault`, and stays usable."""
    trace = tmp_path / "trace"
    rec = Recorder()
    door = DoorController(DoorConfig(relock_command=(sys.executable, "-c", STUBBORN_HOOK, str(trace), "ignore"),
                                     hook_timeout_s=1.0), rec)

    def refused(pid, sig):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(hooks.os, "killpg", refused)
    result: list[bool] = []
    locking = threading.Thread(target=lambda: result.append(door.lock("test")), daemon=True)
    locking.start()
    locking.join(30)  # a bound on waiting (the hook's 1 s, then SIGTERM, SIGKILL, a bounded reap), generous
    monkeypatch.undo()
    assert not locking.is_alive() and result == [False]
    assert rec.kinds() == [FAULT] and "left behind" in rec.events[0].detail, rec.events
    os.kill(int(re.search(r"pid (\d+)", rec.events[0].detail).group(1)), signal.SIGKILL)  # what the door could not


# ---- the watchdog watches the relock timer -------------------------------------------------------


def test_the_relock_timer_is_overdue_when_its_thread_is_dead_or_a_relock_is_due(tmp_path):
    door, rec, marker = recording_door(tmp_path, unlock_seconds=600)
    assert not door.overdue()  # not started: nothing to watch
    door.start()
    try:
        assert not door.overdue() and door.attempts == 1  # the start-up relock
        with door._cond:  # a relock due a second ago that the timer has not attempted (a stuck timer)
            door._state, door._until = "unlocked", 0.0
            assert door.overdue()
            door._state, door._until = LOCKED, None
        door._stopping.set()  # the timer thread ends...
        with door._cond:
            door._cond.notify_all()
        door._thread.join(5)
        door._stopping.clear()  # ...while the door still runs: a dead timer
        assert door.overdue()
    finally:
        door.stop()


@pytest.mark.model
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the thread's death, on purpose
def test_a_dead_relock_timer_is_a_named_stall_that_relocks_and_stops_the_door(tmp_path, encoder):
    """The relock timer's thread dies (here: a BaseException no handler catches) while the door runs: the
    watchdog names it like any stage, records a `fault`, relocks and stops the door (exit 3 in `run`)."""
    from door_access.app import build_pipeline
    from door_access.faces.capture import Capture

    marker = tmp_path / "relocks"
    cfg = make_config(tmp_path, door=DoorConfig(relock_command=(sys.executable, "-c", RECORD_HOOK, str(marker), "r"),
                                                hook_timeout_s=0.5),
                      watchdog=WatchdogConfig(stall_s=1.0), tts=TtsConfig(enabled=False),
                      access_log=AccessLogConfig(path=str(tmp_path / "log.sqlite"), snapshots_dir=None))
    cfg = dataclasses.replace(cfg, liveness=dataclasses.replace(cfg.liveness, enabled=False))
    (tmp_path / "images").mkdir()
    shutil.copy(FR_IMAGES / "obama.jpg", tmp_path / "images" / "obama.jpg")
    c = cfg.camera
    capture = Capture(str(FR_IMAGES / "obama2.jpg"), False, c.lost_after_s, c.reconnect_min_s, c.reconnect_max_s)
    events: list[Event] = []
    pipeline = build_pipeline(cfg, tmp_path / "images", capture, events.append, encoder=encoder)
    pipeline.start()
    try:
        door = pipeline.door

        def die():
            raise SystemExit("the relock timer's thread dies")

        door._due_at = die
        with door._cond:
            door._cond.notify_all()
        assert wait_for(lambda: pipeline.failure is not None, 60), "no stall detected"
        stage, exc = pipeline.failure
        assert stage == "relock timer" and isinstance(exc, Stalled)
        assert wait_for(lambda: FAULT in [e.event for e in events], 10)
    finally:
        pipeline.stop()
    [fault] = [e for e in events if e.event == FAULT]
    assert "'relock timer' stalled" in fault.detail
    assert [e.detail for e in events if e.event == RELOCK][-1] == "stage 'relock timer' stalled"
    assert relocks(marker) == 2  # at start-up, then at the stall

"""The door controller with real hook processes: locked at start, at stop and after a crash; relock logged
only when it worked. No model is loaded here (the controller imports neither TensorFlow nor dlib)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from door_access.config import DoorConfig
from door_access.core import FAULT, RELOCK, Event
from door_access.door.controller import LOCKED, RELOCK_FAILING, UNLOCKED, DoorController

from conftest import REPO, wait_for

# Appends [label, argv..., time it finished] to the file named by argv[1], after sleeping argv[2] seconds.
SLOW_HOOK = ("import json, sys, time; time.sleep(float(sys.argv[2])); "
             "open(sys.argv[1], 'a').write(json.dumps(sys.argv[3:] + [time.time()]) + '\\n')")
# Fails (exit 1) while the file argv[2] exists, else records like SLOW_HOOK with no sleep.
FLAKY_HOOK = ("import json, os, sys, time; os.path.exists(sys.argv[2]) and sys.exit(1); "
              "open(sys.argv[1], 'a').write(json.dumps(sys.argv[3:] + [time.time()]) + '\\n')")


def calls(path: Path) -> list[list]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


class Recorder:
    """The publish callback: every event, with the wall time it was published."""

    def __init__(self):
        self.events: list[Event] = []
        self.lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        with self.lock:
            self.events.append(event)

    def kinds(self) -> list[str]:
        return [e.event for e in self.events]


def hook(path: Path, label: str, sleep_s: float = 0.0) -> tuple[str, ...]:
    return (sys.executable, "-c", SLOW_HOOK, str(path), str(sleep_s), label, "{name}")


def test_start_locks_first_then_unlock_relocks_after_unlock_seconds(tmp_path):
    log = tmp_path / "hooks.jsonl"
    rec = Recorder()
    door = DoorController(DoorConfig(unlock_command=hook(log, "unlock"), relock_command=hook(log, "relock"),
                                     unlock_seconds=0.3), rec)
    assert door.state() == UNLOCKED  # unknown before start: never shown as locked
    door.start()
    assert door.state() == LOCKED and door.unlocked_until() is None
    assert door.unlock("ann", 0.5, 3)
    assert door.state() == UNLOCKED and door.unlocked_until() > time.monotonic()
    assert wait_for(lambda: door.state() == LOCKED, 20)
    assert door.stop()
    assert [c[:2] for c in calls(log)] == [["relock", ""], ["unlock", "ann"], ["relock", "ann"]]
    assert rec.kinds() == [RELOCK, RELOCK]
    assert rec.events[0].detail.startswith("start-up") and rec.events[1].name == "ann"


def test_a_slow_relock_hook_completes_at_stop_and_relock_is_logged_after_it(tmp_path):
    log = tmp_path / "hooks.jsonl"
    rec = Recorder()
    door = DoorController(DoorConfig(relock_command=hook(log, "relock", 2.0), unlock_seconds=600,
                                     hook_timeout_s=5.0), rec)
    door.start()
    door.unlock("bo")
    rec.events.clear()
    assert door.stop()  # not cut short at ~1 s: the hook gets its full 5 s timeout
    (*_, (label, name, finished)) = calls(log)
    assert (label, name) == ("relock", "bo")
    (relock,) = rec.events
    assert relock.event == RELOCK and relock.detail == "app stopping" and relock.wall >= finished
    assert door.state() == LOCKED


def test_a_relock_that_always_fails_is_faults_and_never_relock(tmp_path):
    rec = Recorder()
    failing = (sys.executable, "-c", "import sys; sys.exit(4)")
    door = DoorController(DoorConfig(relock_command=failing, unlock_seconds=600), rec,
                          retry_min_s=0.05, retry_max_s=0.2)
    door.start()
    assert door.state() == RELOCK_FAILING
    assert wait_for(lambda: rec.kinds().count(FAULT) >= 3)  # retried on its own, with backoff
    assert not door.stop()
    assert RELOCK not in rec.kinds() and door.state() == RELOCK_FAILING
    assert all("relock hook" in e.detail and "exited with code 4" in e.detail for e in rec.events)


def test_a_failed_relock_is_retried_with_backoff_until_it_works(tmp_path):
    log, broken = tmp_path / "hooks.jsonl", tmp_path / "broken"
    broken.touch()
    rec = Recorder()
    door = DoorController(DoorConfig(relock_command=(sys.executable, "-c", FLAKY_HOOK, str(log), str(broken), "r"),
                                     unlock_seconds=0.0), rec, retry_min_s=0.2, retry_max_s=1.6)
    door.start()
    assert wait_for(lambda: rec.kinds().count(FAULT) >= 4)
    assert door.state() == RELOCK_FAILING
    broken.unlink()
    assert wait_for(lambda: door.state() == LOCKED)
    door.stop()
    assert rec.kinds()[-1] == RELOCK and set(rec.kinds()[:-1]) == {FAULT}
    fault_times = [e.t for e in rec.events if e.event == FAULT]
    gaps = [b - a for a, b in zip(fault_times, fault_times[1:])]
    assert gaps[2] > gaps[0]  # backoff: the wait grows (0.2 s, 0.4 s, 0.8 s... plus each hook's run)


def test_lock_from_another_thread_relocks_now_and_unlock_is_refused_after_stop(tmp_path):
    log = tmp_path / "hooks.jsonl"
    rec = Recorder()
    door = DoorController(DoorConfig(unlock_command=hook(log, "unlock"), relock_command=hook(log, "relock"),
                                     unlock_seconds=600), rec)
    door.start()
    door.unlock("cy", source="mqtt")
    remote = threading.Thread(target=door.lock, args=("remote lock",))
    remote.start()
    remote.join(20)
    assert door.state() == LOCKED and rec.events[-1].detail == "remote lock"
    assert door.stop()
    assert door.unlock("late") is False
    assert [c[:2] for c in calls(log)] == [["relock", ""], ["unlock", "cy"], ["relock", "cy"]]


KILLED_DOOR = """
import sys, time
sys.path.insert(0, sys.argv[1])
from door_access.config import DoorConfig
from door_access.door.controller import DoorController
hook = lambda label: (sys.executable, "-c", sys.argv[3], sys.argv[2], "0", label, "{name}")
door = DoorController(DoorConfig(unlock_command=hook("unlock"), relock_command=hook("relock"),
                                 unlock_seconds=600), lambda event: None)
door.start()
if sys.argv[4] == "unlock":
    door.unlock("dee")
print("ready", flush=True)
time.sleep(600)
"""


def test_after_kill_9_in_the_unlock_window_the_next_start_relocks_first(tmp_path):
    log = tmp_path / "hooks.jsonl"

    def run(what: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", KILLED_DOOR, str(REPO), str(log), SLOW_HOOK, what],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        return proc

    first = run("unlock")
    os.kill(first.pid, signal.SIGKILL)  # no stop(), no relock: the door is left open
    first.wait(20)
    assert [c[:2] for c in calls(log)] == [["relock", ""], ["unlock", "dee"]]
    second = run("nothing")
    try:
        assert [c[0] for c in calls(log)] == ["relock", "unlock", "relock"]  # locked before anything else
    finally:
        second.kill()
        second.wait(20)


def test_the_controller_access_log_and_decision_import_no_model():
    code = ("import sys; import door_access.door.controller, door_access.door.access_log, door_access.door.decision, "
            "door_access.door.tracking, door_access.core; "
            "print(sorted(m for m in ('tensorflow', 'keras', 'dlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"

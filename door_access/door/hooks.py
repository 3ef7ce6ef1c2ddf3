"""Running a door hook: argv only (no shell ever sees a name), a minimal environment, a bounded wait.

The unlock and relock commands are the admin's (`door.unlock_command`, `door.relock_command`);
the names in them come from file names. So: `{name}` and `{distance}` are filled in one pass,
the environment holds PATH and the DOOR_* variables only (none of the app's secrets), stderr goes
to a file (a grandchild holding a pipe open could block the door forever), and a hook past its
timeout gets SIGTERM to its process group, SIGKILL after KILL_GRACE_S, and a bounded reap.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

_POLL_S = 0.05  # how often a waiting hook checks whether it should stop early
_STDERR_TAIL = 300  # characters of a failed hook's stderr kept in the FAULT detail
KILL_GRACE_S = 1.0  # a hook past its timeout gets SIGTERM, and SIGKILL this long after
REAP_S = 2.0  # then it is waited for this long at most (a process stuck in the kernel may never end)


def fill_argv(argv: tuple[str, ...] | list[str], name: str, distance: float | None) -> list[str]:
    """A hook's argv with `{name}` and `{distance}` filled in, in one pass, so a name containing
    "{distance}" stays as it is. No shell ever sees the result."""
    values = {"name": name, "distance": "" if distance is None else f"{distance:.4f}"}
    return [re.sub(r"\{(name|distance)\}", lambda m: values[m.group(1)], arg) for arg in argv]


def hook_env(event: str, name: str, distance: float | None, track: int | None, source: str) -> dict[str, str]:
    """The whole environment a hook gets: PATH and the DOOR_* variables, not the app's secrets."""
    return {"PATH": os.environ.get("PATH", os.defpath), "DOOR_EVENT": event, "DOOR_NAME": name,
            "DOOR_DISTANCE": "" if distance is None else f"{distance:.4f}",
            "DOOR_TRACK": "" if track is None else str(track), "DOOR_SOURCE": source}


def run_hook(which: str, argv: list[str], env: dict[str, str], timeout_s: float,
         stop_early: Callable[[], bool] = lambda: False) -> tuple[int | None, str, str]:
    """Run the hook: (exit code, why it was killed or "", the tail of its stderr).

    stderr goes to a file, not a pipe (a grandchild holding a pipe open could block us forever);
    when no such file can be made (a full or read-only /tmp) the hook runs without it: the
    lock matters more than its error message."""
    try:
        err = tempfile.TemporaryFile()
    except OSError as exc:
        log.warning("door: no file for the %s hook's stderr (%s); running it without", which, exc)
        err = None
    try:
        proc = subprocess.Popen(argv, shell=False, start_new_session=True, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL if err is None else err,
                                env=env)
        code, why_killed = _wait_or_kill(proc, which, timeout_s, stop_early)
        if err is None:
            return code, why_killed, ""
        err.seek(max(0, err.seek(0, os.SEEK_END) - _STDERR_TAIL))
        return code, why_killed, err.read().decode("utf-8", "replace").strip()
    finally:
        if err is not None:
            err.close()

def _wait_or_kill(proc: subprocess.Popen, which: str, timeout_s: float,
              stop_early: Callable[[], bool]) -> tuple[int | None, str]:
    """(exit code, "") when the hook ends by itself; (None, why) when it had to be killed.

    An unlock hook is killed as soon as the app stops (the relock that follows matters more);
    a relock hook always gets its full timeout. Killing is bounded too: SIGTERM to its process
    group, SIGKILL after KILL_GRACE_S, then at most REAP_S more (a process stuck in the kernel,
    or one we may not signal, is left behind, said so in the fault)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return proc.wait(timeout=_POLL_S), ""
        except subprocess.TimeoutExpired:
            pass
        if time.monotonic() >= deadline:
            why = f"timed out after {timeout_s:g} s"
            break
        if stop_early():
            why = "was still running when the app stopped"
            break
    for sig, wait_s in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, REAP_S)):
        try:
            os.killpg(proc.pid, sig)  # the whole group: a shell script's children too, even once it has ended
        except ProcessLookupError:
            pass
        except OSError as exc:  # EPERM: a setuid hook
            log.warning("door: cannot send %s to the %s hook (pid %d): %s", sig.name, which, proc.pid, exc)
        try:
            proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue
        if sig == signal.SIGKILL:
            return None, f"{why}; killed"
    return None, f"{why}; still running {REAP_S:g} s after SIGKILL (pid {proc.pid}, left behind)"

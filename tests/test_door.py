"""The running door, end to end: a clip generated from real photos goes through the real app.

The clip: the enrolled person (a photo not in the gallery), again within the cooldown, a
stranger, then the enrolled person after the cooldown. Expected: exactly two unlocks, both
for the enrolled person; a denial and no unlock for the stranger.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import wave

import pytest

from door_access.door.access_log import AccessLog
from door_access.tools.democlip import Segment, write_clip

from conftest import FR_IMAGES, REPO, write_site

# This checkout's code, whatever the venv's editable install points at
DOOR = [sys.executable, "-m", "door_access"]
CLI_ENV = dict(os.environ, PYTHONPATH=str(REPO))
# Appends [argv after the output file, DOOR_NAME, time it finished] to the file named by argv[1] (a hook's
# environment holds only PATH and DOOR_*, so the file cannot come from the environment).
HOOK = ("import json, os, sys; "
        "open(sys.argv[1], 'a').write(json.dumps([sys.argv[2:], os.environ['DOOR_NAME'], __import__('time').time()])"
        " + '\\n')")


@pytest.fixture(scope="module")
def clip(tmp_path_factory, detector):
    root = tmp_path_factory.mktemp("clip")
    obama2, biden = FR_IMAGES / "obama2.jpg", FR_IMAGES / "biden.jpg"
    segments = [Segment(obama2, 2.5), Segment(None, 1.0), Segment(obama2, 1.5), Segment(None, 0.5),
                Segment(biden, 2.5), Segment(None, 1.0), Segment(obama2, 2.0), Segment(None, 0.5)]
    return write_clip(detector, segments, root / "door.mp4", fps=15.0)


def hook(root, *args):
    """A hook program of its own (a name may not reach an interpreter's argv: test_names.py)."""
    program = root / "record-hook"
    program.write_text(f"#!{sys.executable}\n{HOOK}\n")
    program.chmod(0o755)
    return [str(program), str(root / "hook.jsonl"), *args]


def make_site(root, unlock_command, hook_timeout=5.0, relock_command=None, unlock_seconds=0.5):
    """obama enrolled; hooks that record their argv; WAV welcomes; no liveness (still photos)."""
    relock_command = hook(root, "relock") if relock_command is None else relock_command
    return write_site(root, f"""
door:
  unlock_command: {json.dumps(unlock_command)}
  relock_command: {json.dumps(relock_command)}
  hook_timeout_s: {hook_timeout}
  unlock_seconds: {unlock_seconds}
  cooldown_seconds: 6.0
tts:
  wav_dir: wav
access_log:
  path: log.sqlite
liveness:
  enabled: false   # the clip is made of still photos: these tests are about the door; see test_liveness.py
""")


def test_clip_unlocks_exactly_the_enrolled_person(tmp_path, clip, door_run):
    site = make_site(tmp_path, hook(tmp_path, "--who={name}", "{distance}"))
    code, events, err = door_run(site / "config.yaml", clip)
    assert code == 0, err[-3000:]
    unlocks = [e for e in events if e["event"] == "unlock"]
    assert [e["name"] for e in unlocks] == ["obama", "obama"], events
    assert unlocks[1]["t"] - unlocks[0]["t"] > 0  # in order
    denied = [e for e in events if e["event"] == "denied"]
    assert denied and all(e["name"] is None for e in denied)
    assert {"t", "event", "name", "distance", "track"} <= set(unlocks[0])
    assert all(e["distance"] < 0.9 for e in unlocks)

    # the hook got the argv from the config, with the placeholders filled in, once per unlock
    calls = [json.loads(line) for line in (site / "hook.jsonl").read_text().splitlines()]
    unlock_calls = [c for c in calls if c[0][0] != "relock"]
    assert [c[0][0] for c in unlock_calls] == ["--who=obama", "--who=obama"]
    assert [float(c[0][1]) for c in unlock_calls] == pytest.approx([e["distance"] for e in unlocks], abs=1e-3)
    assert calls[0][:2] == [["relock"], ""]  # locked at start-up, before anything else
    assert all(c[1] == "obama" for c in calls[1:])
    assert sum(c[0][0] == "relock" for c in calls) == 3

    # a non-empty WAV per welcome
    wavs = sorted((site / "wav").glob("*.wav"))
    assert len(wavs) == 2
    for w in wavs:
        with wave.open(str(w)) as f:
            assert f.getnframes() > 1000

    # the access log holds every event after a restart (a fresh connection to the file)
    log = AccessLog(site / "log.sqlite")
    try:
        logged = [(e.event, e.name) for e in log.last(1000)]
    finally:
        log.close()
    assert logged.count(("unlock", "obama")) == 2
    assert ("denied", None) in logged and logged.count(("relock", "obama")) == 2

    # `door-access log --json` prints them
    out = subprocess.run([*DOOR, "log", "--config", str(site / "config.yaml"), "--json", "--last", "100"],
                         capture_output=True, text=True, env=CLI_ENV, timeout=120)
    assert out.returncode == 0
    assert [json.loads(line)["event"] for line in out.stdout.splitlines()].count("unlock") == 2


def test_hanging_hook_is_killed_and_the_door_goes_on(tmp_path, clip, door_run):
    site = make_site(tmp_path, [sys.executable, "-c", "import time; time.sleep(60)"], hook_timeout=0.5)
    started = time.monotonic()
    code, events, err = door_run(site / "config.yaml", clip)
    assert code == 0, err[-3000:]
    assert [e["name"] for e in events if e["event"] == "unlock"] == ["obama", "obama"]
    faults = [e for e in events if e["event"] == "fault"]
    # the first hook hits its timeout; the last may instead be cut short by the end of the clip
    assert len(faults) >= 2 and all(e["detail"].endswith("killed") for e in faults)
    assert "timed out after 0.5 s" in faults[0]["detail"]
    assert time.monotonic() - started < 120  # two 60 s hooks were not waited for


def test_no_camera_exits_2_with_a_hint(tmp_path):
    site = make_site(tmp_path, [])
    proc = subprocess.run([*DOOR, "run", "--config", str(site / "config.yaml"), "--source", "7", "--headless"],
                          capture_output=True, text=True, env=CLI_ENV, timeout=120)
    assert proc.returncode == 2
    [line] = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert "no camera at index 7" in line and "--source" in line


SLOW_RELOCK = ("import json, sys, time; time.sleep(2.0); "
               "open(sys.argv[1], 'a').write(json.dumps(['relock', time.time()]) + '\\n')")


@pytest.mark.parametrize("relock", ["slow", "failing"])
def test_sigterm_twice_in_the_unlock_window_still_relocks_and_logs_only_what_happened(tmp_path, clip, relock):
    """SIGTERM, then a second one while stopping: a 2 s relock hook still completes and `relock` is
    logged after it; a relock hook that fails from the unlock on (it locked at start-up, or the door
    would not have started) gives `fault` events and no further `relock`."""
    done, broken = tmp_path / "relocked.jsonl", tmp_path / "relay-broken"
    relock_command = ([sys.executable, "-c", SLOW_RELOCK, str(done)] if relock == "slow" else
                      [sys.executable, "-c", f"import os, sys; sys.exit(5 if os.path.exists({str(broken)!r}) else 0)"])
    site = make_site(tmp_path, [], relock_command=relock_command, unlock_seconds=600)
    proc = subprocess.Popen([*DOOR, "run", "--config", str(site / "config.yaml"), "--source", str(clip),
                             "--realtime", "--headless", "--events-json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=CLI_ENV, cwd=site)
    try:
        while (line := proc.stdout.readline()) and json.loads(line)["event"] != "unlock":
            pass  # the start-up relock (or its faults) come first
        assert line, proc.stderr.read()[-3000:]
        broken.touch()  # the "failing" relock hook fails from now on
        proc.send_signal(signal.SIGTERM)  # within the 600 s unlock window
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)  # a second one while stopping must not cut the relock short
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == (0 if relock == "slow" else 1), err[-3000:]  # 1: the door may be open
    assert "while stopping: ignored" in err
    log = AccessLog(site / "log.sqlite")
    try:
        logged = log.last(1000)
    finally:
        log.close()
    if relock == "slow":
        finished = [json.loads(line)[1] for line in done.read_text().splitlines()]
        assert len(finished) == 2  # at start-up, and at stop: it ran its full 2 s, not cut at ~1 s
        relocks = [e for e in logged if e.event == "relock"]
        assert [e.detail for e in relocks] == ["start-up: lock state unknown", "app stopping"]
        assert relocks[-1].wall >= finished[-1]  # logged after the hook completed
        assert relocks[-1].name == "obama"
    else:
        assert [e.detail for e in logged if e.event == "relock"] == ["start-up: lock state unknown"]
        faults = [e for e in logged if e.event == "fault"]
        assert len(faults) >= 2 and all("relock hook" in e.detail and "code 5" in e.detail for e in faults)
        assert "the door may be UNLOCKED" in err and "error: the door could not be relocked" in err

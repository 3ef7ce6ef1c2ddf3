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

from door_access.access_log import AccessLog
from door_access.democlip import Segment, write_clip

from conftest import FR_IMAGES, REPO, write_site

DOOR = str(REPO / ".venv" / "bin" / "door-access")
HOOK = ("import json, os, sys; "
        "open(os.environ['HOOK_OUT'], 'a').write(json.dumps([sys.argv[1:], os.environ['DOOR_NAME']]) + '\\n')")


@pytest.fixture(scope="module")
def clip(tmp_path_factory, detector):
    root = tmp_path_factory.mktemp("clip")
    obama2, biden = FR_IMAGES / "obama2.jpg", FR_IMAGES / "biden.jpg"
    segments = [Segment(obama2, 2.5), Segment(None, 1.0), Segment(obama2, 1.5), Segment(None, 0.5),
                Segment(biden, 2.5), Segment(None, 1.0), Segment(obama2, 2.0), Segment(None, 0.5)]
    return write_clip(detector, segments, root / "door.mp4", fps=15.0)


def make_site(root, unlock_command, hook_timeout=5.0):
    """obama enrolled; hooks that record their argv; WAV welcomes; no liveness (still photos)."""
    return write_site(root, f"""
door:
  unlock_command: {json.dumps(unlock_command)}
  relock_command: {json.dumps([sys.executable, "-c", HOOK, "relock"])}
  hook_timeout_s: {hook_timeout}
  unlock_seconds: 0.5
  cooldown_seconds: 6.0
tts:
  wav_dir: wav
access_log:
  path: log.sqlite
liveness:
  enabled: false   # the clip is made of still photos: these tests are about the door; see test_liveness.py
""")


def run_door(site, clip, *extra, timeout=300):
    env = dict(os.environ, HOOK_OUT=str(site / "hook.jsonl"))
    return subprocess.run([DOOR, "run", "--config", str(site / "config.yaml"), "--source", str(clip), "--headless",
                           "--events-json", *extra], capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=site)


def events_of(stdout):
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def test_clip_unlocks_exactly_the_enrolled_person(tmp_path, clip):
    site = make_site(tmp_path, [sys.executable, "-c", HOOK, "--who={name}", "{distance}"])
    proc = run_door(site, clip)
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = events_of(proc.stdout)
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
    assert all(c[1] == "obama" for c in calls)
    assert sum(c[0][0] == "relock" for c in calls) == 2

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
    out = subprocess.run([DOOR, "log", "--config", str(site / "config.yaml"), "--json", "--last", "100"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    assert [json.loads(line)["event"] for line in out.stdout.splitlines()].count("unlock") == 2


def test_hanging_hook_is_killed_and_the_door_goes_on(tmp_path, clip):
    site = make_site(tmp_path, [sys.executable, "-c", "import time; time.sleep(60)"], hook_timeout=0.5)
    started = time.monotonic()
    proc = run_door(site, clip)
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = events_of(proc.stdout)
    assert [e["name"] for e in events if e["event"] == "unlock"] == ["obama", "obama"]
    faults = [e for e in events if e["event"] == "fault"]
    # the first hook hits its timeout; the last may instead be cut short by the end of the clip
    assert len(faults) >= 2 and all(e["detail"].endswith("killed") for e in faults)
    assert "timed out after 0.5 s" in faults[0]["detail"]
    assert time.monotonic() - started < 120  # two 60 s hooks were not waited for


def test_sigterm_stops_a_realtime_run(tmp_path, clip):
    site = make_site(tmp_path, [])
    env = dict(os.environ, HOOK_OUT=str(site / "hook.jsonl"))
    proc = subprocess.Popen([DOOR, "run", "--config", str(site / "config.yaml"), "--source", str(clip),
                             "--realtime", "--headless", "--events-json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=site)
    try:
        first = proc.stdout.readline()  # the first unlock: the app is fully up
        assert json.loads(first)["event"] == "unlock"
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    finally:
        proc.kill()
    assert code == 0


def test_no_camera_exits_2_with_a_hint(tmp_path):
    site = make_site(tmp_path, [])
    proc = subprocess.run([DOOR, "run", "--config", str(site / "config.yaml"), "--source", "7", "--headless"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    [line] = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert "no camera at index 7" in line and "--source" in line

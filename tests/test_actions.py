"""The actions worker with real hooks (subprocesses), a real web server, real espeak-ng speech and real files."""

import dataclasses
import http.server
import json
import logging
import re
import socket
import sqlite3
import sys
import threading
import time
import wave
from pathlib import Path

import cv2
import numpy as np
import pytest

from door_access.config import AccessLogConfig, DoorConfig, TtsConfig
from door_access.core import ALARM, CAMERA_BACK, CAMERA_LOST, DENIED, FAULT, GALLERY, RELOCK, UNLOCK, Event, Notice
from door_access.door.access_log import AccessLog
from door_access.door.actions import Actions
from door_access.door.hooks import fill_argv
from door_access.door.speech import Speaker, safe_slug, welcome_text
from door_access.door.webhook import SIGNATURE_HEADER

from conftest import REPO, make_config, wait_for

WAIT_S = 20  # generous bound on every wait, so a broken worker fails a test instead of hanging it

# A hook that appends one JSON line (its argv and DOOR_* environment) to the file named by its first argument.
RECORD_HOOK = ("import json, os, sys; open(sys.argv[1], 'a').write(json.dumps({'argv': sys.argv[2:], "
               "'env': {k: v for k, v in os.environ.items() if k.startswith('DOOR_')}, 'keys': sorted(os.environ)})"
               " + '\\n')")
# A hook that starts a grandchild, writes both pids, then hangs.
HANGING_HOOK = ("import os, subprocess, sys, time; "
                "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
                "open(sys.argv[1], 'a').write(f'{child.pid} {os.getpid()}\\n'); "
                "time.sleep(60)")


def hook_calls(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def record_hook(path: Path, *args: str) -> tuple[str, ...]:
    return (sys.executable, "-c", RECORD_HOOK, str(path), *args)


def is_running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (a killed grandchild may wait a while to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def unlock(name: str = "alice", distance: float = 0.4321, track: int = 3) -> Notice:
    return Notice(Event(UNLOCK, t=time.monotonic(), wall=time.time(), name=name, distance=distance, track=track))


def notice(kind: str, name: str | None = None, track: int | None = None, snapshot=None, detail: str = "") -> Notice:
    return Notice(Event(kind, t=time.monotonic(), wall=time.time(), name=name, track=track, detail=detail), snapshot)


class Rig:
    """An Actions worker wired to a real access log, with every emitted event collected."""

    def __init__(self, tmp_path: Path, door: DoorConfig, tts: TtsConfig, access: AccessLogConfig,
                 speaker: Speaker | None, queue_size: int, log_name: str = "access.sqlite"):
        self.cfg = make_config(tmp_path, door=door, tts=tts, access_log=access)
        self.log = AccessLog(tmp_path / log_name, retry_s=0.1)
        self.speaker = speaker or Speaker(self.cfg.tts, None)
        self.events: list[Event] = []
        self.actions = Actions(self.cfg, self.log, self.speaker, emit=self.events.append,
                               clock=lambda: (time.monotonic(), time.time()), queue_size=queue_size)

    def kinds(self) -> list[str]:
        return [e.event for e in self.events]

    def wait_kinds(self, *kinds: str) -> bool:
        """Wait until the emitted events include `kinds` (with repeats) in this order."""
        def found() -> bool:
            it = iter(self.kinds())
            return all(k in it for k in kinds)
        return wait_for(found)

    def faults(self) -> list[Event]:
        return [e for e in self.events if e.event == FAULT]

    def stop(self) -> None:
        self.actions.stop(5.0)
        self.speaker.stop(5.0)
        self.log.close()


@pytest.fixture
def rig(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # hooks run here: anything they (wrongly) create lands in tmp_path
    made: list[Rig] = []

    def make(door: DoorConfig | None = None, tts: TtsConfig | None = None, access: AccessLogConfig | None = None,
             speaker: Speaker | None = None, start: bool = True, queue_size: int = 64,
             log_name: str = "access.sqlite") -> Rig:
        r = Rig(tmp_path, door or DoorConfig(), tts or TtsConfig(enabled=False),
                access or AccessLogConfig(snapshots_dir=None), speaker, queue_size, log_name)
        if start:
            r.speaker.start()
            r.actions.start()
        made.append(r)
        return r

    yield make
    for r in made:
        r.stop()


# ---- hooks --------------------------------------------------------------------------------------


def test_unlock_hook_gets_the_name_verbatim_and_no_shell_runs_it(rig, tmp_path, monkeypatch):
    monkeypatch.setenv("APP_DATABASE_PASSWORD", "s3cret")  # the app's environment is not the hook's
    calls = tmp_path / "unlock.jsonl"
    name = (f"O'Brien $(touch {tmp_path / 'PWNED'}); `touch {tmp_path / 'PWNED2'}`; rm -rf x "
            "{distance} \"q\" -n ünï")
    r = rig(DoorConfig(unlock_command=record_hook(calls, "--who={name}", "{distance}", "-{name}-"), unlock_seconds=60))
    r.actions.submit(unlock(name, distance=0.43217, track=7))
    assert wait_for(lambda: len(hook_calls(calls)) == 1)

    (call,) = hook_calls(calls)
    assert call["argv"] == [f"--who={name}", "0.4322", f"-{name}-"]
    assert call["env"] == {"DOOR_EVENT": "unlock", "DOOR_NAME": name, "DOOR_DISTANCE": "0.4322", "DOOR_TRACK": "7",
                           "DOOR_SOURCE": "face"}
    assert set(call["keys"]) - {"LC_CTYPE"} == {"PATH", *call["env"]}  # LC_CTYPE: set by Python itself (PEP 538)
    time.sleep(0.2)  # a shell, had one run, would have had time to create the files
    for folder in (tmp_path, REPO, Path.cwd()):
        assert not (folder / "PWNED").exists() and not (folder / "PWNED2").exists()
    assert r.faults() == []


def test_relock_runs_after_unlock_seconds(rig, tmp_path):
    relocks = tmp_path / "relock.jsonl"
    r = rig(DoorConfig(relock_command=record_hook(relocks, "{name}"), unlock_seconds=0.2))
    r.actions.submit(unlock("bob", track=5))
    assert r.wait_kinds(RELOCK, UNLOCK, RELOCK)
    assert wait_for(lambda: len(hook_calls(relocks)) == 2)

    at_start, call = hook_calls(relocks)  # the door is locked at start-up: its state is unknown
    assert at_start["argv"] == [""] and at_start["env"]["DOOR_NAME"] == ""
    assert call["argv"] == ["bob"]
    assert call["env"]["DOOR_EVENT"] == "relock" and call["env"]["DOOR_NAME"] == "bob"
    started, unlocked, relocked = r.events
    assert started.detail.startswith("start-up")
    assert (relocked.event, relocked.name, relocked.track) == (RELOCK, "bob", 5)
    assert relocked.t - unlocked.t >= 0.2  # not before it was due
    assert [e.event for e in r.log.last(10)] == [RELOCK, UNLOCK, RELOCK]


def test_an_unlock_while_open_extends_it_with_one_relock(rig, tmp_path):
    unlocks, relocks = tmp_path / "unlock.jsonl", tmp_path / "relock.jsonl"
    r = rig(DoorConfig(unlock_command=record_hook(unlocks, "{name}"), relock_command=record_hook(relocks, "{name}"),
                       unlock_seconds=0.6))
    r.actions.submit(unlock("alice"))
    assert wait_for(lambda: len(hook_calls(unlocks)) == 1)
    time.sleep(0.3)  # still open
    second = unlock("carol")
    r.actions.submit(second)
    assert r.wait_kinds(UNLOCK, UNLOCK, RELOCK)
    r.actions.stop(5.0)  # would run a second pending relock, if there were one

    assert r.kinds() == [RELOCK, UNLOCK, UNLOCK, RELOCK]  # the first: at start-up
    assert [c["argv"] for c in hook_calls(unlocks)] == [["alice"], ["carol"]]
    assert [c["argv"] for c in hook_calls(relocks)] == [[""], ["carol"]]
    assert r.events[-1].name == "carol"
    assert r.events[-1].t - second.event.t >= 0.6  # counted from the second unlock


def test_stop_runs_a_pending_relock_at_once(rig, tmp_path):
    relocks = tmp_path / "relock.jsonl"
    r = rig(DoorConfig(relock_command=record_hook(relocks, "{name}"), unlock_seconds=600))
    r.actions.submit(unlock("dave"))
    assert r.wait_kinds(UNLOCK)
    assert [c["argv"] for c in hook_calls(relocks)] == [[""]]  # at start-up only
    r.actions.stop(5.0)

    assert not r.actions.is_alive()
    assert [c["argv"] for c in hook_calls(relocks)] == [[""], ["dave"]]
    assert r.kinds() == [RELOCK, UNLOCK, RELOCK]
    assert r.events[-1].detail == "app stopping"
    assert [e.event for e in r.log.last(10)] == [RELOCK, UNLOCK, RELOCK]


def test_a_hanging_hook_is_killed_with_its_children_and_the_next_unlock_is_handled(rig, tmp_path):
    pids = tmp_path / "pids.txt"
    r = rig(DoorConfig(unlock_command=(sys.executable, "-c", HANGING_HOOK, str(pids)), hook_timeout_s=0.5,
                       unlock_seconds=600))
    r.actions.submit(unlock("erin"))
    assert r.wait_kinds(UNLOCK, FAULT)
    fault = r.faults()[0]
    assert "unlock hook" in fault.detail and "timed out after 0.5 s" in fault.detail and fault.name == "erin"
    child, hook = map(int, pids.read_text().split())
    assert wait_for(lambda: not is_running(child) and not is_running(hook))

    r.actions.submit(unlock("frank"))  # the worker goes on
    assert r.wait_kinds(UNLOCK, FAULT, UNLOCK, FAULT)
    r.actions.stop(5.0)
    assert not r.actions.is_alive()
    assert [e.event for e in r.log.last(10)] == [UNLOCK, FAULT, UNLOCK, FAULT, RELOCK]


def test_stop_kills_a_running_hook_instead_of_waiting_for_its_timeout(rig, tmp_path):
    pids = tmp_path / "pids.txt"
    r = rig(DoorConfig(unlock_command=(sys.executable, "-c", HANGING_HOOK, str(pids)), hook_timeout_s=600))
    r.actions.submit(unlock("gina"))
    assert wait_for(lambda: pids.exists() and len(pids.read_text().split()) == 2)
    r.actions.stop(5.0)

    assert not r.actions.is_alive()  # it did not wait 600 s for the hook
    child, hook = map(int, pids.read_text().split())
    assert wait_for(lambda: not is_running(child) and not is_running(hook))
    assert r.kinds() == [UNLOCK, FAULT, RELOCK]
    assert "still running when the app stopped" in r.events[1].detail


def test_failing_and_missing_hooks_are_faults_never_relocks_and_the_app_goes_on(rig, tmp_path, caplog):
    failing = (sys.executable, "-c", "import sys; sys.stderr.write('boom: no door here'); sys.exit(3)")
    missing = (str(tmp_path / "no-such-program"), "{name}")
    r = rig(DoorConfig(unlock_command=failing, relock_command=missing, unlock_seconds=0.0))
    with caplog.at_level(logging.WARNING, logger="door_access.door.controller"):
        assert r.actions.door.state() == "relock_failing"  # the start-up relock failed: retried with backoff
        r.actions.submit(unlock("hank"))
        assert r.wait_kinds(FAULT, UNLOCK, FAULT, FAULT)
        r.actions.submit(unlock("ivy"))
        assert r.wait_kinds(FAULT, UNLOCK, FAULT, FAULT, UNLOCK, FAULT, FAULT)
        r.actions.stop(5.0)

    assert RELOCK not in r.kinds()  # a relock is recorded only when its hook succeeded
    assert r.actions.door.state() == "relock_failing"
    unlock_faults = [e for e in r.faults() if "unlock hook" in e.detail]
    assert len(unlock_faults) == 2 and all("exited with code 3" in e.detail for e in unlock_faults)
    assert "boom: no door here" in unlock_faults[0].detail
    relock_faults = [e for e in r.faults() if "relock hook" in e.detail]
    assert len(relock_faults) >= 3 and all("could not start" in e.detail for e in relock_faults)
    assert sum("exited with code 3" in rec.getMessage() for rec in caplog.records) == 2
    assert [e.event for e in r.log.last(50)] == r.kinds()


def test_a_locked_access_log_does_not_delay_the_unlock_hook_and_loses_nothing(rig, tmp_path):
    """The database locked by another connection for 10 s around an unlock: the hook runs as soon
    as with a free log, and once the lock goes every event is in the database, in order."""
    unlocks = tmp_path / "unlock.jsonl"

    def hook_delay(r: Rig, name: str) -> float:
        submitted = time.monotonic()
        r.actions.submit(unlock(name))
        assert wait_for(lambda: any(c["argv"] == [name] for c in hook_calls(unlocks)))
        return time.monotonic() - submitted

    door = DoorConfig(unlock_command=record_hook(unlocks, "{name}"), unlock_seconds=600)
    free = rig(door, log_name="free.sqlite")
    free.actions.submit(notice(CAMERA_LOST, detail="before"))
    free_s = hook_delay(free, "free")

    locked = rig(door)
    for i in range(3):
        locked.actions.submit(notice(DENIED, track=i))
    assert locked.log.flush(WAIT_S)
    other = sqlite3.connect(tmp_path / "access.sqlite", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    held_since = time.monotonic()
    try:
        locked.actions.submit(notice(CAMERA_LOST, detail="before"))
        locked_s = hook_delay(locked, "locked")
        locked.actions.submit(notice(CAMERA_BACK, detail="after"))
        assert locked.wait_kinds(DENIED, DENIED, DENIED, CAMERA_LOST, UNLOCK, CAMERA_BACK)  # emitted meanwhile
        assert time.monotonic() - held_since < 10  # all of it happened while the database was locked
        assert locked.log.pending() >= 3  # ...and none of it is in the database yet
        time.sleep(max(0.0, 10 - (time.monotonic() - held_since)))
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert locked_s < free_s + 1.5, (locked_s, free_s)  # the old log made the door wait 2 s per event before it
    assert locked.log.flush(WAIT_S)
    assert locked.log.last(100) == locked.events  # in order, exactly once


# ---- webhook --------------------------------------------------------------------------------------


class WebServer:
    """A local HTTP server whose answer the test picks: "ok", "500", "redirect" (302 to `location`) or "hold"
    (answer only when released)."""

    def __init__(self):
        self.mode = "ok"
        self.location = ""
        self.requests: list[tuple[dict, bytes]] = []
        self.release = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                server.requests.append((dict(self.headers), body))
                if server.mode == "hold":
                    server.release.wait(WAIT_S)
                if server.mode == "redirect":
                    self.send_response(302)
                    self.send_header("Location", server.location)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                code = 500 if server.mode == "500" else 200
                self.send_response(code)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def do_GET(self):  # urllib would follow a 302 after a POST as a GET
                server.requests.append((dict(self.headers), b""))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.handle_error = lambda *args: None  # a client that gave up is not news
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/door"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def web():
    server = WebServer()
    yield server
    server.close()


def test_webhook_receives_the_unlock_as_json(rig, web):
    r = rig(DoorConfig(webhook_url=web.url, unlock_seconds=600))
    sent = unlock("jo {x}", distance=0.5, track=9)
    r.actions.submit(sent)
    assert wait_for(lambda: len(web.requests) == 1)

    headers, body = web.requests[0]
    assert headers["Content-Type"] == "application/json"
    e = sent.event
    assert json.loads(body) == {"event": "unlock", "name": "jo {x}", "distance": 0.5, "track": 9, "t": e.t,
                                "wall": e.wall, "detail": ""}
    assert SIGNATURE_HEADER not in headers  # no secret configured
    shown = Notice(dataclasses.replace(sent.event, name="lin-manuel-miranda", display_name="Lin-Manuel Miranda"))
    r.actions.submit(shown)  # the cooldown is the decider's: the worker posts every unlock it is given
    assert wait_for(lambda: len(web.requests) == 2)
    posted = json.loads(web.requests[1][1])
    assert (posted["name"], posted["display_name"]) == ("lin-manuel-miranda", "Lin-Manuel Miranda")
    r.actions.stop(5.0)
    assert r.faults() == []


def test_webhook_receives_a_stage_fault_but_not_a_hook_fault(rig, web):
    """A stalled or failed stage (a FAULT notice from the pipeline) is posted: nobody gets in until the door
    restarts. A relock hook's own faults are not (they are logged, and retried)."""
    r = rig(DoorConfig(webhook_url=web.url, unlock_seconds=600, relock_command=("/bin/false",)))
    r.actions.submit(notice(FAULT, detail="stage 'decider' stalled: no progress for 10.0 s with work waiting"))
    assert wait_for(lambda: len(web.requests) == 1)
    body = json.loads(web.requests[0][1])
    assert body["event"] == "fault" and "'decider' stalled" in body["detail"]
    assert any("relock hook" in e.detail for e in r.faults())  # at start-up: logged, not posted
    r.actions.stop(5.0)
    assert len(web.requests) == 1


def test_webhook_body_is_signed_and_a_receiver_can_verify_it(rig, web):
    import hashlib
    import hmac

    secret = "door-secret-ünï"
    r = rig(DoorConfig(webhook_url=web.url, webhook_secret=secret, unlock_seconds=600))
    r.actions.submit(unlock("ro"))
    r.actions.submit(notice(ALARM, name="ro", detail="3 failed attempts"))
    assert wait_for(lambda: len(web.requests) == 2)
    for headers, body in web.requests:  # what a receiver does: HMAC-SHA256 of the raw body, constant-time compare
        expected = "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers[SIGNATURE_HEADER], expected)
        assert not hmac.compare_digest(headers[SIGNATURE_HEADER], "sha256=" + hmac.new(
            b"wrong", body, hashlib.sha256).hexdigest())
    assert [json.loads(body)["event"] for _, body in web.requests] == [UNLOCK, ALARM]
    r.actions.stop(5.0)
    assert r.faults() == []


def test_a_webhook_redirect_is_not_followed_and_is_a_fault(rig, web):
    elsewhere = WebServer()  # where the redirect points: it must never see the event
    try:
        web.mode = "redirect"
        web.location = elsewhere.url
        r = rig(DoorConfig(webhook_url=web.url, webhook_secret="k", unlock_seconds=600))
        r.actions.submit(unlock("sam"))
        assert r.wait_kinds(UNLOCK, FAULT)
        assert "webhook" in r.faults()[0].detail and "302" in r.faults()[0].detail
        time.sleep(0.3)
        assert len(web.requests) == 1 and elsewhere.requests == []
    finally:
        elsewhere.close()


def test_webhook_http_500_is_a_fault(rig, web):
    web.mode = "500"
    r = rig(DoorConfig(webhook_url=web.url, unlock_seconds=600))
    r.actions.submit(unlock("kim"))
    assert r.wait_kinds(UNLOCK, FAULT)
    assert "webhook" in r.faults()[0].detail and "500" in r.faults()[0].detail
    r.actions.submit(notice(DENIED, track=1))
    assert r.wait_kinds(UNLOCK, FAULT, DENIED)
    assert [e.event for e in r.log.last(10)] == [UNLOCK, FAULT, DENIED]


def test_webhook_refused_connection_is_a_fault(rig):
    with socket.socket() as s:  # a port that was free a moment ago, and has no listener now
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = rig(DoorConfig(webhook_url=f"http://127.0.0.1:{port}/door", unlock_seconds=600))
    r.actions.submit(unlock("lee"))
    assert r.wait_kinds(UNLOCK, FAULT)
    assert "webhook" in r.faults()[0].detail and "refused" in r.faults()[0].detail.lower()


def test_a_slow_webhook_server_is_a_fault_and_does_not_hold_up_the_worker(rig, web):
    web.mode = "hold"  # answers only when the test ends: far beyond the timeout
    r = rig(DoorConfig(webhook_url=web.url, hook_timeout_s=2.0, unlock_seconds=600))
    r.actions.submit(unlock("mo"))
    assert wait_for(lambda: len(web.requests) == 1)  # the server holds the request now
    r.actions.submit(notice(CAMERA_LOST, detail="usb"))
    assert r.wait_kinds(UNLOCK, CAMERA_LOST, FAULT)  # handled while the webhook still waited
    fault = r.faults()[0]
    assert "webhook" in fault.detail and "timed out" in fault.detail and fault.name == "mo"


# ---- speech ---------------------------------------------------------------------------------------


def test_welcome_text_and_hook_arguments_fill_names_literally():
    assert welcome_text("Welcome {name}, have a nice day!", "Mary Jane") == "Welcome Mary Jane, have a nice day!"
    assert welcome_text("Hi {name}!", "{0} {name} {}") == "Hi {0} {name} {}!"
    assert fill_argv(["{name}", "d={distance}", "{other}"], "{distance}", 0.12345) == ["{distance}", "d=0.1235",
                                                                                        "{other}"]
    assert fill_argv(["{distance}"], "x", None) == [""]


@pytest.mark.parametrize("text, slug", [
    ("Welcome Mary Jane, have a nice day!", "Welcome_Mary_Jane_have_a_nice_day"),
    ("--rf ../../etc/passwd", "rf_etc_passwd"),
    ("O'Brien $(touch x); `id` \"q\"", "O_Brien_touch_x_id_q"),
    ("Zoë Ünïcødé", "Zoe_Unicde"),
    ("日本語", "speech"),
])
def test_safe_slug_keeps_only_safe_characters(text, slug):
    assert safe_slug(text) == slug


def read_wav(path: Path) -> tuple[int, int]:
    with open(path, "rb") as f:
        header = f.read(12)
    assert header[:4] == b"RIFF" and header[8:12] == b"WAVE"
    with wave.open(str(path)) as w:
        return w.getnframes(), w.getnchannels()


def test_each_welcome_is_a_real_wav_with_a_safe_name(rig, tmp_path, capfd):
    wav_dir = tmp_path / "wavs"
    tts = TtsConfig(enabled=True, template="Welcome {name}, have a nice day!", rate=220)
    r = rig(tts=tts, speaker=Speaker(tts, wav_dir), door=DoorConfig(unlock_seconds=600))
    names = ["Mary_Jane", "../../$(touch PWNED)/'q\";-rf {x} ünï", "-n"]
    for name in names:
        r.actions.submit(unlock(name))
    assert r.wait_kinds(UNLOCK, UNLOCK, UNLOCK)
    r.speaker.stop(WAIT_S)  # says what is queued, then ends

    wavs = sorted(wav_dir.iterdir())
    assert len(wavs) == 3
    assert sorted(p for p in tmp_path.rglob("*") if p.suffix == ".wav") == wavs  # nothing outside wav_dir
    for path in wavs:
        assert re.fullmatch(r"\d{8}-\d{6}-\d{4}-[A-Za-z0-9][A-Za-z0-9_-]*\.wav", path.name), path.name
        frames, channels = read_wav(path)
        assert frames > 2000 and channels == 1  # a short phrase is well over 0.1 s of audio
    assert "Welcome_Mary_Jane_have_a_nice_day" in wavs[0].name
    assert not (tmp_path / "PWNED").exists()
    assert "Audio saved" not in capfd.readouterr().out  # pyttsx3's print would corrupt `--events-json` on stdout


def test_the_welcome_says_the_display_name_and_the_log_keeps_the_enrolled_name(rig, tmp_path):
    """The spoken welcome is the event's display name (people.yaml), else the name read out; the access
    log and the hook get the enrolled name, the key people.yaml and the gallery use."""
    wav_dir, calls = tmp_path / "wavs", tmp_path / "unlock.jsonl"
    tts = TtsConfig(enabled=True, template="Welcome {name}, have a nice day!", rate=220)
    r = rig(tts=tts, speaker=Speaker(tts, wav_dir),
            door=DoorConfig(unlock_seconds=600, unlock_command=record_hook(calls, "{name}")))
    shown = Notice(Event(UNLOCK, t=time.monotonic(), wall=time.time(), name="lin-manuel-miranda", distance=0.4,
                         track=1, display_name="Lin-Manuel Miranda"))
    r.actions.submit(shown)
    r.actions.submit(unlock("alex_lacamoire"))
    assert r.wait_kinds(UNLOCK, UNLOCK)
    r.speaker.stop(WAIT_S)
    wavs = sorted(p.name for p in wav_dir.iterdir())
    assert len(wavs) == 2
    assert "Welcome_Lin-Manuel_Miranda_have" in wavs[0]  # the slug keeps 40 characters
    assert "Welcome_Alex_Lacamoire_have_a_nice_day" in wavs[1]
    assert wait_for(lambda: len(hook_calls(calls)) == 2)
    assert [c["argv"] for c in hook_calls(calls)] == [["lin-manuel-miranda"], ["alex_lacamoire"]]
    def logged():
        return sorted(e.name for e, _ in r.log.query(last=10) if e.event == UNLOCK)
    assert wait_for(lambda: logged() == ["alex_lacamoire", "lin-manuel-miranda"]), logged()
    emitted = [json.loads(e.to_json()) for e in r.events if e.event == UNLOCK]  # the `--events-json` lines
    assert emitted[0]["name"] == "lin-manuel-miranda" and emitted[0]["display_name"] == "Lin-Manuel Miranda"
    assert "display_name" not in emitted[1]  # the event came without one; the welcome read the name out


def test_a_speech_engine_that_cannot_start_is_one_warning_and_the_door_still_works(rig, tmp_path, caplog):
    calls = tmp_path / "unlock.jsonl"
    tts = TtsConfig(enabled=True)
    with caplog.at_level(logging.WARNING, logger="door_access.door.speech"):
        r = rig(tts=tts, speaker=Speaker(tts, tmp_path / "wavs", driver_name="no_such_driver"),
                door=DoorConfig(unlock_command=record_hook(calls, "{name}"), unlock_seconds=600))
        for name in ("nia", "oz", "pat"):
            r.actions.submit(unlock(name))
        assert wait_for(lambda: len(hook_calls(calls)) == 3)
        r.speaker.stop(5.0)
    speech = [rec for rec in caplog.records if "speech disabled" in rec.getMessage()]
    assert len(speech) == 1 and "no_such_driver" in speech[0].getMessage()
    assert [c["argv"] for c in hook_calls(calls)] == [["nia"], ["oz"], ["pat"]]
    assert not any((tmp_path / "wavs").glob("*.wav"))


def test_playing_without_an_audio_player_is_one_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("PATH", str(tmp_path))  # no `aplay` to be found: pyttsx3 would fail silently
    speaker = Speaker(TtsConfig(enabled=True), None)
    with caplog.at_level(logging.WARNING, logger="door_access.door.speech"):
        speaker.start()
        for _ in range(3):
            speaker.say("hello")
        speaker.stop(5.0)
        assert wait_for(lambda: any("speech disabled" in rec.getMessage() for rec in caplog.records))
        speaker.say("after the failure")
    assert sum("speech disabled" in rec.getMessage() for rec in caplog.records) == 1
    assert "aplay" in caplog.text


def test_disabled_speech_writes_nothing(tmp_path):
    speaker = Speaker(TtsConfig(enabled=False), tmp_path / "wavs")
    speaker.start()
    speaker.say("hello")
    speaker.stop(5.0)
    assert not (tmp_path / "wavs").exists()


# ---- denials and the event stream ---------------------------------------------------------------


def face(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (48, 40, 3), dtype=np.uint8)


def test_denial_snapshots_are_written_and_only_the_newest_are_kept(rig, tmp_path):
    snaps = tmp_path / "snaps"
    r = rig(access=AccessLogConfig(snapshots_dir=str(snaps), snapshots_keep=3))
    for track in range(1, 6):
        r.actions.submit(notice(DENIED, name="../../evil $(x)", track=track, snapshot=face(track)))
    r.actions.submit(notice(DENIED, track=6))  # no image
    r.actions.submit(notice(DENIED, track=7, snapshot=np.zeros((10, 10, 3), np.float32)))  # not an 8-bit image
    assert r.wait_kinds(*[DENIED] * 7)
    r.actions.stop(5.0)

    files = sorted(p.name for p in snaps.iterdir())
    assert len(files) == 3 and all(re.fullmatch(r"denied-[0-9-]+-track[345]\.jpg", f) for f in files), files
    assert [f[-6:-4] for f in files] == ["k3", "k4", "k5"]
    assert all(cv2.imread(str(snaps / f)).shape == (48, 40, 3) for f in files)
    assert not any(p.suffix == ".jpg" for p in tmp_path.rglob("*") if p.parent != snaps)


def test_a_snapshot_that_cannot_be_saved_is_a_warning_and_the_denial_is_still_logged(rig, tmp_path, caplog):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    r = rig(access=AccessLogConfig(snapshots_dir=str(blocker / "snaps"), snapshots_keep=3))
    with caplog.at_level(logging.WARNING, logger="door_access.door.actions"):
        r.actions.submit(notice(DENIED, track=1, snapshot=face(1)))
        r.actions.submit(notice(DENIED, track=2, snapshot=face(2)))
        assert r.wait_kinds(DENIED, DENIED)
    assert sum("snapshot" in rec.getMessage() for rec in caplog.records) == 2
    assert [e.event for e in r.log.last(10)] == [DENIED, DENIED]


def test_every_event_reaches_the_access_log_and_emit_in_order(rig):
    r = rig(DoorConfig(unlock_seconds=600))
    sent = [notice(CAMERA_LOST, detail="gone"), notice(CAMERA_BACK), notice(GALLERY, detail="3 people"),
            notice(FAULT, detail="stage x failed"), notice(DENIED, track=2), unlock("quinn", track=4)]
    for n in sent:
        r.actions.submit(n)
    assert r.wait_kinds(*[n.event.event for n in sent])
    r.actions.stop(5.0)  # the pending relock runs, and is logged and emitted too

    assert r.events[:-1] == [n.event for n in sent]
    assert r.events[-1].event == RELOCK and r.events[-1].name == "quinn"
    assert r.log.last(100) == r.events


def test_submit_never_blocks_when_the_queue_is_full(rig, caplog):
    r = rig(start=False, queue_size=2)
    with caplog.at_level(logging.WARNING, logger="door_access.door.actions"):
        for track in range(5):
            r.actions.submit(notice(DENIED, track=track))
    assert sum("queue full" in rec.getMessage() for rec in caplog.records) == 1
    r.actions.start()
    assert r.wait_kinds(DENIED, DENIED)
    r.actions.stop(5.0)
    assert [e.track for e in r.events] == [0, 1]



def test_an_alarm_is_spoken_once(rig, tmp_path):
    """The lockout's alarm is said through the welcome voice, once per alarm event."""
    wav_dir = tmp_path / "wavs"
    tts = TtsConfig(enabled=True, rate=220)
    r = rig(tts=tts, speaker=Speaker(tts, wav_dir))
    r.actions.submit(notice(ALARM, detail="5 failed attempts within 120 s"))
    r.actions.submit(notice(DENIED, detail="locked out for 60 s"))
    assert r.wait_kinds(ALARM, DENIED)
    r.speaker.stop(WAIT_S)
    wavs = sorted(wav_dir.iterdir())
    assert len(wavs) == 1 and "Too_many_failed_attempts" in wavs[0].name
    assert read_wav(wavs[0])[0] > 2000

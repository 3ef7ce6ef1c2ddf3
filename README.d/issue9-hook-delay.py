"""Unlock-hook delay (submit -> hook running) with a free vs a locked access log, for the code on sys.path[0]."""
import json, sqlite3, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from door_access.access_log import AccessLog
from door_access.actions import Actions, Speaker
from door_access.config import AccessLogConfig, Config, DoorConfig, TtsConfig
from door_access.core import CAMERA_LOST, UNLOCK, Event, Notice

HOOK = "import sys, time; open(sys.argv[1], 'a').write(f'{time.time()}\\n')"

def delay(locked: bool) -> float:
    tmp = Path(tempfile.mkdtemp())
    calls = tmp / "calls.txt"
    cfg = Config(door=DoorConfig(unlock_command=(sys.executable, "-c", HOOK, str(calls)), unlock_seconds=600),
                 tts=TtsConfig(enabled=False), access_log=AccessLogConfig(snapshots_dir=None))
    log = AccessLog(tmp / "log.sqlite")
    actions = Actions(cfg, log, Speaker(cfg.tts, None))
    actions.start()
    other = None
    if locked:
        other = sqlite3.connect(tmp / "log.sqlite", isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
    t0 = time.time()
    actions.submit(Notice(Event(CAMERA_LOST, 0.0, t0, detail="usb")))
    actions.submit(Notice(Event(UNLOCK, 0.0, t0, name="ann", distance=0.5, track=1)))
    while not (calls.exists() and calls.read_text().strip()):
        time.sleep(0.005)
    d = float(calls.read_text().split()[0]) - t0
    if other:
        other.execute("ROLLBACK"); other.close()
    actions.stop(5.0); log.close()
    return d

for locked in (False, True):
    ds = sorted(delay(locked) for _ in range(5))
    print(json.dumps({"code": sys.argv[1], "log": "locked" if locked else "free", "median_s": round(ds[2], 3),
                      "min_s": round(ds[0], 3), "max_s": round(ds[-1], 3)}))

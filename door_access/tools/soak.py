"""`door-access soak`: the real door run for a long time on a clip looped like a live camera.

What a kiosk left alone for months needs: memory, threads and open files that do not grow, no
event lost between the door and its access log, every unlock relocked, and hot enrollment that
keeps working. The door runs in this process (built by `app.build_pipeline`, as `run` builds it)
on a copy of the gallery in a scratch folder; one photo is enrolled and removed again every
`enroll_every_s`; RSS, threads and open files of this process and of the detector processes are
sampled every `sample_s`. `judge()` turns the samples and events into pass/fail checks (pure, so
its failures are tested on made-up samples).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2

from door_access.config import Config
from door_access.core import RELOCK, UNLOCK, Event
from door_access.quiet import progress_bar

log = logging.getLogger(__name__)

# Growth allowed between the first and last third of the run (after the first sample, taken warm)
RSS_GROWTH_MB = 64.0  # glibc arenas and TensorFlow's caches settle in steps of a few MB
THREAD_GROWTH = 2
FD_GROWTH = 4
RELOCK_SLACK_S = 5.0  # on top of unlock_seconds + 2 hook timeouts: a relock later than this is missing
# A relock hook that appends its event to the file named by its first argument: proof the hook ran
HOOK = "import os, sys; open(sys.argv[1], 'a').write(os.environ['DOOR_EVENT'] + '\\n')"


class LoopedClip:
    """A video file that never ends: cv2.VideoCapture's read(), rewound at the end (a live camera
    for `Capture`, which paces it at the file's own rate)."""

    def __init__(self, path: str):
        self.path = path
        self._cap = cv2.VideoCapture(path)
        self.loops = 0

    def isOpened(self) -> bool:  # cv2.VideoCapture's spelling
        return self._cap.isOpened()

    def get(self, prop: int) -> float:
        return self._cap.get(prop)

    def read(self):
        ok, image = self._cap.read()
        if not ok:
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            self.loops += 1
            ok, image = self._cap.read()
        return ok, image

    def release(self) -> None:
        self._cap.release()


def usage(pid: int) -> dict:
    """RSS (MB), threads and open files of process `pid`, from Linux /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kb = int(re.search(r"^VmRSS:\s+(\d+)", status, re.M).group(1))
    threads = int(re.search(r"^Threads:\s+(\d+)", status, re.M).group(1))
    return {"rss_mb": round(rss_kb / 1024, 1), "threads": threads, "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def sample(t: float, children: list[int]) -> dict:
    """One sample: this process, and the detector processes summed."""
    own = usage(os.getpid())
    kids = [usage(pid) for pid in children if Path(f"/proc/{pid}").exists()]
    return {"t": round(t, 1), **own,
            "children_rss_mb": round(sum(k["rss_mb"] for k in kids), 1),
            "children_fds": sum(k["fds"] for k in kids), "children": len(kids)}


def _growth(samples: list[dict], key: str, summary) -> float:
    """`summary` of the last third minus that of the first third, leaving out the first sample (warm-up)."""
    values = [s[key] for s in samples[1:]]
    third = max(1, len(values) // 3)
    return round(summary(values[-third:]) - summary(values[:third]), 1)


def judge(samples: list[dict], emitted: list[Event], logged: list[Event], unlock_window_s: float,
          failure: str | None = None, rss_growth_mb: float = RSS_GROWTH_MB, thread_growth: int = THREAD_GROWTH,
          fd_growth: int = FD_GROWTH) -> dict:
    """The soak's checks: {name: {"ok": bool, ...figures}}. Growth compares the last third of the
    samples with the first (medians for memory, maxima for counts); events are compared per kind."""
    checks: dict[str, dict] = {}
    enough = len(samples) >= 4
    for key, limit, summary in (("rss_mb", rss_growth_mb, statistics.median),
                                ("children_rss_mb", rss_growth_mb, statistics.median),
                                ("threads", thread_growth, max), ("fds", fd_growth, max),
                                ("children_fds", fd_growth, max)):
        grew = _growth(samples, key, summary) if enough else None
        checks[f"{key}_growth"] = {"ok": enough and grew <= limit, "growth": grew, "limit": limit,
                                   **({} if enough else {"why": f"{len(samples)} samples: 4 needed"})}
    sent, kept = _counts(emitted), _counts(logged)
    lost = {k: sent[k] - kept.get(k, 0) for k in sent if sent[k] != kept.get(k, 0)}
    checks["no_event_lost"] = {"ok": not lost, "emitted": sent, "logged": kept, "lost": lost}
    relocks = [e.t for e in emitted if e.event == RELOCK]
    unlocks = [e.t for e in emitted if e.event == UNLOCK]
    missing = [round(t, 1) for t in unlocks if not any(t < r <= t + unlock_window_s for r in relocks)]
    last_door = next((e.event for e in reversed(emitted) if e.event in (UNLOCK, RELOCK)), RELOCK)
    checks["every_unlock_relocked"] = {"ok": not missing and last_door == RELOCK and bool(unlocks),
                                       "unlocks": len(unlocks), "relocks": len(relocks), "not_relocked_at": missing,
                                       "locked_at_end": last_door == RELOCK}
    checks["ran_to_the_end"] = {"ok": failure is None, "failure": failure}
    return checks


def _counts(events: list[Event]) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in events:
        out[e.event] = out.get(e.event, 0) + 1
    return dict(sorted(out.items()))


def soak(cfg: Config, images: Path, clip: Path, hot_photo: Path, duration_s: float, sample_s: float = 60.0,
         enroll_every_s: float = 180.0, workdir: Path | None = None, **limits) -> dict:
    """Run the door on `clip` looped for `duration_s`; the report (see `judge`) with every sample."""
    from door_access.app import build_pipeline
    from door_access.door.access_log import AccessLog
    from door_access.faces.capture import Capture

    own_dir = workdir is None
    work = Path(tempfile.mkdtemp(prefix="door-soak-")) if own_dir else Path(workdir)
    gallery = work / "images"
    shutil.copytree(images, gallery, dirs_exist_ok=True)
    hot_name = re.sub(r"[^A-Za-z0-9_-]+", "_", hot_photo.stem).strip("_-") or "hot"
    hot_target = gallery / hot_name / f"soak{hot_photo.suffix.lower()}"
    hooks = work / "hooks.log"
    hook = (sys.executable, "-c", HOOK, str(hooks))
    # a recording cannot answer the spoken challenge: with `always`, or `graded` on a door without a site model
    # (everyone is asked), it would never unlock, and the soak would not exercise unlocks and relocks at all;
    # its passive cues let the clip's person in instead
    asks = cfg.liveness.challenge in ("always", "graded")
    live = dataclasses.replace(cfg.liveness, challenge="on_doubt") if asks else cfg.liveness
    cfg = dataclasses.replace(
        cfg,
        liveness=live,
        door=dataclasses.replace(cfg.door, unlock_command=hook, relock_command=hook),
        tts=dataclasses.replace(cfg.tts, wav_dir=str(work / "wav")),
        access_log=dataclasses.replace(cfg.access_log, path=str(work / "log.sqlite"),
                                       snapshots_dir=str(work / "snapshots")))
    c = cfg.camera
    opened: list[LoopedClip] = []
    capture = Capture(str(clip), True, c.lost_after_s, c.reconnect_min_s, c.reconnect_max_s,
                      opener=lambda source: opened.append(LoopedClip(str(source))) or opened[-1])
    emitted: list[Event] = []
    lock = threading.Lock()

    def emit(event: Event) -> None:
        with lock:
            emitted.append(event)

    pipeline = build_pipeline(cfg, gallery, capture, emit)
    samples: list[dict] = []
    toggles = 0
    pipeline.start()  # warms the encoder up: the run's time starts once it is up
    started = time.monotonic()
    try:
        next_sample = next_toggle = time.monotonic()
        next_toggle += enroll_every_s
        with progress_bar("soak", round(duration_s), unit="s") as bar:
            while not pipeline.stop_event.is_set():
                now = time.monotonic()
                bar.update(min(int(now - started), round(duration_s)) - bar.n)
                if now - started >= duration_s:
                    break
                if now >= next_sample:
                    samples.append(sample(now - started, pipeline.detected.pids()))
                    log.info("soak: %s", json.dumps(samples[-1]))
                    next_sample += sample_s
                if now >= next_toggle:
                    if hot_target.exists():
                        shutil.rmtree(hot_target.parent)
                    else:
                        hot_target.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy(hot_photo, hot_target)
                    toggles += 1
                    next_toggle += enroll_every_s
                time.sleep(min(0.2, max(0.0, min(next_sample, next_toggle) - time.monotonic())))
        samples.append(sample(time.monotonic() - started, pipeline.detected.pids()))
    finally:
        pipeline.stop()
    failure = f"stage '{pipeline.failure[0]}': {pipeline.failure[1]}" if pipeline.failure else None
    access_log = AccessLog(cfg.resolve(cfg.access_log.path))
    try:
        logged = access_log.last(10_000_000)
    finally:
        access_log.close()
    with lock:
        events = list(emitted)
    window = cfg.door.unlock_seconds + 2 * cfg.door.hook_timeout_s + RELOCK_SLACK_S
    checks = judge(samples, events, logged, window, failure, **limits)
    hook_runs = hooks.read_text().split() if hooks.exists() else []
    report = {
        "ok": all(c["ok"] for c in checks.values()),
        "checks": checks,
        "duration_s": round(time.monotonic() - started, 1),
        "clip": str(clip), "clip_loops": sum(o.loops for o in opened),
        "frames_in": capture.frames_in, "processed": pipeline.stats.processed, "dropped": capture.dropped,
        "hot_enroll_toggles": toggles, "hot_person": hot_name,
        "gallery_events": sum(e.event == "gallery" for e in events),
        "hook_runs": {"unlock": hook_runs.count("unlock"), "relock": hook_runs.count("relock")},
        "watchdog_longest_wait_s": pipeline.monitor.worst(),
        "samples": samples,
    }
    if own_dir:
        shutil.rmtree(work, ignore_errors=True)
    return report


def summary_lines(report: dict) -> list[str]:
    """The report for people: one line per check, then the first and last sample."""
    lines = [f"soak {'PASSED' if report['ok'] else 'FAILED'}: {report['duration_s']} s, {report['clip_loops']} loops, "
             f"{report['processed']} frames processed ({report['dropped']} dropped), "
             f"{report['hot_enroll_toggles']} hot enroll/remove"]
    for name, check in report["checks"].items():
        figures = {k: v for k, v in check.items() if k != "ok"}
        lines.append(f"  {'ok  ' if check['ok'] else 'FAIL'} {name}: {json.dumps(figures)}")
    if report["samples"]:
        lines.append(f"  first sample: {json.dumps(report['samples'][0])}")
        lines.append(f"  last sample:  {json.dumps(report['samples'][-1])}")
    lines.append(f"  watchdog, longest wait without progress (s): {json.dumps(report['watchdog_longest_wait_s'])}")
    return lines

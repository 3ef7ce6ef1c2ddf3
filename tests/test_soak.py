"""`door-access soak`: its checks fail on growth, a lost event or an unlock left open (made-up samples),
and a short real run on the Hamilton clip gives a report of the documented shape."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest

from door_access.core import DENIED, GALLERY, RELOCK, UNLOCK, Event
from door_access.tools.soak import judge

from conftest import REPO, SHARED_DATA

CLIPS = SHARED_DATA / "face_recognition_examples"
CHECKS = {"rss_mb_growth", "children_rss_mb_growth", "threads_growth", "fds_growth", "children_fds_growth",
          "no_event_lost", "every_unlock_relocked", "ran_to_the_end"}


def samples(n=9, rss=(1200.0, 0.0), threads=(22, 0), fds=(18, 0)) -> list[dict]:
    """n samples; each figure starts at its first value and grows by its second every sample."""
    return [{"t": 60.0 * i, "rss_mb": rss[0] + rss[1] * i, "threads": threads[0] + threads[1] * i,
             "fds": fds[0] + fds[1] * i, "children_rss_mb": 200.0, "children_fds": 16, "children": 2}
            for i in range(n)]


def ev(kind: str, t: float) -> Event:
    return Event(kind, t, 1.8e9 + t, name="lin" if kind == UNLOCK else None)


STEADY = [ev(RELOCK, 0.0), ev(UNLOCK, 10.0), ev(RELOCK, 15.0), ev(GALLERY, 20.0), ev(DENIED, 30.0),
          ev(UNLOCK, 50.0), ev(RELOCK, 55.0)]


def failed(checks: dict) -> set[str]:
    return {name for name, c in checks.items() if not c["ok"]}


def test_a_steady_run_passes_every_check():
    checks = judge(samples(), STEADY, list(STEADY), unlock_window_s=20.0)
    assert set(checks) == CHECKS and not failed(checks)
    assert checks["every_unlock_relocked"]["unlocks"] == 2
    assert checks["rss_mb_growth"]["growth"] == 0.0


def test_growth_beyond_noise_fails():
    checks = judge(samples(rss=(1200.0, 20.0), threads=(22, 1), fds=(18, 1)), STEADY, list(STEADY), 20.0)
    assert failed(checks) == {"rss_mb_growth", "threads_growth", "fds_growth"}
    assert checks["rss_mb_growth"]["growth"] == 120.0  # the last third's median over the first third's
    noise = judge(samples(rss=(1200.0, 2.0)), STEADY, list(STEADY), 20.0)
    assert not failed(noise)


def test_a_lost_event_an_unlock_left_open_or_a_failure_fails():
    lost = judge(samples(), STEADY, [e for e in STEADY if e.event != DENIED], 20.0)
    assert failed(lost) == {"no_event_lost"} and lost["no_event_lost"]["lost"] == {DENIED: 1}
    late = [*STEADY[:-1], ev(RELOCK, 90.0)]  # the second unlock's relock came 40 s after it
    checks = judge(samples(), late, list(late), 20.0)
    assert failed(checks) == {"every_unlock_relocked"} and checks["every_unlock_relocked"]["not_relocked_at"] == [50.0]
    open_at_end = STEADY[:-1]
    assert failed(judge(samples(), open_at_end, list(open_at_end), 20.0)) == {"every_unlock_relocked"}
    assert failed(judge(samples(), STEADY, list(STEADY), 20.0, failure="stage 'decider': stalled")) == {
        "ran_to_the_end"}
    few = judge(samples(n=3), STEADY, list(STEADY), 20.0)
    assert "rss_mb_growth" in failed(few) and "4 needed" in few["rss_mb_growth"]["why"]


def trimmed(clip: Path, out: Path, seconds: float) -> Path:
    """The clip's first `seconds`, at its own size and rate (its frames, re-encoded)."""
    src = cv2.VideoCapture(str(clip))
    fps = src.get(cv2.CAP_PROP_FPS)
    size = (int(src.get(cv2.CAP_PROP_FRAME_WIDTH)), int(src.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    dst = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    try:
        for _ in range(round(seconds * fps)):
            ok, frame = src.read()
            if not ok:
                break
            dst.write(frame)
    finally:
        src.release()
        dst.release()
    return out


@pytest.mark.model
def test_a_short_real_soak_reports_samples_events_and_checks(tmp_path, shared_encoder, capsys):
    """`soak` in this process on the session's FaceNet (its exit code and report are the CLI's), on the
    Hamilton clip's first 4 s (lin let in on the passive path at about 3.3 s: a recording cannot answer the
    shipped challenge, so the soak runs without it) looped for 8 s. The report's every part (9+ samples,
    3 hot enroll/remove toggles seen by the gallery's 0.5 s poll, a loop of the clip, an unlock and its
    relock) comes from a run this short."""
    from door_access.cli import main

    if not (CLIPS / "short_hamilton_clip.mp4").is_file():
        pytest.skip(f"{CLIPS} (shared real data) is not here")
    (tmp_path / "images" / "lin").mkdir(parents=True)
    (tmp_path / "images" / "lin" / "a.png").write_bytes((CLIPS / "lin-manuel-miranda.png").read_bytes())
    (tmp_path / "config.yaml").write_text(f"paths:\n  weights: {REPO / 'weights'}\n  cache: cache\n"
                                          "pipeline:\n  gallery_poll_s: 0.5\n")
    clip = trimmed(CLIPS / "short_hamilton_clip.mp4", tmp_path / "hamilton_4s.mp4", 4.0)
    out = tmp_path / "report.json"
    capsys.readouterr()
    code = main(["soak", "--config", str(tmp_path / "config.yaml"),
                 "--source", str(clip), "--hot", str(CLIPS / "alex-lacamoire.png"), "--duration-s", "8",
                 "--sample-s", "0.5", "--enroll-every-s", "1.5", "--out", str(out)])
    stdout, stderr = capsys.readouterr()
    report = json.loads(out.read_text())
    assert code == (0 if report["ok"] else 1), stderr[-3000:]
    assert set(report["checks"]) == CHECKS
    assert all(isinstance(c["ok"], bool) for c in report["checks"].values())
    assert report["checks"]["ran_to_the_end"]["ok"] and report["checks"]["no_event_lost"]["ok"]
    assert len(report["samples"]) >= 9 and {"t", "rss_mb", "threads", "fds"} <= set(report["samples"][0])
    assert report["hot_enroll_toggles"] >= 3 and report["gallery_events"] >= 2  # enrolled, removed, enrolled
    assert report["clip_loops"] >= 1 and report["processed"] > 0
    relocked = report["checks"]["every_unlock_relocked"]
    assert relocked["unlocks"] >= 1 and relocked["ok"], relocked  # the soak exercises unlocks and relocks
    assert set(report["watchdog_longest_wait_s"]) >= {"capture", "detector", "encoder", "decider", "actions"}
    assert stdout.splitlines()[0].startswith("soak PASSED" if report["ok"] else "soak FAILED")

"""`door-access eval-liveness FOLDER`: how the door's liveness does on real recordings.

FOLDER holds a `truth.csv` (file, kind, ..., person_photo, ...): `kind` is `genuine`,
`attack_screen` or `attack_print`; an optional `subkind` (`attack_print`, `attack_screen_photo`,
`attack_screen_video`) splits the attack measures further. Each video is played through the real pipeline (capture,
detector, liveness and spoof cues, encoder, decider) with its `person_photo` enrolled in a
scratch gallery, in video time by default so that the result does not depend on how busy the
machine is. A folder of JPEG frames (Replay-Attack style, ~2 frames a second) cannot show
motion or a blink: for those the learned attack models are measured the way the field does
(ISO/IEC 30107-3): APCER per attack kind (attacks called live) and BPCER (live people called
attacks), per judged frame and per clip, a clip decided over its judged frames by the door's
own rule (`attack_model.Evidence`); frames without a face or with one too small to judge, and
clips with too few judged frames, are counted apart.

The door's decider (decision.py) is the one that turns `LiveVerdict.spoof` into a denial; the
outcome reported here is what the door does with it: an unlock counts only if no DENY cue
fired on the clip before it.

Each clip also gets the graded policy's outcome, `policy`: "pass" (no challenge), "challenge" or
"deny" (spoof.grade). A frame folder shows no motion, so there the policy judges the attack
scores alone, as if a CONFIRM cue had been seen; a video reports what the door did on its run
(a DENY cue, else a challenge asked, else an unlock without one; a clip that ended before any of
these, its last grade). Per kind, the share of clips in each band stands beside APCER/BPCER.

`challenges=True` (`--challenges all`) also judges each video against every challenge the config
can ask, from the same pass: each track's landmarks from the moment `always` asks are kept and
every sequence of `liveness.challenge_steps` actions is replayed on them (`challenge_report`).
A clip cannot answer a spoken instruction: for a genuine clip this says whether the verifier
sees the actions the person happens to perform; for an attack, its chance of passing by luck.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import logging
import re
import shutil
import statistics
import tempfile
from pathlib import Path

import cv2
import numpy as np

from door_access.config import Config, LivenessConfig
from door_access.core import UNLOCK, Box
from door_access.liveness.challenge import ACTIONS, PASSED, Sample, Thresholds
from door_access.liveness.cues import HISTORY_S, NEUTRAL_S
from door_access.liveness.spoof import (
    ATTACK,
    CHALLENGE,
    DENY,
    NEVER,
    PASS,
    SITE_ATTACK,
    SpoofChecker,
    grade,
    load_scorers,
)
from door_access.quiet import native_stderr_silenced, progress
from door_access.tools.challenge_eval import asked_at, bound, judge_trace, response_times

log = logging.getLogger(__name__)

KINDS = ("genuine", "attack_screen", "attack_print")
ASK_EVERY_S = 0.5  # --challenges all: a challenge is also asked at every such step along each track
SUBKINDS = ("attack_print", "attack_screen_photo", "attack_screen_video")
MEASURES = (ATTACK, SITE_ATTACK)
BANDS = (PASS, CHALLENGE, DENY)
PERSON = "person"  # the name each clip's person_photo is enrolled under


FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")


class TruthError(ValueError):
    """A truth.csv that cannot be used; the message lists every problem with its line and column."""


def check_truth(folder: Path, photo_max_pixels: int | None = None) -> list[dict]:
    """The rows of FOLDER's truth.csv, every one checked before any model loads or clip plays.

    A row needs a `file` that is a video that opens or a folder holding frames, a known `kind` (and
    `subkind`, if given) and, when `photo_max_pixels` is given (eval-liveness enrolls it for each
    video), a readable `person_photo` for every video. TruthError names each problem's line and column."""
    folder = Path(folder)
    path = folder / "truth.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: a truth.csv (file, kind, person_photo, ...) is needed")
    problems, rows = [], []
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("file", "kind") if c not in (reader.fieldnames or ())]
        if missing:
            raise TruthError(f"{path} line 1: no column {' or '.join(missing)} (columns: "
                             f"{', '.join(reader.fieldnames or ()) or 'none'})")
        for row in reader:
            line = reader.line_num - sum(str(v).count("\n") for v in row.values() if v)  # a note may span lines
            problems += [f"line {line}, column {column}: {what}"
                         for column, what in _row_problems(folder, row, photo_max_pixels)]
            rows.append(row)
    if problems:
        raise TruthError(f"{path}: {len(problems)} problem(s), nothing was run:\n  " + "\n  ".join(problems))
    return rows


def _row_problems(folder: Path, row: dict, photo_max_pixels: int | None):
    """(column, problem) of one truth.csv row."""
    from door_access.faces.photos import PhotoError, load_rgb

    name, kind, subkind = row.get("file") or "", row.get("kind") or "", row.get("subkind") or ""
    if kind not in KINDS:
        yield "kind", f"{kind!r} is not one of {', '.join(KINDS)}"
    if subkind and subkind not in SUBKINDS + ("genuine",):
        yield "subkind", f"{subkind!r} is not one of {', '.join(SUBKINDS)} (or empty)"
    clip = folder / name
    if not name:
        yield "file", "empty"
    elif clip.is_dir():
        if not any(p.suffix.lower() in FRAME_SUFFIXES for p in clip.iterdir()):
            yield "file", f"folder {name} holds no {'/'.join(FRAME_SUFFIXES)} frame"
    elif not clip.is_file():
        yield "file", f"{name} not found"
    else:
        with native_stderr_silenced():  # FFmpeg's own complaint; the problem is named below
            cap = cv2.VideoCapture(str(clip))
        if not cap.isOpened():
            yield "file", f"{name} cannot be opened as a video"
        cap.release()
        photo = row.get("person_photo") or ""
        if photo_max_pixels is None:
            return
        if not photo:
            yield "person_photo", f"empty, but {name} is a video: the photo of its person is enrolled to judge it"
        elif not (folder / photo).is_file():
            yield "person_photo", f"{photo} not found"
        else:
            try:
                load_rgb(folder / photo, photo_max_pixels)
            except PhotoError as exc:
                yield "person_photo", f"{photo}: {exc}"


def eval_folder(cfg: Config, folder: Path, realtime: bool = False, only: str | None = None,
                challenges: bool = False) -> dict:
    """Every clip of FOLDER's truth.csv (or those whose file contains `only`); per clip and totals.
    `challenges`: each video is also judged against every challenge the config can ask."""
    folder = Path(folder)
    rows = [r for r in check_truth(folder, cfg.photo.max_pixels) if not only or only in r["file"]]
    from door_access.faces.detection import FaceDetector
    from door_access.faces.facenet import FaceEncoder

    cfg = _quiet(cfg)
    detector = FaceDetector(cfg.detection, cfg.path("weights"))
    checker = SpoofChecker(cfg.spoof, load_scorers(cfg)) if cfg.spoof.enabled else None
    encoder = None
    clips = []
    for row in progress(rows, "eval-liveness", unit="clip"):
        path = folder / row["file"]
        log.debug("eval-liveness: %s", row["file"])
        if path.is_dir():
            if checker is None:
                raise ValueError("frame folders measure the DENY cues: eval-liveness needs spoof.enabled: true")
            clips.append(eval_frames(cfg, detector, checker, path, row))
        else:
            if encoder is None:  # TensorFlow only for videos
                encoder = FaceEncoder(cfg.path("weights") / "facenet_keras3.weights.h5", cfg.pipeline.encoder_threads)
            clips.append(eval_video(cfg, encoder, path, folder / row["person_photo"], row, realtime, challenges))
    result = {"clips": clips, "totals": totals(clips)}
    if challenges:
        result["challenge_totals"] = challenge_totals(clips, cfg.liveness)
    if any(c["type"] == "frames" for c in clips):
        result["pad"] = pad_measures(clips, {sc.cue: sc.threshold for sc in checker.scorers if sc.threshold != NEVER})
    return result


def _quiet(cfg: Config) -> Config:
    """No hooks, no speech, no snapshots: the evaluation must not open a real door or talk."""
    return dataclasses.replace(
        cfg,
        door=dataclasses.replace(cfg.door, unlock_command=(), relock_command=(), webhook_url=None),
        tts=dataclasses.replace(cfg.tts, enabled=False),
        access_log=dataclasses.replace(cfg.access_log, snapshots_dir=None),
    )


def eval_video(cfg: Config, encoder, path: Path, photo: Path, row: dict, realtime: bool,
               challenges: bool = False) -> dict:
    """Play one clip through the real pipeline with its person enrolled; what the door did and why."""
    from door_access.app import build_pipeline
    from door_access.faces.capture import Capture

    events: list = []
    seen = _Seen(cfg.recognition.threshold + cfg.recognition.margin)
    with tempfile.TemporaryDirectory(prefix="door-eval-liveness-") as tmp:
        images = Path(tmp) / "images"
        (images / PERSON).mkdir(parents=True)
        shutil.copy(photo, images / PERSON / ("photo" + photo.suffix.lower()))
        run_cfg = dataclasses.replace(cfg, access_log=dataclasses.replace(cfg.access_log,
                                                                          path=str(Path(tmp) / "log.sqlite")))
        c = cfg.camera
        capture = Capture(str(path), realtime, c.lost_after_s, c.reconnect_min_s, c.reconnect_max_s)
        pipeline = build_pipeline(run_cfg, images, capture, events.append, encoder=encoder,
                                  trace_challenges=challenges)
        pipeline.observers.append(seen.observer(pipeline))
        pipeline.start()
        try:
            pipeline.wait()
        finally:
            pipeline.stop()
        if pipeline.failure:
            raise RuntimeError(f"{path}: stage {pipeline.failure[0]} failed: {pipeline.failure[1]}")
    report = seen.report(row, capture.frames_in, events)
    if challenges:
        traces = pipeline.liveness.traces
        report.update(challenge_report(cfg.liveness, list(traces.values()),
                                       [seen.votes.get(i, []) for i in traces], PERSON))
    return report


class _Seen:
    """What the decider stage saw, frame by frame (runs in the decider thread)."""

    def __init__(self, doubt_distance: float = 0.0):
        self.doubt_distance = doubt_distance  # as the decider's: such an unknown vote neither breaks nor binds
        self.t0: float | None = None
        self.first_face: float | None = None
        self.confirm: dict[str, float] = {}  # cue -> first time
        self.deny: dict[str, float] = {}
        self.unlock_t: float | None = None
        self.denials: list[tuple[float, str]] = []
        self.measures: dict[str, list[float]] = {m: [] for m in MEASURES}
        self.asked = False  # a challenge was asked
        self.grade: str | None = None  # the latest grade of a face (spoof.SpoofChecker.grade)
        self.grade_t: float | None = None  # when the first grade came: before it, `graded` can only ask
        self.votes: dict[int, list[tuple]] = {}  # track -> (frame time, name, doubt) of each encoding

    def observer(self, pipeline):
        def observe(item, decisions) -> None:
            t = item.frame.t - pipeline.capture.started_at
            for face in item.faces:
                m = face.match
                if m is not None:  # (time, name, a doubt leaning to the person), as the decider sees it
                    doubt = m.name is None and m.closest == PERSON and m.distance < self.doubt_distance
                    self.votes.setdefault(face.track, []).append((item.frame.t, m.name, doubt))
                if self.first_face is None:
                    self.first_face = t
                live = face.live
                if live is not None and live.evidence_t is not None:
                    self.confirm.setdefault(live.cue, t)
                if live is not None and live.spoof:
                    self.deny.setdefault(live.spoof, t)
                if live is not None and live.challenge:
                    self.asked = True
                g = pipeline.spoof.grade(face.track) if pipeline.spoof else None
                if g is not None:
                    self.grade = g.band
                    state = pipeline.spoof.tracks.get(face.track)  # its frame time, not this (later) stage's
                    if state is not None and state.graded_t is not None:
                        graded_t = state.graded_t - pipeline.capture.started_at
                        self.grade_t = graded_t if self.grade_t is None else min(self.grade_t, graded_t)
                values = pipeline.spoof.values.get(face.track) if pipeline.spoof else None
                if values:
                    for m in MEASURES:
                        if m in values:
                            self.measures[m].append(values[m])
            for d in decisions:
                if d.event == UNLOCK and self.unlock_t is None:
                    self.unlock_t = t
                elif d.event != UNLOCK:
                    self.denials.append((t, d.detail))

        return observe

    def report(self, row: dict, frames: int, events: list) -> dict:
        start = self.first_face or 0.0
        spoof_t = min(self.deny.values(), default=None)
        door_unlock = self.unlock_t is not None and (spoof_t is None or self.unlock_t < spoof_t)
        if door_unlock:
            outcome = "unlocked"
        elif spoof_t is not None:
            outcome = f"denied: spoof ({min(self.deny, key=self.deny.get)})"
        elif self.denials:
            outcome = f"denied: {self.denials[0][1]}"
        else:
            outcome = "no decision"
        if any(not cue.startswith("challenge") for cue in self.deny):  # denied by the attack evidence itself
            policy = DENY
        else:
            policy = CHALLENGE if self.asked else PASS if door_unlock else self.grade or CHALLENGE
        waits = [float(m.group(1)) for e in events if e.event == UNLOCK
                 for m in [re.match(r"live after ([0-9.]+) s", e.detail)] if m]
        return {
            "file": row["file"], "kind": row["kind"], "type": "video", "frames": frames,
            "face_px": _num(row.get("face_px_approx")),
            "unlocked": door_unlock,
            "unlock_after_s": round(self.unlock_t - start, 2) if door_unlock else None,
            "liveness_wait_s": waits[0] if door_unlock and waits else None,
            "pipeline_unlocked": self.unlock_t is not None,  # what a decider that ignores spoof would do
            "outcome": outcome,
            "policy": policy,
            "graded_after_s": None if self.grade_t is None else round(self.grade_t - start, 2),
            "confirm_cues": {k: round(v - start, 2) for k, v in self.confirm.items()},
            "deny_cues": {k: round(v - start, 2) for k, v in self.deny.items()},
            "measures": {m: _median(v) for m, v in self.measures.items()},
        }


def eval_frames(cfg: Config, detector, checker: SpoofChecker, folder: Path, row: dict) -> dict:
    """A folder of still frames of one presentation: each model's attack probability on each
    judged frame, and the clip's decision by the door's rule over all its judged frames."""
    thresholds = {sc.cue: sc.threshold for sc in checker.scorers}
    evidence = checker.evidence()
    frames = no_face = too_small = attack_frames = 0
    cue_frames = dict.fromkeys(thresholds, 0)  # frames each model alone calls an attack
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES):
        bgr = cv2.imread(str(path))
        if bgr is None:
            continue
        frames += 1
        rects = detector.detect(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        if not rects:
            no_face += 1
            continue
        r = max(rects, key=lambda q: q.width())
        box = Box(r.left(), r.top(), r.width(), r.height())
        if box.w < cfg.spoof.min_face_px:
            too_small += 1
            continue
        values = checker.measure(bgr, box)
        for cue, p in values.items():
            evidence[cue].add(p)
        for cue, p in values.items():
            cue_frames[cue] += p >= thresholds[cue]
        attack_frames += any(p >= thresholds[cue] for cue, p in values.items())
    judged = frames - no_face - too_small
    clip_judged = any(e.judged for e in evidence.values())
    fired = [cue for cue, e in evidence.items() if e.attack]
    policy = CHALLENGE  # too few judged frames: no grade, the door asks
    if evidence and all(e.judged for e in evidence.values()):  # the door's grade, a CONFIRM cue taken as seen
        policy = grade(cfg.spoof, {cue: e.mean for cue, e in evidence.items()}, checker.scorers).band
    return {
        "file": row["file"], "kind": row["kind"], "subkind": row.get("subkind") or row["kind"], "type": "frames",
        "frames": frames, "no_face": no_face, "too_small": too_small, "judged_frames": judged,
        "attack_frames": attack_frames, "face_px": _num(row.get("face_px_approx")),
        "clip_judged": clip_judged, "clip_attack": bool(fired), "policy": policy,
        "deny_cues": {cue: 1.0 for cue in fired}, "cue_attack_frames": cue_frames,
        "measures": {cue: None if e.mean is None else round(e.mean, 3) for cue, e in evidence.items()},
    }


def pad_measures(clips: list[dict], thresholds: dict[str, float]) -> dict:
    """ISO/IEC 30107-3 over the frame folders, per `subkind` (else `kind`): APCER of each attack
    kind (attacks decided live / attacks judged) and BPCER (genuine decided attack / genuine
    judged), per frame and per clip, with what could not be judged counted beside them."""
    out: dict = {"thresholds": thresholds, "kinds": {}}  # the models that deny (not one only gating a pass)
    kinds = sorted({c["subkind"] for c in clips if c["type"] == "frames"}, key=lambda k: (k != "genuine", k))
    for kind in kinds:
        cs = [c for c in clips if c["type"] == "frames" and c["subkind"] == kind]
        judged = sum(c["judged_frames"] for c in cs)
        called = sum(c["attack_frames"] for c in cs)
        jclips = [c for c in cs if c["clip_judged"]]
        cclips = sum(c["clip_attack"] for c in jclips)
        genuine = kind == "genuine"
        out["kinds"][kind] = {
            "measure": "BPCER" if genuine else "APCER",
            "frame_rate": _ratio(called if genuine else judged - called, judged),
            "frames_judged": judged,
            "frames_no_face": sum(c["no_face"] for c in cs),
            "frames_too_small": sum(c["too_small"] for c in cs),
            "clip_rate": _ratio(cclips if genuine else len(jclips) - cclips, len(jclips)),
            "clips_judged": len(jclips),
            "clips_not_judged": len(cs) - len(jclips),
            "policy": policy_rates(cs),
            "by_cue": {cue: {  # each model alone, as if it were the only one
                "frame_rate": _ratio(sum(c["cue_attack_frames"][cue] for c in cs) if genuine
                                     else judged - sum(c["cue_attack_frames"][cue] for c in cs), judged),
                "clip_rate": _ratio(sum(cue in c["deny_cues"] for c in jclips) if genuine
                                    else sum(cue not in c["deny_cues"] for c in jclips), len(jclips)),
            } for cue in thresholds},
        }
    return out


def policy_rates(clips: list[dict]) -> dict:
    """The graded policy's bands over these clips (every clip, judged or not): count and share of each."""
    return {band: {"clips": n, "rate": _ratio(n, len(clips))}
            for band in BANDS for n in [sum(c.get("policy") == band for c in clips)]}


def _ratio(n: int, d: int) -> float | None:
    return round(n / d, 4) if d else None


def format_pad(pad: dict) -> str:
    lines = ["ISO/IEC 30107-3 (frame folders; thresholds " +
             ", ".join(f"{k} {v:.3f}" for k, v in pad["thresholds"].items()) + "):"]
    for kind, m in pad["kinds"].items():
        lines.append(f"  {kind:<20} {m['measure']} per frame {_pct(m['frame_rate'])} of {m['frames_judged']}, "
                     f"per clip {_pct(m['clip_rate'])} of {m['clips_judged']}; not judged: "
                     f"{m['frames_no_face']} frames without a face, {m['frames_too_small']} too small, "
                     f"{m['clips_not_judged']} clips")
        lines.append("    policy: " + ", ".join(f"{band} {_pct(x['rate'])} ({x['clips']})"
                                          for band, x in m["policy"].items()))
        if len(m["by_cue"]) > 1:
            lines += [f"    {cue} alone: per frame {_pct(x['frame_rate'])}, per clip {_pct(x['clip_rate'])}"
                      for cue, x in m["by_cue"].items()]
    return "\n".join(lines)


def totals(clips: list[dict]) -> dict:
    out: dict = {}
    for kind in KINDS:
        videos = [c for c in clips if c["kind"] == kind and c["type"] == "video"]
        frames = [c for c in clips if c["kind"] == kind and c["type"] == "frames"]
        entry = {"videos": len(videos), "unlocked": sum(c["unlocked"] for c in videos)}
        waits = [c["liveness_wait_s"] for c in videos if c["liveness_wait_s"] is not None]
        if kind == "genuine" and waits:
            entry["liveness_wait_median_s"] = round(statistics.median(waits), 2)
        if frames:
            entry["frame_folders"] = len(frames)
            entry["frame_folders_denied"] = sum(c["clip_attack"] for c in frames)
        if videos or frames:
            entry["policy"] = policy_rates(videos + frames)
        out[kind] = entry
    return out


# ---- --challenges all: every challenge the config can ask, judged on one pass over each clip ------------


def challenge_report(live: LivenessConfig, tracks: list[list[Sample]],
                     votes: list[list[tuple]] | None = None, person: str = PERSON) -> dict:
    """Per clip, from each track's frames (`LivenessChecker.traces`), asked as the door asks (`NEUTRAL_S`
    after first sight): `challenge_results` (each action as a one-step challenge -> passed), `pass_rate`
    (the fraction of the 6**challenge_steps sequences passed), the sequences passed, and `response_s`
    (per action passed, seconds from the start of the movement to the verifier's pass: what answering
    costs). A replay can be started at any moment, so the same is asked every `ASK_EVERY_S` along the
    track: `pass_rate_worst_start` is the best an attacker who picks the moment can get, by luck, from
    this recording. A challenge passed on any of the clip's tracks counts, if the door would credit it to
    `person`: with `votes` (each track's encodings, (frame time, name[, doubt])), only an answer that encodings naming
    `person` bracket, from its resting pose to after its pass (`challenge.bound`); another face's answer
    passes nothing. Without `votes` (landmarks only) every answer counts."""
    sequences = list(itertools.product(ACTIONS, repeat=live.challenge_steps))
    singles = [(a,) for a in ACTIONS]

    def judge(trace, asked, named):
        runs = judge_trace(trace, asked, live.challenge_deadline_s, Thresholds.of(live), live.challenge_hold_s)
        return {seq: run.done_t for seq, run in runs.items() if run.state == PASSED
                and (named is None or bound(named, person, trace.since, run.done_t))}

    single_passed: dict[str, float] = {}
    door_passed: set[tuple[str, ...]] = set()
    response: dict[str, float] = {}
    starts: list[float] = []
    for samples, named in zip(tracks, votes if votes is not None else [None] * len(tracks)):
        if not samples:
            continue
        first, last = samples[0].t, samples[-1].t
        door = asked_at(samples, first + NEUTRAL_S, HISTORY_S)
        if door is not None:
            passed = judge(door, singles + sequences, named)
            door_passed |= {seq for seq in passed if len(seq) == live.challenge_steps}
            done = {seq[0]: t for seq, t in passed.items() if len(seq) == 1}
            for action, wait in response_times(door, done, Thresholds.of(live)).items():
                response.setdefault(action, wait)
            for action, t in done.items():
                single_passed.setdefault(action, t)
        t = first + NEUTRAL_S
        while t <= last - ASK_EVERY_S:
            trace = asked_at(samples, t, HISTORY_S)
            if trace is not None:
                starts.append(len(judge(trace, sequences, named)) / len(sequences))
            t += ASK_EVERY_S
    rate = len(door_passed) / len(sequences)
    return {
        "challenge_results": {a: a in single_passed for a in ACTIONS},
        "pass_rate": round(rate, 4),
        "sequences_passed": [", ".join(seq) for seq in sequences if seq in door_passed],
        "pass_rate_worst_start": round(max(starts, default=rate), 4),
        "pass_rate_mean_start": round(statistics.mean(starts), 4) if starts else round(rate, 4),
        "starts": len(starts),
        "response_s": response,
    }


def challenge_totals(clips: list[dict], live: LivenessConfig) -> dict:
    """Per kind: clips with a challenge judged, the worst (highest) and mean pass rate, and for genuine
    clips how many were let in passively or show an action the verifier recognises."""
    out: dict = {"steps": live.challenge_steps, "sequences": len(ACTIONS) ** live.challenge_steps}
    for kind in KINDS:
        judged = [c for c in clips if c["kind"] == kind and "pass_rate" in c]
        if not judged:
            continue
        rates = [c["pass_rate"] for c in judged]
        entry = {"videos": len(judged), "max_pass_rate": max(rates), "mean_pass_rate": round(statistics.mean(rates), 4),
                 "max_pass_rate_worst_start": max(c["pass_rate_worst_start"] for c in judged)}
        if kind == "genuine":
            entry["let_in"] = sum(c["unlocked"] or any(c["challenge_results"].values()) for c in judged)
            times = [t for c in judged for t in c["response_s"].values()]
            if times:
                entry["response_median_s"] = round(statistics.median(times), 2)
        out[kind] = entry
    return out


def format_report(result: dict) -> str:
    lines = []
    for c in result["clips"]:
        m = " ".join(f"{k}={v}" for k, v in c["measures"].items() if v is not None)
        deny = ", ".join(f"{k} {v}" for k, v in c["deny_cues"].items()) or "-"
        if c["type"] == "frames":
            lines.append(f"{c['file']:<48} {c['subkind']:<19} {'denied' if c['clip_attack'] else 'passed'}"
                         f"{'' if c['clip_judged'] else ' (not judged)'}: attack on {c['attack_frames']} of "
                         f"{c['judged_frames']} judged frames; policy {c['policy']}  [{m}]")
            continue
        confirm = ", ".join(f"{k} at {v} s" for k, v in c["confirm_cues"].items()) or "-"
        after = f" after {c['unlock_after_s']} s" if c["unlocked"] else ""
        lines.append(f"{c['file']:<48} {c['kind']:<13} {c['outcome']}{after}; policy {c['policy']}  "
                     f"CONFIRM: {confirm}  "
                     f"DENY: {deny}  [{m}]")
        if "pass_rate" in c:
            seen = ", ".join(f"{a} ({c['response_s'][a]} s)" if a in c["response_s"] else a
                             for a, ok in c["challenge_results"].items() if ok) or "none"
            lines.append(f"{'':<48} challenges: actions recognised: {seen}; pass rate {c['pass_rate']:.3f} "
                         f"({'; '.join(c['sequences_passed']) or 'none'}), at the worst of {c['starts']} starts "
                         f"{c['pass_rate_worst_start']:.3f}")
    lines.append("")
    for kind, t in result["totals"].items():
        if not t["videos"] and not t.get("frame_folders"):
            continue
        line = f"{kind:<13} videos unlocked: {t['unlocked']}/{t['videos']}"
        if "liveness_wait_median_s" in t:
            line += f" (median liveness wait {t['liveness_wait_median_s']} s)"
        if t.get("frame_folders"):
            line += f"; frame folders denied: {t['frame_folders_denied']}/{t['frame_folders']}"
        if "policy" in t:
            line += "; policy " + ", ".join(f"{band} {x['clips']}" for band, x in t["policy"].items())
        lines.append(line)
    ct = result.get("challenge_totals")
    if ct:
        lines.append(f"challenges: {ct['steps']} step(s), {ct['sequences']} sequences")
        for kind in KINDS:
            if kind in ct:
                t = ct[kind]
                extra = f"; let in (passively or an action recognised) {t['let_in']}/{t['videos']}" \
                    if "let_in" in t else ""
                if "response_median_s" in t:
                    extra += f"; median response {t['response_median_s']} s"
                lines.append(f"{kind:<13} pass rate max {t['max_pass_rate']:.3f} mean {t['mean_pass_rate']:.3f}, "
                             f"at the worst start {t['max_pass_rate_worst_start']:.3f}{extra}")
    if "pad" in result:
        lines += ["", format_pad(result["pad"])]
    return "\n".join(lines)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _median(values: list[float]) -> float | None:
    return round(float(np.median(values)), 3) if values else None


def _num(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None

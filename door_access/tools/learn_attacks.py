"""`door-access learn-attacks FOLDER`: fit this door's own presentation-attack model.

FOLDER holds a `truth.csv` like `eval-liveness` reads (file, kind, and optionally `client` or
`person` naming who is in it) with frame folders or videos recorded at this door: live people,
and the admin holding up a phone showing a photo and a video, and a printed photo. The site
model (colour texture + logistic regression, attack_model.SiteModel) is cross-validated with
people kept apart (no person's frames are both fitted and scored in one fold); its threshold is
the out-of-fold mean attack probability that `bpcer` of the genuine "tracks" reach (runs of
TRACK_FRAMES consecutive judged frames of a clip, what the door averages over in about half a
second), so the figures printed are those of frames and clips the model had not seen. The model fitted on every frame is
then written where `spoof.site_model` points (0600).

The door's own verified live samples (liveness/live_samples.py: entries a passed challenge
verified) are fitted as genuine too, each entry a track and its person kept apart, and the threshold
is bounded by the attack recordings (`recalibrate`).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from door_access.config import Config
from door_access.core import Box
from door_access.liveness.attack_model import SiteModel, attack_ceiling, raised_threshold, texture_features
from door_access.liveness.live_samples import LiveSamples, store_path
from door_access.quiet import progress
from door_access.tools.liveness_eval import FRAME_SUFFIXES, check_truth

log = logging.getLogger(__name__)

TRACK_FRAMES = 6  # judged frames of a short track (0.36 s at spoof.measure_every_s) and of a Replay-Attack folder
BPCER = 0.03  # default share of genuine tracks (out of fold) the threshold may call attacks: 0.05 left 6.7% of
# genuine clips of unseen people denied, 0.03 5.0% (Replay-Attack train, docs/liveness.md)
L2 = 100.0  # penalty on the weights: a site records few people, and at 1.0 the model learnt them (BPCER up to 20%
# on the people it was not fitted on, 6.7% at 100; docs/liveness.md)


@dataclass
class Samples:
    features: np.ndarray  # one row per judged frame
    attack: np.ndarray  # bool
    person: np.ndarray  # who is shown: the unit kept apart
    clip: np.ndarray  # the truth.csv row it came from
    kind: np.ndarray  # subkind, else kind
    door: np.ndarray | None = None  # bool: the door's own verified live samples (None: none)

    def __add__(self, other: Samples) -> Samples:
        flag = [x.door if x.door is not None else np.zeros(len(x.attack), bool) for x in (self, other)]
        return Samples(*(np.concatenate([getattr(self, f), getattr(other, f)])
                         for f in ("features", "attack", "person", "clip", "kind")), np.concatenate(flag))


def door_samples(cfg: Config) -> Samples | None:
    """The door's verified live samples (live_samples.py) as genuine frames, one clip per entry and
    the enrolled name as the person kept apart; None when there are none."""
    entries = LiveSamples(store_path(cfg), cfg.live_samples).entries()
    if not entries:
        return None
    n = [len(e.features) for e in entries]
    return Samples(np.concatenate([e.features for e in entries]).astype(np.float64), np.zeros(sum(n), bool),
                   np.repeat([e.name for e in entries], n), np.repeat([f"door entry {i}" for i in range(len(n))], n),
                   np.repeat("genuine", sum(n)), np.ones(sum(n), bool))


def _frames(path: Path, every_s: float, max_frames: int):
    """BGR frames of a frame folder, or of a video sampled every `every_s` seconds."""
    if path.is_dir():
        for p in sorted(q for q in path.iterdir() if q.suffix.lower() in FRAME_SUFFIXES)[:max_frames]:
            bgr = cv2.imread(str(p))
            if bgr is not None:
                yield bgr
        return
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise ValueError(f"{path}: cannot open the video")
    step = max(1, round((cap.get(cv2.CAP_PROP_FPS) or 25.0) * every_s))
    n = i = 0
    try:
        while n < max_frames:
            ok, bgr = cap.read()
            if not ok:
                break
            if i % step == 0:
                n += 1
                yield bgr
            i += 1
    finally:
        cap.release()


def collect(cfg: Config, folder: Path, every_s: float = 0.2, max_frames: int = 300) -> Samples:
    """Texture features of the largest face of each frame (faces under spoof.min_face_px skipped)."""
    from door_access.faces.detection import FaceDetector

    rows = check_truth(folder)
    detector = FaceDetector(cfg.detection, cfg.path("weights"))
    feats, attack, person, clip, kind = [], [], [], [], []
    for row in progress(rows, "learn-attacks", unit="clip"):
        who = row.get("client") or row.get("person") or row.get("person_photo") or row["file"]
        n = 0
        for bgr in _frames(Path(folder) / row["file"], every_s, max_frames):
            rects = detector.detect(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            if not rects:
                continue
            r = max(rects, key=lambda q: q.width())
            if r.width() < cfg.spoof.min_face_px:
                continue
            try:
                feats.append(texture_features(bgr, Box(r.left(), r.top(), r.width(), r.height())))
            except ValueError:
                continue
            attack.append(row["kind"] != "genuine")
            person.append(who)
            clip.append(row["file"])
            kind.append(row.get("subkind") or row["kind"])
            n += 1
        if n:
            log.debug("learn-attacks: %s: %d frames with a face to learn from", row["file"], n)
        else:
            log.warning("learn-attacks: %s: no frame with a face of at least spoof.min_face_px (%d px)", row["file"],
                        cfg.spoof.min_face_px)
    if not feats:
        raise ValueError(f"{folder}: no frame with a face of at least spoof.min_face_px ({cfg.spoof.min_face_px} px)")
    return Samples(np.array(feats), np.array(attack), np.array(person), np.array(clip), np.array(kind))


def out_of_fold(s: Samples, folds: int = 5) -> tuple[np.ndarray, int, int]:
    """Out-of-fold attack probabilities with people kept apart (no person's frames are fitted and
    scored in one fold); the folds and how many people (or clips) were kept apart. The admin's
    people come first, so the door's own (`Samples.door`) join the folds without moving them."""
    door = s.door if s.door is not None else np.zeros(len(s.attack), bool)
    people = sorted(set(s.person[~door])) + sorted(set(s.person[door]) - set(s.person[~door]))
    if len(people) < 2:
        log.warning("learn-attacks: one person only: folds keep clips apart instead of people")
        groups, units = s.clip, sorted(set(s.clip))
    else:
        groups, units = s.person, people
    if not s.attack.any() or s.attack.all():
        raise ValueError("learn-attacks needs frames of both live people and attacks")
    k = min(folds, len(units))
    if k < 2:
        raise ValueError("learn-attacks needs at least two people (or two clips) to cross-validate")
    oof = np.zeros(len(s.attack))
    for f in range(k):
        test = np.isin(groups, units[f::k])
        if s.attack[~test].all() or not s.attack[~test].any():
            raise ValueError(f"fold {f + 1}: the other people's frames hold only one kind; record live and "
                             f"attack clips of more people")
        oof[test] = SiteModel.fit(s.features[~test], s.attack[~test], l2=L2).probabilities(s.features[test])
    return oof, k, len(units)


def track_means(prob: np.ndarray, s: Samples, select: np.ndarray) -> dict[str, np.ndarray]:
    """Kind -> the means of runs of TRACK_FRAMES consecutive frames of each selected clip: what the
    door averages over in about half a second."""
    out: dict[str, list] = {}
    for c in sorted(set(s.clip[select])):
        at = select & (s.clip == c)
        out.setdefault(str(s.kind[at][0]), []).extend(
            w.mean() for w in np.array_split(prob[at], max(1, int(at.sum()) // TRACK_FRAMES)))
    return {k: np.array(v) for k, v in out.items()}


def genuine_threshold(prob: np.ndarray, s: Samples, select: np.ndarray, bpcer: float) -> float:
    """The track mean that `bpcer` of the selected genuine tracks reach."""
    tracks = track_means(prob, s, select & ~s.attack).get("genuine", np.array([]))
    if not len(tracks):
        raise ValueError("learn-attacks needs live recordings made at this door (kind genuine)")
    return min(max(float(np.quantile(tracks, 1.0 - bpcer)), 1e-3), 1.0)


def cross_validate(s: Samples, folds: int = 5, bpcer: float = BPCER, min_frames: int = 3) -> tuple[float, dict]:
    """Out-of-fold probabilities with people kept apart, the threshold they give at `bpcer` of
    genuine tracks, and APCER/BPCER per frame and per clip (a clip's mean, as the door does)."""
    oof, k, units = out_of_fold(s, folds)
    threshold = genuine_threshold(oof, s, np.ones(len(oof), bool), bpcer)
    return threshold, measures(oof, s, threshold, min_frames) | {"folds": k, "kept_apart": units}


def measures(prob: np.ndarray, s: Samples, threshold: float, min_frames: int) -> dict:
    """APCER per attack kind and BPCER, per frame and per clip (clips with >= min_frames frames)."""
    out: dict = {}
    for kind in sorted(set(s.kind), key=lambda k: (k != "genuine", k)):
        sel = s.kind == kind
        called = prob[sel] >= threshold
        clips = [prob[sel & (s.clip == c)] for c in sorted(set(s.clip[sel]))]
        clip_called = [p.mean() >= threshold for p in clips if len(p) >= min_frames]
        genuine = kind == "genuine"
        frame_rate = called.mean() if genuine else 1 - called.mean()
        clip_rate = (np.mean(clip_called) if genuine else 1 - np.mean(clip_called)) if clip_called else None
        out[kind] = {"measure": "BPCER" if genuine else "APCER", "frame_rate": round(float(frame_rate), 4),
                     "frames": int(sel.sum()), "clip_rate": None if clip_rate is None else round(float(clip_rate), 4),
                     "clips": len(clip_called)}
    return out


def learn(cfg: Config, folder: Path, out: Path, bpcer: float = BPCER) -> dict:
    """Fit on the admin's recordings in `folder` and the door's verified live samples, threshold
    recalibrated by `recalibrate`, and write the model (0600)."""
    admin = collect(cfg, Path(folder))
    door = door_samples(cfg)
    samples, oof, threshold, ceiling, folds = recalibrate(admin, door, bpcer)
    model = SiteModel.fit(samples.features, samples.attack, threshold=threshold, l2=L2)
    model = dataclasses.replace(model, ceiling=ceiling)
    model.save(out)
    report = measures(oof, samples, threshold, cfg.spoof.min_frames) | folds
    if door is not None:
        entries = track_means(oof, samples, samples.door)["genuine"]
        report["door_samples"] = {"entries": len(entries), "people": len(set(door.person)),
                                  "refused": round(float(np.mean(entries >= threshold)), 4)}
    return {"model": str(out), "threshold": round(threshold, 4), "ceiling": round(ceiling, 4), "bpcer_target": bpcer,
            "frames": len(samples.attack), "cross_validated": report}


def recalibrate(admin: Samples, door: Samples | None, bpcer: float, folds: int = 5):
    """The samples to fit, their out-of-fold probabilities, the threshold and its ceiling.

    The admin's recordings alone, cross-validated, give the reference: the threshold at `bpcer` of
    their genuine tracks, and how many attack tracks of each kind it lets through. The door's live
    samples are then fitted too; the threshold goes where at most `bpcer` of all genuine tracks and
    of the door's own entries are refused, but never above the ceiling: the highest threshold at
    which, out of fold, no attack kind of the admin's recordings has more tracks let through than
    in the reference. Samples that taught the model a replay is live lower the attack scores and
    with them the ceiling, so they tighten the door rather than open it."""
    everything = np.ones(len(admin.attack), bool)
    try:
        ref, k, units = out_of_fold(admin, folds)
        reference = admin
    except ValueError:
        if door is None:
            raise
        log.warning("learn-attacks: the admin's recordings alone cannot be cross-validated: the reference is "
                    "taken with the door's samples in the folds")
        reference = admin + door
        ref, k, units = out_of_fold(reference, folds)
        everything = ~reference.door
    t_admin = genuine_threshold(ref, reference, everything, bpcer)
    accepted = {kind: int((scores < t_admin).sum())
                for kind, scores in track_means(ref, reference, reference.attack).items()}
    if door is None:
        samples, oof, threshold = admin, ref, t_admin
    else:
        samples = admin + door
        oof, k, units = out_of_fold(samples, folds)
        threshold = genuine_threshold(oof, samples, np.ones(len(oof), bool), bpcer)
    ceiling = attack_ceiling(track_means(oof, samples, samples.attack), accepted)
    threshold = min(threshold, ceiling)
    if door is not None:
        threshold = raised_threshold(threshold, ceiling, track_means(oof, samples, samples.door)["genuine"], bpcer)
    return samples, oof, threshold, ceiling, {"folds": k, "kept_apart": units}


def format_report(r: dict) -> str:
    cv = r["cross_validated"]
    lines = [f"site attack model written to {r['model']} (threshold {r['threshold']}, from {r['frames']} frames)",
             f"cross-validated, {cv['folds']} folds, {cv['kept_apart']} people (or clips) kept apart; threshold "
             f"at {100 * r['bpcer_target']:.0f}% of genuine {TRACK_FRAMES}-frame tracks, at most {r['ceiling']} (above "
             f"it the attack recordings would pass more often than with the admin's live recordings alone):"]
    door = cv.get("door_samples")
    if door:
        lines.append(f"  with this door's {door['entries']} verified entries of {door['people']} people as genuine "
                     f"({100 * door['refused']:.1f}% of them refused, out of fold)")
    for kind, m in cv.items():
        if not isinstance(m, dict) or "measure" not in m:
            continue
        clip = "n/a" if m["clip_rate"] is None else f"{100 * m['clip_rate']:.1f}%"
        lines.append(f"  {kind:<20} {m['measure']} per frame {100 * m['frame_rate']:.1f}% of {m['frames']}, "
                     f"per clip {clip} of {m['clips']}")
    return "\n".join(lines)

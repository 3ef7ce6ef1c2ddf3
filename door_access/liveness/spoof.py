"""Liveness DENY cues: signs that the face in front of the camera is a picture of a face.

- "presentation attack" (and "presentation attack (site model)"): learned per-frame attack
  probabilities (attack_model.py) of the face and its surroundings, averaged over a track's
  judged frames (`Evidence`); the track is denied once the mean reaches the model's threshold.
- "flat face" (`faces/geometry.py`): as a photo turns, all its landmarks follow one homography
  (a plane); a turning head shows parallax between nose, eye corners and outline that no
  homography fits.
The hand-set "screen light" and "screen or paper frame" cues are retired: thresholds fitted on
the dev clips accepted 96-99% of held-out Replay-Attack attacks and denied a genuine selfie.
`SpoofChecker` turns these into a DENY only over several frames of a track, so one odd frame
(motion blur, a hand passing) never denies anyone, and grades each track (`grade`, the graded
policy of `liveness.challenge: graded`): how much proof the face must give. No TensorFlow, no dlib here.
"""

from __future__ import annotations

import logging
import zipfile
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from door_access.config import Config, SpoofConfig
from door_access.core import Box
from door_access.faces.geometry import homography_residual, similarity_residual
from door_access.liveness.attack_model import GENERAL_MODEL_FILE, Evidence, GeneralModel, ModelMissing, SiteModel

log = logging.getLogger(__name__)

FLAT_FACE = "flat face"
ATTACK = "presentation attack"
SITE_ATTACK = "presentation attack (site model)"
SITE_MODEL_FILE = "site_attack_model.npz"
PASS, CHALLENGE, DENY = "pass", "challenge", "deny"  # the graded policy's bands


def site_model_path(cfg: Config) -> Path:
    """Where the site's model lives: `spoof.site_model`, or under `paths.cache`."""
    return cfg.resolve(cfg.spoof.site_model) if cfg.spoof.site_model else cfg.path("cache") / SITE_MODEL_FILE


NEVER = float("inf")


@dataclass(frozen=True)
class Scorer:
    """One learned model under its cue name, and two track-mean edges: `threshold`, where it denies
    outright, and `lean`, from where its evidence leans to attack (a challenge with one step more;
    under it a site model is confident a face is live). NEVER: the edge is not used."""

    cue: str
    model: object  # has attack_probability(bgr, box) -> float
    threshold: float
    lean: float = NEVER


def load_scorers(cfg: Config) -> list[Scorer]:
    """The models the config asks for, failing closed: `spoof.model` on and its file missing, or
    a site model that cannot be read, stops the door with a message naming the fix. A site model,
    when there is one, is the one that denies: fitted on this camera it is the better judge, and
    the general model's DENY beside it raised BPCER on held-out Replay-Attack clients (docs). It
    denies outright at `site_deny_ratio` times its learned threshold (at most halfway from it to
    1); from `doubt_ratio` times it, it leans to attack. The general model still runs beside it,
    never denying: the graded policy lets a face in without a challenge only where both models
    call it live. Alone (a fresh door) the general model denies at `spoof.threshold`."""
    path = site_model_path(cfg)
    general = cfg.path("weights") / GENERAL_MODEL_FILE
    if cfg.spoof.model and not general.is_file():
        GeneralModel(general)  # raises ModelMissing, naming the fix, even when a site model would serve
    if path.is_file():
        try:
            site = SiteModel.load(path)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise ModelMissing(f"site attack model {path} cannot be read ({exc}): run `door-access "
                               f"learn-attacks` again or remove the file") from None
        log.info("spoof: site attack model %s (threshold %.3f)", path, site.threshold)
        t, c = site.threshold, cfg.spoof
        gate = [Scorer(ATTACK, GeneralModel(general), NEVER)] if c.model else []
        return [Scorer(SITE_ATTACK, site, min(c.site_deny_ratio * t, (1 + t) / 2), c.doubt_ratio * t), *gate]
    c = cfg.spoof
    return [Scorer(ATTACK, GeneralModel(general), c.threshold, c.doubt_ratio * c.threshold)] if c.model else []


@dataclass(frozen=True)
class Grade:
    """How much proof the attack evidence asks of a face (`grade`)."""

    band: str  # PASS: a CONFIRM cue is enough; CHALLENGE: the spoken actions; DENY: refused outright
    extra_steps: int = 0  # challenge steps beyond liveness.challenge_steps: the evidence leans to attack
    why: str = ""


def grade(cfg: SpoofConfig, means: dict[str, float], scorers: list[Scorer]) -> Grade:
    """The graded policy on each model's mean attack probability over a track (or clip).

    DENY: a model's mean at its `threshold` (with a site model only the site model denies; on a
    fresh door the shipped model's `spoof.threshold` is set where live faces essentially never score).
    CHALLENGE with one step more: a mean at its `lean` edge (the evidence leans to attack).
    PASS: only with a site model, its mean under that edge AND the shipped model's under
    `pass_below`: two models that learnt attacks from different material both call it live.
    CHALLENGE otherwise."""
    edges = {sc.cue: sc for sc in scorers}
    for cue, m in means.items():
        if m >= edges[cue].threshold:
            return Grade(DENY, 0, cue)
    lean = [cue for cue, m in means.items() if m >= edges[cue].lean]
    if lean:
        return Grade(CHALLENGE, 1, f"{lean[0]} leans to attack")
    site, general = means.get(SITE_ATTACK), means.get(ATTACK)
    if site is None:
        return Grade(CHALLENGE, 0, "no site model")
    if general is None or general >= cfg.pass_below:
        return Grade(CHALLENGE, 0, "the shipped model does not agree")
    return Grade(PASS, 0, "both models call it live")


@dataclass
class _TrackSpoof:
    measured_t: float = float("-inf")  # when this track was last measured
    evidence: dict = field(default_factory=dict)  # cue -> Evidence of a learned model
    hits: deque = field(default_factory=deque)  # (t, hit) of the flat-face test
    shapes: deque = field(default_factory=deque)  # (t, 68 landmarks), for the flat-face cue
    fired: str | None = None
    graded_t: float | None = None  # frame time at which every model had judged min_frames frames (the first grade)
    restart: bool = False  # set by the decider's thread: the track showed another face; judge afresh
    judged: tuple[float, dict[str, float]] | None = None  # (frame time, each model's probability) of its latest


class SpoofChecker:
    """Per-track DENY evidence. Lives in the detector thread next to LivenessChecker.

    Every `measure_every_s`, a face at least `min_face_px` wide is scored by each learned model;
    a model's cue fires once its `Evidence` (mean over the track's judged frames) says attack.
    The flat-face test is recorded over the last `sustain_s` and fires when at least
    `sustain_fraction` of it hit. Once fired, the track keeps the cue (a replay does not become
    live by pausing).
    """

    def __init__(self, cfg: SpoofConfig, scorers: list[Scorer] = ()):
        self.cfg = cfg
        self.scorers = list(scorers)
        self.tracks: dict[int, _TrackSpoof] = {}
        self.values: dict[int, dict[str, float]] = {}  # track -> latest measures, for reports and tuning

    def measure(self, bgr: np.ndarray, box: Box) -> dict[str, float]:
        """Each model's attack probability for this frame's face (cue -> 0..1)."""
        return {sc.cue: sc.model.attack_probability(bgr, box) for sc in self.scorers}

    def evidence(self) -> dict[str, Evidence]:
        """Fresh per-track evidence, one per model: the rule eval-liveness applies to a clip too."""
        return {sc.cue: Evidence(sc.threshold, self.cfg.min_frames) for sc in self.scorers}

    def update(self, track: int, t: float, bgr: np.ndarray, box: Box, points: np.ndarray | None) -> str | None:
        """Feed one frame of a track; returns the DENY cue once one has fired for it, else None."""
        c = self.cfg
        s = self.tracks.setdefault(track, _TrackSpoof())
        if s.restart and not s.fired:  # another face was in view: its frames say nothing about the next one's
            s.restart, s.evidence, s.graded_t = False, {}, None
            s.hits.clear()
            s.shapes.clear()
        if s.fired or t - s.measured_t < c.measure_every_s or box.w < c.min_face_px:
            return s.fired
        s.measured_t = t
        if not s.evidence:
            s.evidence = self.evidence()
        v = self.measure(bgr, box)
        s.judged = (t, v)
        for cue, p in v.items():
            s.evidence[cue].add(p)
        if s.graded_t is None and all(e.judged for e in s.evidence.values()):
            s.graded_t = t
        if points is not None:
            flat = self._flat(s, t, points, v)
            if flat is not None:
                s.hits.append((t, flat))
            while s.hits and t - s.hits[0][0] > c.sustain_s:
                s.hits.popleft()
        self.values[track] = {**v, **{f"{cue} mean": e.mean for cue, e in s.evidence.items()}}
        fired = [cue for cue, e in s.evidence.items() if e.attack]
        if not fired and len(s.hits) >= 3 and sum(h for _, h in s.hits) >= c.sustain_fraction * len(s.hits):
            fired = [FLAT_FACE]
        if fired:
            s.fired = fired[0]
            log.info("track %d: DENY cue '%s' (%s)", track, s.fired,
                     ", ".join(f"{k} {x:.3f}" for k, x in self.values[track].items()))
        return s.fired

    def judged(self, track: int, t: float) -> dict[str, float] | None:
        """Each model's attack probability for the track's frame at `t`, if that frame was judged (the pace
        and size limits above), else None: what others learn from without scoring the face again."""
        s = self.tracks.get(track)
        return s.judged[1] if s is not None and s.judged is not None and s.judged[0] == t else None

    def restart(self, track: int) -> None:
        """The track's named face gave way to a face it does not name (the decider starts its liveness
        over): the attack evidence starts over too, so a live stranger's frames cannot dilute a replay's
        mean under the DENY edge. A cue that already fired stays. Called from the decider's thread: only
        a flag is set here; `update` acts on it."""
        s = self.tracks.get(track)
        if s is not None:
            s.restart = True

    def grade(self, track: int) -> Grade | None:
        """The graded policy's band for this track now: DENY once a cue fired, None until every
        model judged `min_frames` of its frames, else `grade` on their means (a doubtful flat-face
        test adds a step)."""
        s = self.tracks.get(track)
        if s is None:
            return None
        if s.fired:
            return Grade(DENY, 0, s.fired)
        if not s.evidence or not all(e.judged for e in s.evidence.values()):
            return None
        g = grade(self.cfg, {cue: e.mean for cue, e in s.evidence.items()}, self.scorers)
        if g.band == PASS and self.doubtful(track) == FLAT_FACE:
            return Grade(CHALLENGE, 1, FLAT_FACE)
        return g

    def doubtful(self, track: int) -> str | None:
        """A cue close to denying without doing so: a learned model's mean at `doubt_ratio` of its
        threshold over enough frames, or the flat-face test holding on `doubt_fraction` of a whole
        sustain window. For the liveness challenge (`on_doubt`) to settle. None if none."""
        s = self.tracks.get(track)
        if s is None or s.fired:
            return None
        for sc in self.scorers:
            e = s.evidence.get(sc.cue)  # none yet while its faces were too small to judge
            if e is not None and e.judged and e.mean >= sc.lean:
                return sc.cue
        q, c = s.hits, self.cfg
        if q and q[-1][0] - q[0][0] >= 0.8 * c.sustain_s and sum(h for _, h in q) >= c.doubt_fraction * len(q):
            return FLAT_FACE
        return None

    def _flat(self, s: _TrackSpoof, t: float, points: np.ndarray, v: dict[str, float]) -> bool | None:
        """Compare with the oldest shape of the last second: None when the face barely moved out
        of the image plane (nothing to judge), else whether one homography explains the motion."""
        c = self.cfg
        s.shapes.append((t, points))
        while s.shapes and t - s.shapes[0][0] > 1.0:
            s.shapes.popleft()
        old = s.shapes[0][1]
        motion, planar = similarity_residual(points, old), homography_residual(points, old)
        v["motion"], v["planar"] = motion, planar
        if motion < c.flat_motion:
            return None
        return planar <= c.flat_ratio * motion

    def forget(self, alive: set[int]) -> None:
        """Drop the state of tracks that have ended."""
        self.tracks = {i: s for i, s in self.tracks.items() if i in alive}
        self.values = {i: v for i, v in self.values.items() if i in alive}

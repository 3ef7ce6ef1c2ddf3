"""The door's own verified live samples: what an enrolled person's face looked like to the site model
on entries the challenge verified, so `learn-attacks` learns this door's live side from use.

A site model fitted on a few admin recordings denies some live people at this camera for good.
Every entry a passed challenge verified is a live face at this door, labelled for free: its
attack-model features (`texture_features` vectors of up to TRACK_FRAMES judged frames, never an
image) are kept here and fitted as genuine at the next `learn-attacks`.

Guards, because a replay that passes the challenge by luck must not teach the door that it is live:
- only tracks that unlocked after their challenge was passed (never a passive unlock);
- only when the shipped model agrees the face is live: its mean attack probability over the same
  frames under `live_samples.agree_ratio` x `spoof.threshold` (no shipped model: nothing is kept);
- at most `live_samples.per_day` entries of a person in any 24 hours, `per_person` in all and
  `total` for the door (the oldest dropped);
- the threshold a refit may reach is held by the admin's attack recordings
  (`learn_attacks.recalibrate`), so even samples that got through cannot open the door to them.
The file is 0600 in `paths.cache` (the door's user only), read-modify-written under a lock so
`forget NAME` (another process) and the door never undo each other. Pure numpy: no TensorFlow, no dlib.
"""

from __future__ import annotations

import fcntl
import io
import logging
import os
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from door_access.config import Config, LiveSamplesConfig
from door_access.core import Box
from door_access.files import PRIVATE_FILE, private_dir, write_private
from door_access.liveness.attack_model import texture_features

log = logging.getLogger(__name__)

STORE_FILE = "live_samples.npz"
STORE_FORMAT = 1
FEATURES = 354  # texture_features' length
FRAMES = 6  # judged frames kept per entry: learn_attacks.TRACK_FRAMES, what the door averages over
DAY_S = 86400.0


@dataclass(frozen=True)
class Entry:
    """One verified entry: who, when (epoch s), its frames' features and the shipped model's mean."""

    name: str
    wall: float
    features: np.ndarray  # (frames, FEATURES) float32
    general: float


def store_path(cfg: Config) -> Path:
    return cfg.path("cache") / STORE_FILE


class LiveSamples:
    """The store file. Every change reads the file, changes it and writes it back atomically under an
    flock of `<file>.lock`, so a door adding and `forget` erasing in another process both hold."""

    def __init__(self, path: Path, cfg: LiveSamplesConfig):
        self.path = Path(path)
        self.cfg = cfg

    def entries(self) -> list[Entry]:
        """What is stored (empty when there is no file). A file that cannot be read raises ValueError."""
        if not self.path.is_file():
            return []
        try:
            with np.load(self.path, allow_pickle=False) as z:
                if int(z["format"]) != STORE_FORMAT:
                    raise ValueError(f"format {int(z['format'])}, expected {STORE_FORMAT}")
                feats, entry = z["features"], z["entry"]
                names, wall, general = z["names"], z["wall"], z["general"]
        except (OSError, KeyError, EOFError, ValueError) as exc:
            raise ValueError(f"live samples {self.path} cannot be read ({exc}): remove the file (the door "
                             f"collects them again)") from None
        if feats.ndim != 2 or feats.shape[1] != FEATURES or len(entry) != len(feats):
            raise ValueError(f"live samples {self.path}: not a live-sample file of this version")
        return [Entry(str(names[i]), float(wall[i]), feats[entry == i], float(general[i])) for i in range(len(names))]

    @contextmanager
    def _locked(self) -> Iterator[None]:
        private_dir(self.path.parent)
        fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _write(self, entries: list[Entry]) -> None:
        buf = io.BytesIO()
        feats = [e.features for e in entries]
        np.savez(buf, format=np.array(STORE_FORMAT),
                 features=np.concatenate(feats).astype(np.float32) if feats else np.zeros((0, FEATURES), np.float32),
                 entry=np.repeat(np.arange(len(entries)), [len(f) for f in feats]).astype(np.int64),
                 names=np.array([e.name for e in entries], dtype=str), wall=np.array([e.wall for e in entries]),
                 general=np.array([e.general for e in entries]))
        tmp = self.path.with_name(self.path.name + ".tmp")
        write_private(tmp, buf.getvalue())
        os.replace(tmp, self.path)

    def add(self, entry: Entry) -> bool:
        """Keep `entry` unless its person already has `per_day` entries in the 24 hours before it; then
        drop the person's oldest beyond `per_person` and the door's oldest beyond `total`."""
        with self._locked():
            entries = self.entries()
            recent = sum(1 for e in entries if e.name == entry.name and abs(entry.wall - e.wall) < DAY_S)
            if recent >= self.cfg.per_day:
                log.info("live samples: %s already gave %d today: not kept", entry.name, recent)
                return False
            entries = sorted(entries + [entry], key=lambda e: e.wall)
            mine = [e for e in entries if e.name == entry.name]
            drop = {id(e) for e in mine[:max(0, len(mine) - self.cfg.per_person)]}
            entries = [e for e in entries if id(e) not in drop]
            self._write(entries[max(0, len(entries) - self.cfg.total):])
        return True

    def forget(self, name: str) -> int:
        """Erase every entry of `name`; how many there were."""
        if not self.path.is_file():
            return 0
        with self._locked():
            entries = self.entries()
            kept = [e for e in entries if e.name != name]
            if len(kept) != len(entries):
                self._write(kept)
        return len(entries) - len(kept)


@dataclass
class _Track:
    frames: deque = field(default_factory=lambda: deque(maxlen=FRAMES))  # (features, shipped attack probability)
    passed: bool = False  # its challenge was asked and passed


class VerifiedLive:
    """The door's side: per track, the features and shipped-model probabilities of its latest judged
    frames (fed by the detector stage); on an unlock of a track whose challenge passed (the decider
    stage), the guards and then the store. The shipped model's probabilities are the spoof checker's, so
    no face is scored twice."""

    def __init__(self, cfg: Config, store: LiveSamples):
        self.store = store
        self.agree_below = cfg.live_samples.agree_ratio * cfg.spoof.threshold
        self.min_face_px = cfg.spoof.min_face_px
        self.min_frames = cfg.spoof.min_frames
        self.tracks: dict[int, _Track] = {}
        self._lock = threading.Lock()  # fed by the detector thread, read by the decider's

    def observe(self, track: int, t: float, bgr: np.ndarray, box: Box, passed: bool, general: float | None) -> None:
        """One frame of a track still deciding; `general`: the shipped model's attack probability for it, when
        the spoof checker judged this frame (`SpoofChecker.judged`: its pace and size limit), else None."""
        if box.w < self.min_face_px:
            return
        with self._lock:
            s = self.tracks.setdefault(track, _Track())
            s.passed = s.passed or passed
        if general is None:
            return
        try:
            sample = (texture_features(bgr, box).astype(np.float32), float(general))
        except ValueError:  # the face box left the frame
            return
        with self._lock:
            s.frames.append(sample)

    def unlocked(self, track: int, name: str, wall: float) -> bool:
        """The decider let `track` in as `name`: its frames go to `offer` (on a thread of their own) when its
        challenge passed; whether they went."""
        with self._lock:
            s = self.tracks.pop(track, None)
            frames = list(s.frames) if s is not None else []
        if s is None or not s.passed:
            return False  # passive unlocks teach nothing: no challenge vouched for them
        # the store's rewrite (up to a few MB) stays off the decider's thread; an unlock is rare
        threading.Thread(target=self.offer, args=(name, wall, frames), name="live-samples", daemon=True).start()
        return True

    def offer(self, name: str, wall: float, frames: list[tuple[np.ndarray, float]]) -> bool:
        """The guards for one verified entry's (features, shipped attack probability) frames, then the store."""
        if len(frames) < self.min_frames:
            log.info("live samples: %s: %d judged frame(s), fewer than spoof.min_frames: not kept", name, len(frames))
            return False
        general = float(np.mean([p for _, p in frames]))
        if general >= self.agree_below:
            log.info("live samples: %s: the shipped model's attack probability %.3f is not under %.3f: not kept",
                     name, general, self.agree_below)
            return False
        try:
            kept = self.store.add(Entry(name, wall, np.stack([f for f, _ in frames]), general))
        except (OSError, ValueError) as exc:  # learning is an extra: the door goes on, and says why
            log.warning("live samples: cannot keep an entry of %s: %s", name, exc)
            return False
        if kept:
            log.info("live samples: kept a verified entry of %s (%d frames, shipped model %.3f)", name, len(frames),
                     general)
        return kept

    def forget(self, alive: set[int]) -> None:
        with self._lock:
            self.tracks = {i: s for i, s in self.tracks.items() if i in alive}


def verified_live(cfg: Config) -> VerifiedLive | None:
    """The door's learner, or None where nothing can be verified or guarded: `live_samples.enabled` off,
    no challenge (liveness or `liveness.challenge` off), or no shipped model to agree (`spoof.model` off)."""
    c = cfg
    if not (c.live_samples.enabled and c.liveness.enabled and c.liveness.challenge != "off" and c.spoof.enabled):
        return None
    if not c.spoof.model:
        log.info("live samples: off (spoof.model is false: no shipped model to agree that a face is live)")
        return None
    return VerifiedLive(c, LiveSamples(store_path(c), c.live_samples))

"""The door's value types: face boxes, matches, liveness verdicts and events.

This module imports neither TensorFlow nor dlib, so the logic built on these types (tracking,
deciding, the door controller, the access log) is tested in milliseconds without a model.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np

INPUT_SIZE = 160  # FaceNet's input: aligned chips are INPUT_SIZE x INPUT_SIZE RGB
EMBEDDING_SIZE = 128  # FaceNet's output: unit-length embeddings


@dataclass(frozen=True)
class Box:
    """A face box in pixels of the frame it was found in."""

    x: int
    y: int
    w: int
    h: int

    def as_list(self) -> list[int]:
        return [self.x, self.y, self.w, self.h]

    def iou(self, other: Box) -> float:
        ix = max(0, min(self.x + self.w, other.x + other.w) - max(self.x, other.x))
        iy = max(0, min(self.y + self.h, other.y + other.h) - max(self.y, other.y))
        inter = ix * iy
        union = self.w * self.h + other.w * other.h - inter
        return inter / union if union else 0.0


@dataclass(frozen=True)
class Match:
    """One face matched against the gallery."""

    name: str | None  # the enrolled person, or None when nobody is under the threshold
    distance: float  # distance to the closest person (whether or not under the threshold)
    closest: str | None  # that closest person, for logs and tuning


@dataclass(frozen=True)
class LiveVerdict:
    """What liveness knows about one track at one frame.

    Evidence is reported as a time, not a flag, so the decider can demand that it was seen
    during the span of the votes it unlocks on (not before that identity appeared).
    """

    evidence_t: float | None  # frame time of the latest CONFIRM evidence (blink, facial motion), if any
    cue: str = ""  # the cue behind `evidence_t`, or why there is none yet
    first_wait_s: float | None = None  # seconds from first sight to the first evidence, for reports
    spoof: str | None = None  # a DENY cue that fired on this track (fails the attempt outright)
    challenge: str | None = None  # the action the door is asking for right now (the attempt stays pending)
    challenge_step: int = 0  # which step of the challenge that is (each new step is spoken, even a repeat)
    evidence_from: float | None = None  # the first frame that evidence rests on (the shapes it was measured
    # against, the closed eyes, the pose the challenge was judged from): it binds only if that face was named

# ---- events: the one record that actions, the access log and `--events-json` share ----------

UNLOCK = "unlock"
DENIED = "denied"
RELOCK = "relock"
CAMERA_LOST = "camera_lost"
CAMERA_BACK = "camera_back"
FAULT = "fault"
GALLERY = "gallery"
ALARM = "alarm"  # repeated failed attempts: unlocks refused for a cool-off period
CHALLENGE = "challenge"  # the door asks the person for an action (liveness challenge)


def readable_name(key: str) -> str:
    """The name people read for an enrolled key with no `display_name`: `_` and `-` as spaces, each word
    capitalised ("lin-manuel-miranda" -> "Lin Manuel Miranda"); the rest of each word is kept as typed."""
    return " ".join(w[:1].upper() + w[1:] for w in key.replace("_", " ").replace("-", " ").split())


@dataclass(frozen=True)
class Event:
    event: str  # one of the names above
    t: float  # seconds since the app started (monotonic clock)
    wall: float  # Unix time, for the access log
    name: str | None = None  # the enrolled name (the key of the gallery, the log and people.yaml)
    distance: float | None = None
    track: int | None = None
    detail: str = ""
    display_name: str | None = None  # what people read and hear for `name` (events only; the log keeps `name`)

    def to_json(self) -> str:
        d = asdict(self)
        d.pop("wall")
        if self.display_name is None:
            d.pop("display_name")
        d["t"] = round(self.t, 3)
        if self.distance is not None:
            d["distance"] = round(self.distance, 4)
        return json.dumps(d, ensure_ascii=False)


@dataclass(frozen=True)
class Notice:
    """An event on its way to the actions worker, with the face crop for a denial snapshot."""

    event: Event
    snapshot: np.ndarray | None = None  # BGR image, only for denials

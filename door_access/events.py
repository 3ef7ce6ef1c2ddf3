"""What the door decided or noticed: the one record that actions, the access log and `--events-json` share."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np

UNLOCK = "unlock"
DENIED = "denied"
RELOCK = "relock"
CAMERA_LOST = "camera_lost"
CAMERA_BACK = "camera_back"
FAULT = "fault"
GALLERY = "gallery"


@dataclass(frozen=True)
class Event:
    event: str  # one of the names above
    t: float  # seconds since the app started (monotonic clock)
    wall: float  # Unix time, for the access log
    name: str | None = None
    distance: float | None = None
    track: int | None = None
    detail: str = ""

    def to_json(self) -> str:
        d = asdict(self)
        d.pop("wall")
        d["t"] = round(self.t, 3)
        if self.distance is not None:
            d["distance"] = round(self.distance, 4)
        return json.dumps(d, ensure_ascii=False)


@dataclass(frozen=True)
class Notice:
    """An event on its way to the actions worker, with the face crop for a denial snapshot."""

    event: Event
    snapshot: np.ndarray | None = None  # BGR image, only for denials

"""Tying faces across frames into tracks, so one person in front of the door is one track.

Association is greedy by box overlap (IoU), which is enough at a door: few faces, small
motion between frames. The tracker also paces encoding: each track is sent to the encoder
at most `encodes_per_second` times, not every frame.
"""

from __future__ import annotations

from dataclasses import dataclass

from .core import Box


@dataclass
class Track:
    id: int
    box: Box
    first_seen: float
    last_seen: float
    last_encoded: float = float("-inf")


class Tracker:
    def __init__(self, min_iou: float, timeout_s: float, encodes_per_second: float):
        self.min_iou = min_iou
        self.timeout_s = timeout_s
        self.encode_interval = 1.0 / encodes_per_second
        self.tracks: dict[int, Track] = {}
        self._next_id = 1

    def update(self, boxes: list[Box], t: float) -> list[Track]:
        """Match `boxes` (one frame's faces) to live tracks; returns one track per box, in order."""
        self.tracks = {i: tr for i, tr in self.tracks.items() if t - tr.last_seen <= self.timeout_s}
        pairs = sorted(
            ((box.iou(tr.box), bi, tr.id) for bi, box in enumerate(boxes) for tr in self.tracks.values()),
            reverse=True,
        )
        assigned: dict[int, Track] = {}
        used: set[int] = set()
        for iou, bi, tid in pairs:
            if iou < self.min_iou:
                break
            if bi in assigned or tid in used:
                continue
            track = self.tracks[tid]
            track.box, track.last_seen = boxes[bi], t
            assigned[bi] = track
            used.add(tid)
        for bi, box in enumerate(boxes):
            if bi not in assigned:
                track = Track(self._next_id, box, t, t)
                self._next_id += 1
                self.tracks[track.id] = track
                assigned[bi] = track
        return [assigned[bi] for bi in range(len(boxes))]

    def take_encode_slot(self, track: Track, t: float) -> bool:
        """True (and the slot is used) when this track is due for another encoding."""
        if t - track.last_encoded >= self.encode_interval:
            track.last_encoded = t
            return True
        return False

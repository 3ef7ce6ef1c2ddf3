"""Tying faces across frames into tracks, so one person in front of the door is one track.

Association is greedy by box overlap (IoU), which is enough at a door: few faces, small
motion between frames. The tracker also paces encoding: each track is sent to the encoder
at most `encodes_per_second` times, not every frame, and a track that can no longer unlock
(it unlocked, named two people, or showed a spoof), or not before its person's cooldown ends
(someone let in moments ago, back on a new track), at most `settled_encodes_per_second`:
its votes then only keep its label fresh and notice a different enrolled face taking its place.

Each track is one `Track` record, owned here: its box, its votes and identity segment, its
latest liveness verdict, its label for the window and its decision flags. The detector
thread writes the box fields, the decider thread the decision fields. A track ends in one
place (`Tracker._end`: timed out, or split) and the `on_end` hooks drop any per-track state
kept elsewhere (the liveness checker's landmarks history).

A track is split, ending it and starting a fresh one on the same face, when its box jumps
in size more than a real head can between two frames, or when the decider asks (a
stranger's track names someone, or its challenge was answered before the votes naming its
person began): the new track starts with no votes and no liveness, so evidence seen on the
old face can never unlock the new one.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from door_access.core import Box, LiveVerdict, Match

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Track:
    id: int
    box: Box
    first_seen: float
    last_seen: float
    last_encoded: float = float("-inf")
    # ---- written by the decider ----
    votes: deque = field(default_factory=deque)  # (frame time, Match) of the current identity segment
    identity: str | None = None  # the enrolled person this segment's votes name, once one does
    identity_t: float = float("inf")  # the first vote naming `identity` since the last vote naming no one (inf
    # after such a vote): liveness evidence binds only to frames from here on
    leaning: tuple[str, float] | None = None  # (closest person, since) of the doubtful unknown votes in a row
    unknown_run: int = 0  # unknown votes in a row: that many makes the track an established stranger
    live: LiveVerdict | None = None  # the latest liveness verdict (None: liveness not checked)
    other_face: bool = False  # an encoding named no one (and was no doubt) since the named run began
    evidence_seen: float | None = None  # latest evidence resting only on frames since `identity_t`, not yet bound
    evidence_bound: float | None = None  # latest evidence an encoding naming `identity` came at or after: it counts
    label: tuple[str | None, float] | None = None  # latest (name, distance), for the window
    fused_sum: np.ndarray | None = None  # sum of the unit embeddings of all its encodings (see `fuse`)
    fused: Match | None = None  # what the normalised sum names, as of the latest encoding
    unlocked: bool = False
    denied: bool = False  # the one denial of this track has been given
    conflict: bool = False  # named two enrolled people: never unlocks
    spoofed: bool = False  # a liveness DENY cue fired: never unlocks
    quiet_until: float = float("-inf")  # frame time until which its person's cooldown rules out an unlock
    lockout_noted: bool = False  # told once that the door is locked out
    split_requested: bool = False  # the decider saw the identity change; the tracker splits it
    ended: bool = False

    @property
    def decided(self) -> bool:
        """No unlock can follow on this track (set by the decider, never unset): it unlocked, named
        two people, or showed a spoof. Its liveness no longer matters."""
        return self.unlocked or self.conflict or self.spoofed


class Tracker:
    def __init__(self, min_iou: float, timeout_s: float, encodes_per_second: float, max_scale_step: float = 1.3,
                 settled_encodes_per_second: float | None = None):
        self.min_iou = min_iou
        self.timeout_s = timeout_s
        self.encode_interval = 1.0 / encodes_per_second
        self.settled_interval = 1.0 / (settled_encodes_per_second or encodes_per_second)
        self.max_scale_step = max_scale_step
        self.tracks: dict[int, Track] = {}
        self.on_end: list[Callable[[Track], None]] = []  # the one "track ended" hook
        self._next_id = 1
        self._lock = threading.Lock()

    def update(self, boxes: list[Box], t: float) -> list[Track]:
        """Match `boxes` (one frame's faces) to live tracks; returns one track per box, in order."""
        with self._lock:
            for tr in list(self.tracks.values()):
                if t - tr.last_seen > self.timeout_s:
                    self._end(tr)
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
                used.add(tid)
                if track.split_requested or self._jumped(track.box, boxes[bi]):
                    log.info("track %d split: %s", track.id, "identity changed" if track.split_requested else
                             f"box width {track.box.w} -> {boxes[bi].w} px between two detections")
                    self._end(track)
                    continue  # the box gets a fresh track below
                track.box, track.last_seen = boxes[bi], t
                assigned[bi] = track
            for bi, box in enumerate(boxes):
                if bi not in assigned:
                    track = Track(self._next_id, box, t, t)
                    self._next_id += 1
                    self.tracks[track.id] = track
                    assigned[bi] = track
            return [assigned[bi] for bi in range(len(boxes))]

    def _jumped(self, old: Box, new: Box) -> bool:
        """A size change between two detections larger than a head moving at a door can make."""
        ratio = max(new.w, 1) / max(old.w, 1)
        return max(ratio, 1.0 / ratio) > self.max_scale_step

    def _end(self, track: Track) -> None:
        track.ended = True
        self.tracks.pop(track.id, None)
        for hook in self.on_end:
            hook(track)

    def take_encode_slot(self, track: Track, t: float) -> bool:
        """True (and the slot is used) when this track is due for another encoding."""
        # set by the decider: no unlock can follow (or none before its person's cooldown ends)
        settled = track.decided or t < track.quiet_until
        if t - track.last_encoded >= (self.settled_interval if settled else self.encode_interval):
            track.last_encoded = t
            return True
        return False


def fuse(track: Track, embedding: np.ndarray) -> np.ndarray:
    """Add one encoding to the track's running fused embedding and return it: the normalised mean of every
    encoding since the track began. A track is one face (a new identity splits it, two identities end it in
    a conflict), so its frames together are a better likeness than any one of them, and no single frame
    can swing it."""
    e = np.asarray(embedding, np.float64).ravel()
    track.fused_sum = e.copy() if track.fused_sum is None else track.fused_sum + e
    return (track.fused_sum / max(float(np.linalg.norm(track.fused_sum)), 1e-12)).astype(np.float32)


def vote(track: Track, t: float, match: Match, window: int) -> None:
    """Add one vote to the track's current identity segment (the last `window` are kept)."""
    track.votes.append((t, match))
    while len(track.votes) > window:
        track.votes.popleft()

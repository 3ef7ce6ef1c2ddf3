"""Deciding per track: unlock when K of its last N matches name the same enrolled person.

One frame can be misread (motion blur, a turned head); a vote over several encodings of the
same track cannot be swung by one. Each track unlocks at most once, each person at most once
per cooldown, and a track that is mostly "unknown" gets one denial.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass

from .config import DoorConfig, VotingConfig
from .core import DENIED, UNLOCK, LiveVerdict, Match


@dataclass(frozen=True)
class Decision:
    event: str  # UNLOCK or DENIED
    track: int
    name: str | None
    distance: float
    detail: str = ""


@dataclass
class TrackVotes:
    votes: deque[Match]
    first_seen: float
    last_seen: float
    unlocked: bool = False
    denied: bool = False
    live: bool = True
    liveness_note: str = ""  # the cue that proved liveness, or why it is not proven yet
    live_after_s: float | None = None
    refused: str = ""  # the door policy's reason, once it refused this track (asked once per track)


class Decider:
    def __init__(self, voting: VotingConfig, door: DoorConfig, track_timeout_s: float,
                 liveness_timeout_s: float = float("inf"), liveness_window_s: float = float("inf"),
                 allow: Callable[[str, float], str | None] | None = None):
        self.window = voting.window
        self.required = voting.required
        self.cooldown_s = door.cooldown_seconds
        self.track_timeout_s = track_timeout_s
        self.liveness_timeout_s = liveness_timeout_s
        self.liveness_window_s = liveness_window_s
        self.tracks: dict[int, TrackVotes] = {}
        self.last_unlock: dict[str, float] = {}
        self.allow = allow  # (name, wall time) -> why this person may not enter now (door policy), or None

    def observe(self, t: float, seen: list[int], matches: dict[int, Match],
                liveness: dict[int, LiveVerdict] | None = None) -> list[Decision]:
        """One processed frame: the tracks `seen` in it, new `matches` for some of them, and each
        seen track's liveness verdict if it is checked (a track without one counts as live)."""
        for tid in seen:
            state = self.tracks.setdefault(tid, TrackVotes(deque(maxlen=self.window), t, t))
            state.last_seen = t
            if liveness and tid in liveness:
                v = liveness[tid]
                state.live = v.evidence_t is not None and t - v.evidence_t <= self.liveness_window_s
                state.liveness_note, state.live_after_s = v.cue, v.first_wait_s
        self.tracks = {i: s for i, s in self.tracks.items() if t - s.last_seen <= self.track_timeout_s}

        decisions = []
        for tid, match in matches.items():
            state = self.tracks.get(tid)
            if state is None:
                continue
            state.votes.append(match)
            decision = self._decide(t, tid, state)
            if decision:
                decisions.append(decision)
        return decisions

    def _decide(self, t: float, tid: int, state: TrackVotes) -> Decision | None:
        if state.unlocked:
            return None
        named = Counter(m.name for m in state.votes if m.name is not None)
        if named:
            name, count = named.most_common(1)[0]
            if count >= self.required:
                if not state.live:  # wait for a blink or facial motion, up to the liveness timeout
                    if not state.denied and t - state.first_seen >= self.liveness_timeout_s:
                        state.denied = True
                        return Decision(DENIED, tid, name, _mean(state, name), f"no liveness: {state.liveness_note}")
                    return None
                if t - self.last_unlock.get(name, float("-inf")) < self.cooldown_s:
                    return None
                if state.refused:
                    return None
                state.refused = self._refused(name) or ""
                if state.refused:
                    state.denied = True
                    return Decision(DENIED, tid, name, _mean(state, name), state.refused)
                state.unlocked = True
                self.last_unlock[name] = t
                detail = f"live after {state.live_after_s:.2f} s ({state.liveness_note})" \
                    if state.live_after_s is not None else ""
                return Decision(UNLOCK, tid, name, _mean(state, name), detail)
        unknown = sum(m.name is None for m in state.votes)
        if not state.denied and len(state.votes) >= self.window and unknown >= self.required:
            state.denied = True
            closest = min(state.votes, key=lambda m: m.distance)
            return Decision(DENIED, tid, None, closest.distance, f"unknown face (closest: {closest.closest})")
        return None

    def _refused(self, name: str) -> str | None:
        """The door policy's reason to refuse `name` now; a policy that fails refuses (fail closed)."""
        if self.allow is None:
            return None
        try:
            return self.allow(name, time.time())
        except Exception as exc:
            return f"door policy failed: {type(exc).__name__}: {exc}"


def _mean(state: TrackVotes, name: str) -> float:
    ds = [m.distance for m in state.votes if m.name == name]
    return sum(ds) / len(ds)

"""Deciding per track: who gets in, and when the door stops listening.

A track unlocks when K (`voting.required`, a strict majority) of its last N encodings name the
same enrolled person, its fused embedding (the normalised mean of all its encodings,
`tracking.fuse`) names that person too, and liveness evidence is bound to that person. One
misread frame cannot swing the vote; a stranger who looks like someone on a few frames is still
a stranger on all of them together; a photo raised in front of a live face, or lowered for one,
cannot borrow its blink, its talk or its answer. The rules, each closing a way in:

- a track whose votes name two enrolled people, or whose fused embedding names someone other
  than its votes, is a tracker swap or an attack: one `denied` (conflict), and it never unlocks;
- a track established as a stranger (K unknown votes in a row) that then names someone is
  split: the tracker starts a fresh track with no votes and no liveness;
- liveness evidence belongs to the face that showed it. The encoder sees a track at most
  `encodes_per_second` (8) times a second, the cues every frame, so evidence is bound through the
  encodings around it: it counts only if every frame it rests on (`LiveVerdict.evidence_from`:
  the shapes that moved, the closed eyes, the resting pose a challenge was judged from) comes
  at or after a vote naming the person, and a later vote names them too (`_see_evidence`); a
  vote naming no one after that starts liveness over from the next vote naming them (a live
  person misread once keeps their votes, and shows evidence again; an unknown vote closest to
  them within `doubt_distance`, recognition's threshold plus margin, is a doubt, most likely
  their head turned: it does not break the run, and doubts leaning to them just before the
  first vote naming them start it), and a challenge answered
  (partly) before such a vote splits the track, so the fresh one is asked again;
- a DENY cue (`LiveVerdict.spoof`) denies the track once and it never unlocks; while a
  challenge runs the attempt is pending, otherwise no evidence within `liveness.timeout_s`
  is one `denied: no liveness`; a track that named a person and ends (the face left, or
  the tracker lost it) with its challenge unanswered is a failed attempt too, so walking the
  phone away and back to draw another challenge counts toward the lockout (unless that person
  was let in within the cooldown: someone turning away after walking in is asked again);
- after `lockout.failures` denials within `lockout.window_s`, an `alarm` and no unlock for
  `lockout.cooloff_s` (`locked_out_until`); while failures go on (no gap of `window_s` without
  one), each further lockout doubles the one before, up to `lockout.max_cooloff_s`, each with
  its alarm: a scripted attacker gets ever fewer tries an hour. An unlock starts over;
- a failed attempt that named a person (when it failed, or later on the same track) counts against
  that person in the `ledger` (the access log's database: restarts keep it); at
  `lockout.person_daily_failures` within 24 h the person is suspended, an `alarm`, and every track
  naming them is denied ("suspended") until an admin releases them: the lockout's cool-off only
  slows a patient attacker, the budget caps the tries at one person a day;
- each track unlocks at most once, each person at most once per cooldown, and an optional
  per-person policy `allow(name, wall_time)` can refuse an unlock with a reason.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from door_access.config import DoorConfig, LockoutConfig, VotingConfig
from door_access.core import ALARM, DENIED, UNLOCK, LiveVerdict, Match
from door_access.door.tracking import Track, vote

if TYPE_CHECKING:
    from door_access.door.access_log import PersonLedger

SUSPENDED = "suspended"  # the detail of a suspended person's denial and of the alarm that suspends them
RELEASED = "released"  # the detail of the alarm that ends a suspension (said and shown at the door: nothing)
CHALLENGE_PASSED = "challenge passed"  # the cue of a passed challenge (liveness/cues.py)
Allow = Callable[[str, float], "str | None"]  # (name, Unix time) -> why not, or None to let them in


@dataclass(frozen=True)
class Decision:
    event: str  # UNLOCK, DENIED or ALARM
    track: int
    name: str | None
    distance: float | None
    detail: str = ""


class Decider:
    def __init__(self, voting: VotingConfig, door: DoorConfig, track_timeout_s: float,
                 liveness_timeout_s: float = float("inf"), liveness_window_s: float = float("inf"),
                 lockout: LockoutConfig | None = None, allow: Allow | None = None,
                 wall_clock: Callable[[], float] = time.time, ledger: PersonLedger | None = None,
                 doubt_distance: float = 0.0):
        self.window = voting.window
        self.required = voting.required
        self.cooldown_s = door.cooldown_seconds
        self.track_timeout_s = track_timeout_s
        self.liveness_timeout_s = liveness_timeout_s
        self.liveness_window_s = liveness_window_s
        self.lockout = lockout or LockoutConfig(failures=0)
        self.allow = allow
        self.wall_clock = wall_clock
        self.doubt_distance = doubt_distance  # an unknown vote under this leans to its closest person: a doubt
        self.tracks: dict[int, Track] = {}  # the records seen lately (owned by the tracker), by id
        self.last_unlock: dict[str, float] = {}
        self.locked_out_until = float("-inf")  # frame time until which every unlock is refused
        self.last_t = float("-inf")  # the latest frame's time
        self._failures: deque[float] = deque()  # frame times of recent failed attempts
        self._streak = 0  # lockouts in a row while failures go on: the next cool-off is cooloff_s * 2**streak
        self._last_failure = float("-inf")
        self.ledger = ledger  # per-person failed attempts and suspensions; None: no per-person budget
        self.on_restart: Callable[[int], None] | None = None  # liveness starts over: so does evidence kept elsewhere
        self._unnamed: set[int] = set()  # tracks that failed before naming anyone: counted once they do

    def locked_out(self, t: float | None = None) -> bool:
        """Whether unlocks are refused at frame time `t` (default: the latest frame's, for callers off the
        frame path: a remote unlock; frame times are the video's own for a file played flat out)."""
        return (self.last_t if t is None else t) < self.locked_out_until

    def observe(self, t: float, seen: list[Track], matches: dict[int, Match],
                liveness: dict[int, LiveVerdict] | None = None,
                fused: dict[int, Match] | None = None) -> list[Decision]:
        """One processed frame: the tracks `seen` in it, new `matches` for some of them (by track id), each
        seen track's liveness verdict if it is checked (a track without one counts as live), and what the
        fused embedding of each matched track names now (`tracking.fuse`; a track without one never
        unlocks)."""
        self.last_t = t
        for track in seen:
            self.tracks[track.id] = track
            if liveness and track.id in liveness:
                track.live = liveness[track.id]
        decisions: list[Decision] = []
        kept = {}
        for i, tr in self.tracks.items():
            if t - tr.last_seen <= self.track_timeout_s and not tr.split_requested:
                kept[i] = tr
            elif self._abandoned(t, tr):
                self._fail(t, decisions, Decision(DENIED, tr.id, tr.identity, _best(tr),
                                                  f"challenge not answered: the face left ({tr.live.challenge})"))
        self.tracks = kept
        self._unnamed &= kept.keys()
        for track in seen:
            if track.split_requested:  # frames in flight from before the split: the old track is over
                continue
            self._see_evidence(track)
            if track.live is not None and track.live.spoof and not track.spoofed:
                track.spoofed = True
                self._fail(t, decisions, Decision(DENIED, track.id, track.identity, _best(track),
                                                  f"spoof ({track.live.spoof})"))
            match = matches.get(track.id)
            if match is not None:
                track.label = (match.name, match.distance)
                if fused and track.id in fused:
                    track.fused = fused[track.id]
                decision = self._decide(t, track, match)
                if track.identity is not None and track.id in self._unnamed:  # its failure named someone now
                    self._unnamed.discard(track.id)
                    self._count_against(track.identity, track.id, decisions)
                if decision is not None:
                    if decision.event == DENIED and not decision.detail.startswith(("locked out", "policy",
                                                                                    SUSPENDED)):
                        self._fail(t, decisions, decision)
                    else:
                        decisions.append(decision)
        return decisions

    def _fail(self, t: float, decisions: list[Decision], denial: Decision) -> None:
        """A failed attempt: the denial, and the alarm when it is the N-th within the window."""
        decisions.append(denial)
        if denial.name is not None:
            self._count_against(denial.name, denial.track, decisions)
        elif denial.track in self.tracks and self.tracks[denial.track].identity is None:  # not a conflict's
            self._unnamed.add(denial.track)
        n, window = self.lockout.failures, self.lockout.window_s
        if n <= 0:
            return
        if t - max(self._last_failure, self.locked_out_until) > window:
            self._streak = 0  # a whole window without a failure (outside a lockout): the attempts stopped
        self._last_failure = t
        self._failures.append(t)
        while self._failures and t - self._failures[0] > window:
            self._failures.popleft()
        if len(self._failures) >= n and not self.locked_out(t):
            base = self.lockout.cooloff_s
            cooloff = min(base * 2.0 ** min(self._streak, 64), max(self.lockout.max_cooloff_s, base))
            self._streak += 1
            self.locked_out_until = t + cooloff
            self._failures.clear()
            again = f" (lockout {self._streak} in a row)" if self._streak > 1 else ""
            decisions.append(Decision(ALARM, denial.track, None, None,
                                      f"{n} failed attempts within {window:g} s: unlocks refused for "
                                      f"{cooloff:g} s{again}"))

    def _count_against(self, name: str, track: int, decisions: list[Decision]) -> None:
        """A failed attempt that named `name`, in the ledger; the one that reaches the daily budget suspends
        them (an alarm). The detail never holds the name: `forget` renames the name column only."""
        limit = self.lockout.person_daily_failures
        if self.ledger is None or limit <= 0:
            return
        wall = self.wall_clock()
        n = self.ledger.failed(name, wall)
        if n >= limit and not self.ledger.suspended(name):
            detail = (f"{SUSPENDED} after {n} failed attempts within 24 h: unlocks refused until an admin "
                      f"releases them (door-access release)")
            self.ledger.suspend(name, wall, detail)
            decisions.append(Decision(ALARM, track, name, None, detail))

    def _decide(self, t: float, track: Track, match: Match) -> Decision | None:
        if match.name is None:
            doubt = match.distance < self.doubt_distance
            if not doubt or track.identity not in (None, match.closest):  # a face it does not (or will not) name
                track.other_face = True
            if track.identity is not None and not (doubt and match.closest == track.identity):  # no one it knows
                track.identity_t = float("inf")  # liveness starts over from the next vote naming them
                track.evidence_seen = track.evidence_bound = None
            if not doubt:
                track.leaning = None
            elif track.leaning is None or track.leaning[0] != match.closest:
                track.leaning = (match.closest, t)
            track.unknown_run += 1
        elif track.identity is None:
            if track.unknown_run >= self.required:  # an established stranger now names someone: new face
                track.split_requested = True
                return None
            track.identity, track.identity_t = match.name, self._run_start(track, match.name, t)
            self._restart_evidence(track)
        elif match.name != track.identity:
            if not track.conflict:
                track.conflict = True
                return Decision(DENIED, track.id, None, match.distance,
                                f"conflict: one track named {track.identity} and {match.name}")
        elif track.identity_t == float("inf"):
            track.identity_t = self._run_start(track, match.name, t)  # named again after no one: binds from here
            self._restart_evidence(track)
        together = track.fused
        if (track.identity is not None and together is not None and together.name is not None
                and together.name != track.identity and not track.conflict):
            track.conflict = True
            return Decision(DENIED, track.id, None, together.distance,
                            f"conflict: one track's votes named {track.identity}, its frames together "
                            f"{together.name}")
        if match.name is not None:
            track.unknown_run = 0
        if match.name is not None and match.name == track.identity and track.evidence_seen is not None:
            track.evidence_bound = track.evidence_seen  # an encoding after it names the same face: it was theirs
        if float("-inf") < track.quiet_until <= t:
            track.votes.clear()  # its person's cooldown is over: the sparse votes from it are stale, K fresh ones count
            track.quiet_until = float("-inf")
        vote(track, t, match, self.window)
        if track.decided:
            return None

        name = track.identity
        named = [m for _, m in track.votes if name is not None and m.name == name]
        if len(named) >= self.required and together is not None and together.name == name:
            distance = sum(m.distance for m in named) / len(named)
            cooled = self.last_unlock.get(name, float("-inf")) + self.cooldown_s
            if t < cooled:  # let in moments ago: this track is encoded at the settled rate till then
                track.quiet_until = cooled
            if self.ledger is not None and self.ledger.suspended(name):  # whatever the face shows
                if track.denied:
                    return None
                track.denied = True
                return Decision(DENIED, track.id, name, distance,
                                f"{SUSPENDED} after repeated failed attempts: an admin must release them")
            live = track.live
            if live is not None and not self._live_for(t, track, live):
                if live.challenge:  # the door asked for an action: the attempt is pending
                    return None
                if not track.denied and t - track.identity_t >= self.liveness_timeout_s:
                    track.denied = True
                    return Decision(DENIED, track.id, name, distance, f"no liveness: {live.cue}")
                return None
            if self.locked_out(t):
                if not track.lockout_noted:
                    track.lockout_noted = True
                    return Decision(DENIED, track.id, name, distance,
                                    f"locked out for {self.locked_out_until - t:.0f} s after repeated failed attempts")
                return None
            if t < cooled:
                return None
            if self.allow is not None:
                reason = self._refused(name)
                if reason:
                    if track.denied:
                        return None
                    track.denied = True
                    return Decision(DENIED, track.id, name, distance, f"policy: {reason}")
            track.unlocked = True
            self.last_unlock[name] = t
            self._streak = 0  # someone let in: the lockout escalation starts over
            detail = f"live after {live.first_wait_s:.2f} s ({live.cue})" \
                if live is not None and live.first_wait_s is not None else ""
            return Decision(UNLOCK, track.id, name, distance, detail)
        unknown = [m for _, m in track.votes if m.name is None]
        if not track.denied and len(track.votes) >= self.window and len(unknown) >= self.required:
            track.denied = True
            closest = min(unknown, key=lambda m: m.distance)
            return Decision(DENIED, track.id, None, closest.distance, f"unknown face (closest: {closest.closest})")
        return None

    def _abandoned(self, t: float, track: Track) -> bool:
        """The ended track named a person and was being asked an action, nothing decided, and that
        person was not let in within the cooldown (someone turning away after walking in)."""
        return (track.identity is not None and track.live is not None and track.live.challenge is not None
                and not (track.decided or track.denied)
                and t >= self.last_unlock.get(track.identity, float("-inf")) + self.cooldown_s)

    def _restart_evidence(self, track: Track) -> None:
        """The track names its person after showing a face it does not name: the per-track evidence kept
        elsewhere (the attack models' means, `on_restart`) starts over, so that face's frames cannot
        dilute the named face's."""
        if track.other_face and self.on_restart is not None:
            self.on_restart(track.id)
        track.other_face = False

    @staticmethod
    def _run_start(track: Track, name: str, t: float) -> float:
        """Where evidence for `name` may start resting, given a vote naming them at `t`: the first of the
        doubtful votes leaning to them just before it, if any (`Track.leaning`), else `t`."""
        lean = track.leaning
        return lean[1] if lean is not None and lean[0] == name else t

    def _see_evidence(self, track: Track) -> None:
        """Note evidence of this frame's verdict that rests only on frames from the first vote naming the
        track's person on (`LiveVerdict.evidence_from`): the next encoding naming them binds it."""
        live = track.live
        if track.identity is None or live is None or live.evidence_t is None:
            return
        since = live.evidence_t if live.evidence_from is None else live.evidence_from
        if since >= track.identity_t:
            if track.evidence_seen is None or live.evidence_t > track.evidence_seen:
                track.evidence_seen = live.evidence_t
        elif live.cue.startswith(CHALLENGE_PASSED) and track.identity_t < float("inf") and not track.decided:
            track.split_requested = True  # answered (partly) by a face not named: ask a fresh track again

    def _live_for(self, t: float, track: Track, live: LiveVerdict) -> bool:
        """Evidence bound to the person (`_see_evidence`, then a vote naming them), recent enough, and still
        vouched for by the current verdict (`graded` withdraws a cue when the grade leaves PASS, and asks)."""
        e = track.evidence_bound
        return (e is not None and live.evidence_t is not None and e <= live.evidence_t
                and t - e <= self.liveness_window_s)

    def _refused(self, name: str) -> str | None:
        """The door policy's reason to refuse `name` now; a policy that fails refuses (fail closed)."""
        try:
            return self.allow(name, self.wall_clock())
        except Exception as exc:
            return f"door policy failed: {type(exc).__name__}: {exc}"


def _best(track: Track) -> float | None:
    return min((m.distance for _, m in track.votes), default=None)


def release(ledger: PersonLedger, name: str, alarm: Callable[[str], None], source: str) -> bool:
    """An admin's release of `name` (`door-access release`, the MQTT command `release`): their suspension
    ends and their counted failures are cleared, an `alarm` through `alarm(detail)`; False (nothing
    recorded) when they were neither suspended nor had a failure counted."""
    was, cleared = ledger.release(name)
    if not was and not cleared:
        return False
    alarm(f"{RELEASED} by an admin ({source}): {'suspension ended, ' if was else ''}"
          f"{cleared} counted failed attempt(s) cleared")
    return True

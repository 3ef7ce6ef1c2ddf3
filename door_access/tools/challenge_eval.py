"""Judging recorded tracks against every challenge the door could ask (`eval-liveness --challenges all`).

The door asks one random sequence per attempt; an evaluation asks them all, at every moment a replay
could be started, on one pass over each track's recorded frames (`challenge.Sample`), with the
door's own verifier (`ChallengeSequence`) and the decider's binding of an answer to the face that
gave it. Offline only: nothing here runs at the door.
"""

from __future__ import annotations

from dataclasses import dataclass

from door_access.liveness.challenge import (
    BLINK_TWICE,
    RUNNING,
    ChallengeSequence,
    Pose,
    Sample,
    Thresholds,
    neutral_pose,
    scores,
)


@dataclass
class Trace:
    """What a track showed from a moment a challenge is asked: enough to replay any challenge on it."""

    ask_t: float
    neutral: Pose
    blinks: int
    samples: list[Sample]
    since: float | None = None  # the first frame of the resting pose: an answer rests on the frames from here


def asked_at(samples: list[Sample], t: float, neutral_s: float) -> Trace | None:
    """The track's frames (`samples`, from first sight) seen as if a challenge were asked at the first
    frame at or after `t`: the neutral pose from the `neutral_s` before it, as the door takes it."""
    after = [s for s in samples if s.t >= t]
    before = [s.pose for s in samples if after and after[0].t - neutral_s <= s.t < after[0].t and s.pose]
    if not after or not before:
        return None
    since = next(s.t for s in samples if after[0].t - neutral_s <= s.t < after[0].t and s.pose)
    return Trace(after[0].t, neutral_pose(before), after[0].blinks, after, since)


def bound(votes: list[tuple], person: str, since: float, done: float) -> bool:
    """Whether an answer resting on the frames from `since` and passed at `done` is `person`'s, as the door
    binds evidence (decision.py): `votes` (the track's encodings in order: (time, name or None[, doubt]))
    named them at or before `since` and on every encoding from that vote to one at or after `done`. A vote
    naming no one starts it over, unless it is a doubt (unknown, closest to `person` within the decider's
    `doubt_distance`): doubts neither break the run, and those just before its first vote start it; a vote
    naming someone else is a conflict (that track never unlocks)."""
    start = lean = None
    for t, name, *doubt in votes:
        if name == person:
            start = start if start is not None else lean if lean is not None else t
            if t >= done:
                return start <= since
        elif name is not None:
            return False
        elif doubt and doubt[0]:
            lean = t if lean is None else lean
        else:
            start = lean = None
    return False


def judge_trace(trace: Trace, sequences, deadline_s: float, th: Thresholds,
                hold_s: float) -> dict[tuple[str, ...], ChallengeSequence]:
    """Each sequence of actions as if it had been asked at `trace.ask_t`: one pass over the samples
    serves them all (the steps after the first begin wherever each sequence's own step passed)."""
    runs = {tuple(seq): ChallengeSequence(tuple(seq), trace.ask_t, deadline_s, trace.neutral, trace.blinks,
                                          th, hold_s) for seq in sequences}
    running = list(runs.values())
    for sample in trace.samples:
        running = [run for run in running if run.update(sample.t, sample.pose, sample.blinks) == RUNNING]
        if not running:
            break
    return runs


def response_times(trace: Trace, passed: dict[str, float], th: Thresholds,
                   rest: float = 0.25) -> dict[str, float]:
    """For each one-step challenge passed at time t (`passed`: action -> t), how long the verifier took
    from the start of the movement that answered it: the last sample before t at which the head was
    within `rest` of the step's threshold from neutral (held actions), or the first closed-eye sample
    of the first blink counted after the ask (blink twice). What a person answering costs, in seconds."""
    out: dict[str, float] = {}
    for action, done in passed.items():
        before = [s for s in trace.samples if s.t <= done]
        if action == BLINK_TWICE:
            onset = next((s.t for s in before if s.eyes_closed and s.blinks == trace.blinks), None)
        else:
            moved = [(s.t, scores(s.pose, trace.neutral, th)[action]) for s in before if s.pose]
            onset = next((t for t, score in reversed(moved) if score < rest), None)
        if onset is not None:
            out[action] = round(done - onset, 2)
    return out


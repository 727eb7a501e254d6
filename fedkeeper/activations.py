"""The states an activation record and a tracker job can be in, and the moves between them: written once here.

Two machines, both enforced by the tracker (`Attempt.move`, `Job.move` refuse anything not in the table):

* `ActivationState` is what one attempt's record says: the `state` of a document in the MongoDB `activations`
  collection and the `state` column of `Logs/<run>/activations.csv`. Values are the plain strings earlier
  versions stored, so runs written before this enum existed still read, report and resume.
* `JobState` is where one unit of work (a client's round, or an aggregation) stands inside a running tracker.
  It is never stored; the scenario reads it to learn the outcome.

A provider's poll answers with `fedkeeper.providers.base.State` (pending or one final outcome); the tracker turns
that answer into a record state with `ActivationState.of`. docs/reliability.md draws both machines.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

from fedkeeper.providers.base import State


class ActivationState(StrEnum):
    """The recorded state of one attempt (one invocation of one function for one client in one round)."""

    INVOKED = "invoked"  # the platform accepted the call; no answer yet (the record an interrupted run leaves)
    SUCCEEDED = "succeeded"  # the function returned; its update is in the store
    FAILED = "failed"  # the function raised, the platform rejected the call, or the function was missing
    TIMED_OUT = "timed_out"  # no answer within the function timeout plus slack
    LOST = "lost"  # the platform has no record of it (e.g. its worker died)
    THROTTLED = "throttled"  # accepted, then refused with 429 when asked about it; re-invoked, never a failure
    ABANDONED = "abandoned"  # still running when its round went on without it; a late result is not used

    @classmethod
    def of(cls, outcome: State) -> ActivationState:
        """The record state for a provider's final outcome (PENDING is not final, so it has none)."""
        if outcome is State.PENDING:
            raise IllegalTransition(f"a pending outcome is not a final activation state ({outcome!r})")
        return cls(outcome.value)

    @property
    def final(self) -> bool:
        return not ACTIVATION_TRANSITIONS[self]


class JobState(StrEnum):
    """Where one unit of work stands in the tracker (in memory only)."""

    WAITING = "waiting"  # to be invoked as soon as its cluster has room
    RUNNING = "running"  # one attempt in flight (submitted by this tracker, or adopted from an interrupted one)
    BACKOFF = "backoff"  # the last attempt failed or was throttled; invoked again after `not_before`
    SUCCEEDED = "succeeded"  # one attempt succeeded
    GAVE_UP = "gave_up"  # `max_attempts` attempts failed
    ABANDONED = "abandoned"  # its round went on without it (deadline with a quorum, or over-selection satisfied)

    @property
    def done(self) -> bool:
        return not JOB_TRANSITIONS[self]


#: record state → the states it may move to. `None` is "no record yet": a record starts as `invoked`, or as
#: `failed` when the platform refused the call outright. Final states have no way out.
ACTIVATION_TRANSITIONS: Mapping[ActivationState | None, frozenset[ActivationState]] = {
    None: frozenset({ActivationState.INVOKED, ActivationState.FAILED}),
    ActivationState.INVOKED: frozenset({
        ActivationState.SUCCEEDED, ActivationState.FAILED, ActivationState.TIMED_OUT, ActivationState.LOST,
        ActivationState.THROTTLED, ActivationState.ABANDONED}),
    ActivationState.SUCCEEDED: frozenset(),
    ActivationState.FAILED: frozenset(),
    ActivationState.TIMED_OUT: frozenset(),
    ActivationState.LOST: frozenset(),
    ActivationState.THROTTLED: frozenset(),
    ActivationState.ABANDONED: frozenset(),
}

#: job state → the states it may move to. WAITING → WAITING is a redeploy of a missing function, BACKOFF →
#: BACKOFF a throttled or refused re-invocation; SUCCEEDED only follows RUNNING (an attempt answered).
JOB_TRANSITIONS: Mapping[JobState, frozenset[JobState]] = {
    JobState.WAITING: frozenset({
        JobState.RUNNING, JobState.BACKOFF, JobState.WAITING, JobState.GAVE_UP, JobState.ABANDONED}),
    JobState.BACKOFF: frozenset({
        JobState.RUNNING, JobState.BACKOFF, JobState.WAITING, JobState.GAVE_UP, JobState.ABANDONED}),
    JobState.RUNNING: frozenset({
        JobState.SUCCEEDED, JobState.BACKOFF, JobState.WAITING, JobState.GAVE_UP, JobState.ABANDONED}),
    JobState.SUCCEEDED: frozenset(),
    JobState.GAVE_UP: frozenset(),
    JobState.ABANDONED: frozenset(),
}


class IllegalTransition(RuntimeError):
    """A bug in the tracker: a state change the tables above do not allow (never an expected failure)."""


def check_activation(current: ActivationState | None, new: ActivationState, *, what: str = "activation") -> None:
    """Refuse a record state change that `ACTIVATION_TRANSITIONS` does not allow."""
    if new not in ACTIVATION_TRANSITIONS[current]:
        start = "a new record" if current is None else f"{current.value!r}"
        raise IllegalTransition(f"{what}: {start} cannot become {new.value!r} (allowed: "
                                f"{_names(ACTIVATION_TRANSITIONS[current])})")


def check_job(current: JobState, new: JobState, *, what: str = "job") -> None:
    """Refuse a job state change that `JOB_TRANSITIONS` does not allow."""
    if new not in JOB_TRANSITIONS[current]:
        raise IllegalTransition(f"{what}: {current.value!r} cannot become {new.value!r} (allowed: "
                                f"{_names(JOB_TRANSITIONS[current])})")


def _names(states: frozenset[StrEnum]) -> str:
    return ", ".join(sorted(s.value for s in states)) or "none, it is final"

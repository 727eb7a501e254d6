"""Activations in flight: their records, their attempts, resume, and the resilience policy.

One `Job` is one thing that must get done (one client's training in one round, or one aggregation); the
tracker makes attempts until one succeeds or the policy gives up, and moves every job and every activation
record only along the tables in `fedkeeper.activations` (docs/reliability.md draws them). Throttling is waited
out and never counted as an attempt; a missing function is redeployed once and retried; credentials that are
refused stop everything. Polling is adaptive (fast at first, slower for long calls) and due polls of platforms
that poll over the network are issued concurrently.

The tracker also owns resume: before it starts a round's jobs it reads that round's records, continues the
attempt numbering after the highest one used, and adopts an activation an interrupted orchestrator left
`invoked` (polls it by its platform id) instead of invoking again. It knows no platform by name: what it needs
per cluster comes from the fabric (`TrackerFabric`).
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from fedkeeper.activations import ActivationState, JobState, check_activation, check_job
from fedkeeper.config.models import Resilience
from fedkeeper.errors import RunFailed
from fedkeeper.providers.base import (
    AuthError,
    FunctionMissing,
    Invocation,
    PlatformError,
    ProviderError,
    State,
    Status,
    Throttled,
)

log = logging.getLogger(__name__)

JobKey = tuple[int, int | None, str]  # (round, client id or None for the aggregator, function)


class Invoker(Protocol):
    """The two calls the tracker makes on a provider."""

    def invoke(self, name: str, payload: dict[str, Any], /) -> Invocation: ...

    def poll(self, invocation: Invocation, /) -> Status: ...


@runtime_checkable
class TrackerFabric(Protocol):
    """What the tracker needs from a fabric: per-cluster facts and providers, never a platform's name to compare.

    `fedkeeper.fabric.Fabric` implements it; so does any test fabric.
    """

    def provider(self, cluster: str, /) -> Invoker: ...

    # the platform kind is recorded with each activation; the tracker never compares it
    def kind(self, cluster: str, /) -> str: ...

    def max_inflight(self, cluster: str, /) -> int: ...

    def poll_max_s(self, cluster: str, /) -> float | None: ...


class ActivationStore(Protocol):
    """The store's activation records: read at the start of a round (resume), written once per polling pass."""

    def find_activations(self, run_id: str, round: int | None = None, state: Any = None) -> list[dict[str, Any]]: ...

    def record_activations(self, inserts: Iterable[dict[str, Any]] = (),
                           updates: Iterable[tuple[str, dict[str, Any]]] = ()) -> None: ...


@dataclass
class Job:
    """One unit of work that must succeed once: a client's round, or an aggregation."""

    run_id: str
    round: int
    client_id: int | None  # None for the aggregator
    cluster: str
    function: str
    name: str
    payload: dict[str, Any]
    timeout_s: float
    memory_mb: int
    # filled while running
    attempts: int = 0
    #: attempts that do not count toward max_attempts (throttled when polled: the platform, not the client)
    uncounted: int = 0
    state: JobState = JobState.WAITING  # changed only through `move`
    result: dict[str, Any] | None = None
    error: str | None = None
    retries: int = 0
    throttled: int = 0
    not_before: float = 0.0
    active: "Attempt | None" = None
    first_start: float | None = None
    handler_s: float | None = None
    attempt_base: int = 0  # highest attempt number an earlier (interrupted) orchestrator used: numbering only

    @property
    def key(self) -> JobKey:
        return (self.round, self.client_id, self.function)

    @property
    def done(self) -> bool:
        return self.state.done

    def move(self, new: JobState) -> None:
        """Change state along `JOB_TRANSITIONS`; anything else is a tracker bug (`IllegalTransition`)."""
        who = "aggregator" if self.client_id is None else f"client {self.client_id}"
        check_job(self.state, new, what=f"job {self.function} round {self.round} {who}")
        self.state = new


@dataclass
class Attempt:
    id: str
    job: Job
    number: int
    invocation: Invocation
    submitted: float
    deadline: float
    next_poll: float
    interval: float
    status: Status | None = None
    state: ActivationState = ActivationState.INVOKED  # the record's state; changed only through `move`

    def move(self, new: ActivationState) -> None:
        """Change the record's state along `ACTIVATION_TRANSITIONS` (`IllegalTransition` otherwise)."""
        check_activation(self.state, new, what=f"activation {self.id} (attempt {self.number})")
        self.state = new


@dataclass
class Counts:
    succeeded: int = 0
    failed: int = 0
    timed_out: int = 0
    lost: int = 0
    retries: int = 0
    throttled: int = 0
    redeploys: int = 0

    def add(self, state: State) -> None:
        if state is State.SUCCEEDED:
            self.succeeded += 1
        elif state is State.FAILED:
            self.failed += 1
        elif state is State.TIMED_OUT:
            self.timed_out += 1
        elif state is State.LOST:
            self.lost += 1


@dataclass
class WaitOutcome:
    jobs: list[Job]
    counts: Counts
    deadline_hit: bool = False

    @property
    def succeeded(self) -> list[Job]:
        return [j for j in self.jobs if j.state is JobState.SUCCEEDED]


Redeploy = Callable[[str, str, str], None]  # (cluster, function, name)
Listener = Callable[[Job, Attempt | None, str], None]  # (job, attempt, what happened)


# ---------------------------------------------------------------------------------------------- resume


def attempt_bases(records: Iterable[dict[str, Any]]) -> dict[int | None, int]:
    """Highest attempt number recorded per client (None: the aggregator), so new attempts never reuse one."""
    base: dict[int | None, int] = {}
    for record in records:
        client = record.get("client_id")
        base[client] = max(base.get(client, 0), int(record.get("attempt") or 0))
    return base


def in_flight(records: Iterable[dict[str, Any]]) -> dict[JobKey, dict[str, Any]]:
    """Per job key, the latest attempt's record if it is still `invoked`: an interrupted orchestrator's call
    whose answer nobody has read (the one to poll by its platform id before invoking again)."""
    latest: dict[JobKey, dict[str, Any]] = {}
    for record in records:
        key = (int(record["round"]), record.get("client_id"), str(record.get("function")))
        if key not in latest or int(record.get("attempt") or 0) > int(latest[key].get("attempt") or 0):
            latest[key] = record
    return {k: r for k, r in latest.items() if r.get("state") == ActivationState.INVOKED.value}


class Tracker:
    """Runs jobs to completion under the resilience policy, recording every attempt."""

    def __init__(self, fabric: TrackerFabric, store: ActivationStore, runlog: Any, policy: Resilience, *,
                 redeploy: Redeploy | None = None, seed: int = 0, clock: Callable[[], float] = time.time,
                 guard: Callable[[], None] | None = None) -> None:
        self.fabric = fabric
        #: called before every pass that may invoke or record anything; raises to stop (e.g. the run's lock was lost)
        self.guard = guard
        self.store = store
        self.runlog = runlog
        self.policy = policy
        self.redeploy = redeploy
        self.clock = clock
        self.rng = random.Random(seed)  # jitter only: never affects what is computed
        self.listeners: list[Listener] = []
        self.totals = Counts()
        self._redeployed: set[tuple[str, str]] = set()
        self._pool: ThreadPoolExecutor | None = None
        self._caps: dict[str, int] = {}
        self._inserts: list[dict[str, Any]] = []
        self._updates: list[tuple[str, dict[str, Any]]] = []

    def flush(self) -> None:
        """Write the activation records of one polling pass in two round trips instead of one per change."""
        if self._inserts or self._updates:
            inserts, updates = self._inserts, self._updates
            self._inserts, self._updates = [], []
            self.store.record_activations(inserts, updates)

    def close(self) -> None:
        self.flush()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    # ------------------------------------------------------------------ public

    def run(self, jobs: list[Job], *, deadline: float | None = None,
            enough: Callable[[list[Job]], bool] | None = None,
            satisfied: Callable[[list[Job]], bool] | None = None) -> WaitOutcome:
        """Drive `jobs` until all are done, or `deadline` passes and `enough(jobs)` holds, or `satisfied(jobs)`.

        Jobs pick up where an interrupted orchestrator left them (`resume`).
        """
        counts = Counts()
        self.resume(jobs)
        deadline_hit = False
        while True:
            if self.guard is not None:
                self.guard()
            now = self.clock()
            pending = [j for j in jobs if not j.done]
            if not pending:
                break
            if satisfied is not None and satisfied(jobs):
                for job in pending:
                    self._abandon(job, "enough clients succeeded (over-selection)")
                break
            if deadline is not None and now >= deadline and (enough is None or enough(jobs)):
                deadline_hit = True
                for job in pending:
                    self._abandon(job, "round deadline reached")
                break
            inflight = Counter(j.cluster for j in jobs if j.state is JobState.RUNNING)
            for job in pending:
                if job.state in (JobState.WAITING, JobState.BACKOFF) and now >= job.not_before \
                        and inflight[job.cluster] < self._inflight_cap(job.cluster):
                    self._submit(job, counts)
                    inflight[job.cluster] += job.state is JobState.RUNNING
            self._poll_due([j.active for j in jobs if j.state is JobState.RUNNING and j.active], counts)
            self.flush()
            self._sleep(jobs, deadline)
        self.flush()
        self._add_totals(counts)
        return WaitOutcome(jobs, counts, deadline_hit)

    def resume(self, jobs: list[Job]) -> None:
        """Continue what an interrupted orchestrator started for these jobs, from the store's records of their
        rounds: attempt numbers go on after the highest recorded one, and an activation left `invoked` is
        adopted (polled by its platform id) rather than invoked again. Nothing recorded: nothing changes."""
        rounds: dict[tuple[str, int], list[Job]] = {}
        for job in jobs:
            rounds.setdefault((job.run_id, job.round), []).append(job)
        for (run_id, round_number), group in rounds.items():
            records = self.store.find_activations(run_id, round=round_number)
            bases, flying = attempt_bases(records), in_flight(records)
            for job in group:
                job.attempt_base = bases.get(job.client_id, 0)
                record = flying.get(job.key)
                if record is not None:
                    self._adopt(job, record)

    def settle_stored(self, run_id: str, round_number: int, updates: Iterable[dict[str, Any]]) -> int:
        """Record as `succeeded` the activations an interrupted orchestrator left `invoked` although their update
        is in the store: the function finished and nobody read its answer. Each update names the activation
        that wrote it. Their clients are not invoked again, so without this their records would stay `invoked`
        and the counts would miss successes. Returns how many records were settled."""
        open_records = {r["_id"]: r for r in self.store.find_activations(
            run_id, round=round_number, state=ActivationState.INVOKED.value)}
        settled = 0
        for update in updates:
            record = open_records.get(update.get("activation_id"))
            if record is None:
                continue
            check_activation(ActivationState.INVOKED, ActivationState.SUCCEEDED, what=f"activation {record['_id']}")
            created = update.get("created")  # the writer's word: only a plausible number is taken
            end = float(created) if isinstance(created, (int, float)) and 0 < created < 1e11 else self.clock()
            start = float(record.get("submitted") or end)
            self._updates.append((record["_id"], {"state": ActivationState.SUCCEEDED.value, "end": end,
                                                  "duration_s": max(0.0, end - start)}))
            self.runlog.activation({
                "round": round_number, "client_id": "server" if record.get("client_id") is None else
                record["client_id"], "cluster": record.get("cluster"), "platform": record.get("platform"),
                "function": record.get("function"), "activation_id": record["_id"],
                "platform_activation_id": record.get("platform_activation_id"), "attempt": record.get("attempt"),
                "state": ActivationState.SUCCEEDED.value, "start": start, "end": end,
                "duration_s": max(0.0, end - start), "error": None,
            })
            settled += 1
        self.flush()
        return settled

    # ------------------------------------------------------------------ submitting

    def _inflight_cap(self, cluster: str) -> int:
        """Calls in flight per cluster: more would only queue inside the provider, where the wait would count
        against the attempt's deadline. Each cluster model says how many (`max_inflight`)."""
        if cluster not in self._caps:
            cap = self.fabric.max_inflight(cluster)
            self._caps[cluster] = cap
        return self._caps[cluster]

    def _submit(self, job: Job, counts: Counts) -> None:
        provider = self.fabric.provider(job.cluster)
        number = job.attempt_base + job.attempts + 1
        attempt_id = uuid.uuid4().hex
        payload = dict(job.payload, activation_id=attempt_id, attempt=number)
        try:
            invocation = provider.invoke(job.name, payload)
        except Throttled as exc:
            self._throttled(job, exc, counts)
            return
        except FunctionMissing as exc:
            self._missing(job, exc, counts, counted=False)
            return
        except AuthError as exc:
            raise RunFailed(f"credentials rejected by cluster {job.cluster}: {exc.message}") from None
        except ProviderError as exc:
            job.attempts += 1
            self._record_failed_submit(job, attempt_id, number, exc)
            counts.failed += 1
            self._after_failure(job, f"{type(exc).__name__}: {exc.message}", counts)
            return
        now = self.clock()
        job.attempts += 1
        job.first_start = job.first_start or now
        timeout = self.policy.invocation_timeout_s or (job.timeout_s + self.policy.timeout_slack_s)
        check_activation(None, ActivationState.INVOKED, what=f"activation {attempt_id}")
        attempt = Attempt(attempt_id, job, number, invocation, now, now + timeout,
                          now + self.policy.poll_initial_s, self.policy.poll_initial_s)
        job.move(JobState.RUNNING)
        job.active = attempt
        self._inserts.append({
            "_id": attempt_id, "run_id": job.run_id, "round": job.round, "client_id": job.client_id,
            "cluster": job.cluster, "platform": self.fabric.kind(job.cluster), "function": job.function,
            "name": job.name, "attempt": number, "state": ActivationState.INVOKED.value,
            "platform_activation_id": invocation.activation_id, "submitted": now,
        })
        self._emit(job, attempt, "invoked")

    def _adopt(self, job: Job, record: dict[str, Any]) -> None:
        """Resume polling an activation an earlier orchestrator left in flight (its record says `invoked`)."""
        job.move(JobState.RUNNING)
        now = self.clock()
        number = int(record.get("attempt") or 1)
        job.attempt_base, job.attempts = number - 1, 1  # the adopted attempt is this orchestrator's first
        invocation = Invocation(job.cluster, job.name, record.get("platform_activation_id") or record["_id"],
                                float(record.get("submitted") or now))
        timeout = self.policy.invocation_timeout_s or (job.timeout_s + self.policy.timeout_slack_s)
        attempt = Attempt(record["_id"], job, number, invocation, invocation.submitted,
                          max(invocation.submitted + timeout, now + self.policy.poll_initial_s),
                          now, self.policy.poll_initial_s, state=ActivationState(record["state"]))
        job.active = attempt
        self._emit(job, attempt, "adopted")

    # ------------------------------------------------------------------ polling

    def _poll_due(self, attempts: list[Attempt | None], counts: Counts) -> None:
        now = self.clock()
        due = [a for a in attempts if a is not None and a.next_poll <= now]
        if not due:
            return
        cheap = [a for a in due if self._poll_cap(a.job.cluster) is not None]
        remote = [a for a in due if self._poll_cap(a.job.cluster) is None]
        outcomes: list[tuple[Attempt, Status | ProviderError]] = [(a, self._poll_one(a)) for a in cheap]
        if len(remote) == 1:
            outcomes.append((remote[0], self._poll_one(remote[0])))
        elif remote:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="fk-poll")
            outcomes += list(zip(remote, self._pool.map(self._poll_one, remote)))
        for attempt, outcome in outcomes:
            self._handle(attempt, outcome, counts)

    def _poll_one(self, attempt: Attempt) -> Status | ProviderError:
        try:
            return self.fabric.provider(attempt.job.cluster).poll(attempt.invocation)
        except ProviderError as exc:
            return exc

    def _handle(self, attempt: Attempt, outcome: Status | ProviderError, counts: Counts) -> None:
        job = attempt.job
        now = self.clock()
        if isinstance(outcome, AuthError):
            raise RunFailed(f"credentials rejected by cluster {job.cluster}: {outcome.message}")
        if isinstance(outcome, Throttled):
            self._finish(attempt, Status(State.FAILED, error=f"throttled: {outcome.message}"),
                         ActivationState.THROTTLED)
            job.uncounted += 1  # a new attempt number, but not a client failure
            self._throttled(job, outcome, counts)
            return
        if isinstance(outcome, FunctionMissing):
            self._finish(attempt, Status(State.FAILED, error=f"function missing: {outcome.message}"))
            self._missing(job, outcome, counts, counted=True)
            return
        if isinstance(outcome, PlatformError) or isinstance(outcome, ProviderError):
            # transient trouble asking about it: ask again later, unless the attempt is overdue
            if now < attempt.deadline:
                self._reschedule_poll(attempt, now)
                return
            outcome = Status(State.TIMED_OUT, error=f"no answer from the platform: {outcome.message}")
        status = outcome
        if status.state is State.PENDING:
            if now >= attempt.deadline:
                status = Status(State.TIMED_OUT, error=f"no result within {attempt.deadline - attempt.submitted:.0f}s")
            else:
                self._reschedule_poll(attempt, now)
                return
        self._finish(attempt, status)
        counts.add(status.state)
        if status.state is State.SUCCEEDED:
            job.move(JobState.SUCCEEDED)
            job.result, job.error, job.active = status.result, None, None
            job.handler_s = status.duration_s
            self._emit(job, attempt, "succeeded")
        else:
            self._after_failure(job, status.error or status.state.value, counts)

    def _poll_cap(self, cluster: str) -> float | None:
        """The platform's own cap on the pause between polls (set where a poll costs no network call)."""
        return self.fabric.poll_max_s(cluster)

    def _reschedule_poll(self, attempt: Attempt, now: float) -> None:
        # where polling is free (the platform says so), keep it tight so a finished call is seen at once
        cap = self._poll_cap(attempt.job.cluster) or self.policy.poll_max_s
        attempt.interval = min(attempt.interval * 1.5, max(cap, self.policy.poll_initial_s))
        attempt.next_poll = min(now + attempt.interval, attempt.deadline)

    # ------------------------------------------------------------------ outcomes

    def _finish(self, attempt: Attempt, status: Status, state: ActivationState | None = None) -> None:
        """Record an attempt's final state (store + Logs/): the outcome's, unless `state` says otherwise (a
        throttled or abandoned attempt)."""
        job = attempt.job
        attempt.move(state or ActivationState.of(status.state))
        attempt.status = status
        end = status.end or self.clock()
        state = attempt.state.value
        fields = {"state": state, "start": status.start, "end": end, "duration_s": status.duration_s,
                  "cold": status.cold, "error": status.error, "injected": status.injected}
        if status.activation_id:
            fields["platform_activation_id"] = status.activation_id
        self._updates.append((attempt.id, {k: v for k, v in fields.items() if v is not None}))
        self.runlog.activation({
            "round": job.round, "client_id": "server" if job.client_id is None else job.client_id,
            "cluster": job.cluster, "platform": self.fabric.kind(job.cluster), "function": job.function,
            "activation_id": attempt.id,
            "platform_activation_id": status.activation_id or attempt.invocation.activation_id,
            "attempt": attempt.number, "state": state, "cold": status.cold,
            "start": status.start or attempt.submitted, "end": end,
            "duration_s": status.duration_s if status.duration_s is not None else end - attempt.submitted,
            "memory_mb": job.memory_mb, "injected": status.injected, "error": status.error,
        })

    def _after_failure(self, job: Job, error: str, counts: Counts) -> None:
        job.error, job.active = error, None
        if job.attempts - job.uncounted >= self.policy.max_attempts:
            job.move(JobState.GAVE_UP)
            self._emit(job, None, "gave_up")
            return
        job.move(JobState.BACKOFF)
        job.retries += 1
        counts.retries += 1
        job.not_before = self.clock() + self._backoff(job.attempts)
        self._emit(job, None, "retrying")

    def _backoff(self, attempt: int) -> float:
        base = min(self.policy.backoff_max_s, self.policy.backoff_base_s * (2 ** max(0, attempt - 1)))
        return base * (1 - self.policy.jitter * self.rng.random())

    def _throttled(self, job: Job, exc: Throttled, counts: Counts) -> None:
        job.throttled += 1
        counts.throttled += 1
        job.move(JobState.BACKOFF)
        job.active = None
        wait = exc.retry_after_s if exc.retry_after_s is not None else self._backoff(min(job.throttled, 8))
        job.not_before = self.clock() + wait
        self.runlog.event("throttled", round=job.round, client_id=job.client_id, cluster=job.cluster,
                          wait_s=round(wait, 3))
        self._emit(job, None, "throttled")

    def _missing(self, job: Job, exc: FunctionMissing, counts: Counts, *, counted: bool) -> None:
        """`counted`: the attempt was already submitted and counted (the platform said so when polled)."""
        key = (job.cluster, job.name)
        if not self.policy.redeploy_missing or self.redeploy is None or key in self._redeployed:
            if not counted:
                job.attempts += 1
            counts.failed += 1
            self._after_failure(job, f"function missing: {exc.message}", counts)
            return
        self._redeployed.add(key)
        counts.redeploys += 1
        self.runlog.event("redeploy", round=job.round, cluster=job.cluster, name=job.name, reason=exc.message)
        self.runlog.logger.warning("function %s missing on %s: redeploying", job.name, job.cluster)
        self.redeploy(job.cluster, job.function, job.name)
        job.move(JobState.WAITING)
        job.active, job.not_before = None, 0.0
        self._emit(job, None, "redeployed")

    def _record_failed_submit(self, job: Job, attempt_id: str, number: int, exc: ProviderError) -> None:
        """The platform refused the call outright: the record starts, and ends, as `failed`."""
        check_activation(None, ActivationState.FAILED, what=f"activation {attempt_id}")
        now = self.clock()
        self._inserts.append({
            "_id": attempt_id, "run_id": job.run_id, "round": job.round, "client_id": job.client_id,
            "cluster": job.cluster, "platform": self.fabric.kind(job.cluster), "function": job.function,
            "name": job.name, "attempt": number, "state": ActivationState.FAILED.value, "submitted": now, "end": now,
            "error": f"{type(exc).__name__}: {exc.message}",
        })
        self.runlog.activation({
            "round": job.round, "client_id": "server" if job.client_id is None else job.client_id,
            "cluster": job.cluster, "platform": self.fabric.kind(job.cluster), "function": job.function,
            "activation_id": attempt_id, "attempt": number, "state": ActivationState.FAILED.value, "start": now,
            "end": now,
            "duration_s": 0.0, "memory_mb": job.memory_mb, "error": f"{type(exc).__name__}: {exc.message}",
        })

    def _abandon(self, job: Job, reason: str) -> None:
        attempt = job.active
        if attempt is not None:  # still running on the platform; its late result is not used
            self._finish(attempt, Status(State.PENDING, error=reason), ActivationState.ABANDONED)
        job.move(JobState.ABANDONED)
        job.active, job.error = None, reason
        self._emit(job, None, "abandoned")

    def _emit(self, job: Job, attempt: Attempt | None, what: str) -> None:
        for listener in self.listeners:
            listener(job, attempt, what)

    def _add_totals(self, counts: Counts) -> None:
        for name in ("succeeded", "failed", "timed_out", "lost", "retries", "throttled", "redeploys"):
            setattr(self.totals, name, getattr(self.totals, name) + getattr(counts, name))

    def _sleep(self, jobs: Iterable[Job], deadline: float | None) -> None:
        """Sleep until the next poll or retry is due (bounded), never a fixed long interval."""
        now = self.clock()
        wake = [deadline] if deadline is not None else []
        for job in jobs:
            if job.state is JobState.RUNNING and job.active is not None:
                wake.append(job.active.next_poll)
            elif job.state in (JobState.WAITING, JobState.BACKOFF):
                wake.append(job.not_before)
        if not wake:
            return
        delay = min(wake) - now
        if delay > 0:
            time.sleep(min(delay, self.policy.poll_max_s))



def rank_clients(seed: int, round_number: int, total: int, count: int) -> list[int]:
    """The `count` of `total` client ids chosen for a round, in the seeded order they were drawn, from (seed,
    round) only. The order is the round's ranking under over-selection (`scenarios.cohort`)."""
    import numpy as np

    rng = np.random.default_rng(np.random.SeedSequence([seed, round_number, 0x5E1EC7]))
    return [int(c) for c in rng.choice(total, size=min(count, total), replace=False)]


def select_clients(seed: int, round_number: int, total: int, count: int) -> list[int]:
    """Deterministic choice of `count` of `total` client ids for a round, from (seed, round) only (ascending)."""
    return sorted(rank_clients(seed, round_number, total, count))


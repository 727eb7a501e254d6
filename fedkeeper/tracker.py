"""Activations in flight: their records, their attempts, resume, and the resilience policy.

One `Job` is one thing that must get done (one client's training in one round, or one aggregation); the
tracker makes attempts until one succeeds or the policy gives up, and moves every job and every activation
record only along the tables in `fedkeeper.activations` (docs/reliability.md draws them). Throttling is waited
out and never counted as an attempt; a missing function is redeployed once and retried; credentials that are
refused stop everything. Polling is adaptive (fast at first, slower for long calls) and due polls of platforms
that poll over the network are issued concurrently; where a platform can answer for many calls in one request
(`Provider.batched_poll`: OpenWhisk lists activations), a cluster's due calls are asked about in one batch.

The tracker also owns resume: before it starts a round's jobs it reads that round's records, continues the
attempt numbering after the highest one used, and adopts an activation an interrupted orchestrator left
`invoked` (polls it by its platform id) instead of invoking again. It knows no platform by name: what it needs
per cluster comes from the fabric (`TrackerFabric`).
"""

from __future__ import annotations

import bisect
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol, runtime_checkable

from fedkeeper.activations import (
    ACTIVATION_TRANSITIONS,
    JOB_TRANSITIONS,
    ActivationState,
    JobState,
    check_activation,
    check_job,
)
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

#: activation records are written at least this often while jobs run, and whenever this many are buffered. A
#: quarter second: at a thousand short calls a round, most records start and settle between two writes and go to
#: the store as one insert (no `$set` after it), and each write is one round trip for many calls; resume and the
#: rows-after-records order do not depend on it (a killed session's unwritten calls are invoked again)
FLUSH_EVERY_S = 0.25
FLUSH_MAX = 512
#: a tuple: `in` compares by identity first, where a frozenset hashes each StrEnum member in Python
_QUEUED = (JobState.WAITING, JobState.BACKOFF)

#: (round, who, function): who is the client id, None for the aggregator, or a tree aggregation node ("1.0")
JobKey = tuple[int, int | str | None, str]


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
    #: tree aggregation (scenarios/tree_aggregation.py): the node's level (1 = leaves; the final one is the tree's
    #: height) and its name, recorded with each activation; None for clients and the flat aggregator
    level: int | None = None
    part: str | None = None
    #: client packing (scenarios/packing.py): the clients this job trains, recorded with each activation; None for
    #: a one-client job (`client_id`, which for a pack is its first client) and the aggregator
    clients: tuple[int, ...] | None = None

    @property
    def who(self) -> int | str | None:
        """The client id, or the tree node (several aggregator jobs in one round), or None (the aggregator)."""
        return self.part if self.part is not None else self.client_id

    @property
    def key(self) -> JobKey:
        return (self.round, self.who, self.function)

    @property
    def done(self) -> bool:
        return self.state.done

    def move(self, new: JobState) -> None:
        """Change state along `JOB_TRANSITIONS`; anything else is a tracker bug (`IllegalTransition`)."""
        if new not in JOB_TRANSITIONS[self.state]:  # the message is built only for the error
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
    #: while it runs: when the platform says the handler started (epoch s; None until it says so), and the
    #: wall-clock time of the poll that last found it still running — together a lower bound on its handler time
    #: that a deadline can act on before the call ends (`running_for`)
    running_since: float | None = None
    pending_at: float | None = None
    polled_at: float | None = None

    def running_for(self) -> float | None:
        """Seconds the handler had certainly run when last seen running (None: not known to have started)."""
        if self.running_since is None or self.pending_at is None:
            return None
        return max(0.0, self.pending_at - self.running_since)

    def move(self, new: ActivationState) -> None:
        """Change the record's state along `ACTIVATION_TRANSITIONS` (`IllegalTransition` otherwise)."""
        if new not in ACTIVATION_TRANSITIONS[self.state]:
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


def _who(record: dict[str, Any]) -> int | str | None:
    return record["part"] if record.get("part") is not None else record.get("client_id")


def attempt_bases(records: Iterable[dict[str, Any]]) -> dict[int | str | None, int]:
    """Highest attempt number recorded per client (None: the aggregator; a tree node by its name), so new
    attempts never reuse one."""
    base: dict[int | str | None, int] = {}
    for record in records:
        who = _who(record)
        base[who] = max(base.get(who, 0), int(record.get("attempt") or 0))
    return base


def in_flight(records: Iterable[dict[str, Any]]) -> dict[JobKey, dict[str, Any]]:
    """Per job key, the latest attempt's record if it is still `invoked`: an interrupted orchestrator's call
    whose answer nobody has read (the one to poll by its platform id before invoking again)."""
    latest: dict[JobKey, dict[str, Any]] = {}
    for record in records:
        key = (int(record["round"]), _who(record), str(record.get("function")))
        if key not in latest or int(record.get("attempt") or 0) > int(latest[key].get("attempt") or 0):
            latest[key] = record
    return {k: r for k, r in latest.items() if r.get("state") == ActivationState.INVOKED.value}


def missing_rows(records: Iterable[dict[str, Any]], logged: dict[str, str]) -> list[dict[str, Any]]:
    """activations.csv rows for the records in a final state that the log does not show in that state
    (`logged`: activation id → the state of its last row), in the order they were submitted. A session killed
    after writing a batch of records to the store and before writing their rows (`Tracker.flush`) leaves those;
    a resumed run writes them before it goes on, so the log and the store hold the same final states."""
    out = []
    for record in records:
        state = record.get("state")
        if state in (None, ActivationState.INVOKED.value) or logged.get(str(record["_id"])) == state:
            continue
        end = record.get("end")
        start = record.get("start") or record.get("submitted")
        duration = record.get("duration_s")
        if duration is None and isinstance(end, (int, float)) and isinstance(start, (int, float)):
            duration = max(0.0, end - start)
        tree = {"level": record.get("level"), "part": record.get("part")} if record.get("part") is not None else {}
        out.append({
            "round": record.get("round"), "client_id": "server" if record.get("client_id") is None
            else record["client_id"],
            "cluster": record.get("cluster"), "platform": record.get("platform"), "function": record.get("function"),
            "activation_id": record["_id"], "platform_activation_id": record.get("platform_activation_id"),
            "attempt": record.get("attempt"), "state": state, "cold": record.get("cold"), "start": start,
            "end": end, "duration_s": duration, "injected": record.get("injected"), "error": record.get("error"),
            **tree,
        })
    out.sort(key=lambda row: (float(row["start"] or 0.0), str(row["activation_id"])))
    return out


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
        #: activations.csv / events.jsonl rows of the buffered records: written by `flush`, after their records
        self._rows: list[dict[str, Any]] = []
        self._flushed = 0.0
        #: the batch being written in the background (`_hand_off`), and the one thread that writes them in order
        self._writing: Future[None] | None = None
        self._writer: ThreadPoolExecutor | None = None
        self._ids = bytearray()
        #: set by providers that report settled calls (`on_settle`, the local platform): the tracker's pause
        #: between passes ends at once, and those clusters' running calls are polled in that pass
        self._wakeup = threading.Event()
        self._notifying: dict[str, Any] = {}  # cluster -> its provider, for clusters that report settled calls
        self._watched: set[str] = set()
        #: per cluster, for one `run`: its poll cap (`_poll_cap`) and whether it answers in batches (`_batches`);
        #: asked of the fabric once per run instead of several times per poll
        self._cap_of: dict[str, float | None] = {}
        self._batching: dict[str, bool] = {}
        #: per (run, round) it was asked to mirror (`mirror`): the round's activation records as the store holds
        #: them, kept by applying each batch the store accepted; the writer thread and the caller share it
        self._mirrors: dict[tuple[str, int], dict[str, dict[str, Any]]] = {}
        self._mirror_lock = threading.Lock()

    def flush(self) -> None:
        """Write the buffered activation records in two round trips instead of one per change; a record inserted
        and changed within the same batch is inserted as it ends up (the store holds the same document, written
        once: at a thousand short calls a round most records start and settle between two flushes).

        Then the batch's `Logs/` rows, in one write per file: a row is written only once the store holds its
        record in that state, so a killed orchestrator leaves no row of an activation the store does not know
        (tests/chaos_audit.py). A batch the store refused loses its rows too: its calls are adopted or invoked
        again by the next session, which writes their rows. A session killed between the two writes leaves
        records without their rows: `missing_rows` finds them when the run resumes.

        Waits for the batch `_hand_off` is writing first (and raises its error): when `flush` returns, everything
        recorded so far is in the store."""
        self._flushed = time.monotonic()
        self._settle_writing()
        batch = self._take()
        if batch is not None:
            self._write_batch(*batch)

    def _hand_off(self) -> None:
        """Write the buffered records in the background while the jobs go on: a polling pass that waited for the
        store (tens of ms when it is busy, e.g. pruning the last round) left the workers without calls
        (bench/bench_scale.py). One batch at a time, in order; while one is written, the next gathers, so a busy
        store gets fewer, larger batches. A failed write raises here, at the next hand-off, or in `flush`."""
        if self._writing is not None and not self._writing.done():
            return
        self._flushed = time.monotonic()
        self._settle_writing()
        batch = self._take()
        if batch is not None:
            if self._writer is None:
                self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fk-records")
            self._writing = self._writer.submit(self._write_batch, *batch)

    def _settle_writing(self) -> None:
        """Wait for the batch in the background and raise its error. A wait cut short (Ctrl-C) keeps it pending:
        the run's end (`flush` in `Experiment.finish`) waits for it again before it counts the records."""
        writing = self._writing
        if writing is None:
            return
        try:
            writing.result()
        finally:
            if writing.done():
                self._writing = None

    def _take(self) -> tuple[list[dict[str, Any]], list[tuple[str, dict[str, Any]]], list[dict[str, Any]]] | None:
        """The buffered batch (inserts with their same-batch updates folded in, other updates, rows), emptied."""
        if not self._inserts and not self._updates:
            return None
        inserts, updates = _merged(self._inserts, self._updates)
        rows = self._rows
        self._inserts, self._updates, self._rows = [], [], []
        return inserts, updates, rows

    def _write_batch(self, inserts: list[dict[str, Any]], updates: list[tuple[str, dict[str, Any]]],
                     rows: list[dict[str, Any]]) -> None:
        """The store's records, then their rows (never the other way round: see `flush`). The run's lock is checked
        first (`guard`): a batch gathered before this process was frozen and written after it woke, by then no
        longer the run's holder, would land beside the records of the orchestrator that took the run over
        (tests/test_run_lock.py, the frozen holder); it raises `RunLocked` instead and writes nothing."""
        if self.guard is not None:
            self.guard()
        try:
            self.store.record_activations(inserts, updates)
        except BaseException:
            self._drop_mirrors()  # part of the batch may be written: the store alone knows what it holds now
            raise
        if self._mirrors:
            self._apply_mirrors(inserts, updates)
        if not rows:
            return
        batch = getattr(self.runlog, "activations", None)
        if callable(batch):
            batch(rows)
        else:  # a runlog with the one-row call only
            for row in rows:
                self.runlog.activation(row)

    # ------------------------------------------------------------------ round mirrors

    def mirror(self, run_id: str, round_number: int, records: Iterable[dict[str, Any]]) -> None:
        """Keep round r's activation records in memory from now on, starting from `records`: the store's, read
        just now. Every batch the store accepts afterwards is applied to them as the store applies it (an insert
        of a known id is a no-op, an update is a `$set`), so `mirrored` hands back what a read would return
        without reading a thousand records again. Only this tracker writes activation records while it runs
        (the functions write updates, never records); a new session starts from the store again."""
        with self._mirror_lock:
            self._mirrors[(run_id, round_number)] = {str(r["_id"]): dict(r) for r in records}

    def mirrored(self, run_id: str, round_number: int) -> list[dict[str, Any]] | None:
        """Round r's records as the store holds them once the buffered ones are written (`flush`), in the
        store's order (`find_activations`); None when the round is not mirrored or a write failed (read the
        store then). Copies: the caller may change them."""
        self.flush()
        with self._mirror_lock:
            records = self._mirrors.get((run_id, round_number))
            if records is None:
                return None
            return sorted((dict(r) for r in records.values()), key=_store_order)

    def unmirror(self, run_id: str, round_number: int) -> None:
        """Stop mirroring round r (its records are read from the store again when needed)."""
        with self._mirror_lock:
            self._mirrors.pop((run_id, round_number), None)

    def _drop_mirrors(self) -> None:
        with self._mirror_lock:
            self._mirrors.clear()

    def _apply_mirrors(self, inserts: list[dict[str, Any]], updates: list[tuple[str, dict[str, Any]]]) -> None:
        """A batch the store accepted, applied to the mirrored rounds (`mirror`)."""
        with self._mirror_lock:
            for doc in inserts:
                records = self._mirrors.get((doc.get("run_id"), doc.get("round")))  # type: ignore[arg-type]
                if records is not None and str(doc["_id"]) not in records:  # a retried insert changes nothing
                    records[str(doc["_id"])] = _stored(doc)
            for activation_id, fields in updates:
                for records in self._mirrors.values():
                    record = records.get(activation_id)
                    if record is not None:
                        record.update(_stored(fields))
                        break

    def _flush_due(self) -> None:
        """Flush at most every `FLUSH_EVERY_S` (or every `FLUSH_MAX` records) while jobs run: at a thousand
        clients a round makes hundreds of short passes, and a flush per pass cost more store round trips than
        the clients' own writes (bench/bench_scale.py). A run's end, an abandon and `run`'s return flush at once."""
        if len(self._inserts) + len(self._updates) >= FLUSH_MAX or time.monotonic() - self._flushed >= FLUSH_EVERY_S:
            self._hand_off()

    def _watch(self, clusters: Iterable[str]) -> None:
        """Ask each cluster's provider, once, to report settled calls (`on_settle`), where it can."""
        for cluster in clusters:
            if cluster in self._watched:
                continue
            self._watched.add(cluster)
            provider = self.fabric.provider(cluster)
            hook = getattr(provider, "on_settle", None)
            if callable(hook):
                hook(self._wakeup.set)
                self._notifying[cluster] = provider

    def close(self) -> None:
        try:
            self.flush()
        finally:
            for provider in self._notifying.values():
                provider.off_settle(self._wakeup.set)
            self._notifying.clear()
            self._watched.clear()
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None
            if self._writer is not None:
                self._writer.shutdown(wait=True)
                self._writer = None

    # ------------------------------------------------------------------ public

    def run(self, jobs: list[Job], *, deadline: float | None = None,
            enough: Callable[[list[Job]], bool] | None = None,
            satisfied: Callable[[list[Job]], bool] | None = None,
            until: Callable[[list[Job]], bool] | None = None,
            records: list[dict[str, Any]] | None = None) -> WaitOutcome:
        """Drive `jobs` until all are done, or `deadline` passes and `enough(jobs)` holds, or `satisfied(jobs)`.

        `until(jobs)`, checked after each pass's submissions and polls, returns with the pending jobs left as they
        are (running, or waiting): a later `run` with them goes on (the stale round modes keep clients in flight
        across rounds, `scenarios.rounds`). Jobs pick up where an interrupted orchestrator left them (`resume`);
        a job this tracker already started is not resumed again. `records`: the store's activation records of the
        jobs' round, when the caller has just read them (resume reads them otherwise).
        """
        counts = Counts()
        self._cap_of, self._batching = {}, {}
        self.resume([j for j in jobs if j.state not in (JobState.RUNNING, JobState.BACKOFF)
                     and not (j.state is JobState.WAITING and j.attempts)], records=records)
        deadline_hit = False
        clusters = {j.cluster for j in jobs}
        self._watch(clusters)
        # The jobs not done, kept apart by state so a pass costs what is in flight, not what is queued: at a
        # thousand clients a round makes hundreds of passes, and five scans of every job per pass were the
        # orchestrator's largest cost after the hand-off itself (bench/bench_scale.py). `queue` (waiting and
        # backing off) stays in the jobs' order, so submissions keep the order a full scan gave them.
        index = {id(j): i for i, j in enumerate(jobs)}
        running = [j for j in jobs if j.state is JobState.RUNNING]
        queue = [j for j in jobs if j.state in _QUEUED]
        while True:
            if self.guard is not None:
                self.guard()
            woken = self._wakeup.is_set()
            self._wakeup.clear()  # a call that settles from here on wakes the next pause
            now = self.clock()
            if not running and not queue:
                break
            if satisfied is not None and satisfied(jobs):
                for job in sorted(running + queue, key=lambda j: index[id(j)]):
                    self._abandon(job, "enough clients succeeded (over-selection)")
                break
            if deadline is not None and now >= deadline and (enough is None or enough(jobs)):
                deadline_hit = True
                for job in sorted(running + queue, key=lambda j: index[id(j)]):
                    self._abandon(job, "round deadline reached")
                break
            inflight = _count_clusters(running)
            room = self._room(clusters, inflight)
            if room > 0 and queue:
                left: list[Job] = []
                i = 0
                for i, job in enumerate(queue):  # noqa: B007 - `i` marks where the scan stopped
                    if room <= 0:  # every cluster is at its cap: the rest of a long queue waits for the next pass
                        break
                    if now >= job.not_before and inflight.get(job.cluster, 0) < self._inflight_cap(job.cluster):
                        self._submit(job, counts)
                        if job.state is JobState.RUNNING:
                            running.append(job)
                            inflight[job.cluster] = inflight.get(job.cluster, 0) + 1
                            room = self._room(clusters, inflight)
                            continue
                    if job.state in _QUEUED:
                        left.append(job)
                else:
                    i = len(queue)
                queue[:i] = left  # in place: a slice copy of a long queue at every pass cost more
            self._poll_due([j.active for j in running if j.active], counts, woken=woken)
            still: list[Job] = []
            for job in running:
                if job.state is JobState.RUNNING:
                    still.append(job)
                elif job.state in _QUEUED:  # failed, to be retried: back in the queue at its place
                    bisect.insort(queue, job, key=lambda j: index[id(j)])
            running = still
            self._flush_due()
            if until is not None and until(jobs):
                break
            self._sleep(running, queue, deadline, clusters)
        self.flush()
        self._add_totals(counts)
        return WaitOutcome(jobs, counts, deadline_hit)

    def resume(self, jobs: list[Job], records: list[dict[str, Any]] | None = None) -> None:
        """Continue what an interrupted orchestrator started for these jobs, from the store's records of their
        rounds: attempt numbers go on after the highest recorded one, and an activation left `invoked` is
        adopted (polled by its platform id) rather than invoked again. Nothing recorded: nothing changes.
        `records`: the round's records as the caller just read them (one round only), instead of a store read."""
        rounds: dict[tuple[str, int], list[Job]] = {}
        for job in jobs:
            rounds.setdefault((job.run_id, job.round), []).append(job)
        server = getattr(self.store, "find_server_activations", None)  # optional: a store may not offer it
        if records is not None and len(rounds) > 1:
            raise ValueError("resume: records of one round, for jobs of several")
        for (run_id, round_number), group in rounds.items():
            # an aggregation needs only the round's aggregator records, not its thousand client records
            found = (records if records is not None else
                     server(run_id, round_number) if server is not None and all(j.client_id is None for j in group)
                     else self.store.find_activations(run_id, round=round_number))
            bases, flying = attempt_bases(found), in_flight(found)
            for job in group:
                job.attempt_base = bases.get(job.who, 0)
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
            self._rows.append({
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

    def _new_id(self) -> str:
        """A random activation id like ``uuid4().hex``, from 4 KiB of ``os.urandom`` read at a time: one system
        call per 256 ids instead of one per id (each lets the provider's threads take the interpreter lock)."""
        if len(self._ids) < 16:
            self._ids = bytearray(os.urandom(4096))
        raw = self._ids[-16:]
        del self._ids[-16:]
        raw[6] = (raw[6] & 0x0F) | 0x40  # version 4, as `uuid.UUID(bytes=raw, version=4)` sets it
        raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
        return raw.hex()

    def _room(self, clusters: Iterable[str], inflight: dict[str, int]) -> int:
        """Calls that may still be submitted this pass, over all clusters."""
        return sum(max(0, self._inflight_cap(c) - inflight.get(c, 0)) for c in clusters)

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
        attempt_id = self._new_id()
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
            "platform_activation_id": invocation.activation_id, "submitted": now, **_tree_fields(job),
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

    def _poll_due(self, attempts: list[Attempt | None], counts: Counts, *, woken: bool = False) -> None:
        """Poll the attempts whose next poll is due; when a provider reported a settled call (`woken`), every
        attempt on the clusters that report them too (a dictionary lookup there)."""
        now = self.clock()
        notifying = self._notifying if woken else {}
        due = [a for a in attempts if a is not None and (a.next_poll <= now or a.job.cluster in notifying)]
        if not due:
            return
        # a cluster that answers for many calls in one request is asked about all its running calls whenever one
        # is due: the listing costs the same, and otherwise staggered polls would each go out alone as a GET
        batching = {a.job.cluster for a in due if self._batches(a.job.cluster)}
        if batching:
            asked = {id(a) for a in due}
            due += [a for a in attempts if a is not None and a.job.cluster in batching and id(a) not in asked]
        cheap = [a for a in due if self._poll_cap(a.job.cluster) is not None]
        remote = [a for a in due if self._poll_cap(a.job.cluster) is None]
        outcomes: list[tuple[Attempt, Status | ProviderError]] = [(a, self._poll_one(a)) for a in cheap]
        units = self._poll_units(remote, now)
        if len(units) == 1:
            outcomes += self._poll_unit(units[0])
        elif units:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="fk-poll")
            for polled in self._pool.map(self._poll_unit, units):
                outcomes += polled
        for attempt, outcome in outcomes:
            self._handle(attempt, outcome, counts)

    def _poll_units(self, remote: list[Attempt], now: float) -> list[list[Attempt]]:
        """What to ask in one go: a cluster's due attempts as one batch where its provider answers for many calls
        in one request (`batched_poll`; `_poll_due` adds all its running calls), else one attempt each. An overdue attempt is always asked about on its
        own, so that the call that would time it out is the platform's own answer for that call."""
        by_cluster: dict[str, list[Attempt]] = {}
        for attempt in remote:
            by_cluster.setdefault(attempt.job.cluster, []).append(attempt)
        units: list[list[Attempt]] = []
        for cluster, attempts in by_cluster.items():
            batch = [a for a in attempts if now < a.deadline] if self._batches(cluster) else []
            if batch:
                units.append(batch)
                units += [[a] for a in attempts if not now < a.deadline]
            else:
                units += [[a] for a in attempts]
        return units

    def _batches(self, cluster: str) -> bool:
        """The cluster's platform answers for many calls in one request (`Provider.batched_poll`)."""
        batching = self._batching.get(cluster)
        if batching is None:
            batching = self._batching[cluster] = (
                self._poll_cap(cluster) is None and bool(getattr(self.fabric.provider(cluster), "batched_poll", False)))
        return batching

    def _poll_unit(self, attempts: list[Attempt]) -> list[tuple[Attempt, Status | ProviderError]]:
        if len(attempts) == 1 and not self._batches(attempts[0].job.cluster):
            return [(attempts[0], self._poll_one(attempts[0]))]
        cluster = attempts[0].job.cluster
        polled_at = time.time()  # before asking, as in `_poll_one`
        for attempt in attempts:
            attempt.polled_at = polled_at
        try:
            provider: Any = self.fabric.provider(cluster)  # batched_poll: it has poll_many (Provider)
            statuses = provider.poll_many([a.invocation for a in attempts])
        except ProviderError as exc:
            return [(a, exc) for a in attempts]
        out: list[tuple[Attempt, Status | ProviderError]] = []
        for attempt in attempts:
            status = statuses.get(attempt.invocation.activation_id)
            out.append((attempt, status if status is not None else PlatformError(
                cluster, f"no answer about activation {attempt.invocation.activation_id} in a batched poll")))
        return out

    def _poll_one(self, attempt: Attempt) -> Status | ProviderError:
        attempt.polled_at = time.time()  # before asking: a "still running" answer is at least this late
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
            if status.start is not None:
                attempt.running_since, attempt.pending_at = float(status.start), attempt.polled_at
                self._clock_from_start(attempt, now)
            elif status.queued:
                self._not_started(attempt, now)
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

    def _clock_from_start(self, attempt: Attempt, now: float) -> None:
        """A call's time limit counts from when the platform started it, as the platform's own does: a call that
        waited in the platform's queue (the local platform's calls queued behind a running one, `max_inflight`)
        gets its whole timeout plus slack from its start, not from its submission. Only a start the tracker's
        clock can place (between submission and now) moves the deadline, and only later; an explicit
        `invocation_timeout_s` is a bound on the whole call and stays."""
        start = attempt.running_since
        if self.policy.invocation_timeout_s or start is None or not attempt.submitted <= start <= now:
            return
        from_start = start + attempt.job.timeout_s + self.policy.timeout_slack_s
        if from_start > attempt.deadline:
            attempt.deadline = from_start

    def _not_started(self, attempt: Attempt, now: float) -> None:
        """The platform holds the call in its own queue, not started (`Status.queued`): its time limit has not
        begun, so the deadline is at least the timeout plus slack from now (the local platform's calls queued
        behind other calls, `max_inflight`). An explicit `invocation_timeout_s` bounds the whole call and stays."""
        if self.policy.invocation_timeout_s:
            return
        from_now = now + attempt.job.timeout_s + self.policy.timeout_slack_s
        if from_now > attempt.deadline:
            attempt.deadline = from_now

    def _poll_cap(self, cluster: str) -> float | None:
        """The platform's own cap on the pause between polls (set where a poll costs no network call)."""
        try:
            return self._cap_of[cluster]
        except KeyError:
            cap = self._cap_of[cluster] = self.fabric.poll_max_s(cluster)
            return cap

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
        self._rows.append({
            "round": job.round, "client_id": "server" if job.client_id is None else job.client_id,
            "cluster": job.cluster, "platform": self.fabric.kind(job.cluster), "function": job.function,
            "activation_id": attempt.id,
            "platform_activation_id": status.activation_id or attempt.invocation.activation_id,
            "attempt": attempt.number, "state": state, "cold": status.cold,
            "start": status.start or attempt.submitted, "end": end,
            "duration_s": status.duration_s if status.duration_s is not None else end - attempt.submitted,
            "memory_mb": job.memory_mb, "injected": status.injected, "error": status.error, **_tree_fields(job),
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
            "error": f"{type(exc).__name__}: {exc.message}", **_tree_fields(job),
        })
        self._rows.append({
            "round": job.round, "client_id": "server" if job.client_id is None else job.client_id,
            "cluster": job.cluster, "platform": self.fabric.kind(job.cluster), "function": job.function,
            "activation_id": attempt_id, "attempt": number, "state": ActivationState.FAILED.value, "start": now,
            "end": now,
            "duration_s": 0.0, "memory_mb": job.memory_mb, "error": f"{type(exc).__name__}: {exc.message}",
            **_tree_fields(job),
        })

    def _abandon(self, job: Job, reason: str) -> None:
        attempt = job.active
        if attempt is not None:  # still running on the platform; its late result is not used
            stopped = self._cancel(attempt)
            status = Status(State.PENDING, error=reason)
            if stopped is not None:  # the platform stopped it: billed for the time it ran, no more
                status = Status(State.PENDING, error=reason, activation_id=stopped.activation_id,
                                start=stopped.start, end=stopped.end, duration_s=stopped.duration_s,
                                cold=stopped.cold, injected=stopped.injected)
            self._finish(attempt, status, ActivationState.ABANDONED)
        job.move(JobState.ABANDONED)
        job.active, job.error = None, reason
        self._emit(job, None, "abandoned")

    def _cancel(self, attempt: Attempt) -> Status | None:
        """Ask the platform to stop an abandoned call (`Provider.cancel`); None where it cannot (then it runs on,
        and is billed, to its end)."""
        try:
            cancel = getattr(self.fabric.provider(attempt.job.cluster), "cancel", None)
            return cancel(attempt.invocation) if cancel is not None else None
        except ProviderError:
            return None

    def _emit(self, job: Job, attempt: Attempt | None, what: str) -> None:
        for listener in self.listeners:
            listener(job, attempt, what)

    def _add_totals(self, counts: Counts) -> None:
        for name in ("succeeded", "failed", "timed_out", "lost", "retries", "throttled", "redeploys"):
            setattr(self.totals, name, getattr(self.totals, name) + getattr(counts, name))

    def _sleep(self, running: list[Job], queue: list[Job], deadline: float | None, clusters: Iterable[str]) -> None:
        """Sleep until the next poll or retry is due (bounded), never a fixed long interval. `running`: the jobs
        in flight; `queue`: those waiting or backing off; `clusters`: those of the run's jobs."""
        now = self.clock()
        wake = [deadline] if deadline is not None else []
        active = [j.active for j in running if j.state is JobState.RUNNING and j.active is not None]
        in_flight = _count_clusters(a.job for a in active)
        wake += [a.next_poll for a in active]
        # a waiting job wakes the loop only where its cluster has room: at its cap, the next poll frees a slot
        # (before, a long queue behind a full cluster spun the loop without sleeping, taking a core from the workers).
        # Only clusters with room are scanned for their earliest waiting job: at a thousand jobs a pass, a scan of
        # every job's state was the tracker's largest own cost (bench/bench_scale.py)
        if queue:
            open_clusters = {c for c in clusters if in_flight.get(c, 0) < self._inflight_cap(c)}
            for job in queue if open_clusters else ():
                if job.cluster in open_clusters:
                    if job.not_before <= now:  # due now (a slot just freed): no pause, and no need to scan on
                        return
                    wake.append(job.not_before)
        if not wake:
            return
        delay = min(wake) - now
        if delay > 0:
            # providers that report settled calls end the pause early (`on_settle`); the others are polled
            self._wakeup.wait(min(delay, self.policy.poll_max_s))


def _count_clusters(jobs: Iterable[Job]) -> dict[str, int]:
    """Jobs per cluster (a plain dict: `Counter` cost more than the rest of a tracker pass, twice a pass)."""
    out: dict[str, int] = {}
    for job in jobs:
        out[job.cluster] = out.get(job.cluster, 0) + 1
    return out


def _merged(inserts: list[dict[str, Any]], updates: list[tuple[str, dict[str, Any]]]
            ) -> tuple[list[dict[str, Any]], list[tuple[str, dict[str, Any]]]]:
    """The batch with each update of a record inserted in the same batch folded into that insert (in order, as
    ``$set`` would apply it); the other updates stay as they are."""
    if not inserts or not updates:
        return inserts, updates
    index = {doc["_id"]: i for i, doc in enumerate(inserts)}
    docs, rest = list(inserts), []
    for activation_id, fields in updates:
        i = index.get(activation_id)
        if i is None:
            rest.append((activation_id, fields))
        else:
            docs[i] = {**docs[i], **fields}
    return docs, rest


def _stored(doc: Mapping[str, Any]) -> dict[str, Any]:
    """Fields as the store keeps them: enums as their values (`Store` does the same), tuples as lists (BSON
    has no tuple). The tracker's inserts carry every field of the activation key."""
    return {k: (v.value if isinstance(v, Enum) else list(v) if isinstance(v, tuple) else v) for k, v in doc.items()}


def _store_order(record: Mapping[str, Any]) -> tuple[int, int, int, str, int, str]:
    """`find_activations`' (round, client_id, attempt) order, with MongoDB's ordering of a missing client
    (null, the aggregator's) before any number; tree nodes (no client, same attempt) by id."""
    client = record.get("client_id")
    return (int(record.get("round") or 0), 0 if client is None else 1, client if isinstance(client, int) else 0,
            "" if isinstance(client, int) or client is None else str(client), int(record.get("attempt") or 0),
            str(record.get("_id")))


def _tree_fields(job: Job) -> dict[str, Any]:
    """`level` and `part` of a tree aggregation node's activation records, `clients` of a client pack's (nothing
    for other jobs)."""
    if job.clients is not None:
        return {"clients": list(job.clients)}
    return {} if job.part is None else {"level": job.level, "part": job.part}


def rank_clients(seed: int, round_number: int, total: int, count: int) -> list[int]:
    """The `count` of `total` client ids chosen for a round, in the seeded order they were drawn, from (seed,
    round) only. The order is the round's ranking under over-selection (`scenarios.cohort`)."""
    import numpy as np

    rng = np.random.default_rng(np.random.SeedSequence([seed, round_number, 0x5E1EC7]))
    return [int(c) for c in rng.choice(total, size=min(count, total), replace=False)]


def select_clients(seed: int, round_number: int, total: int, count: int) -> list[int]:
    """Deterministic choice of `count` of `total` client ids for a round, from (seed, round) only (ascending)."""
    return sorted(rank_clients(seed, round_number, total, count))


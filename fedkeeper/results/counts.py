"""Every count and total a run reports, defined once: rounds.csv, summary.json and `fedkeeper report` use these.

The counts are recomputed from the records of the whole run (the store's `activations` collection, or
`Logs/<run>/activations.csv` and `events.jsonl`, which hold the same records), never kept in the memory of one
orchestrator process, so a run that was interrupted and resumed adds up over all its sessions. The definitions
(docs/reliability.md, "Counts") are:

activation counts (one activation record = one attempt = one invocation):
  succeeded, failed, timed_out, lost, throttled, abandoned
                records in that final state (`invoked` records, still in flight, are in no count)
  total         records in any of those six states: every invocation made (each one is billed)
  retries       records whose previous attempt of the same job (same round, client and function) failed,
                timed out or was lost: the re-invocations the failures cost
  redeploys     functions redeployed because the platform said they were missing (`redeploy` events)

client counts of a round (rounds.csv; summed over rounds in summary.json's and the report's `totals`):
  selected      clients chosen for the round (over-selection included)
  aggregated    updates the round's global model was built from
  rejected      stored updates the aggregator refused (bad checksum, NaN, wrong shape, stale round);
                their activation succeeded, but they are never counted as aggregated
  rounds.csv's activation columns (succeeded … retries) count the round's client (fl_client) activations;
  summary.json's and the report's `activations` count those of every function (clients, aggregator, init).

wall time: the sum over the run's sessions (a start or a resume each) of the time from the session's first
event to its last one, so the pauses between an interruption and the resume are not counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from fedkeeper.activations import ActivationState

_A = ActivationState
#: the final states, in the order every table shows them
FINAL_STATES: tuple[str, ...] = (_A.SUCCEEDED.value, _A.FAILED.value, _A.TIMED_OUT.value, _A.LOST.value,
                                 _A.THROTTLED.value, _A.ABANDONED.value)
#: the states that are the client's (or the platform's) failure; throttled and abandoned are not
FAILURE_STATES: tuple[str, ...] = (_A.FAILED.value, _A.TIMED_OUT.value, _A.LOST.value)
#: the names of `ActivationCounts.as_dict()`, in order
ACTIVATION_COUNTS: tuple[str, ...] = ("total", *FINAL_STATES, "retries")
#: the client counts of a round
CLIENT_COUNTS: tuple[str, ...] = ("selected", "aggregated", "rejected")
#: the columns of rounds.csv that are counts (summed over rounds into `totals`)
ROUND_COUNTS: tuple[str, ...] = (*CLIENT_COUNTS, *FINAL_STATES, "retries")
CLIENT_FUNCTION = "fl_client"
START_EVENTS = ("run_started", "run_resumed")
END_EVENTS = ("run_finished", "run_failed", "run_interrupted")


@dataclass(frozen=True)
class ActivationCounts:
    """Counts of activation records (see the module's definitions)."""

    succeeded: int = 0
    failed: int = 0
    timed_out: int = 0
    lost: int = 0
    throttled: int = 0
    abandoned: int = 0
    retries: int = 0

    @property
    def total(self) -> int:
        return sum(getattr(self, state) for state in FINAL_STATES)

    @property
    def failures(self) -> int:
        return sum(getattr(self, state) for state in FAILURE_STATES)

    def as_dict(self) -> dict[str, int]:
        """`total`, the six states and `retries`, in that order."""
        return {"total": self.total, **asdict(self)}


def _client(value: Any) -> str:
    """One key for the aggregator whatever the source calls it (store: None, activations.csv: "server")."""
    return "server" if value in (None, "", "server") else str(value)


def job_key(record: Mapping[str, Any]) -> tuple[str, str, str]:
    """(round, client, function): the job an activation record is an attempt of (a tree aggregation node counts
    as its own job: several aggregator jobs share a round)."""
    part = record.get("part")
    who = f"tree:{part}" if part not in (None, "") else _client(record.get("client_id"))
    return (str(record.get("round")), who, str(record.get("function")))


def final_records(records: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The records in a final state; a record repeated (a resumed run's CSV row) counts once, the last wins."""
    by_id: dict[Any, Mapping[str, Any]] = {}
    anonymous: list[Mapping[str, Any]] = []
    for record in records:
        if record.get("state") not in FINAL_STATES:
            continue
        key = record.get("activation_id") or record.get("_id")
        if key is None:
            anonymous.append(record)
        else:
            by_id.pop(key, None)
            by_id[key] = record
    return [*by_id.values(), *anonymous]


def count_retries(records: Iterable[Mapping[str, Any]]) -> int:
    """Records whose previous attempt of the same job ended in a failure state (see the definitions)."""
    jobs: dict[tuple[str, str, str], list[tuple[int, str]]] = {}
    for record in final_records(records):
        jobs.setdefault(job_key(record), []).append((int(record.get("attempt") or 1), str(record["state"])))
    retries = 0
    for attempts in jobs.values():
        attempts.sort()
        retries += sum(prev[1] in FAILURE_STATES for prev, _ in zip(attempts, attempts[1:]))
    return retries


def count_activations(records: Iterable[Mapping[str, Any]]) -> ActivationCounts:
    """The activation counts of some records (store documents or activations.csv rows alike)."""
    final = final_records(records)
    per_state = {state: 0 for state in FINAL_STATES}
    for record in final:
        per_state[str(record["state"])] += 1
    return ActivationCounts(**per_state, retries=count_retries(final))


def client_records(records: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The clients' (fl_client) records: what rounds.csv's activation columns count."""
    return [r for r in records if r.get("function") == CLIENT_FUNCTION]


def round_counts(records: Iterable[Mapping[str, Any]], *, selected: int, aggregated: int,
                 rejected: int) -> dict[str, int]:
    """The count columns of one rounds.csv row, from the round's activation records (any session)."""
    counts = count_activations(client_records(records)).as_dict()
    counts.pop("total")
    return {"selected": selected, "aggregated": aggregated, "rejected": rejected, **counts}


def sum_rounds(rounds: Iterable[Mapping[str, Any]]) -> dict[str, int | None]:
    """`totals`: each count column summed over the rounds table (None for a column no row has: older files)."""
    rows = list(rounds)
    out: dict[str, int | None] = {}
    for key in ROUND_COUNTS:
        values = [int(r[key]) for r in rows if r.get(key) is not None]
        out[key] = sum(values) if values or not rows else None
    return out


def aggregated_of(row: Mapping[str, Any]) -> int | None:
    """A round's `aggregated`; rows written before the column existed had `succeeded` = updates handed to the
    aggregator (rejected ones included), so theirs is succeeded − rejected."""
    if row.get("aggregated") is not None:
        return int(row["aggregated"])
    if row.get("succeeded") is None:
        return None
    return int(row["succeeded"]) - int(row.get("rejected") or 0)


def count_redeploys(events: Iterable[Mapping[str, Any]]) -> int:
    return sum(e.get("event") == "redeploy" for e in events)


def sessions(events: Iterable[Mapping[str, Any]]) -> list[tuple[float, float, str | None]]:
    """(start, end, how it ended) per session: from a run_started/run_resumed event to the session's last event
    (its end event, or whatever it wrote last when it was killed); how: the end event's name or None."""
    out: list[tuple[float, float, str | None]] = []
    start = last = None
    ended: str | None = None
    for event in events:
        ts = event.get("ts")
        if not isinstance(ts, (int, float)):
            continue
        kind = event.get("event")
        if kind in START_EVENTS:
            if start is not None:
                out.append((start, last if last is not None else start, ended))
            start, last, ended = float(ts), float(ts), None
            continue
        if start is None:
            continue
        last = float(ts)
        if kind in END_EVENTS:
            ended = str(kind)
    if start is not None:
        out.append((start, last if last is not None else start, ended))
    return out


def wall_s(events: Iterable[Mapping[str, Any]], *, end: float | None = None) -> float | None:
    """The run's wall time over all its sessions; `end` closes the last session (the one writing its summary).
    None when the events hold no session."""
    spans = sessions(events)
    if not spans:
        return None
    if end is not None:
        start, last, how = spans[-1]
        spans[-1] = (start, max(last, end), how)
    return round(sum(e - s for s, e, _ in spans), 3)

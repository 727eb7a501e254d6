"""Clients in flight across rounds, for the modes whose updates may land in a later round than they were issued
in (`deadline` with `late: carry`, `buffered`).

`Flight` holds the client jobs still running and the updates that arrived and wait to be aggregated (the
buffer), each as an `admission.Issued` that names the round it was issued in. A client is busy from its
invocation until its update is aggregated or dropped, so one aggregation never holds two updates of a client.

Resume: the store is the memory. A new session rebuilds the flight from the records of the last
`max_staleness + 1` rounds: an activation left `invoked` is adopted (polled by its platform id, `Tracker.resume`)
or settled from its stored update (`Tracker.settle_stored`); a succeeded one whose update no committed model lists
(`metrics.updates`) goes back into the buffer. So no update is lost or aggregated twice across a kill.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fedkeeper.activations import ActivationState, JobState
from fedkeeper.runtime.admission import Issued
from fedkeeper.tracker import Job

if TYPE_CHECKING:  # pragma: no cover
    from fedkeeper.scenarios.federated_learning import Experiment


@dataclass
class Arrived:
    """One update waiting for an aggregation."""

    issued: Issued  # .round: the round it was issued in
    handler_s: float | None  # the platform's handler time (seeded on a local cluster with a profile)
    job: Job | None = None


@dataclass
class Flight:
    exp: "Experiment"
    running: list[Job] = field(default_factory=list)
    buffer: dict[int, Arrived] = field(default_factory=dict)  # client id → its waiting update

    # ------------------------------------------------------------------ state

    def busy(self) -> set[int]:
        return {j.client_id for j in self.running if j.client_id is not None} | set(self.buffer)

    def dispatch(self, round_number: int, clients: list[int]) -> list[Job]:
        """Invoke `clients` for `round_number` (they train on model round − 1); returns their jobs."""
        jobs = self.exp.client_jobs(round_number, clients)
        self.running += jobs
        self.exp.tracker.run(jobs, until=lambda js: all(j.state is not JobState.WAITING for j in js))
        self.sweep()
        return jobs

    def wait(self, until: Any, deadline: float | None = None) -> None:
        """Drive the running jobs until `until()` holds, all are done, or the wall `deadline` passes."""
        import time

        if not self.running:
            return
        self.exp.tracker.run(list(self.running), until=lambda js: until() or (
            deadline is not None and time.time() >= deadline))
        self.sweep()

    def sweep(self) -> list[Job]:
        """Move finished jobs out of `running`: successes into the buffer; returns the jobs that finished."""
        done = [j for j in self.running if j.done]
        self.running = [j for j in self.running if not j.done]
        for job in done:
            if job.state is JobState.SUCCEEDED and job.result and job.client_id is not None:
                self.buffer[job.client_id] = Arrived(self._issued(job), job.handler_s, job)
        return done

    def _issued(self, job: Job) -> Issued:
        result = job.result or {}
        sha = result.get("sha256") if isinstance(result.get("sha256"), str) and len(result["sha256"]) == 64 \
            else None
        return Issued(int(job.client_id), str(result.get("activation_id")),
                      int(result.get("attempt") or job.attempt_base + job.attempts), sha, job.round)

    def abandon(self, jobs: list[Job], reason: str) -> None:
        """Stop waiting for these running jobs: recorded `abandoned`, their late updates never used."""
        jobs = [j for j in jobs if not j.done]
        if jobs:
            self.exp.tracker.run(jobs, deadline=0.0, enough=lambda js: True)
            for job in jobs:
                job.error = reason
            self.running = [j for j in self.running if j not in jobs]

    def take(self, clients: list[int]) -> list[Issued]:
        """Remove these clients' updates from the buffer, for an aggregation (ascending client id)."""
        return [self.buffer.pop(c).issued for c in sorted(clients)]

    def drop(self, clients: list[int]) -> None:
        for c in clients:
            self.buffer.pop(c, None)

    # ------------------------------------------------------------------ resume

    def restore(self, done: int, window: int) -> None:
        """Rebuild the flight of an interrupted session from the store (rounds done−window+1 … done+1)."""
        exp = self.exp
        first = max(1, done - window + 1)
        aggregated: set[str] = set()
        for r in range(first, done + 1):
            doc = exp.store.get_model_doc(exp.run_id, r) or {}
            aggregated |= {str(u.get("activation_id")) for u in (doc.get("metrics") or {}).get("updates") or []}
        for r in range(first, done + 2):
            found = exp._stored_updates(r)
            if found.docs:
                exp.tracker.settle_stored(exp.run_id, r, found.docs)
            records = [x for x in exp.store.find_activations(exp.run_id, round=r)
                       if x.get("function") == "fl_client" and isinstance(x.get("client_id"), int)]
            for client, issued in found.chosen.items():
                if issued.activation_id in aggregated or client in self.busy():
                    continue
                record = next((x for x in records if x["_id"] == issued.activation_id), {})
                took = record.get("duration_s")
                self.buffer[client] = Arrived(Issued(client, issued.activation_id, issued.attempt, issued.sha256, r),
                                              float(took) if isinstance(took, (int, float)) else None)
            latest: dict[int, dict[str, Any]] = {}
            for x in records:
                if x["client_id"] not in latest or int(x.get("attempt") or 0) > int(latest[x["client_id"]].get("attempt") or 0):
                    latest[x["client_id"]] = x
            flying = [c for c, x in latest.items() if x.get("state") == ActivationState.INVOKED.value
                      and c not in self.busy()]
            if flying:  # adopted by the tracker (same round, client and function as the record)
                jobs = exp.client_jobs(r, sorted(flying))
                self.running += jobs
                exp.tracker.run(jobs, until=lambda js: True)
        self.sweep()

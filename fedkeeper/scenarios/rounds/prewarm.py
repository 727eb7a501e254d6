"""Pre-warming (`scenarios.federated_learning.prewarm: true`): cheap `{"warmup": true}` calls that start the function
instances of the clients about to be selected, so that their real call finds a warm instance.

Warm-ups for round r+1 are fired while round r aggregates (the cohort of r+1 is known then), and collected at
the start of round r+1, before its clients are invoked. They are activations like any other — recorded in the
store and activations.csv under function `fl_client:warmup` and the round that fired them, billed in
the `cost` of the round that collects them, counted in summary.json's `activations` — but never in a round's client
counts. One warm-up per function instance is enough: clients that share a deployed function (`deployment:
shared`) share one warm-up per cluster and round. A session that resumes adopts warm-ups an interrupted one
left in flight, so none stays `invoked`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedkeeper.activations import ActivationState, JobState
from fedkeeper.scenarios.rounds import common
from fedkeeper.tracker import Job

if TYPE_CHECKING:  # pragma: no cover
    from fedkeeper.scenarios.federated_learning import Experiment

WARMUP_FUNCTION = "fl_client:warmup"


class Prewarmer:
    """Fires and collects the warm-up calls of one session (a no-op without `prewarm: true`)."""

    def __init__(self, exp: "Experiment") -> None:
        self.exp = exp
        self.enabled = bool(getattr(exp.fl, "prewarm", False))
        self.jobs: list[Job] = []
        self.fired = 0
        self._billed: set[str] = set()
        if self.enabled:  # warm-ups an interrupted session left in flight: adopted, so each gets an outcome
            for record in exp.store.find_activations(exp.run_id, state=ActivationState.INVOKED.value):
                if record.get("function") == WARMUP_FUNCTION and isinstance(record.get("client_id"), int):
                    self.jobs.append(self._job(int(record["round"]), int(record["client_id"])))

    def _job(self, round_number: int, client_id: int) -> Job:
        exp = self.exp
        cluster, name = exp.fabric.client_function(client_id)
        memory, _, _ = exp.fabric.limits("fl_client", cluster)
        return Job(exp.run_id, round_number, client_id, cluster, WARMUP_FUNCTION, name, {"warmup": True},
                   5.0 + 60.0, memory)

    def fire(self, round_number: int, clients: list[int]) -> int:
        """Invoke one warm-up per distinct function of `clients`, recorded under `round_number` (the round
        that fires them); returns how many. Does not wait for them."""
        if not self.enabled or not clients:
            return 0
        seen: set[tuple[str, str]] = set()
        jobs = []
        for client in clients:
            key = self.exp.fabric.client_function(client)
            if key not in seen:
                seen.add(key)
                jobs.append(self._job(round_number, client))
        self.exp.runlog.event("prewarm", round=round_number, clients=[j.client_id for j in jobs])
        self.exp.tracker.run(jobs, until=lambda js: all(j.state is not JobState.WAITING for j in js))
        self.jobs += jobs
        self.fired += len(jobs)
        return len(jobs)

    def collect(self) -> float:
        """Wait for the warm-ups in flight; returns their cost (USD, 0 when none or unpriced)."""
        if not self.jobs:
            return 0.0
        jobs, self.jobs = self.jobs, []
        self.exp.tracker.run(jobs)
        records = [r for rnd in sorted({j.round for j in jobs})
                   for r in self.exp.store.find_activations(self.exp.run_id, round=rnd)
                   if r.get("function") == WARMUP_FUNCTION and r["_id"] not in self._billed
                   and r.get("state") != ActivationState.INVOKED.value]
        self._billed.update(r["_id"] for r in records)
        return common.round_cost(records, self.exp, functions=(WARMUP_FUNCTION,)) or 0.0

    def close(self) -> None:
        """The end of a session that ran to its end: warm-ups still running get their outcome recorded (they
        are short). An interrupted session leaves them to the next one, which adopts them."""
        if self.jobs:
            try:
                self.collect()
            except Exception as exc:  # noqa: BLE001 - the run's end is recorded whatever happens here
                self.exp.runlog.logger.warning("collecting warm-up calls: %s", exc)

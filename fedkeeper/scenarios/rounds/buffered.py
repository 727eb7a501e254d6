"""`mode: {name: buffered, concurrency: C, buffer_size: K}`: FedBuff (Nguyen et al., "Federated Learning with
Buffered Asynchronous Aggregation", AISTATS 2022).

C clients train at all times; each is invoked on the newest global model (round r's clients read model r−1).
Every K arrived updates make one aggregation — one "round" of rounds.csv — in which an update issued in round i
counts with staleness τ = r − i, its delta weighted by s(τ) = 1/sqrt(1+τ) and scaled by the server learning
rate (`runtime/staleness.py`; the configured strategy takes the re-based updates as usual). Updates staler
than `max_staleness` are dropped. A client is busy from its invocation until its update is aggregated or
dropped. New clients are drawn in the seeded order of `Experiment.cohort_for` among the idle ones.

Deterministic: which clients are invoked when the run starts (the seeded order), every client's update given
its base model (seeded training), and the aggregation of a given set of updates (fixed client order, float64).
Not deterministic: which K updates arrive first, hence the staleness of each and the model, depends on the
timing of the calls; on a local cluster with a seeded profile the order mostly follows the simulated handler
times, but ties, queueing and cold starts still decide. `rounds.csv` counts in row r the activations issued in
round r as they stand when the row is written (some are still running then); summary.json counts all of them.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from fedkeeper.activations import JobState
from fedkeeper.scenarios.rounds import common
from fedkeeper.scenarios.rounds.flight import Flight
from fedkeeper.scenarios.rounds.prewarm import Prewarmer

if TYPE_CHECKING:  # pragma: no cover
    from rich.progress import Progress

    from fedkeeper.scenarios.federated_learning import Experiment


def sizes(exp: "Experiment") -> tuple[int, int]:
    """(C, K): clients in flight and updates per aggregation."""
    mode, per_round = exp.fl.mode, exp.fl.clients_info.num_clients_per_round
    total = exp.fl.clients_info.total_num_clients
    k = mode.buffer_size or per_round
    c = min(total, mode.concurrency or 2 * per_round)
    return max(c, 1), max(1, min(k, c))


def run(exp: "Experiment", progress: "Progress") -> str:
    return common.with_prewarm(exp, progress, _rounds)


def _rounds(exp: "Experiment", progress: "Progress", warm: Prewarmer) -> str:
    from fedkeeper.scenarios.federated_learning import QuorumLost

    reached = common.resumed_reason(exp)
    if reached:
        return reached
    mode = exp.fl.mode
    c, k = sizes(exp)
    plan = common.plan(exp)
    rounds = common.RoundLoop(exp, progress)
    flight = Flight(exp)
    flight.restore(rounds.done, mode.max_staleness + 1)
    for r, t0 in rounds:
        warm_cost = warm.collect()
        invoked: list[int] = []
        while len(flight.buffer) < k:
            idle_needed = c - len(flight.running) - len(flight.buffer)
            if idle_needed > 0:
                busy = flight.busy()
                order = [x for x in exp.cohort_for(r, _all(plan))[0].ranked if x not in busy][:idle_needed]
                if order:
                    flight.dispatch(r, order)
                    invoked += order
            if not flight.running:
                if flight.buffer:
                    break  # nothing more can arrive: aggregate what there is
                raise QuorumLost(f"round {r}: no client update can arrive (every invocation failed). "
                                 f"Resume with --resume {exp.run_id}.")
            flight.wait(lambda: len(flight.buffer) + sum(j.state is JobState.SUCCEEDED for j in flight.running) >= k
                        or any(j.done and j.state is not JobState.SUCCEEDED for j in flight.running))
            _drop_failed(flight)
        invoke_s = time.perf_counter() - t0
        exp.runlog.event("round_started", round=r, selected=sorted(invoked), buffered=sorted(flight.buffer),
                         in_flight=len(flight.running))
        too_old = [x for x, a in flight.buffer.items() if r - a.issued.round > mode.max_staleness]
        flight.drop(too_old)
        take = sorted(flight.buffer)[:k] if len(flight.buffer) > k else sorted(flight.buffer)
        issued = flight.take(take)
        reached = common.aggregate_issued(exp, progress, rounds.run_task, r, flight, issued, take,
                                          updates=[i.as_params() for i in issued], selected=len(invoked),
                                          invoke_s=invoke_s, slowest_s=0.0, t0=t0, warm_cost=warm_cost)
        if reached:
            return reached
    if rounds.stopped:
        return rounds.stopped
    return common.all_rounds_done(exp, flight)


def _all(plan: common.Plan) -> common.Plan:
    """The plan that ranks every client (buffered draws from the whole seeded order, minus the busy ones)."""
    return common.Plan(plan.total, plan.total, plan.total, plan.quorum)


def _drop_failed(flight: Flight) -> None:
    """Jobs that gave up free their client (swept out of `running` by `Flight.sweep`)."""
    flight.sweep()

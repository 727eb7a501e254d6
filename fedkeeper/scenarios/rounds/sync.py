"""`mode: sync` (the default): each round invokes its cohort and waits for it, then aggregates.

Round r: choose and rank clients (`Experiment.cohort_for`); invoke `fl_client` for those without a stored update;
wait under the resilience policy; hand the aggregator the clients the round decided on — under over-selection
the first `num_clients_per_round` by rank that succeeded (`scenarios.cohort`), so the result does not depend on
arrival order — naming the activation whose update to take; record metrics. Same config and seed, same model.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from fedkeeper.activations import JobState
from fedkeeper.scenarios.rounds import common
from fedkeeper.tracker import Job

if TYPE_CHECKING:  # pragma: no cover
    from rich.progress import Progress

    from fedkeeper.scenarios.rounds.prewarm import Prewarmer

    from fedkeeper.scenarios.federated_learning import Experiment


def run(exp: "Experiment", progress: "Progress") -> str:
    """Rounds until the last one or the target accuracy; returns why the run is complete."""
    return common.with_prewarm(exp, progress, _rounds)


def _rounds(exp: "Experiment", progress: "Progress", warm: Prewarmer) -> str:
    from fedkeeper.scenarios.federated_learning import QuorumLost

    reached = common.resumed_reason(exp)
    if reached:
        return reached
    plan = common.plan(exp)
    rounds = common.RoundLoop(exp, progress)
    for r, t0 in rounds:
        cohort, quorum = exp.cohort_for(r, plan)
        selected = sorted(cohort.ranked)
        exp.runlog.event("round_started", round=r, selected=selected, ranked=list(cohort.ranked))
        warm_cost = warm.collect()  # the warm-ups fired during the last aggregation: billed to this round
        # the round's records as an earlier session left them (none in a new round): read once, for the updates
        # stored already and for the tracker's resume (settling stored answers changes none of the jobs' records)
        start_records = exp.store.find_activations(exp.run_id, round=r)
        # from here on the tracker keeps them as it writes them: the round's records need not be read back
        exp.tracker.mirror(exp.run_id, r, start_records)
        stored_updates = exp._stored_updates(r, records=start_records)
        stored = set(stored_updates.chosen)
        if stored and r == rounds.done + 1:  # a resumed round: answers an interrupted session never read
            exp.tracker.settle_stored(exp.run_id, r, stored_updates.docs)
        jobs = exp.client_jobs(r, [client_id for client_id in selected if client_id not in stored])
        task = progress.add_task(f"round {r}/{exp.rounds}", total=len(selected), completed=len(stored),
                                 failed=0, retrying=0)

        def ok(js: list[Job]) -> int:
            return len(stored) + sum(j.state is JobState.SUCCEEDED for j in js)

        def settled(js: list[Job]) -> bool:  # over-selection: the ranked clients it takes are all in
            return cohort.settled(stored | {j.client_id for j in js if j.state is JobState.SUCCEEDED},
                                  {j.client_id for j in js if j.state is JobState.GAVE_UP})

        satisfied = settled if len(selected) > cohort.needed else None
        outcome = common.run_jobs(exp, progress, task, jobs, enough=lambda js: ok(js) >= quorum,
                                  satisfied=satisfied, records=start_records)
        invoke_s = time.perf_counter() - t0
        # the round's client records are final now (the tracker wrote them before it returned), for the issued
        # updates here and the counts and cost of the round's row (with the aggregator's records)
        client_records = common.settled_records(exp, r)
        stored_updates = exp._stored_updates(r, {j.client_id: j.result for j in outcome.jobs
                                                 if j.state is JobState.SUCCEEDED}, report=True,
                                             records=client_records)
        # only what the round decided on when it stopped waiting: stored before it, or seen to succeed (an
        # abandoned client's update that landed since is not used), then by rank, never by arrival order
        arrived = stored | {j.client_id for j in outcome.jobs if j.state is JobState.SUCCEEDED}
        accepted = cohort.pick(c for c in stored_updates.chosen if c in arrived)
        if len(accepted) < quorum:
            progress.remove_task(task)
            failed = [f"client {j.client_id}: {j.error}" for j in outcome.jobs
                      if j.state is not JobState.SUCCEEDED][:5]
            raise QuorumLost(f"round {r}: only {len(accepted)} of {len(selected)} selected clients stored an "
                             f"update; at least {quorum} needed (resilience.min_fraction). "
                             f"Resume with --resume {exp.run_id}. Failures: {'; '.join(failed)}")
        if warm.enabled and r < exp.rounds:  # warm the next round's clients while this one aggregates
            warm.fire(r + 1, sorted(exp.cohort_for(r + 1, plan)[0].ranked))
        t1 = time.perf_counter()
        result = exp._aggregate(r, "aggregate", stored_updates.for_aggregator(accepted))
        aggregate_s = time.perf_counter() - t1
        rejected = common.log_aggregated(exp, r, result, stored_updates.chosen, stored_updates.docs, accepted)
        progress.remove_task(task)
        reached = common.record_sync_round(exp, progress, rounds.run_task, r, outcome.jobs, result,
                                           selected=len(selected), expected=len(accepted), rejected=len(rejected),
                                           invoke_s=invoke_s, aggregate_s=aggregate_s, t0=t0, warm_cost=warm_cost,
                                           client_records=client_records)
        if reached:
            return reached
    if rounds.stopped:
        return rounds.stopped
    exp.current_round = None
    return f"all {exp.rounds} rounds completed"

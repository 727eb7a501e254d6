"""Sync rounds with client packing (`clients_info.clients_per_invocation: k` > 1, docs/aggregation.md#client-packing).

Round r as in `rounds.sync`, with a pack of up to k clients (`scenarios.packing`) as the unit of work: one
`fl_client` invocation per pack trains its clients and stores one partial sum; the tracker runs, retries and
records the packs as it does clients (each record names its `clients`); the round's aggregator combines the
stored partials of the packs that succeeded, in client order, as a tree's final invocation does (with inner nodes
when there are more than `aggregation.fan_in` packs). Config checks allow packing only where this gives the flat
round's model: the FedAvg family without central DP, no over-selection.

Resume: a pack's partial is keyed by what it covers, so a resumed round asks the store which packs are stored,
settles their records an interrupted session left `invoked`, and issues only the others. Same config and seed,
same model: the clients are trained with their own seeds, summed in ascending order within a pack and the packs
combined in order, whatever the timing.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from fedkeeper.activations import JobState
from fedkeeper.errors import RunFailed
from fedkeeper.runtime.privacy import DPMode
from fedkeeper.scenarios import packing
from fedkeeper.scenarios.rounds import common
from fedkeeper.tracker import Job

if TYPE_CHECKING:  # pragma: no cover
    from rich.progress import Progress

    from fedkeeper.scenarios.rounds.prewarm import Prewarmer

    from fedkeeper.scenarios.federated_learning import Experiment


def run(exp: "Experiment", progress: "Progress") -> str:
    """Rounds until the last one or the target accuracy; returns why the run is complete."""
    return common.with_prewarm(exp, progress, _rounds)


def round_packs(exp: "Experiment", r: int, selected: list[int]) -> list[packing.Pack]:
    """Round r's packs of its selected clients, keyed as the client function keys them."""
    client_privacy = exp.fl.privacy_params()
    if client_privacy is not None and client_privacy.get("mode") != DPMode.LOCAL:
        client_privacy = None  # only local DP travels in a client's payload (and into its pack's key)
    return packing.plan_packs(exp.run_id, r, selected, exp.fl.clients_info.clients_per_invocation,
                              exp.fabric.client_clusters().__getitem__, client_privacy)


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
        packs = round_packs(exp, r, selected)
        exp.runlog.event("round_started", round=r, selected=selected, ranked=list(cohort.ranked),
                         packs=[list(p.clients) for p in packs])
        warm_cost = warm.collect()
        start_records = exp.store.find_activations(exp.run_id, round=r)
        exp.tracker.mirror(exp.run_id, r, start_records)
        stored = {}  # pack index -> its stored partial's document (a resumed round: packs an earlier session ran)
        if start_records:
            present = exp.store.blobs.partials_present([p.key for p in packs])
            stored = {p.index: doc for p in packs if p.key in present
                      for doc in [exp.store.blobs.get_partial_doc(p.key)] if doc is not None}
            if stored:
                exp.tracker.settle_stored(exp.run_id, r, list(stored.values()))
        jobs = exp.pack_jobs(r, [p for p in packs if p.index not in stored])
        by_first = {p.first: p for p in packs}
        task = progress.add_task(f"round {r}/{exp.rounds}", total=len(packs), completed=len(stored), failed=0,
                                 retrying=0)
        stored_clients = sum(len(packs[i].clients) for i in stored)

        def ok(js: list[Job]) -> int:
            return stored_clients + sum(len(j.clients or ()) for j in js if j.state is JobState.SUCCEEDED)

        outcome = common.run_jobs(exp, progress, task, jobs, enough=lambda js: ok(js) >= quorum,
                                  records=start_records)
        invoke_s = time.perf_counter() - t0
        client_records = common.settled_records(exp, r)
        done_packs = {i: _ack_of(doc) for i, doc in stored.items()}
        for i, ack in done_packs.items():  # a stored partial is read like an answer: its clients must be the pack's
            problem = _ack_problem({**ack, "key": packs[i].key}, packs[i])
            if problem:
                raise RunFailed(f"round {r}: the stored partial of pack {i} ({packs[i].key}) {problem}; it cannot "
                                f"be aggregated, and the same key is not written twice (first write wins)")
        for job in outcome.jobs:
            if job.state is JobState.SUCCEEDED and job.result:
                pack = by_first[job.client_id]
                problem = _ack_problem(job.result, pack)
                if problem:  # a platform's answer is checked like any input: never aggregated on trust
                    raise RunFailed(f"round {r}: the answer of pack {pack.index} (clients {pack.first}.."
                                    f"{pack.clients[-1]}, activation {job.result.get('activation_id')}) {problem}")
                done_packs[pack.index] = job.result
        took = sorted(done_packs)
        trained = sum(len(packs[i].clients) for i in took)
        if trained < quorum:
            progress.remove_task(task)
            failed = [f"pack of clients {j.client_id}..{(j.clients or (j.client_id,))[-1]}: {j.error}"
                      for j in outcome.jobs if j.state is not JobState.SUCCEEDED][:5]
            raise QuorumLost(f"round {r}: only {trained} of {len(selected)} selected clients were trained in packs "
                             f"that stored their sum; at least {quorum} needed (resilience.min_fraction). "
                             f"Resume with --resume {exp.run_id}. Failures: {'; '.join(failed)}")
        if not took:  # a Poisson draw of no clients (quorum 0): nothing to combine, as a flat round has no update
            progress.remove_task(task)
            raise RunFailed(f"round {r}: no client update to aggregate ({len(selected)} clients selected). "
                            f"Resume with --resume {exp.run_id}")
        if warm.enabled and r < exp.rounds:
            warm.fire(r + 1, sorted(exp.cohort_for(r + 1, plan)[0].ranked))
        t1 = time.perf_counter()
        result = exp._aggregate(r, "aggregate", None, packs=[packs[i].key for i in took])
        aggregate_s = time.perf_counter() - t1
        rejected = _log_aggregated(exp, r, result, packs, done_packs)
        progress.remove_task(task)
        reached = common.record_sync_round(exp, progress, rounds.run_task, r, outcome.jobs, result,
                                           selected=len(selected), expected=trained, rejected=len(rejected),
                                           invoke_s=invoke_s, aggregate_s=aggregate_s, t0=t0, warm_cost=warm_cost,
                                           client_records=client_records)
        if reached:
            return reached
    if rounds.stopped:
        return rounds.stopped
    exp.current_round = None
    return f"all {exp.rounds} rounds completed"


def _ack_problem(ack: dict[str, Any], pack: packing.Pack) -> str | None:
    """What is wrong with a pack's acknowledgement, else None: its key, and its clients (trained or rejected) and
    their example counts must be the pack's."""
    if ack.get("key") != pack.key:
        return f"names partial {ack.get('key')!r}, expected {pack.key!r}"
    trained, examples, rejected = ack.get("clients"), ack.get("examples"), ack.get("rejected")
    if not isinstance(trained, list) or not isinstance(examples, list) or not isinstance(rejected, list) \
            or len(trained) != len(examples) or not all(isinstance(r, dict) for r in rejected):
        return "does not list its clients, their examples and its rejected clients"
    if not all(type(n) is int and n > 0 for n in examples):  # noqa: E721 - a bool is no count
        return "gives an example count that is not a positive integer"
    covered = sorted([*trained, *(r.get("client_id") for r in rejected)], key=str)
    if covered != sorted(pack.clients, key=str):
        return f"covers clients {covered[:10]}, the pack holds {list(pack.clients)[:10]}"
    return None


def _ack_of(doc: dict[str, Any]) -> dict[str, Any]:
    """A stored pack partial read as its function's acknowledgement (what `_log_aggregated` reads)."""
    return {"clients": doc.get("clients") or [], "examples": doc.get("examples") or [],
            "activation_id": doc.get("activation_id"), "rejected": doc.get("rejected") or []}


def _log_aggregated(exp: "Experiment", r: int, result: dict[str, Any], packs: list[packing.Pack],
                    done: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """`update_rejected` and `updates_aggregated` events of round r, per client as a flat round logs them (each
    client named with its pack's activation); returns the rejected entries."""
    rejected = list(result.get("rejected") or [])
    for item in rejected:
        exp.runlog.event("update_rejected", round=r, **item)
    clients = []
    for index in sorted(done):
        ack = done[index]
        for client, examples in zip(ack.get("clients") or [], ack.get("examples") or []):
            clients.append({"client_id": client, "activation_id": ack.get("activation_id"),
                            "num_examples": examples, "pack": index})
    exp.runlog.event("updates_aggregated", round=r, clients=clients)
    return rejected

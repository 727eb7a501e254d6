"""`mode: {name: deadline, deadline_s: D, late: discard | carry}`: a round aggregates what arrived by its deadline.

Round r invokes its cohort (clients still busy with an earlier round are skipped) and waits until every client
of the round has answered or is known to be late (seen still running more than D after its handler started, where
the platform reports when a handler starts: the local platform does), or the wall clock reaches D + `grace_s`. An update is *on time* when its activation
succeeded and the platform's handler time is at most D. That clock is the platform's, not the orchestrator's: on
a local cluster with a timing profile it is the seeded simulated time, so the same config and seed aggregate the
same updates and give the same model, as long as `grace_s` covers queueing and cold starts (a call on time by
the platform's clock that has not answered by D + grace is late, like on a real fabric).

Late updates:
- `discard`: dropped; clients still running at the cut are recorded `abandoned`. Every aggregated update is of
  round r, so the aggregation is the sync one, bit for bit.
- `carry`: an update whose handler time t exceeds D is aggregated in round r + k, k the smallest with
  t ≤ (k+1)·D, or in the first round that ends after it arrived if that is later; weighted by s(τ) with the
  server learning rate (runtime/staleness.py); beyond `max_staleness` it is dropped (the call abandoned). A round
  does not wait for carried calls, so the round a carried update lands in — its staleness — depends on timing:
  `carry` is not bit-for-bit reproducible, `discard` is.

A round never ends below its quorum because of the deadline: short of `min_fraction` on-time updates at the cut,
it waits on for them (as `resilience.round_deadline_s` does in `sync`); which updates are on time is still
decided by the platform's handler time, so this does not change what is aggregated.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from fedkeeper.activations import JobState
from fedkeeper.errors import UsageProblem
from fedkeeper.scenarios.rounds import common
from fedkeeper.scenarios.rounds.flight import Flight
from fedkeeper.scenarios.rounds.prewarm import Prewarmer

if TYPE_CHECKING:  # pragma: no cover
    from rich.progress import Progress

    from fedkeeper.tracker import Job

    from fedkeeper.scenarios.federated_learning import Experiment


def deadline_of(exp: "Experiment") -> float:
    d = exp.fl.mode.deadline_s or exp.fl.resilience.round_deadline_s
    if d is None:
        raise UsageProblem("mode deadline needs mode.deadline_s (or resilience.round_deadline_s)")
    return float(d)


def lateness(handler_s: float | None, deadline_s: float) -> int:
    """k: the rounds after its own in which an update of handler time `handler_s` is aggregated (0: on time)."""
    if handler_s is None or handler_s <= deadline_s:
        return 0
    k = 0
    while handler_s > (k + 1) * deadline_s:
        k += 1
    return k


#: a call seen running this much longer than D after its handler started is late: the margin covers the moment
#: between a handler's end and its answer reaching the platform's record (a held reply under a timing profile
#: has none: its handler time *is* the time until the answer)
ANSWER_MARGIN_S = 0.1


def known_late(job: "Job", deadline_s: float) -> bool:
    """The platform showed this call still running more than D (+ margin) after its handler started, so its
    handler time will exceed D: it cannot be on time, and the round need not wait for it to end. Which updates are
    on time does not change — only when the round learns it — so `discard` aggregates the same updates."""
    attempt = job.active
    if job.done or attempt is None:
        return False
    ran = attempt.running_for()
    return ran is not None and ran > deadline_s + ANSWER_MARGIN_S


def run(exp: "Experiment", progress: "Progress") -> str:
    return common.with_prewarm(exp, progress, _rounds)


def _rounds(exp: "Experiment", progress: "Progress", warm: Prewarmer) -> str:
    from fedkeeper.scenarios.federated_learning import QuorumLost

    reached = common.resumed_reason(exp)
    if reached:
        return reached
    mode = exp.fl.mode
    carry = mode.late == "carry"
    d = deadline_of(exp)
    plan = common.plan(exp)
    rounds = common.RoundLoop(exp, progress)
    flight = Flight(exp)
    if rounds.done or carry:
        flight.restore(rounds.done, mode.max_staleness + 1 if carry else 1)
    for r, t0 in rounds:
        warm_cost = warm.collect()
        cohort, quorum = exp.cohort_for(r, plan)
        busy = flight.busy()
        fresh = [c for c in cohort.ranked if c not in busy]
        selected = sorted(fresh)
        exp.runlog.event("round_started", round=r, selected=selected, ranked=list(cohort.ranked),
                         busy=sorted(busy & set(cohort.ranked)), deadline_s=d)
        started = time.time()
        new = [c for c in selected if not (c in flight.buffer and flight.buffer[c].issued.round == r)]
        jobs = flight.dispatch(r, new) if new else []
        round_jobs = jobs + [j for j in flight.running if j.round == r and j not in jobs]
        cut = started + d + mode.grace_s
        # every call of the round answered or known to be late, or the cut; then, short of a quorum of on-time
        # updates, the round waits on for them (like resilience.round_deadline_s: a deadline never ends a round
        # below its quorum)
        flight.wait(lambda: all(j.done or known_late(j, d) for j in round_jobs), deadline=cut)

        def punctual() -> int:
            return sum(j.state is JobState.SUCCEEDED and lateness(j.handler_s, d) == 0 for j in round_jobs) + sum(
                1 for a in flight.buffer.values() if a.issued.round == r and lateness(a.handler_s, d) == 0
                and a.job not in round_jobs)

        while punctual() < quorum and not all(j.done for j in round_jobs):
            flight.wait(lambda: punctual() >= quorum or all(j.done for j in round_jobs))
        invoke_s = time.perf_counter() - t0
        # what this round takes: every waiting update whose lateness makes it due now
        due, late_drop = [], []
        for client, item in list(flight.buffer.items()):
            k = lateness(item.handler_s, d)
            target = item.issued.round + k
            if target <= r and (k == 0 or carry) and r - item.issued.round <= mode.max_staleness:
                due.append(client)
            elif not carry and k > 0 or r - item.issued.round > mode.max_staleness:
                late_drop.append(client)
        flight.drop(late_drop)
        still = list(flight.running)
        if not carry:
            flight.abandon(still, "round deadline reached")
        else:
            flight.abandon([j for j in still if r - j.round >= mode.max_staleness], "too stale to be used")
        on_time = [c for c in due if flight.buffer[c].issued.round == r]
        ranked_on_time = cohort.pick(on_time) if len(cohort.ranked) > cohort.needed else sorted(on_time)
        stale = [c for c in due if flight.buffer[c].issued.round != r]
        take = sorted(set(ranked_on_time) | set(stale))
        if len(take) < quorum:
            raise QuorumLost(f"round {r}: only {len(take)} updates by the deadline ({d:g} s); at least {quorum} "
                             f"needed (resilience.min_fraction). Resume with --resume {exp.run_id}.")
        flight.drop([c for c in due if c not in take])  # over-selection: on time but ranked below the cut
        issued = flight.take(take)
        if warm.enabled and r < exp.rounds:  # selecting round r + 1 early only to warm it
            warm.fire(r, sorted(c for c in exp.cohort_for(r + 1, plan)[0].ranked if c not in flight.busy()))
        updates = [i.as_params() if carry else {k: v for k, v in i.as_params().items() if k != "round"}
                   for i in issued]
        durations = [float(j.handler_s or 0.0) for j in round_jobs if j.state is JobState.SUCCEEDED]
        reached = common.aggregate_issued(exp, progress, rounds.run_task, r, flight, issued, take,
                                          updates=updates, selected=len(selected), invoke_s=invoke_s,
                                          slowest_s=max(durations) if durations else 0.0, t0=t0,
                                          warm_cost=warm_cost)
        if reached:
            return reached
    if rounds.stopped:
        return rounds.stopped
    return common.all_rounds_done(exp, flight)


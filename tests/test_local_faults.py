"""Fault injection on the local platform: each kind at its configured rate, deterministic from the seed."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest

from fedkeeper.providers.local.config import Faults
from fedkeeper.providers.base import State
from fedkeeper.providers.local.faults import FaultPlan
from local_support import deploy, make_provider, wait_until

pytestmark = pytest.mark.integration


def within_4_sigma(count: int, n: int, rate: float) -> bool:
    sigma = math.sqrt(n * rate * (1 - rate))
    return abs(count - n * rate) <= 4 * sigma


def test_fault_plan_is_deterministic_and_independent_of_rates() -> None:
    plan1 = FaultPlan(Faults(failure_rate=0.2, latency_ms=(1, 5), seed=3))
    plan2 = FaultPlan(Faults(failure_rate=0.2, latency_ms=(1, 5), seed=3))
    seq1 = [plan1.draw() for _ in range(200)]
    seq2 = [plan2.draw() for _ in range(200)]
    assert seq1 == seq2
    assert all(0.001 <= d.latency_s <= 0.005 for d in seq1)
    assert {d.label for d in seq1} == {"failure", "latency"}
    # the latency draw does not depend on the fault rates: same seed, other rate, same latencies
    plan3 = FaultPlan(Faults(failure_rate=0.5, crash_rate=0.1, latency_ms=(1, 5), seed=3))
    assert [plan3.draw().latency_s for _ in range(200)] == [d.latency_s for d in seq1]
    assert FaultPlan(Faults()).draw().label is None
    other_seed = FaultPlan(Faults(failure_rate=0.2, latency_ms=(1, 5), seed=4))
    assert [other_seed.draw() for _ in range(200)] != seq1


def test_every_fault_kind_at_its_rate_over_500_calls(tmp_path: Path) -> None:
    n = 500
    rates = {"failure": 0.10, "timeout": 0.04, "crash": 0.04}
    faults = {"failure_rate": rates["failure"], "timeout_rate": rates["timeout"], "crash_rate": rates["crash"],
              "latency_ms": (0.0, 2.0), "seed": 11}
    p = make_provider(tmp_path, concurrency=4, faults=faults)
    try:
        name = deploy(p, "echo", timeout_s=0.4)
        invs = [p.invoke(name, {"i": i}) for i in range(n)]
        statuses = [p.wait(inv, 60) for inv in invs]
    finally:
        p.close()
    labels = Counter(s.injected for s in statuses)
    for kind, rate in rates.items():
        assert within_4_sigma(labels[kind], n, rate), (kind, labels[kind])
    assert labels["latency"] + labels["failure"] + labels["timeout"] + labels["crash"] == n  # latency on all others
    for s in statuses:
        if s.injected == "failure":
            assert s.state is State.FAILED and s.error == "injected failure"
        elif s.injected == "timeout":
            assert s.state is State.TIMED_OUT and s.error == "The action exceeded its time limits of 400 milliseconds."
        elif s.injected == "crash":
            assert s.state is State.FAILED and s.error.startswith("worker exited with code -9")
        else:
            assert s.state is State.SUCCEEDED, s.error
    # the same seed and the same sequence of calls give the same faults on the same calls
    replay = FaultPlan(Faults(**faults))
    assert [replay.draw().label for _ in range(n)] == [s.injected for s in statuses]


def test_same_seed_same_faults_across_platform_instances(tmp_path: Path) -> None:
    runs = []
    for i in range(2):
        p = make_provider(tmp_path / str(i), concurrency=2, faults={"failure_rate": 0.3, "seed": 5})
        try:
            name = deploy(p, "echo")
            invs = [p.invoke(name, {}) for _ in range(40)]
            runs.append([(p.wait(inv, 30).state, p.poll(inv).injected) for inv in invs])
        finally:
            p.close()
    assert runs[0] == runs[1]
    assert {state for state, _ in runs[0]} == {State.SUCCEEDED, State.FAILED}


def test_a_cancelled_call_frees_its_worker_and_is_billed_for_the_time_it_ran(tmp_path: Path) -> None:
    """`Provider.cancel` on the local platform: the abandoned call ends at once as failed ("cancelled"), billed
    up to the cancel, and its single worker takes the next call instead of finishing the abandoned one."""
    p = make_provider(tmp_path, concurrency=1)
    try:
        name = deploy(p, "sleep", timeout_s=60.0)
        slow = p.invoke(name, {"seconds": 30})
        assert wait_until(lambda: p.poll(slow).start is not None, 20)
        status = p.cancel(slow)
        assert status is not None and status.state is State.FAILED and "cancelled" in (status.error or "")
        assert status.duration_s is not None and status.duration_s < 30
        nxt = p.invoke(name, {"seconds": 0})
        done = p.wait(nxt, 20)  # well before the cancelled call's 30 s would have ended
        assert done.state is State.SUCCEEDED
        assert p.poll(slow).state is State.FAILED  # settled once: the cancel is final
        assert p.cancel(slow).state is State.FAILED  # cancelling a settled call keeps its status
    finally:
        p.close()

"""The local platform's timing profile: seeded slow-down statistics, stragglers, tiers, the cold-start model."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from fedkeeper.providers.base import State
from fedkeeper.providers.local.config import LocalCluster, Profile
from fedkeeper.providers.local.profile import InstanceModel, ProfilePlan, profiles
from fedkeeper.providers.local.provider import LocalProvider
from local_support import deploy


def plan(**profile: object) -> ProfilePlan:
    return ProfilePlan(Profile(**profile), keep_warm_s=60.0)


def within_4_sigma(count: int, n: int, rate: float) -> bool:
    return abs(count - n * rate) <= 4 * math.sqrt(n * rate * (1 - rate))


def test_lognormal_slowdown_has_the_configured_median_and_sigma() -> None:
    p = plan(seed=1, slowdown={"median": 2.0, "sigma": 0.5})
    logs = np.log([p.draw(c, r, 1).multiplier for c in range(200) for r in range(1, 11)])
    assert abs(np.median(logs) - math.log(2.0)) < 0.05  # n = 2000: the median's standard error is ~0.014
    assert abs(np.std(logs) - 0.5) < 0.03
    assert p.draw(None, 3, 1).multiplier == 1.0  # the aggregator is never slowed down


def test_draws_depend_on_the_key_only_not_on_the_order() -> None:
    a = plan(seed=7, slowdown={"median": 1.0, "sigma": 1.0}, cold_start={"delay_ms": (1000, 3000)})
    b = plan(seed=7, slowdown={"median": 1.0, "sigma": 1.0}, cold_start={"delay_ms": (1000, 3000)})
    keys = [(c, r, t) for c in range(5) for r in range(1, 4) for t in (1, 2)]
    forward = [a.draw(*k) for k in keys]
    backward = [b.draw(*k) for k in reversed(keys)][::-1]
    assert forward == backward
    assert len({d.multiplier for d in forward}) == len(keys)  # client, round and attempt all matter
    assert all(1.0 <= d.cold_delay_s <= 3.0 for d in forward)
    other = plan(seed=8, slowdown={"median": 1.0, "sigma": 1.0})
    assert [other.draw(*k).multiplier for k in keys] != [d.multiplier for d in forward]


def test_straggler_share_and_speed_tiers_per_client() -> None:
    n = 3000
    p = plan(seed=2, tiers=[{"share": 0.5, "slowdown": 1}, {"share": 0.3, "slowdown": 2},
                            {"share": 0.2, "slowdown": 4}], stragglers={"share": 0.1, "slowdown": 10})
    traits = [p.traits(c) for c in range(n)]
    assert within_4_sigma(sum(t.straggler for t in traits), n, 0.1)
    for tier, share in enumerate((0.5, 0.3, 0.2)):
        assert within_4_sigma(sum(t.tier == tier for t in traits), n, share)
    # a client keeps its tier and straggler status in every round; its multiplier is exactly their product
    for c in (0, 1, 2, 3):
        t = p.traits(c)
        for r in (1, 2, 3):
            assert p.draw(c, r, 1).multiplier == pytest.approx(t.tier_slowdown * (10 if t.straggler else 1))
    per_activation = plan(seed=2, stragglers={"share": 0.25, "slowdown": 3, "per": "activation"})
    draws = [per_activation.draw(c, r, 1) for c in range(100) for r in range(20)]
    assert within_4_sigma(sum(d.straggler for d in draws), len(draws), 0.25)
    assert len({per_activation.draw(5, r, 1).straggler for r in range(40)}) == 2  # varies from round to round


def test_profile_validation() -> None:
    with pytest.raises(ValidationError, match="add up to 1"):
        Profile(tiers=[{"share": 0.5, "slowdown": 1}, {"share": 0.2, "slowdown": 2}])
    with pytest.raises(ValidationError, match="delay_ms"):
        Profile(cold_start={"delay_ms": (3000, 1000)})
    with pytest.raises(ValidationError):
        Profile(slowdown={"median": 0})


def test_instance_model_goes_cold_after_the_keep_warm_window_and_keeps_at_most_max_warm() -> None:
    m = InstanceModel(keep_warm_s=10.0, max_warm=2)
    assert m.acquire("a", 0.0) is False  # nothing warm yet: a cold start
    m.release("a", 1.0)
    assert m.acquire("a", 10.9) is True  # idle 9.9 s < 10 s: warm
    m.release("a", 11.0)
    assert m.acquire("a", 21.0) is False  # idle exactly 10 s: gone cold
    for t, name in enumerate("abcd"):
        m.release(name, 30.0 + t)
        assert m.warm_count() <= 2
    assert not m.is_warm("a", 34.0) and not m.is_warm("b", 34.0)  # least recently used went first
    assert m.is_warm("c", 34.0) and m.is_warm("d", 34.0)
    zero = InstanceModel(keep_warm_s=10.0, max_warm=0)
    zero.release("a", 0.0)
    assert zero.acquire("a", 0.1) is False


def _provider(tmp_path: Path, **profile: object) -> LocalProvider:
    config = LocalCluster(concurrency=3, keep_warm_s=60, profile=Profile(**profile))
    return LocalProvider("lab", config, workdir=tmp_path)


@pytest.mark.integration
def test_local_platform_applies_the_profile(tmp_path: Path) -> None:
    p = _provider(tmp_path, seed=4, base_ms=200, slowdown={"median": 1.5, "sigma": 0.0},
                  cold_start={"delay_ms": (300, 300), "keep_warm_s": 0.6, "max_warm": 1})
    try:
        a, b = deploy(p, "echo", name="fk-t-a"), deploy(p, "echo", name="fk-t-b")
        t0 = time.monotonic()
        first = p.wait(p.invoke(a, {"client_id": 0, "round": 1, "attempt": 1}), 30)
        assert time.monotonic() - t0 >= 0.3 + 0.3  # the start-up delay, then the simulated handler time
        assert first.state is State.SUCCEEDED and first.cold is True
        assert first.duration_s == pytest.approx(0.3)  # base 200 ms × 1.5, whatever the handler really took
        assert first.injected == "cold=0.300s,slowdown=1.500"
        second = p.wait(p.invoke(a, {"client_id": 0, "round": 2, "attempt": 1}), 30)
        assert second.cold is False and second.injected == "slowdown=1.500"
        p.wait(p.invoke(b, {"client_id": 1, "round": 2, "attempt": 1}), 30)  # max_warm 1: a's instance goes
        assert p.wait(p.invoke(a, {"client_id": 0, "round": 3, "attempt": 1}), 30).cold is True
        time.sleep(0.7)  # past the keep-warm window
        assert p.wait(p.invoke(a, {"client_id": 0, "round": 4, "attempt": 1}), 30).cold is True
        server = p.wait(p.invoke(a, {"round": 4}), 30)  # no client: no slow-down, measured duration
        assert server.cold is False and server.duration_s < 0.3 and server.injected is None
    finally:
        p.close()


@pytest.mark.integration
def test_a_simulated_handler_time_past_the_timeout_times_out(tmp_path: Path) -> None:
    p = _provider(tmp_path, seed=1, base_ms=5000)
    try:
        name = deploy(p, "echo", timeout_s=0.5)
        t0 = time.monotonic()
        status = p.wait(p.invoke(name, {"client_id": 3, "round": 1, "attempt": 1}), 30)
        assert status.state is State.TIMED_OUT and "500 milliseconds" in (status.error or "")
        assert 0.5 <= time.monotonic() - t0 < 4.0
        assert status.duration_s == pytest.approx(0.5)
        again = p.wait(p.invoke(name, {"client_id": 3, "round": 2, "attempt": 1}), 30)  # its worker is reused
        assert again.state is State.TIMED_OUT
    finally:
        p.close()


def test_profiles_are_described_for_the_run_log() -> None:
    clusters = {"a": LocalCluster(profile=Profile(seed=3, cold_start={"delay_ms": (1000, 2000)}), keep_warm_s=30),
                "b": LocalCluster()}
    described = profiles(clusters)
    assert list(described) == ["a"]
    assert described["a"]["seed"] == 3 and described["a"]["effective_keep_warm_s"] == 30.0
    assert described["a"]["cold_start"]["delay_ms"] == [1000.0, 2000.0]


def test_prestart_starts_workers_ahead_only_under_a_cold_start_model(tmp_path: Path) -> None:
    """With simulated cold starts a process start is the emulator's cost: `prestart` pays it before the first
    call, which then runs on a prestarted worker and is still cold by the model's word. Without a model a process
    start is the platform's cold start, and nothing is started ahead."""
    p = LocalProvider("lab", LocalCluster(concurrency=2, profile=Profile(seed=4, cold_start={"delay_ms": (100, 100)})),
                      workdir=tmp_path / "model")
    try:
        a, b = deploy(p, "echo", name="fk-t-a"), deploy(p, "echo", name="fk-t-b")
        assert p.prestart([a, b, "fk-t-missing"]) == 2  # the copies share their workers: two in all, both ready
        ready = sorted(p.worker_pids())
        first = p.wait(p.invoke(b, {"client_id": 1, "round": 1, "attempt": 1}), 30)
        assert first.state is State.SUCCEEDED and first.cold is True  # the simulated instance was cold
        assert sorted(p.worker_pids()) == ready  # ... but no process was started for it
        assert p.prestart([a]) == 2  # idempotent: the cluster is at its concurrency
    finally:
        p.close()
    plain = LocalProvider("plain", LocalCluster(concurrency=2), workdir=tmp_path / "plain")
    try:
        name = deploy(plain, "echo", name="fk-t-c")
        assert plain.prestart([name]) == 0 and plain.worker_pids() == []
    finally:
        plain.close()

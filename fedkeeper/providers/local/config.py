"""Config of one `local` cluster: worker processes on this machine (the embedded default platform)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from fedkeeper.config.base import MAX_WAIT_S, Model
from fedkeeper.providers.local.depth import local_depth


class Faults(Model):
    """Deterministic fault injection on the local platform (per cluster)."""

    failure_rate: float = Field(0.0, ge=0, le=1)
    timeout_rate: float = Field(0.0, ge=0, le=1)
    crash_rate: float = Field(0.0, ge=0, le=1)
    latency_ms: tuple[float, float] = (0.0, 0.0)
    seed: int = 0
    #: experiments with robust aggregation: every fl_client on this cluster stores previous + scale × its delta
    #: (-1 flips the update's sign, 10 inflates it); passed in the payload as `local_fault_poison_scale`
    poison_scale: float | None = Field(None, description="fl_client stores previous + poison_scale × delta")

    @model_validator(mode="after")
    def _check(self) -> "Faults":
        if self.failure_rate + self.timeout_rate + self.crash_rate > 1:
            raise ValueError("failure_rate + timeout_rate + crash_rate must be <= 1")
        lo, hi = self.latency_ms
        if lo < 0 or hi < lo or hi > MAX_WAIT_S * 1000:
            raise ValueError(f"latency_ms must be [lo, hi] with 0 <= lo <= hi <= {MAX_WAIT_S * 1000:.0f}")
        return self

    @property
    def active(self) -> bool:
        return bool(self.failure_rate or self.timeout_rate or self.crash_rate or self.latency_ms[1])


class Slowdown(Model):
    """Per-activation handler slow-down: a lognormal multiplier, median × exp(sigma × N(0, 1))."""

    median: float = Field(1.0, gt=0, le=1000, description="median multiplier of the handler's time")
    sigma: float = Field(0.0, ge=0, le=3, description="sigma of the multiplier's logarithm")


class SpeedTier(Model):
    """A share of the clients whose handler runs `slowdown` times slower (a slower device class)."""

    share: float = Field(ge=0, le=1)
    slowdown: float = Field(gt=0, le=1000)


class Stragglers(Model):
    """A share of stragglers: clients (or single activations, `per: activation`) slowed down `slowdown` times."""

    share: float = Field(0.0, ge=0, le=1)
    slowdown: float = Field(10.0, ge=1, le=1000)
    per: Literal["client", "activation"] = "client"


class ColdStartModel(Model):
    """Simulated function instances: a call on no warm instance of its function is cold and waits a start-up
    delay drawn from `delay_ms`; an instance idle for `keep_warm_s` goes cold; at most `max_warm` idle
    instances are kept warm per cluster (the least recently used goes first)."""

    delay_ms: tuple[float, float] = (0.0, 0.0)
    keep_warm_s: float | None = Field(None, ge=0, le=MAX_WAIT_S, description="default: the cluster's keep_warm_s")
    max_warm: int | None = Field(None, ge=0, description="idle warm instances kept per cluster (null: no limit)")

    @model_validator(mode="after")
    def _check(self) -> "ColdStartModel":
        lo, hi = self.delay_ms
        if lo < 0 or hi < lo or hi > MAX_WAIT_S * 1000:
            raise ValueError(f"delay_ms must be [lo, hi] with 0 <= lo <= hi <= {MAX_WAIT_S * 1000:.0f}")
        return self


class Profile(Model):
    """A seeded timing profile that makes the local platform stand in for a real fabric (docs/platforms.md):
    every draw comes from (seed, client, round, attempt), so the simulated timing repeats whatever the order."""

    seed: int = Field(0, ge=0)
    base_ms: float | None = Field(None, gt=0, le=MAX_WAIT_S * 1000,
                                  description="nominal handler time of a client call (null: the measured one)")
    slowdown: Slowdown = Field(default_factory=Slowdown)
    tiers: list[SpeedTier] = Field(default_factory=list)
    stragglers: Stragglers = Field(default_factory=Stragglers)
    cold_start: ColdStartModel | None = None

    @model_validator(mode="after")
    def _shares(self) -> "Profile":
        if self.tiers and abs(sum(t.share for t in self.tiers) - 1.0) > 1e-6:
            raise ValueError("the shares of profile.tiers must add up to 1")
        return self


class LocalCluster(Model):
    """Worker processes on this machine: the embedded default platform."""

    kind: ClassVar[str] = "local"
    concurrency: int = Field(2, ge=1, le=256, description="maximum worker processes on this cluster")
    keep_warm_s: float = Field(60.0, ge=0, le=MAX_WAIT_S)
    cold_start_ms: float = Field(0.0, ge=0, le=MAX_WAIT_S * 1000)
    faults: Faults = Field(default_factory=Faults)
    profile: Profile | None = Field(None, description="seeded latency profile and cold-start model")
    python: str | None = Field(None, description="interpreter for workers (default: the one running fedkeeper)")

    @property
    def is_loopback(self) -> bool:
        return True

    @property
    def endpoint(self) -> str:
        return "this machine"

    @property
    def max_inflight(self) -> int:
        """Calls in flight from the orchestrator: as many per worker as a worker of short calls holds (its queue
        depth, `depth.local_depth`), at least two (one running, one queued)."""
        return max(2, local_depth()) * self.concurrency

    def default_limits(self) -> tuple[int | None, float | None, int | None]:
        """(memory MB, timeout s, per-instance concurrency) a cluster sets for its functions: none here
        (`concurrency` counts workers, and each worker serves one call at a time)."""
        return None, None, None

"""Config of one `local` cluster: worker processes on this machine (the embedded default platform)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from fedkeeper.config.base import MAX_WAIT_S, Model


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


class LocalCluster(Model):
    """Worker processes on this machine: the embedded default platform."""

    kind: ClassVar[str] = "local"
    concurrency: int = Field(2, ge=1, le=256, description="maximum worker processes on this cluster")
    keep_warm_s: float = Field(60.0, ge=0, le=MAX_WAIT_S)
    cold_start_ms: float = Field(0.0, ge=0, le=MAX_WAIT_S * 1000)
    faults: Faults = Field(default_factory=Faults)
    python: str | None = Field(None, description="interpreter for workers (default: the one running fedkeeper)")

    @property
    def is_loopback(self) -> bool:
        return True

    @property
    def endpoint(self) -> str:
        return "this machine"

    @property
    def max_inflight(self) -> int:
        """Calls in flight from the orchestrator: one running and one queued per worker."""
        return 2 * self.concurrency

    def default_limits(self) -> tuple[int | None, float | None, int | None]:
        """(memory MB, timeout s, per-instance concurrency) a cluster sets for its functions: none here
        (`concurrency` counts workers, and each worker serves one call at a time)."""
        return None, None, None

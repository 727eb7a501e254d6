"""Deterministic fault injection for the local platform (config `providers.local.<cluster>.faults`).

Resilience experiments need failures that repeat: the same seed and the same sequence of invocations give the
same faults on the same activations, whatever the timing. So the decision is drawn when an activation is
submitted, in submission order, from one generator per cluster, and exactly two numbers are drawn per
activation whatever the configuration (the fault kind, then the latency), so that changing one rate does not
shift every later draw of the other.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Literal

FaultKind = Literal["failure", "timeout", "crash"]


@dataclass(frozen=True)
class FaultDecision:
    kind: FaultKind | None
    latency_s: float

    @property
    def label(self) -> str | None:
        """What `Status.injected` records: the fault, else "latency" when only latency was added."""
        if self.kind is not None:
            return self.kind
        return "latency" if self.latency_s > 0 else None


NO_FAULT = FaultDecision(None, 0.0)


class FaultPlan:
    """Draws one `FaultDecision` per activation. Not thread-safe: the caller serialises `draw()`."""

    def __init__(self, faults: Any | None) -> None:
        self.failure_rate = float(getattr(faults, "failure_rate", 0.0) or 0.0)
        self.timeout_rate = float(getattr(faults, "timeout_rate", 0.0) or 0.0)
        self.crash_rate = float(getattr(faults, "crash_rate", 0.0) or 0.0)
        lo, hi = getattr(faults, "latency_ms", (0.0, 0.0)) or (0.0, 0.0)
        self.latency_ms = (float(lo), float(hi))
        if self.failure_rate + self.timeout_rate + self.crash_rate > 1 + 1e-12:
            raise ValueError("failure_rate + timeout_rate + crash_rate must be <= 1")
        self.active = bool(self.failure_rate or self.timeout_rate or self.crash_rate or self.latency_ms[1])
        self._rng = random.Random(int(getattr(faults, "seed", 0) or 0))

    def draw(self) -> FaultDecision:
        if not self.active:
            return NO_FAULT
        u, v = self._rng.random(), self._rng.random()
        kind: FaultKind | None = None
        if u < self.failure_rate:
            kind = "failure"
        elif u < self.failure_rate + self.timeout_rate:
            kind = "timeout"
        elif u < self.failure_rate + self.timeout_rate + self.crash_rate:
            kind = "crash"
        lo, hi = self.latency_ms
        latency = (lo + (hi - lo) * v) / 1000.0 if hi > 0 else 0.0
        return FaultDecision(kind, latency)

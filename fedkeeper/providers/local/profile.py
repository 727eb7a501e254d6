"""The local platform's seeded timing profile (config `providers.local.<cluster>.profile`).

Scheduling research needs a fabric whose timing repeats: slow devices, stragglers, cold starts. Every number
here is drawn from a generator seeded by (profile seed, client, round, attempt) — never from a shared stream —
so a call gets the same slow-down and the same start-up delay whatever the order in which calls arrive, and a
resumed run draws what the interrupted one would have drawn.

- Per client, once: a speed tier (`tiers`, by share) and whether it is a straggler (`stragglers.share`).
- Per activation: a lognormal slow-down `median × exp(sigma × N(0,1))` (and the straggler draw when
  `stragglers.per: activation`) and a cold-start delay uniform in `cold_start.delay_ms`.
- The handler's simulated time is `base_ms` (or the measured handler time when `base_ms` is null) times the
  product of the three multipliers. Only client calls (payloads with a `client_id`) are slowed down; cold
  starts apply to every function.
- `InstanceModel` simulates the function instances of a cluster: which call is cold does not depend on how many
  worker processes this machine can afford, only on the keep-warm window and the warm-instance limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: streams of the seed sequence, so that the per-client traits, the slow-down and the cold start are independent
_TRAITS, _SLOWDOWN, _COLD = 0x7A17, 0x510E, 0xC01D


def _rng(*words: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(w) for w in words]))


def _client_word(client: int | None) -> int:
    """0 for calls without a client (the aggregator), client id + 1 otherwise (seed words are non-negative)."""
    return 0 if client is None else int(client) + 1


@dataclass(frozen=True)
class ClientTraits:
    tier: int | None  # index into `tiers`, None without tiers
    tier_slowdown: float
    straggler: bool


@dataclass(frozen=True)
class Draw:
    """What the profile decided for one activation."""

    client: int | None
    multiplier: float  # tier × straggler × lognormal noise; 1.0 for calls without a client
    cold_delay_s: float  # waited only if the call turns out cold
    tier: int | None = None
    straggler: bool = False
    base_s: float | None = None  # the nominal handler time (None: the measured one)

    @property
    def slowed(self) -> bool:
        return self.client is not None and (self.multiplier != 1.0 or self.base_s is not None)

    def simulated_s(self, measured_s: float) -> float:
        """The handler time this activation reports: deterministic when `base_ms` is set."""
        base = self.base_s if self.base_s is not None else max(0.0, float(measured_s))
        return base * self.multiplier if self.client is not None else float(measured_s)


NO_DRAW = Draw(None, 1.0, 0.0)


class ProfilePlan:
    """Draws per client and per activation from a `Profile` config (None: the plan is inert)."""

    def __init__(self, profile: Any | None, keep_warm_s: float) -> None:
        self.profile = profile
        self.active = profile is not None
        self.seed = int(getattr(profile, "seed", 0) or 0)
        self._traits: dict[int | None, ClientTraits] = {}
        cold = getattr(profile, "cold_start", None)
        self.models_cold = cold is not None
        self.keep_warm_s = float(cold.keep_warm_s) if cold is not None and cold.keep_warm_s is not None \
            else float(keep_warm_s)
        self.max_warm = cold.max_warm if cold is not None else None

    def traits(self, client: int | None) -> ClientTraits:
        if client is None or not self.active:
            return ClientTraits(None, 1.0, False)
        found = self._traits.get(client)
        if found is None:
            p = self.profile
            u_tier, u_straggler = _rng(self.seed, _TRAITS, _client_word(client)).random(2)
            tier, tier_slowdown = None, 1.0
            if p.tiers:
                edge = 0.0
                for i, t in enumerate(p.tiers):
                    edge += t.share
                    if u_tier < edge or i == len(p.tiers) - 1:
                        tier, tier_slowdown = i, float(t.slowdown)
                        break
            straggler = p.stragglers.per == "client" and u_straggler < p.stragglers.share
            found = ClientTraits(tier, tier_slowdown, straggler)
            self._traits[client] = found
        return found

    def draw(self, client: int | None, round_number: int, attempt: int) -> Draw:
        if not self.active:
            return NO_DRAW
        p = self.profile
        cold_delay = 0.0
        if p.cold_start is not None:
            lo, hi = p.cold_start.delay_ms
            u = _rng(self.seed, _COLD, _client_word(client), round_number, attempt).random()
            cold_delay = (lo + (hi - lo) * u) / 1000.0
        if client is None:
            return Draw(None, 1.0, cold_delay)
        traits = self.traits(client)
        rng = _rng(self.seed, _SLOWDOWN, _client_word(client), round_number, attempt)
        z, u_straggler = rng.standard_normal(), rng.random()
        noise = float(p.slowdown.median * math.exp(p.slowdown.sigma * z))
        straggler = traits.straggler or (p.stragglers.per == "activation" and u_straggler < p.stragglers.share)
        multiplier = noise * traits.tier_slowdown * (float(p.stragglers.slowdown) if straggler else 1.0)
        base = float(p.base_ms) / 1000.0 if p.base_ms is not None else None
        return Draw(client, multiplier, cold_delay, traits.tier, straggler, base)

    def describe(self) -> dict[str, Any] | None:
        """The profile as recorded in Logs/ (the `platform_profile` event)."""
        if not self.active:
            return None
        return {**self.profile.model_dump(mode="json"), "effective_keep_warm_s": self.keep_warm_s}


def label(draw: Draw, *, cold_delay_s: float = 0.0, overrun_s: float = 0.0) -> list[str]:
    """The profile's part of `Status.injected`: what was added to this activation, comma-separated."""
    parts: list[str] = []
    if cold_delay_s > 0:
        parts.append(f"cold={cold_delay_s:.3f}s")
    if draw.client is not None and draw.multiplier != 1.0:
        parts.append(f"slowdown={draw.multiplier:.3f}")
    if draw.tier is not None:
        parts.append(f"tier={draw.tier}")
    if draw.straggler:
        parts.append("straggler")
    if overrun_s > 0:
        parts.append(f"overrun={overrun_s:.3f}s")
    return parts


@dataclass
class InstanceModel:
    """Simulated warm instances of one cluster: per function, the times its idle instances went idle.

    A call takes the most recently used idle instance of its function (warm) or starts a new one (cold); an
    instance idle for `keep_warm_s` is gone; when more than `max_warm` instances are idle, the least recently
    used go. Busy instances are not counted against `max_warm` (a platform does not stop a running call)."""

    keep_warm_s: float
    max_warm: int | None = None
    _idle: dict[str, list[float]] = field(default_factory=dict)

    def _expire(self, now: float) -> None:
        for name in list(self._idle):
            kept = [t for t in self._idle[name] if now - t < self.keep_warm_s]
            if kept:
                self._idle[name] = kept
            else:
                del self._idle[name]

    def acquire(self, name: str, now: float) -> bool:
        """True (warm) when an idle instance of `name` takes the call; False: a cold start."""
        self._expire(now)
        idle = self._idle.get(name)
        if not idle:
            return False
        idle.pop()  # the most recently used; stamps are appended in time order
        if not idle:
            del self._idle[name]
        return True

    def release(self, name: str, now: float) -> None:
        """The call is over: its instance is idle (warm) from `now`."""
        self._expire(now)
        if self.max_warm == 0:
            return
        self._idle.setdefault(name, []).append(now)
        if self.max_warm is not None:
            while self.warm_count() > self.max_warm:
                oldest = min(self._idle, key=lambda n: self._idle[n][0])
                self._idle[oldest].pop(0)
                if not self._idle[oldest]:
                    del self._idle[oldest]

    def warm_count(self, now: float | None = None) -> int:
        if now is not None:
            self._expire(now)
        return sum(len(v) for v in self._idle.values())

    def is_warm(self, name: str, now: float) -> bool:
        self._expire(now)
        return bool(self._idle.get(name))


def profiles(clusters: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{cluster: recorded profile} of the local clusters that have one (the run's `platform_profile` events)."""
    out: dict[str, dict[str, Any]] = {}
    for name, cluster in clusters.items():
        if getattr(cluster, "kind", None) == "local" and getattr(cluster, "profile", None) is not None:
            described = ProfilePlan(cluster.profile, float(cluster.keep_warm_s)).describe()
            if described is not None:
                out[name] = described
    return out

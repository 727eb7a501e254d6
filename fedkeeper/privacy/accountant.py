"""ε after T rounds for the configured δ, for the sampling the round loop really does (dp-accounting's RDP).

- central, fixed-size selection: every round the orchestrator draws `sample_size` distinct clients of
  `population`, uniformly (`tracker.rank_clients`): `SampledWithoutReplacementDpEvent`, which dp-accounting
  analyses under the *replace-one* relation (neighbouring federations differ in the data of one client; the
  population size is public). Replacing one client's data moves the sum of clipped deltas by up to 2C, so the
  Gaussian inside the event has noise multiplier z/2 (noise std z·C over sensitivity 2C). That bound is loose
  for large sampling fractions (at 1/2 it is above the unsampled mechanism's), so ε is the smaller of it and the
  unsampled Gaussian's (`GaussianDpEvent(z/2)`, replace-one): both are dp-accounting's answers, both valid.
- central, Poisson selection: each client joins a round independently with probability q
  (`fedkeeper.privacy.sampling`): `PoissonSampledDpEvent(q, Gaussian(z))` under the *add-or-remove-one*
  relation (one client's data present or absent; sensitivity C).
- local: each client adds its own noise to its own clipped delta; the server sees who took part, so sampling
  amplifies nothing. A client's guarantee is that of `rounds` Gaussian releases composed (the worst case: it
  took part in every round), replace-one (its data replaced by anything else: sensitivity 2C, multiplier z/2).

The adaptive-clipping count noise is part of z (runtime/privacy.py splits z between the delta and the count), so
the accountant sees z whatever the clipping. Every number comes from dp-accounting; nothing is approximated here.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache

import dp_accounting
from dp_accounting import rdp

from fedkeeper.runtime.privacy import MODES, DPMode

FIXED, POISSON = "fixed", "poisson"
SAMPLINGS = (FIXED, POISSON)


@dataclass(frozen=True)
class Accountant:
    """The privacy cost of a run: `epsilon(rounds)` for `delta` (cached: a resumed or long run asks often)."""

    mode: str  # central | local
    noise_multiplier: float  # z: noise std over the clip norm
    delta: float
    sampling: str = FIXED  # fixed | poisson (central only)
    population: int = 1  # total_num_clients
    sample_size: int = 1  # fixed: clients drawn per round
    sampling_probability: float = 1.0  # poisson: q

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be central or local, got {self.mode!r}")
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {', '.join(SAMPLINGS)}, got {self.sampling!r}")
        if not (self.noise_multiplier >= 0 and math.isfinite(self.noise_multiplier)):
            raise ValueError(f"noise_multiplier must be a finite number >= 0, got {self.noise_multiplier!r}")
        if not 0 < self.delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {self.delta!r}")
        if self.mode == "central" and self.sampling == FIXED and not 1 <= self.sample_size <= self.population:
            raise ValueError(f"sample_size {self.sample_size} is not in 1..{self.population}")
        if self.mode == "central" and self.sampling == POISSON and not 0 < self.sampling_probability <= 1:
            raise ValueError(f"sampling probability must be in (0, 1], got {self.sampling_probability!r}")

    @property
    def relation(self) -> dp_accounting.NeighboringRelation:
        """The adjacency dp-accounting analyses the event under (see the module's docstring)."""
        if self.mode == "central" and self.sampling == POISSON:
            return dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
        return dp_accounting.NeighboringRelation.REPLACE_ONE

    def event(self) -> dp_accounting.DpEvent:
        """One round's DP event (noise_multiplier > 0)."""
        if self.mode == DPMode.LOCAL:
            return dp_accounting.GaussianDpEvent(self.noise_multiplier / 2)
        if self.sampling == POISSON:
            return dp_accounting.PoissonSampledDpEvent(self.sampling_probability,
                                                      dp_accounting.GaussianDpEvent(self.noise_multiplier))
        return dp_accounting.SampledWithoutReplacementDpEvent(
            self.population, self.sample_size, dp_accounting.GaussianDpEvent(self.noise_multiplier / 2))

    def epsilon(self, rounds: int) -> float:
        """ε after `rounds` rounds for `delta`: 0 after none, inf without noise."""
        if rounds < 0:
            raise ValueError(f"rounds must be >= 0, got {rounds}")
        if rounds == 0:
            return 0.0
        if self.noise_multiplier == 0:
            return math.inf
        eps = _epsilon(self.event(), self.relation, rounds, float(self.delta))
        if self.mode == "central" and self.sampling == FIXED:
            # sampling never costs privacy, but the without-replacement bound is loose for large q (at q = 1/2 it is
            # above the unsampled Gaussian's): both are valid upper bounds, so report the smaller
            eps = min(eps, _epsilon(dp_accounting.GaussianDpEvent(self.noise_multiplier / 2), self.relation,
                                    rounds, float(self.delta)))
        return eps

    def describe(self) -> str:
        """One line for docs, logs and the summary: what is assumed."""
        if self.mode == DPMode.LOCAL:
            return (f"local DP: {self.noise_multiplier:g}/2 Gaussian per round composed over the rounds, "
                    "replace-one, no sampling amplification")
        if self.sampling == POISSON:
            return (f"Poisson sampling q={self.sampling_probability:g} of {self.population}, "
                    f"Gaussian z={self.noise_multiplier:g}, add-or-remove-one")
        return (f"{self.sample_size} of {self.population} without replacement, Gaussian z={self.noise_multiplier:g} "
                "(z/2 per replace-one sensitivity 2C), replace-one")


@lru_cache(maxsize=4096)
def _epsilon(event: dp_accounting.DpEvent, relation: dp_accounting.NeighboringRelation, rounds: int,
             delta: float) -> float:
    one = _one_round(event, relation)
    orders, per_round = getattr(one, "_orders", None), getattr(one, "_rdp", None)
    if orders is None or per_round is None:  # another dp-accounting layout: compose T rounds (slower, same answer)
        accountant = rdp.RdpAccountant(neighboring_relation=relation)
        with _quiet():
            accountant.compose(event, rounds)
        return float(accountant.get_epsilon(delta))
    # what RdpAccountant.compose(event, rounds) computes (RDP composes linearly: rounds × one round's RDP), without
    # recomputing one round's RDP for every T: the round loop asks after every round
    return float(rdp.rdp_privacy_accountant.compute_epsilon(orders, rounds * per_round, delta)[0])


@lru_cache(maxsize=64)
def _one_round(event: dp_accounting.DpEvent, relation: dp_accounting.NeighboringRelation) -> rdp.RdpAccountant:
    accountant = rdp.RdpAccountant(neighboring_relation=relation)
    with _quiet():
        accountant.compose(event, 1)
    return accountant


@contextmanager
def _quiet() -> Iterator[None]:
    """dp-accounting warns through absl (on stderr) for RDP orders it drops; the answer stands without them."""
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        yield
    finally:
        absl.setLevel(level)

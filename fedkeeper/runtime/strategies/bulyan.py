"""Bulyan: Krum applied recursively to pick θ updates, then a coordinate-wise trimmed mean around the median.

Paper: El Mhamdi, Guerraoui, Rouault, "The Hidden Vulnerability of Distributed Learning in Byzantium", ICML 2018.

Contract, with n updates of which at most f (num_malicious) are Byzantine, n ≥ 4f + 3:
    1. S = ∅, R = all updates; while |S| < θ = n − 2f: move Krum(R) (see krum.py, with f) from R to S;
    2. per coordinate j, with β = θ − 2f: w_{t+1}[j] = mean of the β values of {wᵢ[j] : i ∈ S} closest to their
       median.
Float64; distance and score ties go to the lower client id. Krum in step 1 sums the max(1, |R| − f − 2) smallest
distances (as Flower: |R| falls to 2f + 1). Holds every update plus the n × n distance matrix.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .base import ClientUpdate, Spec, Weights
from .krum import by_score, krum_scores, num_malicious
from .orderstats import OrderStatistic, coordinatewise, require, squared_distances


class Bulyan(OrderStatistic):
    name = "bulyan"
    PARAMETERS = {"num_malicious": num_malicious()}

    def selection(self, updates: Sequence[ClientUpdate], spec: Spec) -> list[int]:
        """Step 1: the indices Krum picks one after the other, in the order picked."""
        n, f = len(updates), self.params["num_malicious"]
        require(self.name, n >= 4 * f + 3, f"needs at least 4f + 3 = {4 * f + 3} updates for f = {f}, got {n}")
        dist = squared_distances(updates, spec)
        remaining, chosen = list(range(n)), []
        while len(chosen) < n - 2 * f:
            pick = remaining[int(by_score(krum_scores(dist, remaining, f))[0])]
            chosen.append(pick)
            remaining.remove(pick)
        return chosen

    def combine(self, updates: Sequence[ClientUpdate], spec: Spec) -> Weights:
        rows = sorted(self.selection(updates, spec))
        keep = len(rows) - 2 * self.params["num_malicious"]

        def rule(slab: np.ndarray) -> np.ndarray:
            ordered = np.sort(slab, axis=0)
            median = np.median(ordered, axis=0)
            nearest = np.argsort(np.abs(ordered - median), axis=0, kind="stable")[:keep]
            return np.take_along_axis(ordered, nearest, axis=0).sum(axis=0) / keep

        return coordinatewise(self.name, updates, spec, rule, rows=rows)

    def extra_bytes(self, num_updates: int) -> int:
        return 2 * 8 * num_updates * num_updates

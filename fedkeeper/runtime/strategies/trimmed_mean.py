"""Trimmed mean (FedTrimmedAvg): the coordinate-wise mean after dropping the β share of largest and smallest values.

Paper: Yin, Chen, Ramchandran, Bartlett, "Byzantine-Robust Distributed Learning: Towards Optimal Statistical
Rates", ICML 2018 (coordinate-wise trimmed mean, Option II).

Contract: with b = ⌊β·n⌋ and, per coordinate j, the values sorted w₍₁₎[j] ≤ … ≤ w₍ₙ₎[j]:
    w_{t+1}[j] = (1 / (n − 2b)) · Σ_{i=b+1}^{n−b} w₍ᵢ₎[j]
unweighted, float64, cast to the model's dtypes; β ∈ [0, ½), so at least one value is kept (β = 0 is the plain
mean). Robust to up to b arbitrary updates. Holds every update (memory: ``memory_bytes``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

import numpy as np

from .base import ClientUpdate, Param, Spec, Weights
from .orderstats import OrderStatistic, coordinatewise


class TrimmedMean(OrderStatistic):
    name = "trimmed_mean"
    PARAMETERS = {
        "beta": Param(0.2, "share β of the values cut at each end, per coordinate (Flower's default 0.2)",
                      low=0.0, high=0.5, high_open=True),
    }

    def combine(self, updates: Sequence[ClientUpdate], spec: Spec) -> Weights:
        n = len(updates)
        # β as written (its shortest decimal repr), so that 0.29 · 100 cuts 29, not the 28 float rounding would give
        cut = math.floor(Fraction(repr(self.params["beta"])) * n)

        def rule(slab: np.ndarray) -> np.ndarray:
            kept = np.sort(slab, axis=0)[cut : n - cut]
            return kept.sum(axis=0) / (n - 2 * cut)

        return coordinatewise(self.name, updates, spec, rule)

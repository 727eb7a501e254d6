"""FedMedian: the coordinate-wise median of the clients' models.

Paper: Yin, Chen, Ramchandran, Bartlett, "Byzantine-Robust Distributed Learning: Towards Optimal Statistical
Rates", ICML 2018 (coordinate-wise median, Option I).

Contract: w_{t+1}[j] = med{ wₖ[j] : k = 1..n } for every coordinate j (for even n the mean of the two middle
values), unweighted, in float64, cast to the model's dtypes. Robust to fewer than n/2 arbitrary updates. Holds
every update (memory: ``memory_bytes``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .base import ClientUpdate, Spec, Weights
from .orderstats import OrderStatistic, coordinatewise


class FedMedian(OrderStatistic):
    name = "fedmedian"

    def combine(self, updates: Sequence[ClientUpdate], spec: Spec) -> Weights:
        return coordinatewise(self.name, updates, spec, lambda slab: np.median(slab, axis=0))

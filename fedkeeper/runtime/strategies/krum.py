"""Krum and Multi-Krum: keep the update(s) closest to their neighbours.

Paper: Blanchard, El Mhamdi, Guerraoui, Stainer, "Machine Learning with Adversaries: Byzantine Tolerant Gradient
Descent", NeurIPS 2017 (Krum, and Multi-Krum in its experiments).

Contract, with n updates of which at most f (num_malicious) are Byzantine, n ≥ 2f + 3:
    s(i) = Σ_{j ∈ N(i)} ‖wᵢ − wⱼ‖²,   N(i) = the n − f − 2 updates closest to wᵢ (j ≠ i)
    Krum:        w_{t+1} = w_{i*},  i* = argmin_i s(i)
    Multi-Krum:  w_{t+1} = (1/m) · Σ_{i ∈ S} wᵢ,  S = the m updates of lowest score (m = num_selected, default n − f)
Distances and the mean in float64; ties go to the lower client id. Unweighted, as in the paper (Flower weights the
Multi-Krum mean by examples). Holds every update plus the n × n distance matrix (memory: ``memory_bytes``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .base import ClientUpdate, Param, Spec, Weights, finite_result
from .orderstats import OrderStatistic, coordinatewise, require, squared_distances


def num_malicious(default: int = 0) -> Param:
    return Param(default, "f: the number of Byzantine clients tolerated (Flower's default 0)", kind=int, low=0)


def krum_scores(dist: np.ndarray, candidates: Sequence[int], f: int) -> np.ndarray:
    """s(i) over ``candidates`` (indices into ``dist``): the sum of the n − f − 2 smallest distances to the other
    candidates, at least one (as Flower, so that a shrinking candidate set in Bulyan always has a score)."""
    cand = np.asarray(candidates)
    closest = max(1, len(cand) - f - 2)
    scores = np.empty(len(cand), np.float64)
    for pos, i in enumerate(cand):
        others = np.sort(dist[i, cand[cand != i]])
        scores[pos] = others[:closest].sum()
    return scores


def by_score(scores: np.ndarray) -> np.ndarray:
    """Positions by ascending score; a stable sort, so ties keep the lower client id first."""
    return np.argsort(scores, kind="stable")


class Krum(OrderStatistic):
    name = "krum"
    PARAMETERS = {"num_malicious": num_malicious()}

    def check_count(self, n: int) -> None:
        f = self.params["num_malicious"]
        require(self.name, n >= 2 * f + 3, f"needs at least 2f + 3 = {2 * f + 3} updates for f = {f}, got {n}")

    def chosen(self, updates: Sequence[ClientUpdate], spec: Spec) -> list[int]:
        """Indices of the selected updates, best score first."""
        self.check_count(len(updates))
        scores = krum_scores(squared_distances(updates, spec), range(len(updates)), self.params["num_malicious"])
        return [int(i) for i in by_score(scores)[: self.selected(len(updates))]]

    def selected(self, n: int) -> int:
        return 1

    def combine(self, updates: Sequence[ClientUpdate], spec: Spec) -> Weights:
        return finite_result(self.name, updates[self.chosen(updates, spec)[0]].weights, spec)

    def extra_bytes(self, num_updates: int) -> int:
        return 2 * 8 * num_updates * num_updates  # the distance matrix and its transpose sum


class MultiKrum(Krum):
    name = "multikrum"
    PARAMETERS = {
        "num_malicious": num_malicious(),
        "num_selected": Param(None, "m: how many updates of lowest score are averaged (null: n − f)", kind=int,
                              low=1, nullable=True),
    }

    def selected(self, n: int) -> int:
        m = self.params["num_selected"]
        m = n - self.params["num_malicious"] if m is None else m
        require(self.name, m <= n, f"num_selected m = {m} is more than the {n} updates of the round")
        return m

    def combine(self, updates: Sequence[ClientUpdate], spec: Spec) -> Weights:
        rows = sorted(self.chosen(updates, spec))  # the mean sums in ascending client order
        return coordinatewise(self.name, updates, spec, lambda slab: slab.sum(axis=0) / len(rows), rows=rows)

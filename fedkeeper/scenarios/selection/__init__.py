"""Client selection policies (config `scenarios.federated_learning.selection`): `random`, `history`,
`warm_first`, `scored`, and a registry for more (`registry.register`). `RoundSelector` ranks one round's clients
for the experiment, from the run's activation records in the store."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fedkeeper.providers import registry as platforms
from fedkeeper.scenarios.selection.base import History, Policy, SelectionContext
from fedkeeper.scenarios.selection.registry import make, names, register

__all__ = ["History", "Policy", "RoundSelector", "SelectionContext", "keep_warm_windows", "make", "names",
           "register"]


def keep_warm_windows(clusters: Mapping[str, Any]) -> dict[str, float | None]:
    """The keep-warm window each cluster is known to have (its platform's spec reads it from the cluster's
    config); None where the platform decides."""
    return {name: platforms.get(cluster.kind).keep_warm_window_s(cluster) for name, cluster in clusters.items()}


class RoundSelector:
    """Ranks the clients of a round with the configured policy; its only state is the store's records."""

    def __init__(self, policy: Policy, records: Callable[[], list[dict[str, Any]]], seed: int, *,
                 function_of: Callable[[int], tuple[str, str]] | None = None,
                 keep_warm_s: Mapping[str, float | None] | None = None) -> None:
        self.policy = policy
        self.records = records
        self.seed = seed
        self.function_of = function_of
        self.keep_warm_s = dict(keep_warm_s or {})

    @classmethod
    def for_experiment(cls, config: Any, fabric: Any, store: Any, run_id: str) -> "RoundSelector":
        spec = config.fl.selection
        return cls(make(spec.policy, spec.params), lambda: list(store.find_activations(run_id)), config.fl.seed,
                   function_of=fabric.client_function, keep_warm_s=keep_warm_windows(config.clusters()))

    def context(self, round_number: int, total: int, count: int) -> SelectionContext:
        records = self.records() if self.policy.needs_history else []
        return SelectionContext(round_number, self.seed, total, count, History.from_records(records, round_number),
                                self.function_of, self.keep_warm_s)

    def rank(self, round_number: int, total: int, count: int) -> list[int]:
        return self.policy.rank(self.context(round_number, total, count))

"""Shared by the tree aggregation tests: a round of synthetic client updates in the store, and the payloads of a
flat aggregation and of a tree's nodes over them (what fedkeeper/scenarios/tree_aggregation.py sends)."""

from __future__ import annotations

from typing import Any

import numpy as np

import fl_payloads as P
from fedkeeper.runtime.blobstore import BlobStore

N = 8  # clients of the synthetic round: a tree of fan-in 2 has levels [4, 2] and a final node


def base(run_id: str, *, strategy: dict[str, Any] | None = None, privacy: dict[str, Any] | None = None,
         num_clients: int = N) -> dict[str, Any]:
    """What every aggregator payload of round 1 holds (`aggregator_payload`)."""
    return {"run_id": run_id, "round": 1, "seed": P.SEED, "model": P.MLP, "data": P.DIGITS, "keep_models": 0,
            "num_clients": num_clients, "strategy": strategy or {"name": "fedavg"}, "privacy": privacy}


def seed_round(store: BlobStore, handle: Any, run_id: str, *, n: int = N, db: Any = None) -> list[dict[str, Any]]:
    """Model 0 by the aggregator's `init` (through `handle`, or already there when `handle` is None), then `n`
    updates of round 1: the model plus seeded noise, each client's `num_examples` within its shard. The same
    run id always gets the same updates. Returns the flat payload's `updates` list."""
    if handle is not None:
        handle(dict(P.init(run_id)), db=db)
    previous, _ = store.read_model(run_id, 0)
    rng = np.random.default_rng(3)
    entries = []
    for c in range(n):
        weights = {k: (v + rng.normal(0, 0.05, v.shape)).astype(v.dtype) for k, v in previous.items()}
        store.write_update(run_id, 1, c, weights, base_round=0, num_examples=5 + c, activation_id=f"act{c}",
                           attempt=1)
        entries.append({"client_id": c, "activation_id": f"act{c}", "attempt": 1})
    return entries


def models_equal(store: BlobStore, a: str, b: str, round_number: int = 1) -> tuple[int, float]:
    """(elements that differ, largest difference) between two runs' models of a round."""
    x, _ = store.read_model(a, round_number)
    y, _ = store.read_model(b, round_number)
    assert list(x) == list(y)
    return (sum(int(np.count_nonzero(x[k] != y[k])) for k in x),
            max(float(np.max(np.abs(x[k].astype(np.float64) - y[k]))) for k in x))

"""Which samples each client trains on, for any task: FedKeeper's partitioning over the task's training labels.

The schemes are `runtime.data.partition_indices` (iid, shards, dirichlet, quantity), seeded by the run's seed,
or ``files`` (each client its own file, read by the task's ``load_client``). The same code answers the client
(its shard), the aggregator (every shard's size, to bound ``num_examples``) and the run's round 0 (the per-client
label histogram that `fedkeeper report --partition` shows), so the three always agree.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Mapping

import numpy as np

from fedkeeper.runtime import data as rdata
from fedkeeper.runtime.tasks.base import Split, Task

_INDICES = rdata._LRU(8)


def _spec(data: Mapping[str, Any]) -> rdata.DataSpec:
    return rdata.DataSpec.from_params(data, "params.data")


def _indices(task_key: str, task: Task, data: Mapping[str, Any], spec: rdata.DataSpec, num_clients: int,
             seed: int) -> list[np.ndarray]:
    key = (task_key, json.dumps(dict(data), sort_keys=True, default=str), num_clients, int(seed))
    return _INDICES.get_or(key, lambda: rdata.partition_indices(
        np.asarray(task.train_labels(data)), num_clients, scheme=spec.partition, seed=seed,
        shards_per_client=spec.shards_per_client, alpha=spec.alpha, quantity_sigma=spec.quantity_sigma))


def client_shard(task: Task, task_key: str, data: Mapping[str, Any], num_clients: int, client_id: int,
                 seed: int) -> Split:
    """The training samples of one client (0-based ``client_id`` < ``num_clients``)."""
    return shard_reader(task, task_key, data, num_clients, seed)(client_id)


def shard_reader(task: Task, task_key: str, data: Mapping[str, Any], num_clients: int,
                 seed: int) -> Callable[[int], Split]:
    """``client_shard`` for many clients of one partition: the spec, data set and indices are looked up once (a
    client pack trains many clients, and the lookups cost about a tenth of a small client's training)."""
    spec = _spec(data)

    def check(client_id: int) -> None:
        if isinstance(client_id, bool) or not isinstance(client_id, int) or not 0 <= client_id < num_clients:
            raise rdata.DataError(f"client_id must be an integer in 0..{num_clients - 1}, got {client_id!r}")

    if spec.partition == "files":
        def from_file(client_id: int) -> Split:
            check(client_id)
            return task.load_client(data, client_id)

        return from_file
    train, _test = task.load_dataset(data)
    indices = _indices(task_key, task, data, spec, num_clients, seed)
    labels = np.asarray(train.y)

    def shard(client_id: int) -> Split:
        check(client_id)
        idx = indices[client_id]
        return Split(train.x[idx], labels[idx], name=f"train[client {client_id}]")

    return shard


def client_labels(task: Task, task_key: str, data: Mapping[str, Any], num_clients: int,
                  seed: int) -> list[np.ndarray]:
    """Every client's training labels, in client order (from the labels alone where the task allows it)."""
    spec = _spec(data)
    if spec.partition == "files":
        return [np.asarray(task.load_client(data, c).y) for c in range(num_clients)]
    labels = np.asarray(task.train_labels(data))
    return [labels[idx] for idx in _indices(task_key, task, data, spec, num_clients, seed)]


def shard_sizes(task: Task, task_key: str, data: Mapping[str, Any], num_clients: int, seed: int) -> list[int]:
    return [len(y) for y in client_labels(task, task_key, data, num_clients, seed)]


def summary(task: Task, task_key: str, data: Mapping[str, Any], num_clients: int, seed: int) -> dict[str, Any]:
    """The partition as the run records it: scheme, its parameters, the classes and per client the shard size
    and the count of each class (``histogram`` in ``classes`` order)."""
    spec = _spec(data)
    per_client = client_labels(task, task_key, data, num_clients, seed)
    classes = np.unique(np.concatenate(per_client)) if per_client else np.zeros(0, np.int64)
    params: dict[str, Any] = {}
    if spec.partition == "shards":
        params["shards_per_client"] = spec.shards_per_client
    elif spec.partition == "dirichlet":
        params["alpha"] = spec.alpha
    elif spec.partition == "quantity":
        params["quantity_sigma"] = spec.quantity_sigma
    elif spec.partition == "files":
        params["client_files"] = rdata._display(spec.client_files or "")
    clients = []
    for cid, y in enumerate(per_client):
        counts = np.searchsorted(classes, y)
        hist = np.bincount(counts, minlength=len(classes)) if len(y) else np.zeros(len(classes), np.int64)
        clients.append({"client_id": cid, "size": int(len(y)), "histogram": [int(v) for v in hist]})
    return {"scheme": spec.partition, "params": params, "seed": int(seed), "num_clients": num_clients,
            "classes": [int(c) for c in classes], "clients": clients}

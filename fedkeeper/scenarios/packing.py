"""Client packing (`clients_info.clients_per_invocation: k`, docs/aggregation.md#client-packing): which clients of a
round one `fl_client` invocation trains together.

Why: a client of the small models researchers start with trains in a fraction of a millisecond, while its
invocation, its stored update document, its activation record and its place in the aggregation cost about two
milliseconds of CPU between them (bench/bench_scale.py). A pack of k clients pays those once: the function trains
its clients in ascending order and stores one partial sum of their updates (`runtime.partials`), and the round's
final aggregator invocation combines the packs' partials as it combines a tree's.

A pack holds contiguous ids of one cluster (ids are dealt out to clusters in blocks, `Fabric.client_clusters`), so
the packs of a round, in order, cover its clients in ascending order: the order the partials are combined in.
A cluster's clients are cut into ceil(n / k) packs whose sizes differ by at most one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import Any

from fedkeeper.runtime import partials
from fedkeeper.scenarios.tree_aggregation import split


@dataclass(frozen=True)
class Pack:
    """One invocation's clients (ascending), its index in the round and the key of the partial it stores."""

    index: int
    clients: tuple[int, ...]
    key: str

    @property
    def first(self) -> int:
        return self.clients[0]


def plan_packs(run_id: str, round_number: int, selected: Sequence[int], per_invocation: int,
               cluster_of: Callable[[int], str], privacy: Mapping[str, Any] | None) -> list[Pack]:
    """The packs of a round's `selected` clients. `privacy`: the client payload's (local DP, else None): part of
    each key, as the function computes it."""
    if per_invocation < 1:
        raise ValueError(f"clients_per_invocation must be at least 1, got {per_invocation}")
    ids = sorted(set(int(c) for c in selected))
    out: list[Pack] = []
    for _, group in groupby(ids, key=cluster_of):
        members = list(group)
        for start, stop in split(len(members), math.ceil(len(members) / per_invocation)):
            clients = tuple(members[start:stop])
            index = len(out)
            out.append(Pack(index, clients, partials.pack_key(run_id, round_number, index, privacy, clients)))
    return out

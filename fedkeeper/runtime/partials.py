"""Partial sums of tree (hierarchical) aggregation: what a leaf or inner aggregator invocation computes and stores.

Why: one aggregator function has one memory limit and one timeout, and a flat aggregation reads every update of
the round in one invocation. Under tree aggregation (docs/aggregation.md) leaf invocations each sum up to k
admitted updates into a float64 partial sum with its weight, inner invocations add up to k partials, and the
final one divides, runs the strategy's server step and writes the model. Only sums compose, so only the FedAvg
family (``strategies.MeanThenStep``) and central DP (clipped deltas summed at the leaves, noise added once at the
root) can be split this way; order statistics need every update in one place.

Arithmetic: a leaf adds ``float64(w) * n`` per update in ascending client-id order, element for element the
operations of ``StreamingMean.add`` (so a tree of one leaf is the flat sum bit for bit); combining adds partials in
ascending plan order. Float addition does not associate, so a tree's float64 sum may differ from the flat one in
the last bits; the model cast to float32 then almost always has the same bits (tests compare), and the same plan
always gives the same bits.

A partial's store key holds the digest of what it covers (the issued updates, or its children's keys, and what is
summed: mean or DP with its parameters): a retried or resumed invocation finds its own document (first write wins),
and a plan that changed (other clients, another fan-in) never reuses a stale one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import privacy
from .weights import all_finite
from .strategies.errors import MAX_EXAMPLES, NonFiniteMean, StrategyError

#: what a partial sums: example-weighted models (the FedAvg family) or clipped deltas, each client once (central DP)
MEAN, DP = "mean", "dp"
KINDS = (MEAN, DP)
#: as in ``StreamingMean``: float64 models are summed scaled by 2**-64 so that n·w cannot overflow
_F64_SCALE = 2.0**-64
_CHUNK = 32768

Spec = Mapping[str, tuple[tuple[int, ...], Any]]


def inputs_digest(kind: str, privacy_params: Mapping[str, Any] | None,
                  inputs: Sequence[Mapping[str, Any]] | Sequence[str]) -> str:
    """sha256 of what a partial covers: its kind, the privacy parameters of the payload (the clip norm a round
    uses follows from them and the committed previous model), and its issued updates or its children's keys."""
    if kind not in KINDS:
        raise ValueError(f"partial kind must be one of {', '.join(KINDS)}, got {kind!r}")
    canonical = json.dumps({"kind": kind, "privacy": privacy_params, "inputs": list(inputs)}, sort_keys=True,
                           separators=(",", ":"), default=repr)
    return hashlib.sha256(canonical.encode()).hexdigest()


def partial_key(run_id: str, round: int, level: int, index: int, digest: str) -> str:  # noqa: A002
    """``run:round:partial:level:index:digest`` (the store's ``_id`` of a partial)."""
    return f"{run_id}:{int(round)}:partial:{int(level)}:{int(index)}:{digest}"


#: the level of a client pack's partial (``clients_info.clients_per_invocation``): packs are the leaves of the
#: round's tree (the aggregator's inner nodes over them are level 2 and up); their digest tells them apart
PACK_LEVEL = 1


def pack_key(run_id: str, round: int, index: int, privacy_params: Mapping[str, Any] | None,  # noqa: A002
             clients: Sequence[int]) -> str:
    """The key of the partial sum a client pack stores: the orchestrator computes it from the pack it issues, the
    client function from the payload it got, so a resumed round knows which packs are stored. ``privacy_params``:
    the payload's (local DP only; packs never run under central DP)."""
    inputs = [f"client:{int(c)}" for c in clients]
    return partial_key(run_id, round, PACK_LEVEL, index, inputs_digest(MEAN, privacy_params, inputs))


@dataclass
class PartialSum:
    """Float64 sums over a group of updates (or of partials) with what the final step needs to finish them.

    ``weight``: Σ num_examples (mean) or the number of clients (DP); ``unclipped``: clients whose delta was within
    the clip norm (DP, adaptive clipping); ``clients``/``rejected``: who went in and who was refused, in order."""

    kind: str
    spec: dict[str, tuple[tuple[int, ...], np.dtype]]
    sums: dict[str, np.ndarray] = field(default_factory=dict)
    weight: int = 0
    count: int = 0
    unclipped: int = 0
    clients: list[int] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    num_examples: int = 0
    #: the scratch of `add_update`, kept between calls (a client pack adds hundreds of small updates; a fresh
    #: 256 KB scratch each time was most of an addition's cost)
    _scratch: np.ndarray | None = field(default=None, repr=False, compare=False)

    @classmethod
    def empty(cls, kind: str, spec: Spec) -> "PartialSum":
        if kind not in KINDS:
            raise ValueError(f"partial kind must be one of {', '.join(KINDS)}, got {kind!r}")
        norm = {name: (tuple(int(d) for d in shape), np.dtype(dtype)) for name, (shape, dtype) in spec.items()}
        if not norm:
            raise StrategyError("the model spec is empty")
        return cls(kind, norm, {name: np.zeros(shape, np.float64) for name, (shape, _) in norm.items()})

    # ----------------------------------------------------------------------------------------- leaves

    def add_update(self, client_id: int, weights: Mapping[str, np.ndarray], num_examples: int) -> None:
        """Fold in one admitted update, weighted by its examples: ``StreamingMean.add``'s operations, per element."""
        self._check(client_id, weights)
        if isinstance(num_examples, bool) or not isinstance(num_examples, (int, np.integer)) \
                or not 0 < num_examples <= MAX_EXAMPLES:
            raise StrategyError(f"update of client {client_id}: num_examples must be an integer in "
                                f"[1, {MAX_EXAMPLES}], got {num_examples!r}")
        n = np.float64(int(num_examples))
        if self._scratch is None:
            self._scratch = np.empty(min(_CHUNK, max(a.size for a in self.sums.values())), np.float64)
        buf = self._scratch
        with np.errstate(invalid="ignore", over="ignore"):  # NaN/Inf checked on the sums: admission.deferred_mean
            self._add_scaled(weights, n, buf)
        self.weight += int(num_examples)
        self.num_examples += int(num_examples)
        self._took(client_id)

    def _add_scaled(self, weights: Mapping[str, np.ndarray], n: np.float64, buf: np.ndarray) -> None:
        for name, (_, dtype) in self.spec.items():
            acc = self.sums[name].reshape(-1)
            flat = weights[name].reshape(-1)
            factor = n * (_F64_SCALE if dtype == np.float64 else 1.0)
            if acc.shape[0] <= _CHUNK:  # one chunk: the same operations without the loop (client packs add many)
                part = buf[: acc.shape[0]]
                np.multiply(flat, factor, out=part)  # float64(w) * factor: the cast is exact, as copyto's is
                np.add(acc, part, out=acc)
                continue
            for start in range(0, acc.shape[0], _CHUNK):
                stop = min(start + _CHUNK, acc.shape[0])
                part = buf[: stop - start]
                np.copyto(part, flat[start:stop])
                np.multiply(part, factor, out=part)
                np.add(acc[start:stop], part, out=acc[start:stop])

    def add_clipped(self, client_id: int, weights: Mapping[str, np.ndarray], num_examples: int,
                    previous: Mapping[str, np.ndarray], clip_norm: float) -> None:
        """Fold in one admitted update under central DP: its delta clipped to ``clip_norm``, the client once."""
        self._check(client_id, weights)
        clipped, norm = privacy.clip_delta(weights, previous, clip_norm)
        for name, d in clipped.items():
            self.sums[name] += d  # CentralDP.add's operation
        self.weight += 1
        self.unclipped += int(norm <= clip_norm)
        self.num_examples += int(num_examples)
        self._took(client_id)

    # ---------------------------------------------------------------------------------------- combining

    def add_partial(self, other: "PartialSum") -> None:
        """Add a child's sums (children in ascending plan order: their clients follow each other's)."""
        if other.kind != self.kind:
            raise StrategyError(f"cannot add a {other.kind} partial to a {self.kind} one")
        if other.clients and self.clients and other.clients[0] <= self.clients[-1]:
            raise StrategyError(f"partial starting at client {other.clients[0]} added after client "
                                f"{self.clients[-1]}: combine in plan order")
        if other.count:  # an empty child (every update rejected) adds nothing: x + 0 is x, skip it anyway
            for name in self.spec:
                np.add(self.sums[name], other.sums[name], out=self.sums[name])
        self.weight += other.weight
        self.count += other.count
        self.unclipped += other.unclipped
        self.num_examples += other.num_examples
        self.clients += other.clients
        self.rejected += other.rejected

    # -------------------------------------------------------------------------------------------- the end

    def mean(self) -> dict[str, np.ndarray]:
        """Σ n·w / Σ n in the model's dtypes (``StreamingMean.result``); a mean partial only."""
        if self.kind != MEAN:
            raise StrategyError("the mean of a DP partial is taken by the privacy mechanism (noise first)")
        if self.count == 0:
            raise StrategyError("no updates were added")
        total = np.float64(self.weight)
        out: dict[str, np.ndarray] = {}
        for name, (_, dtype) in self.spec.items():
            avg = self.sums[name] / total
            if dtype == np.float64:
                avg *= 1.0 / _F64_SCALE
            avg = avg.astype(dtype)
            if not np.all(np.isfinite(avg)):
                raise NonFiniteMean(f"the average of {name!r} is not finite")
            out[name] = avg
        return out

    def require_finite(self) -> "PartialSum":
        """Itself, or NonFiniteMean when a sum is NaN or ±Inf: a leaf that left the updates' NaN/Inf scan to its
        sums (``admission.deferred_mean``; the sums of finite updates cannot overflow, see ``add_update``)."""
        for name, arr in self.sums.items():
            if not all_finite(arr):
                raise NonFiniteMean(f"the sum of {name!r} is not finite")
        return self

    def meta(self) -> dict[str, Any]:
        """The document fields beside the blob."""
        return {"kind": self.kind, "weight": int(self.weight), "count": int(self.count),
                "unclipped": int(self.unclipped), "num_examples": int(self.num_examples),
                "clients": list(self.clients), "rejected": list(self.rejected)}

    @classmethod
    def from_stored(cls, doc: Mapping[str, Any], sums: Mapping[str, np.ndarray], spec: Spec) -> "PartialSum":
        """A partial read back (``BlobStore.read_partial`` checked the blob against the model's names/shapes)."""
        out = cls.empty(str(doc.get("kind")), spec)
        for name in out.spec:
            out.sums[name] = np.array(sums[name], np.float64)
        for key in ("weight", "count", "unclipped", "num_examples"):
            value = doc.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise StrategyError(f"partial {doc.get('_id')}: {key} is {value!r}, not an integer >= 0")
            setattr(out, key, value)
        clients, rejected = doc.get("clients"), doc.get("rejected")
        if not isinstance(clients, list) or len(clients) != out.count or not isinstance(rejected, list):
            raise StrategyError(f"partial {doc.get('_id')}: clients/rejected do not match its count")
        out.clients, out.rejected = [int(c) for c in clients], list(rejected)
        return out

    # ---------------------------------------------------------------------------------------- helpers

    def _check(self, client_id: int, weights: Mapping[str, np.ndarray]) -> None:
        if self.clients and client_id <= self.clients[-1]:
            raise StrategyError(f"update of client {client_id} added after client {self.clients[-1]}: "
                                "add in ascending client-id order")
        if list(weights) != list(self.spec):
            raise StrategyError(f"update of client {client_id} holds {list(weights)}, the model has "
                                f"{list(self.spec)}")
        for name, (shape, dtype) in self.spec.items():
            w = weights[name]
            if tuple(w.shape) != shape or w.dtype != dtype:
                raise StrategyError(f"update of client {client_id}: {name!r} is {w.dtype}{list(w.shape)}, "
                                    f"expected {dtype}{list(shape)}")

    def _took(self, client_id: int) -> None:
        self.count += 1
        self.clients.append(int(client_id))


def sum_spec(spec: Spec) -> dict[str, tuple[tuple[int, ...], str]]:
    """The expected names/shapes/dtypes of a stored partial's blob: the model's, all float64."""
    return {name: (tuple(int(d) for d in shape), "<f8") for name, (shape, _) in spec.items()}


"""Stale updates: aggregating a client update that trained on an older global model than the previous one.

Why: in the `deadline` round mode with `late: carry` and in the `buffered` mode (FedBuff, Nguyen et al. 2022,
"Federated Learning with Buffered Asynchronous Aggregation", AISTATS) an update issued in round i (trained on model
i-1) may be aggregated into round r > i. Its staleness is τ = r − i. FedBuff weights the update's delta by
s(τ) = 1/sqrt(1+τ) and applies the buffer's mean with a server learning rate η_g.

So that every strategy of ``runtime.strategies`` works unchanged, each admitted update is re-based on the previous
model before the strategy sees it:

    w_eff = w_prev + η_g · s(τ) · (w_client − w_{i−1})

The strategy's example-weighted mean of the w_eff is then w_prev + η_g · Σ nₖ s(τₖ) Δₖ / Σ nₖ: FedBuff's server
step with example weights (FedAvg), and the usual pseudo-gradient for FedAdam & co. The base model w_{i−1} is read
from the store, so the orchestrator keeps the last ``max_staleness + 2`` models (``keep_models``); an update staler
than ``max_staleness`` (or whose base model is gone) is rejected as ``too_stale``. Arithmetic is float64 in the
strategy's fixed (ascending client) order: the same updates give the same bits.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .strategies import ClientUpdate

WEIGHTINGS = ("sqrt", "constant")


@dataclass(frozen=True)
class StalenessSpec:
    """How stale updates are weighted (the aggregator payload's ``staleness``)."""

    weighting: str = "sqrt"  # s(τ) = 1/sqrt(1+τ); "constant": s(τ) = 1
    server_lr: float = 1.0  # η_g
    max_staleness: int = 4

    def weight(self, tau: int) -> float:
        """s(τ): the factor on the delta of an update τ rounds stale."""
        if tau < 0:
            raise ValueError(f"staleness must be >= 0, got {tau}")
        return 1.0 / math.sqrt(1.0 + tau) if self.weighting == "sqrt" else 1.0

    def as_params(self) -> dict[str, Any]:
        return {"weighting": self.weighting, "server_lr": self.server_lr, "max_staleness": self.max_staleness}

    @classmethod
    def from_params(cls, raw: Any, where: str = "params.staleness") -> "StalenessSpec":
        if not isinstance(raw, Mapping):
            raise ValueError(f"{where} must be an object, got {type(raw).__name__}")
        weighting = raw.get("weighting", "sqrt")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"{where}.weighting must be one of {', '.join(WEIGHTINGS)}, got {weighting!r}")
        lr = raw.get("server_lr", 1.0)
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
            raise ValueError(f"{where}.server_lr must be a finite number > 0, got {lr!r}")
        most = raw.get("max_staleness", 4)
        if isinstance(most, bool) or not isinstance(most, int) or most < 0:
            raise ValueError(f"{where}.max_staleness must be an integer >= 0, got {most!r}")
        return cls(str(weighting), float(lr), int(most))


def rebased(update: ClientUpdate, previous: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray],
            factor: float) -> ClientUpdate:
    """The update moved onto ``previous``: previous + factor × (update − base), in the model's dtypes."""
    weights = {}
    for name, prev in previous.items():
        p = np.asarray(prev, np.float64)
        delta = np.asarray(update.weights[name], np.float64) - np.asarray(base[name], np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            weights[name] = (p + factor * delta).astype(np.asarray(prev).dtype)
    return ClientUpdate(update.client_id, update.num_examples, weights)


class Rebased:
    """Wraps ``admission.Admitted``: yields each admitted update re-based on the previous model (see the module
    docstring), and rejects those staler than ``max_staleness`` or whose base model cannot be read. ``accepted``,
    ``rejected``, ``total_examples`` and ``refuse`` are the wrapped object's. ``updates`` lists what went in:
    {client_id, round, activation_id, staleness} per accepted update (the model's metrics keep it for audits)."""

    def __init__(self, admitted: Any, spec: StalenessSpec, previous: Mapping[str, np.ndarray], round: int,
                 read_base: Callable[[int], Mapping[str, np.ndarray]]) -> None:
        self._admitted, self._spec, self._previous, self._round = admitted, spec, previous, round
        self._read_base = read_base
        self._bases: dict[int, Mapping[str, np.ndarray]] = {round - 1: previous}
        self.updates: list[dict[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._admitted, name)

    def __iter__(self) -> Iterator[ClientUpdate]:
        for update in self._admitted:
            issued = self._admitted.issued_round(update.client_id)
            tau = self._round - issued
            if tau < 0 or tau > self._spec.max_staleness:
                self._admitted.refuse(update, f"issued in round {issued}: staleness {tau} is outside "
                                              f"0..{self._spec.max_staleness}", reason="too_stale")
                continue
            try:
                base = self._base(issued - 1)
            except Exception as exc:  # noqa: BLE001 - a collected or unreadable base model: this update only
                self._admitted.refuse(update, f"its base model {issued - 1} cannot be read: {exc}",
                                      reason="too_stale")
                continue
            factor = self._spec.server_lr * self._spec.weight(tau)
            if tau == 0 and factor == 1.0:
                out = update  # w_prev + (w − w_prev) is w: keep its exact bits
            else:
                out = rebased(update, self._previous, base, factor)
            self.updates.append({"client_id": update.client_id, "round": issued,
                                 "activation_id": self._admitted.activation_of(update.client_id),
                                 "staleness": tau})
            yield out

    def _base(self, round_number: int) -> Mapping[str, np.ndarray]:
        if round_number not in self._bases:
            if len(self._bases) > 4:  # bounded: a few distinct base rounds per aggregation
                self._bases = {self._round - 1: self._previous}
            self._bases[round_number] = self._read_base(round_number)
        return self._bases[round_number]

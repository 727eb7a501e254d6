"""What the order-statistics strategies share (fedmedian, trimmed_mean, krum, multikrum, bulyan).

They need every update at once (a median cannot be streamed), so ``aggregate`` holds the round's updates (as the
decoded blobs, no copy) and works through the model one slab of coordinates at a time in float64: the working
memory beyond the updates themselves stays a few MiB whatever the model size. Updates are sorted by client id
first, so the input order does not matter and the float rounding is fixed. Unweighted (each client counts once),
as in the papers. No server state; not combinable with central DP (the noise is calibrated to a mean).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from .base import MODEL_ITEMSIZE, ClientUpdate, ServerState, Spec, Strategy, StrategyError, Weights, check_state, \
    collect, finite_result, spec_of

#: cells (updates × coordinates) of one float64 slab: 1 MiB
SLAB_CELLS = 2**17
#: slab-sized float64 buffers alive at once at the peak (the slab, a sorted copy, distances, indices, a result)
SLAB_BUFFERS = 6


def slab_width(rows: int) -> int:
    return max(1, SLAB_CELLS // max(1, rows))


def slabs(updates: Sequence[ClientUpdate], spec: Spec, rows: Sequence[int] | None = None):
    """(array name, start, stop, float64 slab of shape (len(rows), stop − start)) over every model array."""
    chosen = list(range(len(updates))) if rows is None else list(rows)
    width = slab_width(len(chosen))
    buf = np.empty((len(chosen), width), np.float64)
    for name in spec:
        flats = [updates[i].weights[name].reshape(-1) for i in chosen]
        size = flats[0].shape[0] if flats else 0
        for start in range(0, size, width):
            stop = min(start + width, size)
            slab = buf[:, : stop - start]
            for r, flat in enumerate(flats):
                slab[r] = flat[start:stop]
            yield name, start, stop, slab


def coordinatewise(name: str, updates: Sequence[ClientUpdate], spec: Spec,
                   rule: Callable[[np.ndarray], np.ndarray], rows: Sequence[int] | None = None) -> Weights:
    """Apply ``rule`` (float64 slab (rows, c) → (c,)) to every coordinate; the result in the model's dtypes."""
    out = {key: np.empty(shape, np.float64) for key, (shape, _) in spec.items()}
    for key, start, stop, slab in slabs(updates, spec, rows):
        out[key].reshape(-1)[start:stop] = rule(slab)
    return finite_result(name, out, spec)


def squared_distances(updates: Sequence[ClientUpdate], spec: Spec) -> np.ndarray:
    """The symmetric matrix of ‖wᵢ − wⱼ‖² over all model arrays, float64, summed slab by slab in a fixed order."""
    n = len(updates)
    dist = np.zeros((n, n), np.float64)
    for _, _, _, slab in slabs(updates, spec):
        for i in range(n - 1):
            diff = slab[i + 1 :] - slab[i]
            np.multiply(diff, diff, out=diff)
            dist[i, i + 1 :] += diff.sum(axis=1)
    return dist + dist.T


class OrderStatistic(Strategy):
    streaming = False
    supports_dp = False

    def aggregate(self, updates: Iterable[ClientUpdate], previous: Weights,
                  state: ServerState) -> tuple[Weights, ServerState]:
        check_state(self.name, state, {})
        ordered = collect(self.name, updates, previous)
        return self.combine(ordered, spec_of(previous)), {}

    @abstractmethod
    def combine(self, updates: Sequence[ClientUpdate], spec: Spec) -> Weights:
        """The new model from the updates, sorted by client id (at least one)."""

    def memory_bytes(self, num_updates: int, model_bytes: int, *, itemsize: int = MODEL_ITEMSIZE) -> int:
        # every update held + the float64 result + the new model + the slabs
        elements = -(-int(model_bytes) // int(itemsize))
        return int(num_updates * model_bytes + 8 * elements + model_bytes + SLAB_BUFFERS * 8 * SLAB_CELLS
                   + self.extra_bytes(num_updates))

    def extra_bytes(self, num_updates: int) -> int:
        return 0


def require(name: str, ok: bool, message: str) -> None:
    if not ok:
        raise StrategyError(f"{name}: {message}")

"""Poisson client selection: each client takes part in a round independently with probability q.

This is the sampling `PoissonSampledDpEvent` assumes, so under `privacy.sampling: poisson` the round loop selects
with it instead of drawing a fixed number (`tracker.rank_clients`). Seeded by (seed, round) only, so a resumed run
selects the same clients."""

from __future__ import annotations

import numpy as np

#: keeps this stream apart from the fixed-size draw's (tracker.rank_clients) and the noise streams
_POISSON_TAG = 0x9015_5011


def poisson_clients(seed: int, round_number: int, total: int, q: float) -> list[int]:
    """The ids (ascending) of the clients of `total` that round `round_number` selects, each with probability q;
    possibly none."""
    if not 0 <= q <= 1:
        raise ValueError(f"q must be in [0, 1], got {q!r}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(round_number), _POISSON_TAG]))
    return [int(c) for c in np.flatnonzero(rng.random(int(total)) < q)]

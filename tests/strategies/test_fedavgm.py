"""fedavgm (Hsu et al. 2019): server momentum over the pseudo-gradient x − w̄."""

from __future__ import annotations

import numpy as np
import pytest
from strategy_support import flat, model, updates

from fedkeeper.runtime.strategies import make_strategy


def reference(rounds, x0, eta, beta):
    """Hsu et al. 2019: v ← β·v + Δw, w ← w − η·v with Δw = w − mean of the clients' models (weighted by nₖ)."""
    x, v, out = flat(x0), np.zeros(flat(x0).size), []
    for round_updates in rounds:
        total = sum(u.num_examples for u in round_updates)
        mean = sum(u.num_examples * flat(u.weights) for u in round_updates) / total
        v = beta * v + (x - mean)
        x = (x - eta * v).astype(np.float32).astype(np.float64)  # the model is stored in float32 between rounds
        out.append(x)
    return out


@pytest.mark.parametrize("eta,beta", [(1.0, 0.9), (0.5, 0.0), (2.0, 0.5)])
def test_three_rounds_match_the_paper(eta, beta):
    rng = np.random.default_rng(1)
    x = model(rng)
    rounds = [updates(rng, x, 5) for _ in range(3)]
    strategy = make_strategy("fedavgm", {"server_learning_rate": eta, "server_momentum": beta})
    state = strategy.initial_state(x)
    want = reference(rounds, x, eta, beta)
    for r, round_updates in enumerate(rounds):
        x, state = strategy.aggregate(round_updates, x, state)
        np.testing.assert_allclose(flat(x), want[r], rtol=1e-5, atol=1e-6)


def test_no_momentum_and_unit_rate_is_fedavg():
    rng = np.random.default_rng(2)
    x = model(rng)
    round_updates = updates(rng, x, 5)
    plain = make_strategy("fedavgm", {"server_momentum": 0.0})
    a, _ = plain.aggregate(round_updates, x, plain.initial_state(x))
    b, _ = make_strategy("fedavg").aggregate(round_updates, x, {})
    np.testing.assert_allclose(flat(a), flat(b), rtol=1e-6, atol=1e-7)

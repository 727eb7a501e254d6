"""fedyogi (Reddi et al. 2021, Algorithm 2): Yogi's additive second moment on the server."""

from __future__ import annotations

import numpy as np
import pytest
from strategy_support import flat, model, updates

from fedkeeper.runtime.strategies import make_strategy


def reference(rounds, x0, eta, b1, b2, tau):
    """Δ = weighted mean of (xₖ − x) ; m = β₁m + (1−β₁)Δ ; v = v − (1−β₂)·Δ²·sign(v − Δ²) ;
    x ← x + η·m/(√v + τ), from v₋₁ = τ², m₋₁ = 0."""
    x = flat(x0)
    m, v, out = np.zeros(x.size), np.full(x.size, tau**2), []
    for round_updates in rounds:
        total = sum(u.num_examples for u in round_updates)
        delta = sum(u.num_examples / total * (flat(u.weights) - x) for u in round_updates)
        m = b1 * m + (1 - b1) * delta
        v = v - (1 - b2) * delta**2 * np.sign(v - delta**2)
        x = (x + eta * m / (np.sqrt(v) + tau)).astype(np.float32).astype(np.float64)
        out.append(x)
    return out


@pytest.mark.parametrize("params", [{}, {"server_learning_rate": 0.1, "beta_2": 0.5, "tau": 0.1}])
def test_four_rounds_match_the_paper(params):
    rng = np.random.default_rng(5)
    x = model(rng)
    # spreads that shrink then grow, so v − Δ² changes sign between rounds
    rounds = [updates(rng, x, 5, spread=s) for s in (1.0, 0.01, 0.01, 2.0)]
    strategy = make_strategy("fedyogi", params)
    p = strategy.params
    want = reference(rounds, x, p["server_learning_rate"], p["beta_1"], p["beta_2"], p["tau"])
    state = strategy.initial_state(x)
    for r, round_updates in enumerate(rounds):
        x, state = strategy.aggregate(round_updates, x, state)
        np.testing.assert_allclose(flat(x), want[r], rtol=1e-5, atol=1e-6)
        assert all(np.all(v > 0) for k, v in state.items() if k.startswith("v/"))

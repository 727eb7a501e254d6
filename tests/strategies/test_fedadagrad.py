"""fedadagrad (Reddi et al. 2021, Algorithm 2): Adagrad's summed squares on the server."""

from __future__ import annotations

import numpy as np
import pytest
from strategy_support import flat, model, updates

from fedkeeper.runtime.strategies import StrategyError, make_strategy


def reference(rounds, x0, eta, b1, tau):
    """Δ = weighted mean of (xₖ − x) ; m = β₁m + (1−β₁)Δ ; v = v + Δ² ; x ← x + η·m/(√v + τ), v₋₁ = τ²."""
    x = flat(x0)
    m, v, out = np.zeros(x.size), np.full(x.size, tau**2), []
    for round_updates in rounds:
        total = sum(u.num_examples for u in round_updates)
        delta = sum(u.num_examples / total * (flat(u.weights) - x) for u in round_updates)
        m = b1 * m + (1 - b1) * delta
        v = v + delta**2
        x = (x + eta * m / (np.sqrt(v) + tau)).astype(np.float32).astype(np.float64)
        out.append(x)
    return out


@pytest.mark.parametrize("params", [{}, {"server_learning_rate": 0.5, "beta_1": 0.9, "tau": 0.001}])
def test_three_rounds_match_the_paper(params):
    rng = np.random.default_rng(6)
    x = model(rng)
    rounds = [updates(rng, x, 5) for _ in range(3)]
    strategy = make_strategy("fedadagrad", params)
    p = strategy.params
    want = reference(rounds, x, p["server_learning_rate"], p["beta_1"], p["tau"])
    state = strategy.initial_state(x)
    for r, round_updates in enumerate(rounds):
        x, state = strategy.aggregate(round_updates, x, state)
        np.testing.assert_allclose(flat(x), want[r], rtol=1e-5, atol=1e-6)


def test_beta_2_is_not_a_parameter_of_adagrad():
    with pytest.raises(StrategyError, match="unknown parameter 'beta_2'"):
        make_strategy("fedadagrad", {"beta_2": 0.99})

"""fedadam (Reddi et al. 2021, Algorithm 2): Adam on the server; its state survives a save and restore."""

from __future__ import annotations

import numpy as np
import pytest
from strategy_support import flat, model, updates

from fedkeeper.runtime import weights as W
from fedkeeper.runtime.strategies import make_strategy


def reference(rounds, x0, eta, b1, b2, tau):
    """Δ = Σ pₖ·(xₖ − x) ; m = β₁m + (1−β₁)Δ ; v = β₂v + (1−β₂)Δ² ; x ← x + η·m/(√v + τ), v₋₁ = τ², m₋₁ = 0."""
    x = flat(x0)
    m, v, out = np.zeros(x.size), np.full(x.size, tau**2), []
    for round_updates in rounds:
        total = sum(u.num_examples for u in round_updates)
        delta = sum(u.num_examples / total * (flat(u.weights) - x) for u in round_updates)
        m = b1 * m + (1 - b1) * delta
        v = b2 * v + (1 - b2) * delta**2
        x = (x + eta * m / (np.sqrt(v) + tau)).astype(np.float32).astype(np.float64)
        out.append(x)
    return out


@pytest.mark.parametrize("params", [{}, {"server_learning_rate": 0.03, "beta_1": 0.5, "beta_2": 0.9, "tau": 0.01}])
def test_three_rounds_match_the_paper(params):
    rng = np.random.default_rng(3)
    x = model(rng)
    rounds = [updates(rng, x, 5) for _ in range(3)]
    strategy = make_strategy("fedadam", params)
    p = strategy.params
    want = reference(rounds, x, p["server_learning_rate"], p["beta_1"], p["beta_2"], p["tau"])
    state = strategy.initial_state(x)
    for r, round_updates in enumerate(rounds):
        x, state = strategy.aggregate(round_updates, x, state)
        np.testing.assert_allclose(flat(x), want[r], rtol=1e-5, atol=1e-6)


def test_a_run_with_the_state_saved_and_restored_equals_an_uninterrupted_one():
    """What a crash and --resume does: the state goes to the store as a weights blob and comes back read-only."""
    rng = np.random.default_rng(4)
    x0 = model(rng)
    rounds = [updates(rng, x0, 4) for _ in range(2)]

    fresh = make_strategy("fedadam")
    x, state = x0, fresh.initial_state(x0)
    for round_updates in rounds:
        x, state = fresh.aggregate(round_updates, x, state)

    first = make_strategy("fedadam")
    x1, state1 = first.aggregate(rounds[0], x0, first.initial_state(x0))
    model_blob, state_blob = W.encode(x1), W.encode(state1)
    del first, x1, state1
    resumed = make_strategy("fedadam")  # a new aggregator process
    y, state2 = resumed.aggregate(rounds[1], W.decode(model_blob), W.decode(state_blob))

    assert all(y[k].tobytes() == x[k].tobytes() for k in x)
    assert W.encode(state2) == W.encode(state)

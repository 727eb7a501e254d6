"""fedavg (McMahan et al. 2017): w = Σ nₖ·wₖ / Σ nₖ, bit-identical to the streaming mean it always was."""

from __future__ import annotations

import numpy as np
import pytest
from strategy_support import distance_to, flat, model, poisoned_round, updates

from fedkeeper.runtime.strategies import StrategyError, StreamingMean, make_strategy


def reference(round_updates):
    """McMahan et al. 2017, Algorithm 1: w_{t+1} = Σₖ (nₖ / n) · wₖ."""
    total = sum(u.num_examples for u in round_updates)
    return sum((u.num_examples / total) * flat(u.weights) for u in round_updates)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_the_paper(seed):
    rng = np.random.default_rng(seed)
    previous = model(rng)
    round_updates = updates(rng, previous, 9)
    new, state = make_strategy("fedavg").aggregate(round_updates, previous, {})
    assert state == {}
    np.testing.assert_allclose(flat(new), reference(round_updates), rtol=1e-6, atol=1e-7)


def test_bit_identical_to_the_streaming_mean():
    rng = np.random.default_rng(7)
    previous = model(rng, {"a": (40, 30), "b": (30,)})
    previous["b"] = previous["b"].astype(np.float64)  # the float64 path (scaled sums) too
    round_updates = updates(rng, previous, 12, spread=50.0)
    mean = StreamingMean()
    mean.begin({k: (v.shape, v.dtype) for k, v in previous.items()})
    for u in round_updates:
        mean.add(u.weights, u.num_examples, client_id=u.client_id)
    want = mean.result()
    got, _ = make_strategy("fedavg").aggregate(iter(round_updates), previous, {})
    assert all(got[k].dtype == want[k].dtype and got[k].tobytes() == want[k].tobytes() for k in want)


def test_updates_must_come_in_ascending_client_order():
    """Streaming: the order fixes the rounding, and a stream cannot be sorted without holding it."""
    rng = np.random.default_rng(8)
    previous = model(rng)
    round_updates = updates(rng, previous, 3)
    with pytest.raises(StrategyError, match="ascending"):
        make_strategy("fedavg").aggregate(round_updates[::-1], previous, {})


@pytest.mark.parametrize("attack", ["huge", "sign_flip"])
def test_one_poisoned_update_drags_fedavg_away(attack):
    previous, round_updates, honest_mean, radius = poisoned_round(attack)
    new, _ = make_strategy("fedavg").aggregate(round_updates, previous, {})
    assert distance_to(new, honest_mean) > 10 * radius

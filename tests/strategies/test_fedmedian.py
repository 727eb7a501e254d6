"""fedmedian (Yin et al. 2018, coordinate-wise median): matches the definition, resists one poisoned update."""

from __future__ import annotations

import statistics

import numpy as np
import pytest
from strategy_support import distance_to, flat, model, poisoned_round, updates

from fedkeeper.runtime.strategies import make_strategy


def reference(round_updates):
    """med{wₖ[j]} per coordinate j; unweighted; for an even count the mean of the two middle values."""
    vectors = [flat(u.weights) for u in round_updates]
    return np.array([statistics.median(float(v[j]) for v in vectors) for j in range(vectors[0].size)])


@pytest.mark.parametrize("count", [1, 2, 7, 8])
def test_matches_the_definition(count):
    rng = np.random.default_rng(count)
    previous = model(rng)
    round_updates = updates(rng, previous, count)
    new, state = make_strategy("fedmedian").aggregate(round_updates, previous, {})
    assert state == {}
    np.testing.assert_allclose(flat(new), reference(round_updates), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("attack", ["huge", "sign_flip"])
def test_resists_one_poisoned_update(attack):
    previous, round_updates, honest_mean, radius = poisoned_round(attack)
    new, _ = make_strategy("fedmedian").aggregate(round_updates, previous, {})
    assert distance_to(new, honest_mean) < 2 * radius

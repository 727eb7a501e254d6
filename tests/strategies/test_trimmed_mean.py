"""trimmed_mean (Yin et al. 2018, coordinate-wise β-trimmed mean): matches the definition, resists poisoning."""

from __future__ import annotations

import math

import numpy as np
import pytest
from strategy_support import distance_to, flat, model, poisoned_round, updates

from fedkeeper.runtime.strategies import make_strategy


def reference(round_updates, cut):
    """Per coordinate: sort the n values, drop the ``cut`` smallest and largest, average the rest (unweighted)."""
    vectors = [flat(u.weights) for u in round_updates]
    out = []
    for j in range(vectors[0].size):
        values = sorted(float(v[j]) for v in vectors)
        kept = values[cut : len(values) - cut]
        out.append(math.fsum(kept) / len(kept))
    return np.array(out)


@pytest.mark.parametrize("beta,count,cut", [(0.2, 10, 2), (0.0, 5, 0), (0.1, 9, 0), (0.45, 11, 4), (0.29, 100, 29)])
def test_matches_the_definition(beta, count, cut):
    rng = np.random.default_rng(count)
    previous = model(rng, {"w": (3, 4)})
    round_updates = updates(rng, previous, count)
    new, _ = make_strategy("trimmed_mean", {"beta": beta}).aggregate(round_updates, previous, {})
    np.testing.assert_allclose(flat(new), reference(round_updates, cut), rtol=1e-6, atol=1e-7)


def test_beta_must_leave_a_value():
    from fedkeeper.runtime.strategies import StrategyError

    for beta in (0.5, -0.1):
        with pytest.raises(StrategyError, match="'beta'"):
            make_strategy("trimmed_mean", {"beta": beta})


@pytest.mark.parametrize("attack", ["huge", "sign_flip"])
def test_resists_one_poisoned_update(attack):
    previous, round_updates, honest_mean, radius = poisoned_round(attack)
    new, _ = make_strategy("trimmed_mean", {"beta": 0.1}).aggregate(round_updates, previous, {})
    assert distance_to(new, honest_mean) < 2 * radius

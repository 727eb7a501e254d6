"""bulyan (El Mhamdi et al. 2018): recursive Krum, then the β values nearest the median; resists poisoning."""

from __future__ import annotations

import numpy as np
import pytest
from strategy_support import distance_to, flat, model, poisoned_round, updates

from fedkeeper.runtime.strategies import StrategyError, make_strategy


def krum_pick(vectors, candidates, f):
    """The candidate of lowest Σ of its max(1, |R| − f − 2) smallest squared distances to the other candidates."""
    best, best_score = None, None
    for i in candidates:
        d = sorted(float(np.sum((vectors[i] - vectors[j]) ** 2)) for j in candidates if j != i)
        score = sum(d[: max(1, len(candidates) - f - 2)])
        if best_score is None or score < best_score:
            best, best_score = i, score
    return best


def reference(round_updates, f):
    vectors = [flat(u.weights) for u in round_updates]
    n = len(vectors)
    theta, beta = n - 2 * f, n - 4 * f
    remaining, selected = list(range(n)), []
    while len(selected) < theta:
        pick = krum_pick(vectors, remaining, f)
        selected.append(pick)
        remaining.remove(pick)
    out = []
    for j in range(vectors[0].size):
        values = [float(vectors[i][j]) for i in selected]
        median = float(np.median(values))
        nearest = sorted(values, key=lambda v: abs(v - median))[:beta]
        out.append(sum(nearest) / beta)
    return np.array(out)


@pytest.mark.parametrize("count,f", [(3, 0), (7, 1), (8, 1), (12, 2)])
def test_matches_the_paper(count, f):
    rng = np.random.default_rng(count)
    previous = model(rng)
    round_updates = updates(rng, previous, count)
    new, _ = make_strategy("bulyan", {"num_malicious": f}).aggregate(round_updates, previous, {})
    np.testing.assert_allclose(flat(new), reference(round_updates, f), rtol=1e-6, atol=1e-7)


def test_too_few_updates_for_f_are_refused():
    rng = np.random.default_rng(0)
    previous = model(rng)
    with pytest.raises(StrategyError, match=r"4f \+ 3 = 7 updates for f = 1, got 6"):
        make_strategy("bulyan", {"num_malicious": 1}).aggregate(updates(rng, previous, 6), previous, {})


@pytest.mark.parametrize("attack", ["huge", "sign_flip"])
def test_resists_one_poisoned_update(attack):
    previous, round_updates, honest_mean, radius = poisoned_round(attack)
    new, _ = make_strategy("bulyan", {"num_malicious": 1}).aggregate(round_updates, previous, {})
    assert distance_to(new, honest_mean) < 2 * radius

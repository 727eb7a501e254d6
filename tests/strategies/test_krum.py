"""krum and multikrum (Blanchard et al. 2017): match the scores of the paper, resist one poisoned update."""

from __future__ import annotations

import numpy as np
import pytest
from strategy_support import distance_to, flat, model, poisoned_round, updates

from fedkeeper.runtime.strategies import StrategyError, make_strategy


def scores(vectors, f):
    """s(i) = Σ ‖Vᵢ − Vⱼ‖² over the n − f − 2 vectors j ≠ i closest to Vᵢ."""
    n = len(vectors)
    out = []
    for i in range(n):
        d = sorted(float(np.sum((vectors[i] - vectors[j]) ** 2)) for j in range(n) if j != i)
        out.append(sum(d[: n - f - 2]))
    return out


def reference_krum(round_updates, f):
    vectors = [flat(u.weights) for u in round_updates]
    s = scores(vectors, f)
    return vectors[s.index(min(s))]


def reference_multikrum(round_updates, f, m):
    """The plain mean of the m vectors of lowest score."""
    vectors = [flat(u.weights) for u in round_updates]
    s = scores(vectors, f)
    best = sorted(range(len(vectors)), key=lambda i: s[i])[:m]
    return np.mean([vectors[i] for i in best], axis=0)


@pytest.mark.parametrize("count,f", [(3, 0), (7, 1), (9, 3)])
def test_krum_matches_the_paper(count, f):
    rng = np.random.default_rng(count)
    previous = model(rng)
    round_updates = updates(rng, previous, count)
    new, _ = make_strategy("krum", {"num_malicious": f}).aggregate(round_updates, previous, {})
    assert np.array_equal(flat(new), reference_krum(round_updates, f))  # one of the updates, exactly


@pytest.mark.parametrize("count,f,m", [(7, 1, None), (7, 1, 2), (9, 2, 9), (5, 0, 1)])
def test_multikrum_matches_the_paper(count, f, m):
    rng = np.random.default_rng(count + 100)
    previous = model(rng)
    round_updates = updates(rng, previous, count)
    strategy = make_strategy("multikrum", {"num_malicious": f, "num_selected": m})
    new, _ = strategy.aggregate(round_updates, previous, {})
    want = reference_multikrum(round_updates, f, count - f if m is None else m)
    np.testing.assert_allclose(flat(new), want, rtol=1e-6, atol=1e-7)


def test_too_few_updates_for_f_are_refused():
    rng = np.random.default_rng(0)
    previous = model(rng)
    with pytest.raises(StrategyError, match=r"2f \+ 3 = 5 updates for f = 1, got 4"):
        make_strategy("krum", {"num_malicious": 1}).aggregate(updates(rng, previous, 4), previous, {})
    with pytest.raises(StrategyError, match="num_selected m = 6"):
        make_strategy("multikrum", {"num_selected": 6}).aggregate(updates(rng, previous, 5), previous, {})


@pytest.mark.parametrize("name", ["krum", "multikrum"])
@pytest.mark.parametrize("attack", ["huge", "sign_flip"])
def test_resists_one_poisoned_update(name, attack):
    previous, round_updates, honest_mean, radius = poisoned_round(attack)
    new, _ = make_strategy(name, {"num_malicious": 1}).aggregate(round_updates, previous, {})
    assert distance_to(new, honest_mean) < 2 * radius

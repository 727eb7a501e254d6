"""Property tests of every aggregator (hypothesis): input order, equal updates, finite output in the model's dtype."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedkeeper.runtime.strategies import STRATEGIES, ClientUpdate, MeanThenStep, StrategyError, make_strategy

#: enough updates for krum (2f + 3) and bulyan (4f + 3) with f = 1
PARAMS = {"krum": {"num_malicious": 1}, "multikrum": {"num_malicious": 1}, "bulyan": {"num_malicious": 1}}
MIN_UPDATES = 7
#: strategies whose result is a combination of the updates alone (the others step from the previous model)
AGGREGATORS = {"fedavg", "fedprox", "fedmedian", "trimmed_mean", "krum", "multikrum", "bulyan"}
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

values = st.floats(-1e4, 1e4, allow_nan=False, width=32)
shapes = st.dictionaries(st.sampled_from(["a", "b", "c"]), hnp.array_shapes(min_dims=1, max_dims=2, max_side=4),
                         min_size=1, max_size=3)


@st.composite
def rounds(draw: st.DrawFn):
    """(previous model, updates in ascending client id): float32 arrays, distinct ids, example counts."""
    spec = draw(shapes)
    count = draw(st.integers(MIN_UPDATES, 10))
    ids = sorted(draw(st.lists(st.integers(0, 60), min_size=count, max_size=count, unique=True)))

    def weights():
        return {k: draw(hnp.arrays(np.float32, s, elements=values)) for k, s in spec.items()}

    previous = weights()
    ups = [ClientUpdate(cid, draw(st.integers(1, 10**6)), weights()) for cid in ids]
    return previous, ups


def _same(a, b) -> bool:
    return list(a) == list(b) and all(a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes() for k in a)


def _equal(a, b) -> bool:
    """Equal values and dtypes (−0.0 equals 0.0: a sum that starts at +0 turns −0.0 into +0.0)."""
    return list(a) == list(b) and all(a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
@SETTINGS
@given(case=rounds(), data=st.data())
def test_input_order_does_not_matter(name, case, data):
    """Order statistics sort by client id; streaming ones refuse any other order (a stream cannot be sorted)."""
    previous, ups = case
    strategy = make_strategy(name, PARAMS.get(name))
    state = strategy.initial_state(previous)
    shuffled = data.draw(st.permutations(ups))
    sorted_result = strategy.aggregate(ups, previous, state)
    if isinstance(strategy, MeanThenStep) and shuffled != ups:
        with pytest.raises(StrategyError, match="ascending"):
            strategy.aggregate(shuffled, previous, state)
    else:
        again = strategy.aggregate(shuffled, previous, state)
        assert _same(again[0], sorted_result[0]) and _same(again[1], sorted_result[1])


@pytest.mark.parametrize("name", sorted(STRATEGIES))
@SETTINGS
@given(case=rounds())
def test_equal_updates_give_that_update(name, case):
    """Aggregators return the common update; every strategy stays put when all updates are the previous model."""
    previous, ups = case
    strategy = make_strategy(name, PARAMS.get(name))
    common = ups[0].weights
    if name in AGGREGATORS:
        same = [ClientUpdate(u.client_id, u.num_examples, common) for u in ups]
        new, _ = strategy.aggregate(same, previous, strategy.initial_state(previous))
        assert _equal(new, common)
    still = [ClientUpdate(u.client_id, u.num_examples, previous) for u in ups]
    new, _ = strategy.aggregate(still, previous, strategy.initial_state(previous))
    assert _equal(new, previous)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
@SETTINGS
@given(case=rounds())
def test_output_is_finite_in_the_model_dtype_over_two_rounds(name, case):
    previous, ups = case
    strategy = make_strategy(name, PARAMS.get(name))
    new, state = strategy.aggregate(ups, previous, strategy.initial_state(previous))
    new, state = strategy.aggregate(ups, new, state)
    for k, arr in previous.items():
        assert new[k].dtype == arr.dtype and new[k].shape == arr.shape and np.all(np.isfinite(new[k]))
    assert all(v.dtype == np.float64 and np.all(np.isfinite(v)) for v in state.values())

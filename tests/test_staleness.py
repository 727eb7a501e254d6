"""Stale updates (runtime/staleness.py): s(τ), the re-basing of an update on the previous model, the payload."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedkeeper.runtime.staleness import StalenessSpec, rebased
from fedkeeper.runtime.strategies import ClientUpdate

finite = st.floats(-100, 100, allow_nan=False, allow_infinity=False)


@given(st.integers(0, 50))
def test_sqrt_weighting_is_fedbuffs(tau: int) -> None:
    assert StalenessSpec().weight(tau) == pytest.approx(1 / math.sqrt(1 + tau))
    assert StalenessSpec(weighting="constant").weight(tau) == 1.0


@settings(max_examples=50, deadline=None)
@given(st.lists(finite, min_size=3, max_size=3), st.lists(finite, min_size=3, max_size=3),
       st.lists(finite, min_size=3, max_size=3), st.floats(0.01, 2), st.integers(0, 6))
def test_rebased_update_moves_the_previous_model_by_the_weighted_delta(prev, base, new, lr, tau) -> None:
    spec = StalenessSpec(server_lr=lr)
    p, b, w = (np.asarray(x, np.float64) for x in (prev, base, new))
    out = rebased(ClientUpdate(3, 7, {"w": w}), {"w": p}, {"w": b}, lr * spec.weight(tau))
    assert out.client_id == 3 and out.num_examples == 7
    np.testing.assert_allclose(out.weights["w"], p + lr * spec.weight(tau) * (w - b), rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("raw, match", [({"weighting": "linear"}, "weighting"), ({"server_lr": 0}, "server_lr"),
                                        ({"max_staleness": -1}, "max_staleness"), ([], "object")])
def test_a_bad_staleness_payload_is_refused(raw, match) -> None:
    with pytest.raises(ValueError, match=match):
        StalenessSpec.from_params(raw)

"""runtime/strategies.py: streaming FedAvg equals the textbook formula and refuses bad updates cleanly."""

from __future__ import annotations

import numpy as np
import pytest

from fedkeeper.runtime import strategies as S

# One array larger than the internal chunk and not a multiple of it, a vector, a scalar-like array.
SHAPES = {"w1": (97, 401), "b1": (401,), "w2": (401, 3), "s": (1,)}
SPEC = {k: (v, np.float32) for k, v in SHAPES.items()}


def _updates(count: int, seed: int):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        w = {k: (rng.standard_normal(s) * rng.uniform(0.1, 100)).astype(np.float32) for k, s in SHAPES.items()}
        out.append((w, int(rng.integers(1, 5000))))
    return out


def _textbook(updates):
    total = sum(n for _, n in updates)
    return {k: sum(n * w[k].astype(np.float64) for w, n in updates) / total for k in SHAPES}


def _fedavg(updates):
    agg = S.FedAvg()
    agg.begin(SPEC)
    for cid, (w, n) in enumerate(updates):
        agg.add(w, n, client_id=cid)
    return agg


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fedavg_equals_the_textbook_formula(seed):
    updates = _updates(13, seed)
    got = _fedavg(updates).result()
    want = _textbook(updates)
    assert list(got) == list(SHAPES)
    for k in SHAPES:
        assert got[k].dtype == np.float32 and got[k].shape == SHAPES[k]
        np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-6 * np.abs(want[k]).max())


def test_fedavg_of_one_update_is_that_update_and_weights_matter():
    (w, _), (v, _) = _updates(2, 5)
    agg = S.FedAvg()
    agg.begin(SPEC)
    agg.add(w, 7)
    assert all(np.array_equal(agg.result()[k], w[k]) for k in SHAPES)
    agg.begin(SPEC)  # begin resets
    agg.add(w, 1, client_id=0)
    agg.add(v, 3, client_id=1)
    want = (w["b1"].astype(np.float64) + 3.0 * v["b1"]) / 4
    np.testing.assert_allclose(agg.result()["b1"], want, rtol=1e-6, atol=1e-6 * np.abs(want).max())
    assert agg.count == 2 and agg.total_examples == 4


def test_fedavg_is_bit_for_bit_reproducible():
    updates = _updates(9, 3)
    a, b = _fedavg(updates).result(), _fedavg(updates).result()
    assert all(a[k].tobytes() == b[k].tobytes() for k in SHAPES)


def test_bad_updates_are_refused_without_touching_the_sums():
    updates = _updates(4, 4)
    good = _fedavg(updates).result()
    agg = S.FedAvg()
    agg.begin(SPEC)
    w0, n0 = updates[0]
    agg.add(w0, n0, client_id=0)
    bad = [
        ({**w0, "w1": w0["w1"][:, :400]}, 5, "w1"),
        ({**w0, "b1": w0["b1"].astype(np.float64)}, 5, "float64"),
        ({k: w0[k] for k in ("b1", "w1", "w2", "s")}, 5, "holds"),
        ({k: w0[k] for k in ("w1", "b1", "w2")}, 5, "holds"),
        (w0, 0, "num_examples"),
        (w0, True, "num_examples"),
        (w0, -3, "num_examples"),
    ]
    for weights, n, match in bad:
        with pytest.raises(S.StrategyError, match=match):
            agg.add(weights, n, client_id=1)
    for cid, (w, n) in enumerate(updates[1:], start=1):
        agg.add(w, n, client_id=cid)
    got = agg.result()
    assert all(got[k].tobytes() == good[k].tobytes() for k in SHAPES)


def test_client_order_is_enforced():
    (w, n), (v, m) = _updates(2, 6)
    agg = S.FedAvg()
    agg.begin(SPEC)
    agg.add(w, n, client_id=5)
    with pytest.raises(S.StrategyError, match="ascending"):
        agg.add(v, m, client_id=5)
    with pytest.raises(S.StrategyError, match="ascending"):
        agg.add(v, m, client_id=2)


def test_lifecycle_errors():
    agg = S.FedAvg()
    with pytest.raises(S.StrategyError, match="begin"):
        agg.add(_updates(1, 0)[0][0], 1)
    agg.begin(SPEC)
    with pytest.raises(S.StrategyError, match="no updates"):
        agg.result()
    with pytest.raises(S.StrategyError, match="unknown aggregation strategy"):
        S.make_strategy("fedsgd")
    assert isinstance(S.make_strategy("fedavg"), S.STRATEGIES["fedavg"])


def test_non_finite_input_cannot_produce_a_model():
    """Blob decoding rejects NaN/Inf before add(); result() still refuses to hand out a non-finite model."""
    w = {k: np.full(s, 3e38, np.float32) for k, s in SHAPES.items()}
    agg = S.FedAvg()
    agg.begin(SPEC)
    agg.add(w, 1000)  # no float32 overflow: the products are float64
    agg.add({k: -v for k, v in w.items()}, 1000)
    assert not np.any(agg.result()["w1"])
    nan = {k: v.copy() for k, v in w.items()}
    nan["w2"][3, 1] = np.nan
    agg.add(nan, 1)
    with pytest.raises(S.StrategyError, match="'w2' is not finite"):
        agg.result()


def test_products_are_exact_in_float64_and_empty_arrays_work():
    """n·w must not be rounded to float32 (NumPy 2 would, with a plain Python float as the factor)."""
    w = np.float32(1.0000001)  # 1 + 2**-23 is representable; times 3 it is not, in float32
    spec = {"a": ((2,), np.float32), "e": ((0, 3), np.float32)}
    agg = S.FedAvg()
    agg.begin(spec)
    agg.add({"a": np.array([w, -w], np.float32), "e": np.zeros((0, 3), np.float32)}, 3)
    agg.add({"a": np.array([0, 0], np.float32), "e": np.zeros((0, 3), np.float32)}, 1)
    assert agg._acc["a"][0] == 3 * np.float64(w)
    out = agg.result()
    assert out["e"].shape == (0, 3) and out["a"][0] == np.float32(3 * np.float64(w) / 4)

"""The DP mechanisms of the functions (fedkeeper/runtime/privacy.py): clipping, calibrated noise, adaptive clipping.

The statistical checks use a fixed seed and tolerances derived from the sample size (five standard errors), so
they are deterministic and would fail for a miscalibration far smaller than the quantities tested."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedkeeper.runtime import privacy
from fedkeeper.runtime.privacy import CentralDP, PrivacySpec, clip_delta, local_privatize


class Update:  # what runtime.strategies.base.ClientUpdate carries (client_id, num_examples, weights)
    def __init__(self, client_id: int, weights: dict[str, np.ndarray], num_examples: int = 10) -> None:
        self.client_id, self.weights, self.num_examples = client_id, weights, num_examples


def _norm(weights: dict[str, np.ndarray]) -> float:
    return math.sqrt(sum(float(np.sum(np.asarray(w, np.float64) ** 2)) for w in weights.values()))


# ----------------------------------------------------------------------------------------------- clipping

_floats = st.floats(-1e12, 1e12, allow_nan=False, allow_infinity=False, width=64)
_pairs = st.integers(1, 3).flatmap(lambda k: st.tuples(*[
    st.tuples(hnp.array_shapes(max_dims=2, max_side=6), st.sampled_from([np.float32, np.float64]))
    for _ in range(k)]))


@st.composite
def models(draw: st.DrawFn) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(new, previous): same names, shapes and dtypes, values from tiny to huge."""
    new, previous = {}, {}
    for i, (shape, dtype) in enumerate(draw(_pairs)):
        elements = _floats if dtype == np.float64 else st.floats(-1e9, 1e9, width=32)
        new[f"w{i}"] = draw(hnp.arrays(dtype, shape, elements=elements))
        previous[f"w{i}"] = draw(hnp.arrays(dtype, shape, elements=elements))
    return new, previous


@settings(max_examples=300, deadline=None)
@given(models(), st.floats(1e-6, 1e6))
def test_the_clipped_delta_never_exceeds_the_bound(pair: tuple[dict, dict], clip: float) -> None:
    new, previous = pair
    clipped, before = clip_delta(new, previous, clip)
    exact = {k: np.asarray(new[k], np.float64) - np.asarray(previous[k], np.float64) for k in new}
    assert list(clipped) == list(new)
    assert all(c.dtype == np.float64 and c.shape == new[k].shape for k, c in clipped.items())
    assert _norm(clipped) <= clip  # never above, not even by rounding
    assert before == pytest.approx(_norm(exact), rel=1e-9)
    assert _norm(clipped) == pytest.approx(min(before, clip), rel=1e-9)
    if before < clip * (1 - 1e-9):  # within the bound: the delta itself, untouched
        assert all(np.array_equal(clipped[k], exact[k]) for k in new)
    elif before > clip:  # scaled onto the sphere of radius C, direction kept
        assert _norm(clipped) == pytest.approx(clip, rel=1e-9)
        for k in new:
            np.testing.assert_allclose(clipped[k], exact[k] * (clip / before), rtol=1e-9, atol=0)


def test_clip_refuses_a_model_of_other_names_or_a_bad_bound() -> None:
    w = {"a": np.zeros(3, np.float32)}
    with pytest.raises(ValueError, match="holds"):
        clip_delta({"b": np.zeros(3, np.float32)}, w, 1.0)
    with pytest.raises(ValueError, match="clip_norm"):
        clip_delta(w, w, 0.0)


# ----------------------------------------------------------------------------------------------- noise

N = 40_000  # noise draws per check: the standard error of the sample std is σ/√(2N) ≈ 0.35 % of σ


def _assert_gaussian(sample: np.ndarray, std: float) -> None:
    """Mean 0 and standard deviation `std`, each within five standard errors for this sample size."""
    n = sample.size
    assert abs(float(sample.mean())) < 5 * std / math.sqrt(n)
    assert abs(float(sample.std()) - std) < 5 * std / math.sqrt(2 * n)


def test_central_noise_std_is_z_times_c_over_the_number_of_clients() -> None:
    z, clip, clients = 1.3, 0.7, 4
    previous = {"w": np.full(N, 2.0, np.float64), "b": np.zeros(7, np.float64)}
    spec = PrivacySpec(mode="central", noise_multiplier=z, clip_norm=clip, seed=11)
    dp = CentralDP(spec, previous, clip, round=3)
    for c in range(clients):  # updates equal to the model: zero deltas, so all that moves is the noise
        dp.add(Update(c, {k: v.copy() for k, v in previous.items()}))
    model, next_clip, info = dp.result()
    assert next_clip == clip and info["num_clients"] == clients
    assert info["noise_std"] == pytest.approx(z * clip)
    _assert_gaussian(model["w"] - 2.0, z * clip / clients)


def test_central_dp_is_uniformly_weighted_clipped_and_keeps_dtypes() -> None:
    previous = {"w": np.zeros(3, np.float32)}
    spec = PrivacySpec(mode="central", noise_multiplier=0.0, clip_norm=1.0)
    dp = CentralDP(spec, previous, 1.0, round=1)
    dp.add(Update(0, {"w": np.array([3.0, 4.0, 0.0], np.float32)}, num_examples=1000))  # norm 5 → clipped to 1
    dp.add(Update(1, {"w": np.array([0.0, 0.0, 0.5], np.float32)}, num_examples=1))  # within the bound
    model, _, _ = dp.result()
    assert model["w"].dtype == np.float32
    np.testing.assert_allclose(model["w"], [0.3, 0.4, 0.25], rtol=1e-6)  # each client once, whatever its examples
    with pytest.raises(ValueError, match="ascending"):
        dp.add(Update(0, {"w": np.zeros(3, np.float32)}))


def test_local_noise_std_is_z_times_c_and_the_delta_is_clipped() -> None:
    z, clip = 0.8, 2.5
    previous = {"w": np.zeros(N, np.float64)}
    spec = PrivacySpec(mode="local", noise_multiplier=z, clip_norm=clip, seed=5)
    stored = local_privatize({"w": np.zeros(N, np.float64)}, previous, spec, round=2, client_id=7, attempt=1)
    _assert_gaussian(stored["w"], z * clip)
    # a huge update is clipped before the noise: what is stored is within C + noise of the previous model
    big = {"w": np.full(N, 1e6)}
    quiet = PrivacySpec(mode="local", noise_multiplier=0.0, clip_norm=clip)
    assert _norm(local_privatize(big, previous, quiet, 2, 7, 1)) == pytest.approx(clip)


def test_adaptive_clipping_splits_the_noise_multiplier() -> None:
    z, sigma_b, clip = 1.0, 2.0, 0.5
    z_delta = (z ** -2 - (2 * sigma_b) ** -2) ** -0.5  # Andrew et al. 2021
    assert privacy.delta_noise_multiplier(z, sigma_b) == pytest.approx(z_delta)
    previous = {"w": np.zeros(N)}
    spec = PrivacySpec(mode="central", noise_multiplier=z, clip_norm=clip, adaptive=True,
                       count_noise_multiplier=sigma_b, seed=3)
    dp = CentralDP(spec, previous, clip, round=1)
    dp.add(Update(0, {"w": np.zeros(N)}))
    model, _, info = dp.result()
    assert info["delta_noise_multiplier"] == pytest.approx(z_delta)
    _assert_gaussian(model["w"], z_delta * clip)
    with pytest.raises(ValueError, match="count_noise_multiplier"):
        PrivacySpec.from_params({"adaptive": True, "noise_multiplier": 1.0, "count_noise_multiplier": 0.5})


def test_the_noise_is_reproducible_from_the_seed_unless_secure() -> None:
    previous = {"w": np.zeros(100, np.float32)}

    def once(seed: int, rnd: int, secure: bool = False) -> np.ndarray:
        spec = PrivacySpec(noise_multiplier=1.0, clip_norm=1.0, seed=seed, secure_noise=secure)
        dp = CentralDP(spec, previous, 1.0, rnd)
        dp.add(Update(0, {"w": np.ones(100, np.float32)}))
        return dp.result()[0]["w"]

    assert np.array_equal(once(1, 1), once(1, 1))  # bit for bit: a resume draws what the first run drew
    assert not np.array_equal(once(1, 1), once(1, 2))
    assert not np.array_equal(once(1, 1), once(2, 1))
    assert not np.array_equal(once(1, 1, secure=True), once(1, 1, secure=True))
    local = PrivacySpec(mode="local", noise_multiplier=1.0, clip_norm=1.0, seed=1)
    a = local_privatize({"w": np.ones(100, np.float32)}, previous, local, 1, 4, attempt=1)
    b = local_privatize({"w": np.ones(100, np.float32)}, previous, local, 1, 4, attempt=2)
    c = local_privatize({"w": np.ones(100, np.float32)}, previous, local, 1, 5, attempt=1)
    assert np.array_equal(a["w"], b["w"]) and not np.array_equal(a["w"], c["w"])


def test_a_fixed_denominator_round_without_clients_still_releases_noise() -> None:
    spec = PrivacySpec(noise_multiplier=1.0, clip_norm=1.0, expected_clients=4.0)
    model, _, info = CentralDP(spec, {"w": np.zeros(N)}, 1.0, 1).result()
    assert info["num_clients"] == 0
    _assert_gaussian(model["w"], 1.0 / 4.0)
    with pytest.raises(ValueError, match="no updates"):
        CentralDP(PrivacySpec(), {"w": np.zeros(3)}, 1.0, 1).result()


# ----------------------------------------------------------------------------------------------- adaptive clipping


@pytest.mark.parametrize("quantile", [0.3, 0.5, 0.8])
def test_adaptive_clipping_converges_to_the_target_quantile(quantile: float) -> None:
    """Delta norms ~ Exp(1): the γ-quantile is −ln(1 − γ). 100 clients a round, the count noised (σ_b = 5, the
    paper's clients/20); over the last 100 of 300 rounds the clip norm averages to that quantile."""
    rng = np.random.default_rng(2021)
    clients, rounds = 100, 300
    spec = PrivacySpec(noise_multiplier=0.5, clip_norm=0.05, adaptive=True, target_quantile=quantile,
                       clip_learning_rate=0.2, count_noise_multiplier=clients / 20, seed=9)
    previous = {"w": np.zeros(1)}
    clip, trace = spec.clip_norm, []
    for r in range(1, rounds + 1):
        dp = CentralDP(spec, previous, clip, r)
        for c, norm in enumerate(rng.exponential(1.0, clients)):
            dp.add(Update(c, {"w": np.array([norm])}))
        _, clip, info = dp.result()
        trace.append(clip)
    expected = -math.log(1 - quantile)
    assert np.mean(trace[-100:]) == pytest.approx(expected, rel=0.1)
    assert 0 < info["unclipped_fraction"] < 1.2


def test_adaptive_rule_is_geometric() -> None:
    assert privacy.adaptive_clip_norm(2.0, 0.9, 0.5, 0.2) == pytest.approx(2.0 * math.exp(-0.2 * 0.4))
    assert privacy.adaptive_clip_norm(2.0, 0.1, 0.5, 0.2) > 2.0  # too many clipped: the bound grows


# ----------------------------------------------------------------------------------------------- the spec


def test_spec_round_trips_and_names_the_bad_key() -> None:
    spec = PrivacySpec(mode="local", noise_multiplier=0.5, clip_norm=2.0, seed=4)
    assert PrivacySpec.from_params(spec.as_params()) == spec
    for params, key in [({"mode": "both"}, "mode"), ({"clip_norm": 0}, "clip_norm"),
                        ({"noise_multiplier": -1}, "noise_multiplier"), ({"target_quantile": 1.5}, "target_quantile"),
                        ({"seed": -1}, "seed"), ({"clip": 1.0}, "clip"),
                        ({"mode": "local", "adaptive": True}, "adaptive")]:
        with pytest.raises(ValueError, match=rf"^p\.{key}: "):
            PrivacySpec.from_params(params, "p")

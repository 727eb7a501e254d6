"""The accountant (fedkeeper/privacy): ε equals dp-accounting's own answer for the same (q, σ, T, δ), for the
sampling the round loop really does; Poisson selection selects each client with probability q."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting import rdp

from fedkeeper.privacy.accountant import Accountant
from fedkeeper.privacy.sampling import poisson_clients


def _reference(event: dp_accounting.DpEvent, relation: dp_accounting.NeighboringRelation, rounds: int,
               delta: float) -> float:
    accountant = rdp.RdpAccountant(neighboring_relation=relation)
    accountant.compose(event, rounds)
    return accountant.get_epsilon(delta)


@pytest.mark.parametrize("population,sample,z,rounds,delta", [(10, 5, 1.0, 10, 1e-5), (100, 12, 0.5, 25, 1e-3),
                                                             (20, 10, 0.5, 10, 20 ** -1.1)])
def test_fixed_size_selection_is_sampling_without_replacement_replace_one(
        population: int, sample: int, z: float, rounds: int, delta: float) -> None:
    acc = Accountant("central", z, delta, sampling="fixed", population=population, sample_size=sample)
    # replace-one: one client's clipped delta replaced moves the sum by 2C, so σ over the sensitivity is z/2
    replace_one = dp_accounting.NeighboringRelation.REPLACE_ONE
    sampled = _reference(dp_accounting.SampledWithoutReplacementDpEvent(
        population, sample, dp_accounting.GaussianDpEvent(z / 2)), replace_one, rounds, delta)
    unsampled = _reference(dp_accounting.GaussianDpEvent(z / 2), replace_one, rounds, delta)
    assert acc.epsilon(rounds) == min(sampled, unsampled)
    assert acc.relation is dp_accounting.NeighboringRelation.REPLACE_ONE


@pytest.mark.parametrize("q,z,rounds,delta", [(0.3, 1.0, 10, 1e-5), (0.05, 0.8, 50, 1e-4)])
def test_poisson_selection_is_poisson_subsampled_gaussian_add_or_remove(q: float, z: float, rounds: int,
                                                                         delta: float) -> None:
    acc = Accountant("central", z, delta, sampling="poisson", population=100, sampling_probability=q)
    expected = _reference(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)),
                          dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE, rounds, delta)
    assert acc.epsilon(rounds) == expected


def test_local_dp_composes_gaussian_releases_without_amplification() -> None:
    acc = Accountant("local", 2.0, 1e-5, sampling="fixed", population=10, sample_size=2)
    expected = _reference(dp_accounting.GaussianDpEvent(1.0), dp_accounting.NeighboringRelation.REPLACE_ONE, 7,
                          1e-5)
    assert acc.epsilon(7) == expected
    # the same noise with sampling amplification is cheaper: local DP does not get it
    central = Accountant("central", 2.0, 1e-5, sampling="fixed", population=10, sample_size=2)
    assert central.epsilon(7) < acc.epsilon(7)


def test_epsilon_grows_with_rounds_and_is_infinite_without_noise() -> None:
    acc = Accountant("central", 1.0, 1e-5, population=20, sample_size=4)
    values = [acc.epsilon(t) for t in range(0, 6)]
    assert values[0] == 0.0 and all(a < b for a, b in zip(values, values[1:]))
    assert Accountant("central", 0.0, 1e-5, population=20, sample_size=4).epsilon(1) == math.inf


def test_the_accountant_refuses_what_it_cannot_account() -> None:
    for kwargs in [{"delta": 0.0}, {"delta": 1.0}, {"sample_size": 30}, {"mode": "both"}, {"sampling": "x"},
                   {"noise_multiplier": -1.0}]:
        args = {"mode": "central", "noise_multiplier": 1.0, "delta": 1e-5, "population": 20, "sample_size": 4,
                **kwargs}
        with pytest.raises(ValueError):
            Accountant(**args)


def test_poisson_selection_frequencies_match_q() -> None:
    total, q, rounds = 50, 0.2, 4000
    picks = np.zeros(total)
    sizes = []
    for r in range(1, rounds + 1):
        chosen = poisson_clients(7, r, total, q)
        assert chosen == sorted(set(chosen)) and all(0 <= c < total for c in chosen)
        picks[chosen] += 1
        sizes.append(len(chosen))
    sd = math.sqrt(rounds * q * (1 - q))  # each client's count ~ Binomial(rounds, q)
    assert np.all(np.abs(picks - rounds * q) < 5 * sd), picks
    assert abs(np.mean(sizes) - total * q) < 5 * math.sqrt(total * q * (1 - q) / rounds)
    # chi-square of the per-client counts against uniform q: 49 degrees of freedom, 99.9 % quantile ≈ 85.4
    chi2 = float(np.sum((picks - rounds * q) ** 2 / (rounds * q * (1 - q))))
    assert chi2 < 85.4
    assert poisson_clients(7, 3, total, q) == poisson_clients(7, 3, total, q)  # a resume selects the same
    assert poisson_clients(7, 3, total, q) != poisson_clients(8, 3, total, q)

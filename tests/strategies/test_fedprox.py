"""fedprox (Li et al. 2020): μ goes to the clients; the server averages like FedAvg."""

from __future__ import annotations

import numpy as np
import pytest
from strategy_support import model, updates

from fedkeeper.runtime.strategies import StrategyError, make_strategy


def test_clients_get_mu_and_the_server_step_is_fedavg():
    rng = np.random.default_rng(0)
    previous = model(rng)
    round_updates = updates(rng, previous, 6)
    prox = make_strategy("fedprox", {"mu": 0.5})
    assert prox.client_params() == {"mu": 0.5} and make_strategy("fedprox").client_params() == {"mu": 0.01}
    assert make_strategy("fedavg").client_params() == {}
    a, _ = prox.aggregate(round_updates, previous, prox.initial_state(previous))
    b, _ = make_strategy("fedavg").aggregate(round_updates, previous, {})
    assert all(a[k].tobytes() == b[k].tobytes() for k in b)


@pytest.mark.parametrize("mu", [-0.1, float("inf"), "0.1"])
def test_mu_must_be_a_finite_number_at_least_zero(mu):
    with pytest.raises(StrategyError, match="'mu'"):
        make_strategy("fedprox", {"mu": mu})
    assert make_strategy("fedprox", {"mu": 0}).client_params() == {"mu": 0.0}

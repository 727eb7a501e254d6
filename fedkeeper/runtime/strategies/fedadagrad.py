"""FedAdagrad: Adagrad as the server optimizer over the clients' mean.

Paper: Reddi et al., "Adaptive Federated Optimization", ICLR 2021 (Algorithm 2, FedAdagrad).

Contract (see fedopt.py): Δ_t = w̄ − x_t, m_t = β₁·m_{t−1} + (1 − β₁)·Δ_t, v_t = v_{t−1} + Δ_t²,
x_{t+1} = x_t + η·m_t / (√v_t + τ). Defaults as Flower's FedAdagrad (β₁ = 0: m_t = Δ_t).
"""

from __future__ import annotations

import numpy as np

from .fedopt import FedOpt, beta_1, lr, tau


class FedAdagrad(FedOpt):
    name = "fedadagrad"
    PARAMETERS = {"server_learning_rate": lr(0.1), "beta_1": beta_1(0.0), "tau": tau(1e-9)}

    def second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        return v + delta_sq

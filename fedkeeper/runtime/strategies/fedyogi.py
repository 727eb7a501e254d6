"""FedYogi: Yogi as the server optimizer over the clients' mean.

Paper: Reddi et al., "Adaptive Federated Optimization", ICLR 2021 (Algorithm 2, FedYogi).

Contract (see fedopt.py): Δ_t = w̄ − x_t, m_t = β₁·m_{t−1} + (1 − β₁)·Δ_t,
v_t = v_{t−1} − (1 − β₂)·Δ_t²·sign(v_{t−1} − Δ_t²), x_{t+1} = x_t + η·m_t / (√v_t + τ). Defaults as Flower's FedYogi.
"""

from __future__ import annotations

import numpy as np

from .fedopt import FedOpt, beta_1, beta_2, lr, tau


class FedYogi(FedOpt):
    name = "fedyogi"
    PARAMETERS = {"server_learning_rate": lr(0.01), "beta_1": beta_1(0.9), "beta_2": beta_2(0.99), "tau": tau(1e-3)}

    def second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        b2 = self.params["beta_2"]
        return v - (1.0 - b2) * delta_sq * np.sign(v - delta_sq)

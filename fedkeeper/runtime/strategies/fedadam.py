"""FedAdam: Adam as the server optimizer over the clients' mean.

Paper: Reddi et al., "Adaptive Federated Optimization", ICLR 2021 (Algorithm 2, FedAdam).

Contract (see fedopt.py): Δ_t = w̄ − x_t, m_t = β₁·m_{t−1} + (1 − β₁)·Δ_t, v_t = β₂·v_{t−1} + (1 − β₂)·Δ_t²,
x_{t+1} = x_t + η·m_t / (√v_t + τ). Defaults as Flower's FedAdam.
"""

from __future__ import annotations

import numpy as np

from .fedopt import FedOpt, beta_1, beta_2, lr, tau


class FedAdam(FedOpt):
    name = "fedadam"
    PARAMETERS = {"server_learning_rate": lr(0.1), "beta_1": beta_1(0.9), "beta_2": beta_2(0.99), "tau": tau(1e-9)}

    def second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        b2 = self.params["beta_2"]
        return b2 * v + (1.0 - b2) * delta_sq

"""FedAvgM: FedAvg with server momentum.

Paper: Hsu, Qi, Brown, "Measuring the Effects of Non-Identical Data Distribution for Federated Visual
Classification", arXiv:1909.06335, 2019.

Contract, with x the previous model and w̄ = Σₖ nₖ·wₖ / Σₖ nₖ the clients' mean (Flower's sign convention: the
pseudo-gradient points away from the mean):
    Δ_t = x_t − w̄,   v_t = β·v_{t−1} + Δ_t   (v_{−1} = 0),   x_{t+1} = x_t − η·v_t
with η = server_learning_rate and β = server_momentum; β = 0, η = 1 is FedAvg. Server state: v (float64, one
array per model array, named ``momentum/<array>``).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .base import MeanThenStep, Param, ServerState, Weights, finite_result, spec_of

PREFIX = "momentum/"


class FedAvgM(MeanThenStep):
    name = "fedavgm"
    PARAMETERS = {
        "server_learning_rate": Param(1.0, "server learning rate η", low=0.0, low_open=True),
        "server_momentum": Param(0.9, "server momentum β (Hsu et al. use 0.9; Flower's default 0.0 is FedAvg)",
                                 low=0.0, high=1.0, high_open=True),
    }

    def state_shapes(self, model: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
        return {PREFIX + k: tuple(np.shape(a)) for k, a in model.items()}

    def initial_state(self, model: Weights) -> ServerState:
        return {key: np.zeros(shape, np.float64) for key, shape in self.state_shapes(model).items()}

    def server_step(self, previous: Weights, averaged: Weights, state: ServerState) -> tuple[Weights, ServerState]:
        self.check_state(state, previous)
        eta, beta = self.params["server_learning_rate"], self.params["server_momentum"]
        new: dict[str, np.ndarray] = {}
        out: ServerState = {}
        for key, prev in previous.items():
            x = prev.astype(np.float64)
            velocity = beta * state[PREFIX + key] + (x - averaged[key].astype(np.float64))
            new[key] = x - eta * velocity
            out[PREFIX + key] = velocity
        return finite_result(self.name, new, spec_of(previous)), out

    def step_bytes(self, elements: int, model_bytes: int) -> int:
        # state in + state out + two float64 temporaries + the new model
        return 4 * 8 * elements + model_bytes

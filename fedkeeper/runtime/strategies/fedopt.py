"""Adaptive server optimizers (FedAdagrad, FedAdam, FedYogi): the shared step.

Paper: Reddi, Charles, Zaheer, Garrett, Rush, Konečný, Kumar, McMahan, "Adaptive Federated Optimization",
ICLR 2021 (Algorithm 2).

Contract, with x the previous model and w̄ = Σₖ nₖ·wₖ / Σₖ nₖ the clients' mean (all float64, element-wise):
    Δ_t = w̄ − x_t
    m_t = β₁·m_{t−1} + (1 − β₁)·Δ_t                         (m_{−1} = 0)
    v_t = v_{t−1} + Δ_t²                                    FedAdagrad
    v_t = β₂·v_{t−1} + (1 − β₂)·Δ_t²                        FedAdam
    v_t = v_{t−1} − (1 − β₂)·Δ_t²·sign(v_{t−1} − Δ_t²)      FedYogi
    x_{t+1} = x_t + η·m_t / (√v_t + τ)                       (v_{−1} = τ², as the paper's v_{−1} ≥ τ²)
η = server_learning_rate, τ = tau (the adaptivity). No bias correction (the paper has none; recent Flower adds
one). Server state: m and v, float64, named ``m/<array>`` and ``v/<array>``.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping

import numpy as np

from .base import MeanThenStep, Param, ServerState, Weights, finite_result, spec_of

M, V = "m/", "v/"


def lr(default: float) -> Param:
    return Param(default, "server learning rate η", low=0.0, low_open=True)


def beta_1(default: float) -> Param:
    return Param(default, "first-moment decay β₁", low=0.0, high=1.0, high_open=True)


def beta_2(default: float) -> Param:
    return Param(default, "second-moment decay β₂", low=0.0, high=1.0, high_open=True)


def tau(default: float) -> Param:
    return Param(default, "adaptivity τ (added to √v; v starts at τ²)", low=0.0, low_open=True)


class FedOpt(MeanThenStep):
    """The step above; subclasses give the second-moment rule."""

    @abstractmethod
    def second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        """v_t from v_{t−1} and Δ_t² (new arrays; the inputs may be read-only)."""

    def state_shapes(self, model: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
        out: dict[str, tuple[int, ...]] = {}
        for k, a in model.items():
            out[M + k] = out[V + k] = tuple(np.shape(a))
        return out

    def initial_state(self, model: Weights) -> ServerState:
        t = self.params["tau"]
        return {key: (np.zeros(shape, np.float64) if key.startswith(M) else np.full(shape, t * t, np.float64))
                for key, shape in self.state_shapes(model).items()}

    def server_step(self, previous: Weights, averaged: Weights, state: ServerState) -> tuple[Weights, ServerState]:
        self.check_state(state, previous)
        eta, t = self.params["server_learning_rate"], self.params["tau"]
        b1 = self.params["beta_1"]
        new: dict[str, np.ndarray] = {}
        out: ServerState = {}
        for key, prev in previous.items():
            x = prev.astype(np.float64)
            delta = averaged[key].astype(np.float64) - x
            m = b1 * state[M + key] + (1.0 - b1) * delta
            v = self.second_moment(state[V + key], delta * delta)
            new[key] = x + eta * m / (np.sqrt(v) + t)
            out[M + key], out[V + key] = m, v
        return finite_result(self.name, new, spec_of(previous)), out

    def step_bytes(self, elements: int, model_bytes: int) -> int:
        # m, v in and out + about four float64 temporaries + the new model
        return 8 * 8 * elements + model_bytes

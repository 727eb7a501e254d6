"""FedProx: FedAvg on the server, a proximal term on the clients.

Paper: Li, Sahu, Zaheer, Sanjabi, Talwalkar, Smith, "Federated Optimization in Heterogeneous Networks",
MLSys 2020.

Contract: each client minimises Fₖ(w) + (μ/2)·‖w − w_t‖² (``client_params`` hands μ to the clients' training,
fedkeeper.runtime.model); the server aggregates like FedAvg, w_{t+1} = Σₖ nₖ·wₖ / Σₖ nₖ. μ = 0 is FedAvg.
"""

from __future__ import annotations

from typing import Any

from .base import Param
from .fedavg import FedAvg


class FedProx(FedAvg):
    name = "fedprox"
    PARAMETERS = {
        "mu": Param(0.01, "proximal term μ the clients add, (μ/2)·‖w − w_global‖² (0 = FedAvg)", low=0.0),
    }

    def client_params(self) -> dict[str, Any]:
        return {"mu": self.params["mu"]}

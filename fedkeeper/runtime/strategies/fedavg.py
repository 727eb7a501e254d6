"""FedAvg: the example-weighted mean of the clients' models.

Paper: McMahan, Moore, Ramage, Hampson, Agüera y Arcas, "Communication-Efficient Learning of Deep Networks from
Decentralized Data", AISTATS 2017 (Algorithm 1, FederatedAveraging).

Contract: w_{t+1} = Σₖ nₖ·wₖ / Σₖ nₖ over the round's updates (nₖ the client's example count), summed in float64 in
ascending client order and cast to the model's dtypes: bit-identical to fedkeeper's FedAvg before strategies
existed (``StreamingMean``). Streaming, memory O(model), no server state.
"""

from __future__ import annotations

from .base import MeanThenStep, ServerState, Weights


class FedAvg(MeanThenStep):
    name = "fedavg"
    uses_previous_values = False  # the step returns the mean: the previous model is only its spec

    def server_step(self, previous: Weights, averaged: Weights, state: ServerState) -> tuple[Weights, ServerState]:
        self.check_state(state, previous)
        return averaged, {}

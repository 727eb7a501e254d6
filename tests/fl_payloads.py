"""The payloads of one small federated round, as the orchestrator sends them (fedkeeper/scenarios/
federated_learning.py: `client_payload`, `aggregator_payload`; the tracker adds `activation_id` and `attempt`),
for tests that drive the packaged functions under a platform's own runtime."""

from __future__ import annotations

import uuid
from typing import Any

MLP = {"model": "mlp", "input_size": 64, "hidden_size": 32, "output_size": 10}
TRAIN = {"optim": "adam", "lr": 0.01, "batch_size": 10, "local_epochs": 1, "mu": 0.0, "l2": 0.0}
DIGITS = {"dataset": "digits", "partition": "iid"}
NUM_CLIENTS = 4
SEED = 7


def init(run_id: str) -> dict[str, Any]:
    return {"mode": "init", "run_id": run_id, "round": 0, "seed": SEED, "model": MLP, "data": DIGITS,
            "keep_models": 0}


def client(run_id: str, round_number: int, client_id: int) -> dict[str, Any]:
    """One client's activation: a fresh activation id, first attempt."""
    return {"run_id": run_id, "round": round_number, "client_id": client_id, "num_clients": NUM_CLIENTS,
            "seed": SEED, "model": MLP, "train": TRAIN, "data": DIGITS,
            "activation_id": uuid.uuid4().hex, "attempt": 1}


def aggregate(run_id: str, round_number: int, clients: list[tuple[dict[str, Any], dict[str, Any]]]
              ) -> dict[str, Any]:
    """The aggregation of the given (client payload, its acknowledgement) pairs."""
    updates = [{"client_id": sent["client_id"], "activation_id": sent["activation_id"], "attempt": sent["attempt"],
                **({"sha256": ack["sha256"]} if ack.get("sha256") else {})} for sent, ack in clients]
    return {"mode": "aggregate", "run_id": run_id, "round": round_number, "seed": SEED, "model": MLP,
            "data": DIGITS, "keep_models": 0, "num_clients": NUM_CLIENTS, "updates": updates}

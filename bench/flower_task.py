"""The sample task run by Flower's simulation engine, for a side-by-side wall-time comparison (bench_rounds.py).

Same numpy model, optimiser, data partitions, epochs, clients and rounds as `fedkeeper start`: it imports
`fedkeeper.runtime` (numpy only) for them. Needs a Python with `flwr[simulation]` (Ray). Prints one JSON line:
    {"wall_s": ..., "accuracy": ..., "rounds": ..., "per_round": ..., "total": ...}
Run:  FLWR_PYTHON=/path/to/venv/bin/python python bench/bench_rounds.py   (or this file directly with that Python)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from fedkeeper.runtime import data, model  # noqa: E402

MODEL = {"model": "mlp", "input_size": 64, "hidden_size": 32, "output_size": 10}
TRAIN = {"optim": "adam", "lr": 0.01, "batch_size": 10, "local_epochs": 5, "mu": 0.0, "l2": 0.0}
SEED = 42


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--total", type=int, default=100)
    parser.add_argument("--per-round", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=TRAIN["local_epochs"])
    args = parser.parse_args()
    TRAIN["local_epochs"] = args.epochs

    from flwr.app import Context
    from flwr.client import NumPyClient
    from flwr.clientapp import ClientApp
    from flwr.server import ServerAppComponents, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    logging.getLogger("flwr").setLevel(logging.ERROR)
    mdl = model.build_model(MODEL)
    spec = data.DataSpec.from_params({"dataset": "digits", "partition": "iid"}, "data")
    names = list(mdl.init(SEED))
    test = data.load_split(spec, "test")
    accuracy: list[float] = []

    class DigitsClient(NumPyClient):
        def __init__(self, cid: int) -> None:
            self.cid = cid

        def fit(self, parameters, config):  # type: ignore[no-untyped-def]
            weights = dict(zip(names, parameters))
            local = data.client_split(spec, args.total, self.cid, SEED)
            rnd = int(config.get("server_round", 1))
            new, metrics = model.train_local(mdl, weights, local.x, local.y, seed=model.derive_seed(SEED, rnd, self.cid),
                                             **TRAIN)
            return [np.asarray(new[n]) for n in names], int(metrics["num_examples"]), {}

    def client_fn(context: Context):  # type: ignore[no-untyped-def]
        return DigitsClient(int(context.node_config["partition-id"])).to_client()

    def evaluate(server_round, parameters, config):  # type: ignore[no-untyped-def]
        loss, acc = mdl.evaluate(dict(zip(names, parameters)), test.x, test.y)
        accuracy.append(float(acc))
        return float(loss), {"accuracy": float(acc)}

    def server_fn(context: Context) -> ServerAppComponents:
        from flwr.common import ndarrays_to_parameters

        fraction = args.per_round / args.total
        strategy = FedAvg(fraction_fit=fraction, fraction_evaluate=0.0, min_fit_clients=args.per_round,
                          min_available_clients=args.total, evaluate_fn=evaluate,
                          on_fit_config_fn=lambda rnd: {"server_round": rnd},
                          initial_parameters=ndarrays_to_parameters(list(mdl.init(SEED).values())))
        return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=args.rounds))

    t0 = time.perf_counter()
    run_simulation(server_app=ServerApp(server_fn=server_fn), client_app=ClientApp(client_fn=client_fn),
                   num_supernodes=args.total,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": args.cpus, "include_dashboard": False}})
    wall = time.perf_counter() - t0
    print(json.dumps({"wall_s": wall, "accuracy": accuracy[-1] if accuracy else None, "rounds": args.rounds,
                      "per_round": args.per_round, "total": args.total}))


if __name__ == "__main__":
    main()

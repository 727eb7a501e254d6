"""The calls an experiment will make, and how long a call takes on this machine: the inputs of `fedkeeper cost`.

`planned_calls` follows the round loop (`scenarios.federated_learning`): each round draws the same clients from
(seed, round) as the run will (`tracker.rank_clients`, over-selection included; Poisson sampling under
`privacy.sampling: poisson`), each client is served by the
cluster the placement gives it (under client packing, one call per pack: `scenarios.packing`), and the aggregator
is called once per round plus once for round 0 (init).
Retries are not planned: a run that retries costs more. Nothing is deployed and no platform is contacted.

`calibrate` times the configured model on this machine, in process, on synthetic data of the configured shape:
a few local-training steps at the configured batch size (after one warm-up step), and one evaluation pass. A
client call is then ``local_epochs × ceil(shard / batch_size)`` steps plus `CLIENT_OVERHEAD_S`; an aggregator
call evaluates the test set plus `AGGREGATOR_OVERHEAD_S`. A function's CPU share differs from this machine's
(Lambda gives CPU in proportion to memory), so this is an order of magnitude; `--from RUN` uses a measured run.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from fedkeeper.config.models import Config, FederatedLearning
from fedkeeper.fabric import Fabric
from fedkeeper.privacy.plan import plan_for
from fedkeeper.privacy.sampling import poisson_clients
from fedkeeper.results.cost_estimate import Duration, PlannedCalls
from fedkeeper.runtime import data as rt_data
from fedkeeper.runtime import model as rt_model
from fedkeeper.scenarios.federated_learning import data_spec, model_spec
from fedkeeper.scenarios.packing import plan_packs
from fedkeeper.tracker import rank_clients

#: seconds a client call spends outside training: read the global model, write the update, start up warm
CLIENT_OVERHEAD_S = 0.3
#: seconds an aggregator call spends outside evaluation: read the updates, average them, write the model
AGGREGATOR_OVERHEAD_S = 0.5
#: examples assumed for a dataset whose size only a download would tell (an MNIST-sized train and test set)
DEFAULT_TRAIN_EXAMPLES, DEFAULT_TEST_EXAMPLES = 60_000, 10_000
#: training steps timed (after one warm-up step)
CALIBRATION_STEPS = 5


def selected_per_round(fl: FederatedLearning) -> int:
    """Clients invoked per round: `num_clients_per_round` plus over-selection, at most all clients."""
    per_round = fl.clients_info.num_clients_per_round
    return min(fl.clients_info.total_num_clients, math.ceil(per_round * (1 + fl.resilience.overselect)))


def planned_calls(config: Config, rounds: int, workdir: Path | str) -> list[PlannedCalls]:
    """fl_client calls per cluster and the aggregator's calls, over `rounds` rounds (clusters in config order)."""
    fl = config.fl
    fabric = Fabric(config, workdir)  # placement and limits only: no provider is created
    placement = fabric.client_clusters()
    total, count = fl.clients_info.total_num_clients, selected_per_round(fl)
    poisson = (plan := plan_for(fl)) is not None and plan.sampling == "poisson"
    per_cluster: Counter[str] = Counter()
    for r in range(1, rounds + 1):
        drawn = (poisson_clients(fl.seed, r, total, fl.clients_info.num_clients_per_round / total) if poisson
                 else rank_clients(fl.seed, r, total, count))
        if fl.clients_info.clients_per_invocation > 1:  # client packing: one call per pack (scenarios.packing)
            packs = plan_packs("cost", r, drawn, fl.clients_info.clients_per_invocation, placement.__getitem__, None)
            per_cluster.update(placement[p.first] for p in packs)
        else:
            per_cluster.update(placement[c] for c in drawn)
    calls = []
    for cluster in fabric.clusters:
        if per_cluster[cluster]:
            calls.append(PlannedCalls(cluster, fabric.kind(cluster), "fl_client",
                                      fabric.limits("fl_client", cluster)[0], per_cluster[cluster]))
    server = fabric.server_cluster()
    calls.append(PlannedCalls(server, fabric.kind(server), "fl_server_aggregator",
                              fabric.limits("fl_server_aggregator", server)[0], rounds + 1))
    return calls


def _examples(spec: rt_data.DataSpec, split: str, default: int) -> tuple[int, bool]:
    """(examples in a split, whether it is known) from the file's header, never a download."""
    try:
        shape = rt_data.images_shape(spec, split)
    except (rt_data.DataError, OSError, ValueError):
        shape = None
    return (int(shape[0]), True) if shape else (default, False)


def calibrate(fl: FederatedLearning) -> tuple[dict[tuple[str | None, str], Duration], list[str]]:
    """Durations of fl_client and fl_server_aggregator from timing the model here; notes that say how."""
    spec = rt_model.ModelSpec.from_params(model_spec(fl))
    mdl = rt_model.build_model(spec)
    weights = mdl.init(fl.seed)
    dspec = rt_data.DataSpec.from_params(data_spec(fl))
    train_n, train_known = _examples(dspec, "train", DEFAULT_TRAIN_EXAMPLES)
    test_n, test_known = _examples(dspec, "test", DEFAULT_TEST_EXAMPLES)
    params = rt_model.TrainConfig.from_params(fl.model_params.model_dump(), "model_params")
    batch = int(params.batch_size)
    rng = np.random.default_rng(0)

    def synthetic(n: int) -> tuple[np.ndarray, np.ndarray]:
        return (rng.standard_normal((n, spec.num_features)).astype(np.float32),
                rng.integers(0, spec.output_size, n))

    def train(n: int) -> dict[str, Any]:
        x, y = synthetic(n)
        _, metrics = rt_model.train_local(mdl, weights, x, y, optim=params.optim, lr=params.lr, batch_size=batch,
                                          local_epochs=1, mu=params.mu, l2=params.l2, seed=0)
        return metrics

    train(batch)  # warm-up: first-call costs (allocation, BLAS start) are not a step's
    t0 = time.perf_counter()
    steps = int(train(batch * CALIBRATION_STEPS)["steps"]) or 1
    step_s = (time.perf_counter() - t0) / steps
    x, y = synthetic(min(test_n, 512))
    t0 = time.perf_counter()
    mdl.evaluate(weights, x, y)
    eval_s = (time.perf_counter() - t0) / len(y) * test_n
    shard = math.ceil(train_n / fl.clients_info.total_num_clients)
    client_steps = int(params.local_epochs) * math.ceil(shard / batch)
    packed = min(fl.clients_info.clients_per_invocation, selected_per_round(fl))  # clients one call trains
    client_s = packed * client_steps * step_s + CLIENT_OVERHEAD_S
    aggregator_s = eval_s + AGGREGATOR_OVERHEAD_S
    source = "calibration on this machine"
    notes = [f"durations: calibrated here, no measured run: {step_s * 1000:.2f} ms per training step of "
             f"{spec.model} at batch {batch}; a client trains {client_steps} steps ({params.local_epochs} epoch(s) "
             f"of a {shard}-example shard)"
             + (f", a call up to {packed} clients (clients_per_invocation)" if packed > 1 else "")
             + f" + {CLIENT_OVERHEAD_S} s overhead = {client_s:.3f} s; the aggregator "
             f"evaluates {test_n} examples in {eval_s:.3f} s + {AGGREGATOR_OVERHEAD_S} s overhead = "
             f"{aggregator_s:.3f} s; p95 = mean (a calibration has no spread)"]
    if not (train_known and test_known):
        notes.append(f"dataset size unknown without downloading it: assumed {DEFAULT_TRAIN_EXAMPLES} train and "
                     f"{DEFAULT_TEST_EXAMPLES} test examples")
    return ({(None, "fl_client"): Duration(client_s, client_s, steps, source),
             (None, "fl_server_aggregator"): Duration(aggregator_s, aggregator_s, 1, source)}, notes)

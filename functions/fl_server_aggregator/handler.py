"""fl_server_aggregator: writes the round-0 model (``mode: init``) and aggregates a round (``mode: aggregate``).

Payload::

    {"mode": "init" | "aggregate", "run_id": str, "round": int, "seed": int, "model": {...}, "data": {...},
     "keep_models": int (0 = keep every global model),
     aggregate only: "num_clients": int,
                     "updates": [{"client_id": int, "activation_id": str, "attempt": int, "sha256"?: str}, ...]}

``aggregate`` takes, for each client the orchestrator lists, only the update document the named activation wrote
(``runtime.admission``): its run, round, client, activation id and attempt must be the issued ones, it must have
trained on the previous global model, its ``num_examples`` must be an integer in [1, the size of that client's
shard] (recomputed here from the seeded partition: ``data.shard_sizes``), its blob must be the one the client
acknowledged (``sha256``, when the orchestrator saw it) and decode to the model's names, shapes and dtypes with
finite values. Admitted updates are averaged in ascending client-id order with streaming FedAvg (float64 weights,
one update in memory at a time); the result is evaluated on the test split and stored as model ``round`` with its
metrics. Every other update is listed in ``rejected`` with its reason, and the round goes on without it.

Both modes are idempotent: if the model of ``round`` already exists, the stored result comes back with
``already_done: true`` and nothing changes (a retried or duplicated aggregator call cannot fork the run).
"""

from __future__ import annotations

import math
import os
import sys
import time
from functools import partial
from typing import Any, Mapping

# One BLAS thread: a function gets about one vCPU and trains on small batches, where extra BLAS threads only fight
# over it (a 10x slowdown measured on a busy 2-core host) and make float results depend on the host's core count.
# Must be set before numpy loads; a value given in the deployed environment wins.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np

from fedkeeper.runtime import admission, blobstore, data, model
from fedkeeper.runtime.params import required

FUNCTION = "fl_server_aggregator"

_field = partial(required, FUNCTION)  # _field(params, key, kind, *, minimum=None)


class NoValidUpdates(RuntimeError):
    """Every listed update was rejected (or none was listed): the round cannot produce a model."""


def handle(params: dict, *, db: Any = None) -> dict:
    """Dispatch on ``mode``; ``db`` is injected by tests, functions connect from the environment."""
    started = time.perf_counter()
    if not isinstance(params, Mapping):
        raise ValueError(f"{FUNCTION}: params must be a JSON object")
    mode = params.get("mode")
    if mode not in ("init", "aggregate"):
        raise ValueError(f"{FUNCTION}: params.mode must be init or aggregate, got {mode!r}")
    run_id = _field(params, "run_id", str)
    mdl = model.build_model(model.ModelSpec.from_params(_field(params, "model", Mapping), "params.model"))
    spec = data.DataSpec.from_params(_field(params, "data", Mapping), "params.data")
    store = blobstore.BlobStore(db if db is not None else blobstore.connect())
    if mode == "init":
        return _init(params, run_id, mdl, spec, store, started)
    return _aggregate(params, run_id, mdl, spec, store, started)


def _init(
    params: Mapping[str, Any], run_id: str, mdl: model.Model, spec: data.DataSpec, store: blobstore.BlobStore,
    started: float,
) -> dict:
    rnd = params.get("round", 0)
    if rnd != 0:
        raise ValueError(f"{FUNCTION}: mode init writes round 0, got params.round = {rnd!r}")
    seed = _field(params, "seed", int, minimum=0)
    existing = store.get_model_doc(run_id, 0)
    if existing is not None:
        return _result(existing, started, already_done=True)
    weights = mdl.init(model.derive_seed(seed, 0))
    loss, accuracy = _evaluate(mdl, spec, weights)
    doc = store.write_model(run_id, 0, weights, {"accuracy": accuracy, "loss": loss, "rejected": []}, num_updates=0)
    return _result(doc, started, already_done=bool(doc.get("duplicate")))


def _aggregate(
    params: Mapping[str, Any], run_id: str, mdl: model.Model, spec: data.DataSpec, store: blobstore.BlobStore,
    started: float,
) -> dict:
    rnd = _field(params, "round", int, minimum=1)
    seed = _field(params, "seed", int, minimum=0)
    num_clients = _field(params, "num_clients", int, minimum=1)
    issued = admission.parse_issued(_field(params, "updates", list), num_clients, f"{FUNCTION}: params.updates")
    keep_models = params.get("keep_models", 0)
    if isinstance(keep_models, bool) or not isinstance(keep_models, int) or keep_models < 0:
        raise ValueError(f"{FUNCTION}: params.keep_models must be an integer >= 0, got {keep_models!r}")

    existing = store.get_model_doc(run_id, rnd)
    if existing is not None:
        return _result(existing, started, already_done=True)

    global_weights, _ = store.read_model(run_id, rnd - 1, mdl.expected())
    expected = model.expected_spec(global_weights)
    del global_weights  # only its spec is needed; keep peak memory at one model + one update
    shards = data.shard_sizes(spec, num_clients, seed)
    outcome = admission.aggregate(issued, store, run_id=run_id, round=rnd, expected=expected, shard_sizes=shards)
    rejected, accepted = outcome.rejected, outcome.accepted
    if outcome.weights is None:
        reasons = ", ".join(f"client {r['client_id']}: {r['reason']}" for r in rejected) or "no updates listed"
        raise NoValidUpdates(f"no valid updates for round {rnd} of run {run_id} ({reasons})")

    new_weights = outcome.weights
    loss, accuracy = _evaluate(mdl, spec, new_weights)
    metrics = {
        "accuracy": accuracy,
        "loss": loss,
        "rejected": rejected,
        "clients": accepted,
        "num_examples": outcome.total_examples,
    }
    doc = store.write_model(run_id, rnd, new_weights, metrics, num_updates=len(accepted))
    if keep_models > 0 and not doc.get("duplicate"):
        store.gc_models(run_id, keep_last=keep_models)
        store.gc_updates(run_id, through_round=rnd)  # aggregated: their blobs are no longer needed
    return _result(doc, started, already_done=bool(doc.get("duplicate")))


def _evaluate(mdl: model.Model, spec: data.DataSpec, weights: Mapping[str, Any]) -> tuple[float, float]:
    test = data.load_split(spec, "test")
    if test.x.shape[1] != mdl.spec.num_features:
        raise ValueError(
            f"{FUNCTION}: the test images have {test.x.shape[1]} features, params.model needs {mdl.spec.num_features}"
        )
    if len(test) and test.y.max() >= mdl.spec.output_size:
        raise ValueError(
            f"{FUNCTION}: test labels reach {test.y.max()}, params.model.output_size is {mdl.spec.output_size}"
        )
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        loss, accuracy = mdl.evaluate(weights, test.x, test.y)
    # A finite model can still overflow its own loss (weights of 1e20 are finite): NaN and Inf can be neither
    # stored (the embedded store keeps JSON) nor returned as JSON, and a model that cannot be stored would fail
    # the aggregator on every retry. Such a loss is recorded as the largest float.
    if not math.isfinite(loss):
        loss = sys.float_info.max
    return float(loss), float(accuracy)


def _result(doc: Mapping[str, Any], started: float, *, already_done: bool) -> dict:
    metrics = doc.get("metrics") or {}
    return {
        "ok": True,
        "round": doc.get("round"),
        "accuracy": metrics.get("accuracy"),
        "loss": metrics.get("loss"),
        "num_updates": doc.get("num_updates"),
        "rejected": list(metrics.get("rejected") or []),
        "model_sha256": doc.get("sha256"),
        "duration_s": round(time.perf_counter() - started, 6),
        "already_done": already_done,
    }

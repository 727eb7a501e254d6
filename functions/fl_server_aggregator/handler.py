"""fl_server_aggregator: writes the round-0 model (``mode: init``) and aggregates a round (``mode: aggregate``).

Payload::

    {"mode": "init" | "aggregate", "run_id": str, "round": int, "seed": int, "model": {...}, "data": {...},
     "keep_models": int (0 = keep every global model),
     aggregate only: "num_clients": int,
                     "updates": [{"client_id": int, "activation_id": str, "attempt": int, "sha256"?: str}, ...],
                     "strategy"?: {"name": str, **params} (default {"name": "fedavg"}),
                     "privacy"?: PrivacySpec.as_params() or null}

``aggregate`` takes, for each client the orchestrator lists, only the update document the named activation wrote
(``runtime.admission``): its run, round, client, activation id and attempt must be the issued ones, it must have
trained on the previous global model, its ``num_examples`` must be an integer in [1, the size of that client's
shard] (recomputed here from the seeded partition: ``data.shard_sizes``), its blob must be the one the client
acknowledged (``sha256``, when the orchestrator saw it) and decode to the model's names, shapes and dtypes with
finite values. The admitted updates go, lazily and in ascending client-id order, to the strategy
(``runtime.strategies``; FedAvg: streaming weighted mean, one update in memory at a time), or under central
differential privacy to ``privacy.CentralDP`` (each delta clipped, the sum noised) and then the strategy's server
step. The result is evaluated on the test split and stored as model ``round`` with its metrics. Every other update
is listed in ``rejected`` with its reason, and the round goes on without it.

A stateful strategy's server state (and the adaptive clip norm) after round r is stored next to model r, before
it (``BlobStore.write_state``); the model document names it, so round r+1 reads exactly the state of the
committed model r, and a resumed run continues it.

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

from fedkeeper.runtime import admission, blobstore, data, model, privacy, strategies
from fedkeeper.runtime.params import required

FUNCTION = "fl_server_aggregator"

_field = partial(required, FUNCTION)  # _field(params, key, kind, *, minimum=None)


class NoValidUpdates(RuntimeError):
    """Every listed update was rejected (or none was listed): the round cannot produce a model."""


class TooFewUpdates(NoValidUpdates):
    """The strategy needs more admitted updates than the round has (krum, bulyan: more than its f allows)."""


#: names in the stored state blob: the strategy's arrays and the privacy mechanism's, kept apart
_STRATEGY, _CLIP_NORM = "strategy/", "privacy/clip_norm"


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
    strategy = _strategy(params)
    dp = _privacy(params, strategy)

    existing = store.get_model_doc(run_id, rnd)
    if existing is not None:
        return _result(existing, started, already_done=True)

    previous, previous_doc = store.read_model(run_id, rnd - 1, mdl.expected())
    state, clip_norm = _read_state(store, run_id, rnd - 1, previous_doc, strategy, previous, dp)
    shards = data.shard_sizes(spec, num_clients, seed)
    admitted = admission.Admitted(issued, store, run_id=run_id, round=rnd, expected=model.expected_spec(previous),
                                  shard_sizes=shards)
    dp_metrics: dict[str, Any] | None = None
    try:
        if dp is not None and dp.mode == "central":
            mechanism = privacy.CentralDP(dp, previous, clip_norm, rnd)
            for update in admitted:
                mechanism.add(update)
            if dp.expected_clients is None:  # under Poisson sampling an empty round still releases a noised step
                _require_updates(admitted, run_id, rnd)
            noisy_mean, next_clip, info = mechanism.result()
            new_weights, state = strategy.server_step(previous, noisy_mean, state)
            dp_metrics = {"mode": "central", "clip_norm": float(clip_norm), **_plain(info)}
        else:
            new_weights, state = strategy.aggregate(admitted, previous, state)
            next_clip = clip_norm
            if dp is not None:
                dp_metrics = {"mode": "local", "clip_norm": float(clip_norm)}
    except strategies.StrategyError as exc:
        _require_updates(admitted, run_id, rnd)
        raise TooFewUpdates(f"round {rnd} of run {run_id}: {exc} ({len(admitted.accepted)} admitted, "
                            f"{len(admitted.rejected)} rejected)") from None
    if dp is None or dp.mode != "central" or dp.expected_clients is None:
        _require_updates(admitted, run_id, rnd)
    del previous

    loss, accuracy = _evaluate(mdl, spec, new_weights)
    metrics: dict[str, Any] = {
        "accuracy": accuracy,
        "loss": loss,
        "rejected": admitted.rejected,
        "clients": admitted.accepted,
        "num_examples": admitted.total_examples,
    }
    if dp_metrics is not None:
        metrics["privacy"] = dp_metrics
    stored_state = {f"{_STRATEGY}{k}": v for k, v in state.items()}
    if dp is not None and dp.adaptive:
        stored_state[_CLIP_NORM] = np.asarray(next_clip, np.float64)
    # the state first, then the model that names it: the model document stays the commit point of the round
    state_sha = store.write_state(run_id, rnd, stored_state)["sha256"] if stored_state else None
    doc = store.write_model(run_id, rnd, new_weights, metrics, num_updates=len(admitted.accepted),
                            state_sha256=state_sha)
    if keep_models > 0 and not doc.get("duplicate"):
        store.gc_models(run_id, keep_last=keep_models)
        store.gc_updates(run_id, through_round=rnd)  # aggregated: their blobs are no longer needed
    return _result(doc, started, already_done=bool(doc.get("duplicate")))


def _strategy(params: Mapping[str, Any]) -> strategies.Strategy:
    raw = params.get("strategy") or {"name": "fedavg"}
    if not isinstance(raw, Mapping) or not isinstance(raw.get("name"), str):
        raise ValueError(f"{FUNCTION}: params.strategy must be an object with a string name, got {raw!r}")
    try:
        return strategies.make_strategy(raw["name"], {k: v for k, v in raw.items() if k != "name"})
    except strategies.StrategyError as exc:
        raise ValueError(f"{FUNCTION}: params.strategy: {exc}") from None


def _privacy(params: Mapping[str, Any], strategy: strategies.Strategy) -> privacy.PrivacySpec | None:
    raw = params.get("privacy")
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise ValueError(f"{FUNCTION}: params.privacy must be an object or null, got {type(raw).__name__}")
    spec = privacy.PrivacySpec.from_params(raw, f"{FUNCTION}: params.privacy")
    if spec.mode == "central" and not (strategy.supports_dp and isinstance(strategy, strategies.MeanThenStep)):
        raise ValueError(f"{FUNCTION}: params.privacy: strategy {strategy.name!r} does not support differential "
                         "privacy (the FedAvg family does)")
    return spec


def _read_state(store: blobstore.BlobStore, run_id: str, rnd: int, doc: Mapping[str, Any],
                strategy: strategies.Strategy, previous: Mapping[str, np.ndarray],
                dp: privacy.PrivacySpec | None) -> tuple[dict[str, np.ndarray], float]:
    """The strategy's state and the clip norm after round ``rnd``: what its model document names, else (round 0,
    or a model written by a stateless strategy) the strategy's initial state and the configured clip norm."""
    sha = doc.get("state_sha256")
    stored = store.read_state(run_id, rnd, sha) if isinstance(sha, str) else {}
    state = {k[len(_STRATEGY):]: np.array(v) for k, v in stored.items() if k.startswith(_STRATEGY)}
    if not state:
        state = strategy.initial_state(previous)
    clip = float(stored[_CLIP_NORM]) if _CLIP_NORM in stored and dp is not None and dp.adaptive else \
        (dp.clip_norm if dp is not None else 0.0)
    return state, clip


def _require_updates(admitted: admission.Admitted, run_id: str, rnd: int) -> None:
    if not admitted.accepted:
        reasons = ", ".join(f"client {r['client_id']}: {r['reason']}" for r in admitted.rejected) or "no updates listed"
        raise NoValidUpdates(f"no valid updates for round {rnd} of run {run_id} ({reasons})")


def _plain(info: Mapping[str, Any]) -> dict[str, Any]:
    """The mechanism's report as JSON/BSON values (NumPy scalars become Python numbers)."""
    return {str(k): (v.item() if isinstance(v, np.generic) else v) for k, v in (info or {}).items()}


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
        **_privacy_result(metrics.get("privacy")),
    }


def _privacy_result(dp: Any) -> dict[str, Any]:
    """``clip_norm`` (the norm this round clipped to) and ``unclipped_fraction`` (share of admitted updates whose
    delta was within it; central DP only: under local DP the clients clip) when the round ran with privacy."""
    if not isinstance(dp, Mapping):
        return {}
    return {"clip_norm": dp.get("clip_norm"), "unclipped_fraction": dp.get("unclipped_fraction")}

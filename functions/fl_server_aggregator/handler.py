"""fl_server_aggregator: writes the round-0 model (``mode: init``) and aggregates a round (``mode: aggregate``).

Payload::

    {"mode": "init" | "aggregate", "run_id": str, "round": int, "seed": int, "model": {...}, "data": {...},
     "keep_models": int (0 = keep every global model),
     aggregate only: "num_clients": int,
                     "updates": [{"client_id": int, "activation_id": str, "attempt": int, "sha256"?: str}, ...],
                     "strategy"?: {"name": str, **params} (default {"name": "fedavg"}),
                     "privacy"?: PrivacySpec.as_params() or null,
                     "staleness"?: {"weighting", "server_lr", "max_staleness"} (stale round modes: an update
                                   entry may then name the earlier "round" it was issued in; runtime/staleness.py),
                     "gc_through"?: int (collect update blobs only up to this round; default: this round),
     aggregate, combine: "gc"?: bool (default true: this function collects garbage after its commit, below;
                         false: the caller does, off the aggregation's critical path: the orchestrator, in the
                         background, scenarios/rounds/collect.py)}

``partial`` and ``combine`` are the nodes of tree aggregation (docs/aggregation.md; below, "tree aggregation").

``aggregate`` takes, for each client the orchestrator lists, only the update document the named activation wrote
(``runtime.admission``): its run, round, client, activation id and attempt must be the issued ones, it must have
trained on the previous global model, its ``num_examples`` must be an integer in [1, the size of that client's
shard] (recomputed here from the seeded partition: ``tasks.partition.shard_sizes``), its blob must be the one the client
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
from typing import Any, Mapping, cast

# One BLAS thread: a function gets about one vCPU and trains on small batches, where extra BLAS threads only fight
# over it (a 10x slowdown measured on a busy 2-core host) and make float results depend on the host's core count.
# Must be set before numpy loads; a value given in the deployed environment wins.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np

from fedkeeper.runtime import (admission, blobstore, bsonview, data, model, partials, privacy, staleness, strategies,
                               tasks)
from fedkeeper.runtime.params import required
from fedkeeper.runtime.tasks import partition

FUNCTION = "fl_server_aggregator"

_field = partial(required, FUNCTION)  # _field(params, key, kind, *, minimum=None)


class NoValidUpdates(RuntimeError):
    """Every listed update was rejected (or none was listed): the round cannot produce a model."""


class TooFewUpdates(NoValidUpdates):
    """The strategy needs more admitted updates than the round has (krum, bulyan: more than its f allows)."""


#: the FedAvg family checks NaN/Inf once, on its mean, not on each update (``admission.deferred_mean``); tests turn
#: it off to compare the two
DEFER_FINITE_CHECK = True

#: names in the stored state blob: the strategy's arrays and the privacy mechanism's, kept apart
_STRATEGY, _CLIP_NORM = "strategy/", "privacy/clip_norm"


def handle(params: dict, *, db: Any = None) -> dict:
    """Dispatch on ``mode``; ``db`` is injected by tests, functions connect from the environment."""
    started = time.perf_counter()
    if not isinstance(params, Mapping):
        raise ValueError(f"{FUNCTION}: params must be a JSON object")
    mode = params.get("mode")
    if mode not in ("init", "aggregate", "partial", "combine"):
        raise ValueError(f"{FUNCTION}: params.mode must be init or aggregate (or partial, combine: tree "
                         f"aggregation), got {mode!r}")
    run_id = _field(params, "run_id", str)
    # the task (params.task, else the built-in numpy model of params.model): imported here, not at module load,
    # and used only for round 0, the shapes a stored model must have, the shard sizes and the evaluation
    task, ref = tasks.from_payload(params, FUNCTION)
    spec = _field(params, "data", Mapping)
    data.DataSpec.from_params(spec, "params.data")
    # hash_alg: the run's digest algorithm for the blobs written here (absent: sha256); reading verifies each blob
    # with the algorithm it names
    store = blobstore.BlobStore(db if db is not None else blobstore.connect(),
                                hash_alg=str(params.get("hash_alg") or "sha256"))
    if mode == "init":
        return _init(params, run_id, task, ref, spec, store, started)
    if mode in ("partial", "combine"):  # tree aggregation (docs/aggregation.md)
        return (_partial if mode == "partial" else _combine)(params, run_id, task, ref, spec, store, started)
    return _aggregate(params, run_id, task, ref, spec, store, started)


def _init(
    params: Mapping[str, Any], run_id: str, task: tasks.Task, ref: tasks.TaskRef, spec: Mapping[str, Any],
    store: blobstore.BlobStore, started: float,
) -> dict:
    rnd = params.get("round", 0)
    if rnd != 0:
        raise ValueError(f"{FUNCTION}: mode init writes round 0, got params.round = {rnd!r}")
    seed = _field(params, "seed", int, minimum=0)
    existing = store.get_model_doc(run_id, 0)
    if existing is not None:
        return _result(existing, started, already_done=True)
    weights = tasks.check_weights(task.init(model.derive_seed(seed, 0)), task.weights_spec(), "init() weights")
    loss, accuracy, extra = _evaluate(task, spec, weights)
    metrics: dict[str, Any] = {"accuracy": accuracy, "loss": loss, "rejected": [], **extra}
    num_clients = params.get("num_clients")
    if isinstance(num_clients, int) and not isinstance(num_clients, bool) and num_clients >= 1:
        # the per-client label histogram of this run (Logs/<run>/partition.json, `fedkeeper report --partition`)
        metrics["partition"] = partition.summary(task, ref.key, spec, num_clients, seed)
    doc = store.write_model(run_id, 0, weights, metrics, num_updates=0)
    return _result(doc, started, already_done=bool(doc.get("duplicate")))


def _aggregate(
    params: Mapping[str, Any], run_id: str, task: tasks.Task, ref: tasks.TaskRef, spec: Mapping[str, Any],
    store: blobstore.BlobStore, started: float,
) -> dict:
    rnd = _field(params, "round", int, minimum=1)
    seed = _field(params, "seed", int, minimum=0)
    num_clients = _field(params, "num_clients", int, minimum=1)
    issued = admission.parse_issued(_field(params, "updates", list), num_clients, f"{FUNCTION}: params.updates")
    keep_models = params.get("keep_models", 0)
    if isinstance(keep_models, bool) or not isinstance(keep_models, int) or keep_models < 0:
        raise ValueError(f"{FUNCTION}: params.keep_models must be an integer >= 0, got {keep_models!r}")
    collect = _gc(params)
    strategy = _strategy(params)
    dp = _privacy(params, strategy)

    existing = store.get_model_doc(run_id, rnd)
    if existing is not None:
        return _result(existing, started, already_done=True)

    previous, previous_doc = store.read_model(run_id, rnd - 1, task.weights_spec())
    state, clip_norm = _read_state(store, run_id, rnd - 1, previous_doc, strategy, previous, dp)
    shards = partition.shard_sizes(task, ref.key, spec, num_clients, seed)
    expected_spec = model.expected_spec(previous)
    passes: list[admission.Admitted] = []  # the admission of each pass over the updates (two: deferred_mean)

    def admit(check_finite: bool = True) -> admission.Admitted:
        passes.append(admission.Admitted(issued, _update_source(store, expected_spec), run_id=run_id, round=rnd,
                                         expected=expected_spec, shard_sizes=shards, check_finite=check_finite))
        return passes[-1]

    stale = _staleness(params)
    if stale is None and dp is None and isinstance(strategy, strategies.MeanThenStep) \
            and not strategy.uses_previous_values:
        previous = shape_only(previous)  # FedAvg: the previous model's bytes go before the sums are made
    # the FedAvg family's mean checks NaN/Inf once on its result instead of on every update (admission.deferred_mean;
    # not under central DP, whose clipping reads each update's values, nor for re-based stale updates)
    deferred = DEFER_FINITE_CHECK and stale is None and isinstance(strategy, strategies.MeanThenStep) \
        and (dp is None or dp.mode != "central")
    admitted: Any = None if deferred else admit()
    if stale is not None:  # deadline (late: carry) and buffered rounds: updates of earlier rounds, re-based
        expected = task.weights_spec()
        admitted = staleness.Rebased(admitted, stale, previous, rnd,
                                     lambda base: store.read_model(run_id, base, expected)[0])
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
            if deferred:
                family = cast(strategies.MeanThenStep, strategy)
                family.check_state(state, previous)  # refuse a bad state before any blob is read
                admitted, averaged = admission.deferred_mean(admit, lambda updates: family.mean(updates, previous))
                new_weights, state = family.server_step(previous, averaged, state)
            else:
                new_weights, state = strategy.aggregate(admitted, previous, state)
            next_clip = clip_norm
            if dp is not None:
                dp_metrics = {"mode": "local", "clip_norm": float(clip_norm)}
    except strategies.StrategyError as exc:
        admitted = admitted if admitted is not None else passes[-1] if passes else admit()
        _require_updates(admitted, run_id, rnd)
        raise TooFewUpdates(f"round {rnd} of run {run_id}: {exc} ({len(admitted.accepted)} admitted, "
                            f"{len(admitted.rejected)} rejected)") from None
    if dp is None or dp.mode != "central" or dp.expected_clients is None:
        _require_updates(admitted, run_id, rnd)
    del previous

    loss, accuracy, extra = _evaluate(task, spec, new_weights)
    metrics: dict[str, Any] = {
        **extra,
        "accuracy": accuracy,
        "loss": loss,
        "rejected": admitted.rejected,
        "clients": admitted.accepted,
        "num_examples": admitted.total_examples,
    }
    if dp_metrics is not None:
        metrics["privacy"] = dp_metrics
    if stale is not None:
        metrics["updates"] = admitted.updates
    stored_state = {f"{_STRATEGY}{k}": v for k, v in state.items()}
    if dp is not None and dp.adaptive:
        stored_state[_CLIP_NORM] = np.asarray(next_clip, np.float64)
    # the state first, then the model that names it: the model document stays the commit point of the round
    state_sha = store.write_state(run_id, rnd, stored_state)["sha256"] if stored_state else None
    doc = store.write_model(run_id, rnd, new_weights, metrics, num_updates=len(admitted.accepted),
                            state_sha256=state_sha)
    if collect and keep_models > 0 and not doc.get("duplicate"):
        store.gc_models(run_id, keep_last=keep_models)
        # aggregated: their blobs are no longer needed (stale modes: only below the oldest round still in flight)
        store.gc_updates(run_id, through_round=_gc_through(params, rnd))
    return _result(doc, started, already_done=bool(doc.get("duplicate")))


# ------------------------------------------------------------------------------------- tree aggregation
#
# ``partial`` (a node below the root): with ``updates`` (a leaf: the admission of ``aggregate``, up to k updates)
# or ``parts`` (an inner node: its children's partial keys), plus ``level`` and ``index``; writes the partial sum
# (runtime/partials.py) and answers with its key. ``combine`` (the root): ``parts``, then what ``aggregate`` does
# after its sum: the mean (or, under central DP, the noise added once to the clipped sums), the strategy's server
# step, the evaluation and the model. Both are idempotent like ``aggregate``: a stored partial or model is returned.


def _tree_setup(params: Mapping[str, Any]) -> tuple[int, strategies.MeanThenStep, privacy.PrivacySpec | None, str]:
    if params.get("staleness") is not None:
        raise ValueError(f"{FUNCTION}: tree aggregation does not take stale updates (params.staleness)")
    rnd = _field(params, "round", int, minimum=1)
    strategy = _strategy(params)
    if not isinstance(strategy, strategies.MeanThenStep):
        raise ValueError(f"{FUNCTION}: strategy {strategy.name!r} needs every update at once; tree aggregation "
                         "sums partials, so it takes the FedAvg family only")
    dp = _privacy(params, strategy)
    return rnd, strategy, dp, partials.DP if dp is not None and dp.mode == "central" else partials.MEAN


def _part_keys(params: Mapping[str, Any]) -> list[str]:
    keys = _field(params, "parts", list)
    if not keys or not all(isinstance(k, str) and k for k in keys) or len(set(keys)) != len(keys):
        raise ValueError(f"{FUNCTION}: params.parts must be a non-empty list of distinct partial keys")
    return keys


def _read_parts(store: blobstore.BlobStore, run_id: str, rnd: int, keys: list[str], kind: str,
                expected: Mapping[str, Any]) -> partials.PartialSum:
    """The children's sums added in the listed (plan) order, one child in memory at a time."""
    total = partials.PartialSum.empty(kind, expected)
    for key in keys:
        sums, doc = store.read_partial(run_id, rnd, key, partials.sum_spec(expected))
        if doc.get("kind") != kind:
            raise ValueError(f"{FUNCTION}: partial {key} sums {doc.get('kind')!r}, this round sums {kind!r}")
        total.add_partial(partials.PartialSum.from_stored(doc, sums, expected))
        sums = None  # noqa: F841 - drop this child's arrays before the next one is read
    return total


def _partial(params: Mapping[str, Any], run_id: str, task: tasks.Task, ref: tasks.TaskRef,
             spec: Mapping[str, Any], store: blobstore.BlobStore, started: float) -> dict:
    rnd, strategy, dp, kind = _tree_setup(params)
    level = _field(params, "level", int, minimum=1)
    index = _field(params, "index", int, minimum=0)
    expected = task.weights_spec()
    leaf = params.get("updates") is not None
    if leaf:
        num_clients = _field(params, "num_clients", int, minimum=1)
        issued = admission.parse_issued(_field(params, "updates", list), num_clients, f"{FUNCTION}: params.updates")
        inputs: list[Any] = [item.as_params() for item in issued]
    else:
        inputs = _part_keys(params)
    key = partials.partial_key(run_id, rnd, level, index, partials.inputs_digest(kind, params.get("privacy"), inputs))
    existing = store.get_partial_doc(key)
    already_done = existing is not None
    if existing is None:
        if leaf:
            seed = _field(params, "seed", int, minimum=0)
            previous, previous_doc = store.read_model(run_id, rnd - 1, expected)
            clip_norm = _read_state(store, run_id, rnd - 1, previous_doc, strategy, previous, dp)[1]
            spec_of_previous = model.expected_spec(previous)
            shards = partition.shard_sizes(task, ref.key, spec, num_clients, seed)

            def admit(check_finite: bool = True) -> admission.Admitted:
                return admission.Admitted(issued, _update_source(store, spec_of_previous), run_id=run_id, round=rnd,
                                          expected=spec_of_previous, shard_sizes=shards, check_finite=check_finite)

            def leaf_sum(admitted: admission.Admitted) -> partials.PartialSum:
                total = partials.PartialSum.empty(kind, spec_of_previous)
                for update in admitted:
                    try:
                        if kind == partials.DP:
                            total.add_clipped(update.client_id, update.weights, update.num_examples, previous,
                                              clip_norm)
                        else:
                            total.add_update(update.client_id, update.weights, update.num_examples)
                    except (strategies.StrategyError, ValueError) as exc:
                        admitted.refuse(update, str(exc))
                    update = None  # noqa: F841
                total.rejected = list(admitted.rejected)
                return total

            if kind == partials.MEAN and DEFER_FINITE_CHECK:  # NaN/Inf checked once, on the sums (deferred_mean)
                total = admission.deferred_mean(admit, lambda admitted: leaf_sum(admitted).require_finite())[1]
            else:  # central DP clips each update by its norm: its values are checked before
                total = leaf_sum(admit())
        else:
            total = _read_parts(store, run_id, rnd, inputs, kind, expected)
        existing = store.write_partial(key, run_id, rnd, level, index, total.sums, total.meta())
    return {"ok": True, "round": rnd, "level": level, "index": index, "key": key, "count": existing.get("count"),
            "rejected": len(existing.get("rejected") or []), "duration_s": round(time.perf_counter() - started, 6),
            "already_done": already_done or bool(existing.get("duplicate"))}


def _combine(params: Mapping[str, Any], run_id: str, task: tasks.Task, ref: tasks.TaskRef,
             spec: Mapping[str, Any], store: blobstore.BlobStore, started: float) -> dict:
    rnd, strategy, dp, kind = _tree_setup(params)
    keys = _part_keys(params)
    keep_models = params.get("keep_models", 0)
    if isinstance(keep_models, bool) or not isinstance(keep_models, int) or keep_models < 0:
        raise ValueError(f"{FUNCTION}: params.keep_models must be an integer >= 0, got {keep_models!r}")
    collect = _gc(params)
    existing = store.get_model_doc(run_id, rnd)
    if existing is not None:
        return _result(existing, started, already_done=True)
    expected = task.weights_spec()
    previous, previous_doc = store.read_model(run_id, rnd - 1, expected)
    state, clip_norm = _read_state(store, run_id, rnd - 1, previous_doc, strategy, previous, dp)
    total = _read_parts(store, run_id, rnd, keys, kind, expected)

    def none_left() -> NoValidUpdates:
        reasons = ", ".join(f"client {r['client_id']}: {r['reason']}" for r in total.rejected) or "no updates listed"
        return NoValidUpdates(f"no valid updates for round {rnd} of run {run_id} ({reasons})")

    dp_metrics: dict[str, Any] | None = None
    if total.count == 0 and (kind != partials.DP or dp is None or dp.expected_clients is None):
        raise none_left()
    if kind == partials.DP and dp is not None:
        mechanism = privacy.CentralDP(dp, previous, clip_norm, rnd)
        mechanism.add_sum(total.sums, total.count, total.unclipped)
        noisy_mean, next_clip, info = mechanism.result()
        new_weights, state = strategy.server_step(previous, noisy_mean, state)
        dp_metrics = {"mode": "central", "clip_norm": float(clip_norm), **_plain(info)}
    else:
        strategy.check_state(state, previous)
        new_weights, state = strategy.server_step(previous, total.mean(), state)
        next_clip = clip_norm
        if dp is not None:
            dp_metrics = {"mode": "local", "clip_norm": float(clip_norm)}
    del previous
    loss, accuracy, extra = _evaluate(task, spec, new_weights)
    metrics: dict[str, Any] = {**extra, "accuracy": accuracy, "loss": loss, "rejected": total.rejected,
                               "clients": total.clients, "num_examples": total.num_examples,
                               "tree": {"parts": len(keys), "level": params.get("level")}}
    if dp_metrics is not None:
        metrics["privacy"] = dp_metrics
    stored_state = {f"{_STRATEGY}{k}": v for k, v in state.items()}
    if dp is not None and dp.adaptive:
        stored_state[_CLIP_NORM] = np.asarray(next_clip, np.float64)
    state_sha = store.write_state(run_id, rnd, stored_state)["sha256"] if stored_state else None
    doc = store.write_model(run_id, rnd, new_weights, metrics, num_updates=total.count, state_sha256=state_sha)
    store.delete_partials(run_id, rnd, only_round=True)  # the model is committed: its intermediates go
    if collect and keep_models > 0 and not doc.get("duplicate"):
        store.gc_models(run_id, keep_last=keep_models)
        store.gc_updates(run_id, through_round=rnd)
    return _result(doc, started, already_done=bool(doc.get("duplicate")))


class ViewedUpdates:
    """The store as ``runtime.admission`` reads updates from it, with each inline blob a read-only view of the
    driver's reply (``runtime.bsonview``) instead of a copy: the reply is then the blob's only copy while the
    float64 sums exist, so reading an update costs one update, not two (issue 18). Same documents, same checks."""

    def __init__(self, store: blobstore.BlobStore) -> None:
        self._store = store

    def find_update(self, run_id: str, round: int, client_id: Any, activation_id: str | None = None
                    ) -> dict[str, Any] | None:
        return self._store.find_update(run_id, round, client_id, activation_id)

    def find_updates(self, run_id: str, wanted: Any) -> dict[Any, dict[str, Any] | None]:
        return self._store.find_updates(run_id, wanted, find=bsonview.find_views)

    def decode_update(self, doc: Mapping[str, Any], expected: Any, run_id: str, round: int, client_id: Any,
                      *, max_bytes: int | None = None, check_finite: bool = True) -> dict[str, np.ndarray]:
        return self._store.decode_update(doc, expected, run_id, round, client_id, max_bytes=max_bytes,
                                         check_finite=check_finite)


#: updates that may be larger than this are read as views (``ViewedUpdates``): those ``runtime.admission`` reads
#: one per round trip. Smaller ones are decoded by pymongo as usual: walking a document's fields in Python
#: costs about 50 us, nothing next to verifying a megabyte, a fifth of the work on a 256 KB update.
VIEW_MIN_BYTES = admission.READ_BATCH_BYTES // admission.READ_ONE_FRACTION


def _update_source(store: blobstore.BlobStore, expected: Mapping[str, Any]) -> admission.UpdateSource:
    return ViewedUpdates(store) if admission.max_blob_bytes(expected) > VIEW_MIN_BYTES else store


def shape_only(weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Read-only stand-ins with the arrays' names, shapes and dtypes and no memory of their own (one zero seen
    through zero strides): what a strategy that does not read the previous model's values gets, so that the
    model's bytes (as large as an update) are not held while the round's updates are summed."""
    return {name: np.broadcast_to(np.zeros((), arr.dtype), arr.shape) for name, arr in weights.items()}


def _staleness(params: Mapping[str, Any]) -> staleness.StalenessSpec | None:
    raw = params.get("staleness")
    return None if raw is None else staleness.StalenessSpec.from_params(raw, f"{FUNCTION}: params.staleness")


def _gc(params: Mapping[str, Any]) -> bool:
    """Whether this call collects garbage after its commit (``gc``, default true). Pruning a round's thousand
    update blobs costs the embedded store about 0.5 ms per update, as much as the aggregation itself: the
    orchestrator sends false and prunes in the background (scenarios/rounds/collect.py)."""
    collect = params.get("gc", True)
    if not isinstance(collect, bool):
        raise ValueError(f"{FUNCTION}: params.gc must be true or false, got {collect!r}")
    return collect


def _gc_through(params: Mapping[str, Any], rnd: int) -> int:
    """The newest round whose update blobs may be collected: ``rnd``, or the payload's ``gc_through`` (lower:
    updates of earlier rounds still in flight or carried are aggregated later)."""
    through = params.get("gc_through", rnd)
    if isinstance(through, bool) or not isinstance(through, int):
        raise ValueError(f"{FUNCTION}: params.gc_through must be an integer, got {through!r}")
    return min(rnd, through)


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


def _evaluate(task: tasks.Task, spec: Mapping[str, Any], weights: Mapping[str, Any]
              ) -> tuple[float, float, dict[str, Any]]:
    """(loss, accuracy, the task's other metrics) of ``weights`` on the test split."""
    test = task.load_test(spec)
    if len(test) == 0:
        raise ValueError(f"{FUNCTION}: the test split is empty")
    try:
        loss, accuracy, extra = tasks.as_evaluation(task.evaluate(weights, test))
    except ValueError as exc:
        raise ValueError(f"{FUNCTION}: {exc}") from None
    # A finite model can still overflow its own loss (weights of 1e20 are finite): NaN and Inf can be neither
    # stored (the embedded store keeps JSON) nor returned as JSON, and a model that cannot be stored would fail
    # the aggregator on every retry. Such a loss is recorded as the largest float.
    if not math.isfinite(loss):
        loss = sys.float_info.max
    reserved = {"accuracy", "loss", "rejected", "clients", "num_examples", "privacy", "partition", "updates"}
    return float(loss), float(accuracy), {k: v for k, v in extra.items() if k not in reserved}


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

"""fl_client: one client's local training for one round.

Reads the round's global model (``run:round-1``) from MongoDB, trains on this client's partition, stores the
update under ``run:round:client:activation_id`` and returns a small acknowledgement. Weights never travel in the
payload or the result: platform payloads are capped near 1 MB and models are larger.

Payload (built by the orchestrator)::

    {"warmup": true} (pre-warming: answered at once, nothing read or written) or
    {"run_id": str, "round": int >= 1, "client_id": int in 0..num_clients-1, "num_clients": int, "seed": int,
     "model": {model, input_size, hidden_size, output_size, input_shape_x, input_shape_y},
     "train": {optim, lr, batch_size, local_epochs, mu, l2},
     "data": {"dataset": "digits"} or {train_images, train_labels, test_images, test_labels, sha256?,
              allow_pickle?, max_bytes?} plus {partition, shards_per_client, alpha},
     "activation_id": str, "attempt": int,
     "privacy"?: PrivacySpec.as_params() with mode "local" (absent or null: no local differential privacy)}

The strategy's client parameters arrive merged into ``train`` (FedProx: ``mu``, the proximal term). Under local
differential privacy the client stores ``privacy.local_privatize`` of its model: the global model plus its delta
clipped to ``clip_norm`` plus its own Gaussian noise, so the update leaves the client already private.

``local_fault_poison_scale`` (set only by the local platform's ``faults.poison_scale``, for robust-aggregation
experiments): the client stores previous + scale × its delta, a poisoned update that passes admission (it has the
model's shape and is acknowledged by its own activation, as a malicious client's would be).

Training is seeded from (seed, round, client_id), so every attempt computes the same update. Each activation
stores its own document (key: the activation id the orchestrator issued), so nobody can take an honest
activation's key before it writes; a repeated delivery of the same activation finds its own document and keeps
it (first write wins). If that key already holds a different update (another writer got there first), the call
fails with UpdateConflict rather than acknowledge an update it did not compute: the orchestrator retries under a
new activation id. The acknowledgement names the activation, its attempt and the sha256 of the stored blob, which
the orchestrator hands to the aggregator.
"""

from __future__ import annotations

import math
import os
import time
from functools import partial
from collections.abc import Mapping
from typing import Any

# One BLAS thread: a function gets about one vCPU and trains on small batches, where extra BLAS threads only fight
# over it (a 10x slowdown measured on a busy 2-core host) and make float results depend on the host's core count.
# Must be set before numpy loads; a value given in the deployed environment wins.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np

from fedkeeper.runtime import admission, blobstore, data, model, privacy, tasks
from fedkeeper.runtime.params import required
from fedkeeper.runtime.tasks import partition

FUNCTION = "fl_client"

_field = partial(required, FUNCTION)  # _field(params, key, kind, *, minimum=None)
#: a batch stores its updates as soon as they hold this many bytes of weights (`handle_batch`)
BATCH_BYTES = 8 << 20


class UpdateConflict(blobstore.BlobStoreError):
    """This activation's key already holds an update that is not the one it computed (someone else wrote it)."""

# The global model of a round never changes once written, and a warm worker trains many clients of the same round:
# keep the last one read (weights are read-only views) instead of fetching it from the store for every client.
# A hit needs the same store, run and round, and the same expected architecture (compared as a dict: shapes and
# dtypes), so the cached weights were validated against exactly what this call expects. One entry: the next
# round's model (or another run's) replaces it.
_MODEL_CACHE: list[tuple[tuple[Any, ...], dict[str, Any], dict[str, Any]]] = []  # [(key, expected, weights)]


def _global_model(store: blobstore.BlobStore, run_id: str, rnd: int, expected: dict[str, Any]) -> dict[str, Any]:
    key = (store, run_id, rnd)
    if _MODEL_CACHE:
        cached_key, cached_expected, weights = _MODEL_CACHE[0]
        if cached_key == key and cached_expected == expected:
            return weights
    weights, _ = store.read_model(run_id, rnd, expected)
    _MODEL_CACHE[:] = [(key, dict(expected), weights)]
    return weights


_STORES: dict[tuple[int, str, str], blobstore.BlobStore] = {}


def _store(db: Any, hash_alg: str) -> blobstore.BlobStore:
    """One BlobStore per database and digest algorithm per process: a warm worker serves many clients, and building
    one (its collection handles) cost each call about a fifth of a millisecond. It holds no per-call state."""
    client = getattr(db, "client", None)
    if client is None:  # not a pymongo Database (a test double): nothing to key a cache on
        return blobstore.BlobStore(db, hash_alg=hash_alg)
    key = (id(client), db.name, hash_alg)
    store = _STORES.get(key)
    if store is None or store.db.client is not client:
        if len(_STORES) >= 8:
            _STORES.clear()
        store = _STORES[key] = blobstore.BlobStore(db, hash_alg=hash_alg)
    return store


def handle(params: dict, *, db: Any = None) -> dict:
    """Train and store this client's update; ``db`` is injected by tests, functions connect from the environment."""
    result = handle_batch([params], db=db)[0]
    if isinstance(result, BaseException):
        raise result
    return result


def handle_batch(calls: list[dict], *, db: Any = None) -> list[dict | Exception]:
    """Several calls at once (the local platform's worker hands over the calls already waiting for it): each is
    trained in turn exactly as `handle` would, then their updates are stored with one insert command (several when
    they add up to more than BATCH_BYTES, so a batch never holds much more memory than one call). One result per
    call, in order: its acknowledgement, or the exception that call alone raised (the others go on)."""
    results: list[dict | Exception | None] = [None] * len(calls)
    pending: list[tuple[int, _Trained]] = []
    held = 0
    for i, params in enumerate(calls):
        try:
            outcome = _train(params, db)
        except Exception as exc:  # noqa: BLE001 - this call's error is its own result
            results[i] = exc
            continue
        if isinstance(outcome, dict):
            results[i] = outcome
            continue
        pending.append((i, outcome))
        held += sum(int(getattr(w, "nbytes", 0)) for w in outcome.weights.values())
        if held >= BATCH_BYTES:
            _store_pending(pending, results)
            pending, held = [], 0
    _store_pending(pending, results)
    return [r if r is not None else RuntimeError(f"{FUNCTION}: call {i} produced no result")
            for i, r in enumerate(results)]


def _store_pending(pending: list[tuple[int, "_Trained"]], results: list[dict | Exception | None]) -> None:
    """Store the trained updates (one insert command per store) and put each call's acknowledgement or error."""
    by_store: dict[int, list[tuple[int, _Trained]]] = {}
    for i, trained in pending:
        by_store.setdefault(id(trained.store), []).append((i, trained))
    for group in by_store.values():
        stored_all = group[0][1].store.write_updates([t.item(time.perf_counter()) for _, t in group])
        for (i, t), stored in zip(group, stored_all):
            try:
                results[i] = t.acknowledge(stored)
            except Exception as exc:  # noqa: BLE001
                results[i] = exc


class _Trained:
    """One call's trained update, waiting to be stored."""

    __slots__ = ("store", "run_id", "rnd", "client_id", "weights", "metrics", "activation_id", "attempt", "started")

    def __init__(self, store: blobstore.BlobStore, run_id: str, rnd: int, client_id: int,
                 weights: dict[str, Any], metrics: dict[str, Any], activation_id: str, attempt: int,
                 started: float) -> None:
        self.store, self.run_id, self.rnd, self.client_id = store, run_id, rnd, client_id
        self.weights, self.metrics, self.activation_id, self.attempt = weights, metrics, activation_id, attempt
        self.started = started

    def item(self, now: float) -> blobstore.UpdateItem:
        return blobstore.UpdateItem(
            self.run_id, self.rnd, self.client_id, self.weights, base_round=self.rnd - 1,
            num_examples=self.metrics["num_examples"],
            metrics={**{k: v for k, v in self.metrics.items() if k != "num_examples"},
                     "duration_s": now - self.started},
            activation_id=self.activation_id, attempt=self.attempt)

    def acknowledge(self, stored: dict[str, Any] | Exception) -> dict:
        if isinstance(stored, Exception):
            raise stored
        if stored.get("duplicate"):
            _check_own(stored, self.run_id, self.rnd,
                       admission.Issued(self.client_id, self.activation_id, self.attempt, stored["offered_sha256"]),
                       self.metrics["num_examples"])
        return _ack(stored, self.client_id, self.rnd, self.started, duplicate=bool(stored.get("duplicate")))


def _train(params: dict, db: Any) -> dict | _Trained:
    """Validate one call's parameters and train; a warm-up call's answer, or the update to store."""
    started = time.perf_counter()
    if not isinstance(params, Mapping):
        raise ValueError(f"{FUNCTION}: params must be a JSON object")
    if params.get("warmup") is True:  # pre-warming (scenarios/rounds/prewarm.py): start the instance, nothing else
        return {"ok": True, "warmup": True, "duration_s": round(time.perf_counter() - started, 6)}
    run_id = _field(params, "run_id", str)
    rnd = _field(params, "round", int, minimum=1)
    client_id = _field(params, "client_id", int, minimum=0)
    num_clients = _field(params, "num_clients", int, minimum=1)
    seed = _field(params, "seed", int, minimum=0)
    if client_id >= num_clients:
        raise ValueError(f"{FUNCTION}: params.client_id {client_id} is not below params.num_clients {num_clients}")
    activation_id = _field(params, "activation_id", str)
    attempt = _field(params, "attempt", int, minimum=1)
    if ":" in activation_id:
        raise ValueError(f"{FUNCTION}: params.activation_id must not contain ':', got {activation_id!r}")
    task, ref = tasks.from_payload(params, FUNCTION)  # params.task, else the built-in numpy model of params.model
    hyper = _field(params, "train", Mapping)
    task.check_hyper(hyper, "params.train")
    data_params = _field(params, "data", Mapping)
    data.DataSpec.from_params(data_params, "params.data")
    local_dp = _local_privacy(params)

    # hash_alg: the run's digest algorithm for the blobs written here (absent: sha256); reading verifies each blob
    # with the algorithm it names
    store = _store(db if db is not None else blobstore.connect(), str(params.get("hash_alg") or "sha256"))
    expected = task.weights_spec()
    global_weights = _global_model(store, run_id, rnd - 1, expected)
    local = partition.client_shard(task, ref.key, data_params, num_clients, client_id, seed)
    try:
        trained = tasks.check_train_result(
            task.train(global_weights, local, hyper, model.derive_seed(seed, rnd, client_id)), len(local))
    except ValueError as exc:
        raise ValueError(f"{FUNCTION}: {exc}") from None
    new_weights = tasks.check_weights(trained.weights, expected, "the trained weights")
    metrics = {**tasks.plain_metrics(trained.metrics), "num_examples": int(trained.num_examples)}
    poison = params.get("local_fault_poison_scale")
    if poison is not None:
        new_weights = _poisoned(new_weights, global_weights, poison)
    if local_dp is not None:
        new_weights = privacy.local_privatize(new_weights, global_weights, local_dp, rnd, client_id, attempt)
    return _Trained(store, run_id, rnd, client_id, new_weights, metrics, activation_id, attempt, started)


def _poisoned(new: Mapping[str, Any], previous: Mapping[str, Any], scale: Any) -> dict[str, Any]:
    """previous + scale × (new − previous) in the model's dtypes: a sign-flipped (scale −1) or inflated update."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"{FUNCTION}: params.local_fault_poison_scale must be a finite number, got {scale!r}")
    out = {}
    for name, old in previous.items():
        base = np.asarray(old, np.float64)
        out[name] = (base + float(scale) * (np.asarray(new[name], np.float64) - base)).astype(old.dtype)
    return out


def _local_privacy(params: Mapping[str, Any]) -> privacy.PrivacySpec | None:
    """The local-DP spec of the payload; None when absent, null or central (the aggregator adds that noise)."""
    raw = params.get("privacy")
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise ValueError(f"{FUNCTION}: params.privacy must be an object or null, got {type(raw).__name__}")
    spec = privacy.PrivacySpec.from_params(raw, f"{FUNCTION}: params.privacy")
    return spec if spec.mode == "local" else None


def _check_own(stored: dict[str, Any], run_id: str, rnd: int, mine: admission.Issued, num_examples: int) -> None:
    """A document already under this activation's key must be the update this call computed (a repeated delivery
    of the activation trains the same bits); anything else was written by someone else."""
    try:
        n = admission.check(stored, mine, run_id=run_id, round=rnd, shard_size=num_examples)
    except blobstore.CorruptUpdate as exc:
        raise UpdateConflict(f"{FUNCTION}: the store already holds another update under activation "
                             f"{mine.activation_id} ({exc.reason}: {exc.detail}); not acknowledging it") from None
    if n != num_examples:
        raise UpdateConflict(f"{FUNCTION}: the update stored under activation {mine.activation_id} says "
                             f"num_examples {n}, this client trained on {num_examples}")


def _ack(doc: Mapping[str, Any], client_id: int, rnd: int, started: float, *, duplicate: bool) -> dict:
    metrics = doc.get("metrics")
    metrics = metrics if isinstance(metrics, Mapping) else {}
    return {
        "ok": True,
        "client_id": client_id,
        "round": rnd,
        "num_examples": doc.get("num_examples"),
        "train_loss": metrics.get("train_loss"),
        "train_accuracy": metrics.get("train_accuracy"),
        "duration_s": round(time.perf_counter() - started, 6),
        "sha256": doc.get("sha256"),
        "activation_id": doc.get("activation_id"),
        "attempt": doc.get("attempt"),
        "duplicate": duplicate,
    }

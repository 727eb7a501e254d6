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

from fedkeeper.runtime import admission, blobstore, data, model, partials, privacy, tasks
from fedkeeper.runtime.params import required
from fedkeeper.runtime.strategies.errors import NonFiniteMean, StrategyError
from fedkeeper.runtime.weights import all_finite
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
    """Validate one call's parameters and train; a warm-up call's answer, a pack's acknowledgement (it stores its
    own partial sum), or the update to store."""
    started = time.perf_counter()
    if not isinstance(params, Mapping):
        raise ValueError(f"{FUNCTION}: params must be a JSON object")
    if params.get("warmup") is True:  # pre-warming (scenarios/rounds/prewarm.py): start the instance, nothing else
        return {"ok": True, "warmup": True, "duration_s": round(time.perf_counter() - started, 6)}
    if params.get("pack") is not None:
        return _train_pack(params, db, started)
    call = _Call(params, db, single=True)
    client_id = call.client_id
    new_weights, metrics = call.train(client_id)
    return _Trained(call.store, call.run_id, call.rnd, client_id, new_weights, metrics, call.activation_id,
                    call.attempt, started)


class _Call:
    """A call's checked parameters, its store and the round's global model: what training any of its clients
    needs. ``single``: a one-client call (``client_id``), else a pack (``pack.clients``)."""

    def __init__(self, params: Mapping[str, Any], db: Any, *, single: bool) -> None:
        self.run_id = _field(params, "run_id", str)
        self.rnd = _field(params, "round", int, minimum=1)
        self.client_id = _field(params, "client_id", int, minimum=0) if single else -1
        self.num_clients = _field(params, "num_clients", int, minimum=1)
        self.seed = _field(params, "seed", int, minimum=0)
        if single:
            self.check_client(self.client_id, "params.client_id")
        self.activation_id = _field(params, "activation_id", str)
        self.attempt = _field(params, "attempt", int, minimum=1)
        if ":" in self.activation_id:
            raise ValueError(f"{FUNCTION}: params.activation_id must not contain ':', got {self.activation_id!r}")
        # params.task, else the built-in numpy model of params.model
        self.task, self.ref = tasks.from_payload(params, FUNCTION)
        self.hyper = _field(params, "train", Mapping)
        self.task.check_hyper(self.hyper, "params.train")
        self.data_params = _field(params, "data", Mapping)
        data.DataSpec.from_params(self.data_params, "params.data")
        self.local_dp = _local_privacy(params)
        self.poison = params.get("local_fault_poison_scale")
        self._shards: Any = None  # partition.shard_reader, made at the first client
        # hash_alg: the run's digest algorithm for the blobs written here (absent: sha256); reading verifies each
        # blob with the algorithm it names
        self.store = _store(db if db is not None else blobstore.connect(), str(params.get("hash_alg") or "sha256"))
        self.expected = self.task.weights_spec()
        self.global_weights = _global_model(self.store, self.run_id, self.rnd - 1, self.expected)

    def check_client(self, client_id: int, where: str) -> None:
        if client_id >= self.num_clients:
            raise ValueError(f"{FUNCTION}: {where} {client_id} is not below params.num_clients {self.num_clients}")

    def train(self, client_id: int, *, check_finite: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
        """One client's update (poisoned and privatized as the payload says) and its metrics with num_examples.
        ``check_finite=False``: the trained weights' NaN/Inf scan is left to the caller (a pack checks its sums)."""
        if self._shards is None:
            self._shards = partition.shard_reader(self.task, self.ref.key, self.data_params, self.num_clients,
                                                  self.seed)
        local = self._shards(client_id)
        try:
            trained = tasks.check_train_result(
                self.task.train(self.global_weights, local, self.hyper, model.derive_seed(self.seed, self.rnd,
                                                                                          client_id)), len(local))
        except ValueError as exc:
            raise ValueError(f"{FUNCTION}: {exc}") from None
        new_weights = tasks.check_weights(trained.weights, self.expected, "the trained weights", finite=check_finite)
        metrics = {**tasks.plain_metrics(trained.metrics), "num_examples": int(trained.num_examples)}
        if self.poison is not None:
            new_weights = _poisoned(new_weights, self.global_weights, self.poison)
        if self.local_dp is not None:
            new_weights = privacy.local_privatize(new_weights, self.global_weights, self.local_dp, self.rnd,
                                                  client_id, self.attempt)
        return new_weights, metrics


#: the most clients one pack may hold (a pack's acknowledgement lists them)
MAX_PACK = 10_000


def _pack_clients(pack: Mapping[str, Any], call: _Call) -> tuple[int, list[int]]:
    """``pack.index`` and ``pack.clients`` checked: distinct client ids in ascending order, each a client."""
    index = pack.get("index")
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ValueError(f"{FUNCTION}: params.pack.index must be an integer >= 0, got {index!r}")
    clients = pack.get("clients")
    if not isinstance(clients, list) or not 1 <= len(clients) <= MAX_PACK \
            or any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in clients):
        raise ValueError(f"{FUNCTION}: params.pack.clients must be a list of 1 to {MAX_PACK} client ids, "
                         f"got {str(clients)[:80]}")
    if any(b <= a for a, b in zip(clients, clients[1:])):
        raise ValueError(f"{FUNCTION}: params.pack.clients must be distinct and in ascending order")
    call.check_client(clients[-1], "params.pack.clients holds")
    return index, list(clients)


def _train_pack(params: Mapping[str, Any], db: Any, started: float) -> dict:
    """Client packing (``clients_info.clients_per_invocation``, docs/aggregation.md): train every client of the
    pack in ascending order and store one example-weighted partial sum of their updates, keyed by what it covers
    (``runtime.partials.pack_key``), which the round's final aggregator invocation combines as it combines a
    tree's partials. Why: one invocation, one stored document and one activation record for k clients, where a
    client's own training is a fraction of a millisecond and each of those costs about as much.

    Admission moves here: a client whose training fails or whose update is not finite is left out and listed in
    the partial's ``rejected`` (the orchestrator logs it), as the aggregator would have refused its update. Only
    sums compose, so the orchestrator packs only the FedAvg family without central DP (config checks). Training is
    seeded per client, so a retried pack computes the same sums; first write wins."""
    call = _Call(params, db, single=False)
    pack = _field(params, "pack", Mapping)
    index, clients = _pack_clients(pack, call)
    key = partials.pack_key(call.run_id, call.rnd, index, params.get("privacy"), clients)
    existing = call.store.get_partial_doc(key)
    if existing is None:
        # NaN/Inf checked once, on the sums (exact: a non-finite value in any update leaves them non-finite, and
        # finite updates cannot overflow them); when they are not, the pack is trained again (the same bits: every
        # client is seeded) with each update checked, so that only the offending clients are left out
        try:
            total, examples, loss, accuracy = _sum_pack(call, clients, careful=False)
            total.require_finite()
        except NonFiniteMean:
            total, examples, loss, accuracy = _sum_pack(call, clients, careful=True)
        weight = max(1, total.weight)
        meta = {**total.meta(), "examples": examples, "activation_id": call.activation_id, "attempt": call.attempt,
                "metrics": {"train_loss": loss / weight, "train_accuracy": accuracy / weight,
                            "duration_s": time.perf_counter() - started}}
        existing = call.store.write_partial(key, call.run_id, call.rnd, partials.PACK_LEVEL, index, total.sums,
                                            meta)
    duplicate = bool(existing.get("duplicate")) or existing.get("activation_id") != call.activation_id
    metrics = existing.get("metrics") if isinstance(existing.get("metrics"), Mapping) else {}
    return {"ok": True, "round": call.rnd, "pack": index, "key": key, "clients": list(existing.get("clients") or []),
            "examples": list(existing.get("examples") or []), "rejected": list(existing.get("rejected") or []),
            "num_examples": existing.get("num_examples"), "train_loss": metrics.get("train_loss"),
            "train_accuracy": metrics.get("train_accuracy"), "sha256": existing.get("sha256"),
            "activation_id": existing.get("activation_id"), "attempt": existing.get("attempt"),
            "duration_s": round(time.perf_counter() - started, 6), "duplicate": duplicate}


def _sum_pack(call: _Call, clients: list[int], *, careful: bool
              ) -> tuple[partials.PartialSum, list[int], float, float]:
    """The pack's partial sum, its clients' example counts and their example-weighted train loss and accuracy
    sums. ``careful``: each update checked finite, and the clients whose update is not are left out (listed in
    the partial's ``rejected``); else nothing is checked here (`_train_pack` checks the sums)."""
    total = partials.PartialSum.empty(partials.MEAN, model.expected_spec(call.global_weights))
    examples: list[int] = []
    loss = accuracy = 0.0

    def refuse(client_id: int, reason: str, detail: str) -> None:
        total.rejected.append({"client_id": client_id, "activation_id": call.activation_id, "attempt": call.attempt,
                               "reason": reason, "detail": detail[:500]})

    for client_id in clients:
        try:
            weights, metrics = call.train(client_id, check_finite=careful)
        except ValueError as exc:  # this client's training alone (diverged, a task's error): the others go on
            refuse(client_id, "training_failed", str(exc))
            continue
        bad = [name for name, w in weights.items() if not all_finite(np.asarray(w))] if careful else []
        if bad:  # poisoning or local noise (training's own weights were checked by `tasks.check_weights`)
            refuse(client_id, "not_finite", f"{bad[0]!r} holds NaN or infinity")
            continue
        n = metrics["num_examples"]
        try:
            total.add_update(client_id, weights, n)
        except StrategyError as exc:  # what the aggregator would refuse (no examples, too many)
            refuse(client_id, "bad_update", str(exc))
            continue
        examples.append(n)
        loss += float(metrics.get("train_loss") or 0.0) * n
        accuracy += float(metrics.get("train_accuracy") or 0.0) * n
    return total, examples, loss, accuracy


def _poisoned(new: Mapping[str, Any], previous: Mapping[str, Any], scale: Any) -> dict[str, Any]:
    """previous + scale × (new − previous) in the model's dtypes: a sign-flipped (scale −1) or inflated update."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"{FUNCTION}: params.local_fault_poison_scale must be a finite number, got {scale!r}")
    out = {}
    for name, old in previous.items():
        base = np.asarray(old, np.float64)
        with np.errstate(over="ignore", invalid="ignore"):  # an inflated update may overflow: admission refuses it
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

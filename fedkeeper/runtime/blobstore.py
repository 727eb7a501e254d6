"""Weight blobs and client updates in MongoDB: used by the functions and, through ``Store.blobs``, the orchestrator.

Why it lives in ``runtime``: the client and aggregator functions read the global model and write their updates
here directly (weights never travel in invocation payloads), so this module may import only numpy, pymongo
(bson, gridfs) and the standard library.

Documents (``_id`` is the natural key, so every write is idempotent and the first accepted write wins):

- ``models``  ``f"{run_id}:{round}"``  run_id, round, blob, sha256, hash_alg, size, storage, file_id, num_params,
  metrics{accuracy, loss, ...}, num_updates, created, write_id [, pruned]
- ``updates`` ``f"{run_id}:{round}:{client_id}:{activation_id}"``  run_id, round, client_id, activation_id, attempt,
  base_round, num_examples, metrics, blob, sha256, hash_alg, size, storage, file_id, num_params, created, write_id
  [, pruned]
- ``server_states`` ``f"{run_id}:{round}:state:{sha256}"``  run_id, round, blob, sha256, size, storage, file_id,
  num_arrays, created, write_id [, pruned]: a stateful strategy's server state (and the adaptive clip norm) after
  round ``round``. Written before the model document of that round, which names it (``state_sha256``): the model
  document stays the commit point, so a state left by an aggregator that died before committing is never read,
  and a retried aggregation that computes another state writes it under another key.
- ``partials`` ``runtime.partials.partial_key`` (``run:round:partial:level:index:digest``)  run_id, round, level,
  index, digest, kind, weight, count, unclipped, num_examples, clients, rejected, blob (float64 sums), sha256, size,
  storage, file_id, created, write_id: a partial sum of tree aggregation (docs/aggregation.md). Deleted by the
  final invocation once the round's model is written, by ``gc_updates`` with the round's updates, and by
  ``delete_run``.

Updates are keyed by the activation that wrote them (``update_key``), not by client alone: under a
``run:round:client`` key the first writer wins, so anyone who wrote there first (a predictable key, writable before
the round even starts) made the honest update be dropped. An activation id is a random id the orchestrator issues
when it invokes the client, so one activation's retried or duplicated delivery still finds its own document (first
write wins, idempotent) while nobody can take its key in advance. Documents written by earlier versions under
``run:round:client`` are still read (``find_update``) so their runs resume.

``blob`` is ``{"inline": Binary}`` up to ``inline_limit`` bytes (15 MiB) or ``{"gridfs": ObjectId, "size": n}``
above it. ``storage``/``size``/``file_id`` repeat the blob reference at the top level because nx-27017 0.8.1 ignores
nested exclusion projections (``{"blob.inline": 0}`` still returns the bytes): listings exclude the whole ``blob``
and still know where the bytes are. ``sha256`` is the digest embedded in the blob (``weights.digest_of``), which
covers its header and payload; ``hash_alg`` names the algorithm that digest was computed with (``weights.HASH_IDS``:
the run's choice, ``sha256`` by default; documents of earlier versions have no ``hash_alg`` and are sha256, and the
field keeps its name ``sha256`` whatever the algorithm). Times are unix floats, not datetimes (nx-27017 returns datetimes as strings).
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from dataclasses import dataclass
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

import bson
import gridfs
import numpy as np
import pymongo
from pymongo.database import Database
from pymongo.errors import AutoReconnect, DuplicateKeyError, OperationFailure

from . import weights as W
from .bsonorder import sort_documents

INLINE_LIMIT = 15 * 1024 * 1024
MODELS = "models"
UPDATES = "updates"
#: the updates' listing index (`BlobStore.ensure_indexes`)
_UPDATE_LISTING_KEY = (("run_id", 1), ("round", 1), ("client_id", 1))
STATES = "server_states"
PARTIALS = "partials"
BUCKET = "fs"
T = TypeVar("T")
Retry = Callable[[Callable[[], T]], T]



class BlobStoreError(Exception):
    """Base of the blob store's typed errors."""


class BlobTooLarge(BlobStoreError):
    """A stored blob is longer than the caller accepts (an update cannot be larger than its model allows)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"blob of {size} bytes, at most {limit} accepted")
        self.size, self.limit = size, limit


class ModelMissing(BlobStoreError, KeyError):
    """No global model for (run, round), or its blob was removed by garbage collection (``reason='pruned'``)."""

    def __init__(self, run_id: str, round: int, reason: str = "missing") -> None:
        super().__init__(run_id, round, reason)
        self.run_id, self.round, self.reason = run_id, round, reason

    def __str__(self) -> str:  # KeyError would print the args tuple
        if self.reason == "state_missing":
            return f"server state of run {self.run_id} round {self.round} does not exist or was garbage-collected"
        what = "was garbage-collected" if self.reason == "pruned" else "does not exist"
        return f"global model of run {self.run_id} round {self.round} {what}"


class CorruptModel(W.WeightsError):
    """A stored global model failed validation."""

    def __init__(self, run_id: str, round: int, reason: str, detail: str) -> None:
        super().__init__(reason, f"global model of run {run_id} round {round} rejected ({reason}): {detail}")
        self.run_id, self.round, self.detail = run_id, round, detail


class CorruptUpdate(W.WeightsError):
    """A client update that must not be aggregated; ``reason`` is a WeightsError reason, ``stale_round``, ``missing``
    or one of ``runtime.admission.REASONS`` (metadata that does not match the activation the orchestrator issued)."""

    def __init__(self, run_id: str, round: int, client_id: Any, reason: str, detail: str) -> None:
        super().__init__(
            reason, f"update of run {run_id} round {round} client {client_id} rejected ({reason}): {detail}"
        )
        self.run_id, self.round, self.client_id, self.detail = run_id, round, client_id, detail


# --------------------------------------------------------------------------------------------------- connection

_CLIENTS: dict[str, pymongo.MongoClient] = {}
_CLIENTS_LOCK = threading.Lock()
_DEFAULT_TIMEOUTS = {"serverSelectionTimeoutMS": 10_000, "connectTimeoutMS": 5_000}


def connect(url: str | None = None, db: str | None = None) -> Database:
    """Database handle from arguments or ``FK_MONGO_URL``/``FK_MONGO_DB``; one MongoClient per URL per process,
    so warm function invocations reuse their connection pool."""
    url = url or os.environ.get("FK_MONGO_URL")
    if not url:
        raise BlobStoreError("no MongoDB URL: FK_MONGO_URL is not set")
    name = db or os.environ.get("FK_MONGO_DB") or "fedkeeper"
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(url)
        if client is None:
            in_url = {k.lower() for k, _ in parse_qsl(urlsplit(url).query)}
            options = {k: v for k, v in _DEFAULT_TIMEOUTS.items() if k.lower() not in in_url}
            client = _CLIENTS[url] = pymongo.MongoClient(url, **options)
    return client[name]


def default_retry(fn: Callable[[], T], attempts: int = 3, first_delay_s: float = 0.1) -> T:
    """Bounded retry of transient network errors (stdlib only: functions do not ship tenacity)."""
    delay = first_delay_s
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except AutoReconnect:  # includes NetworkTimeout and ServerSelectionTimeoutError
            if attempt == attempts:
                raise
            time.sleep(delay)
            delay *= 3
    raise AssertionError("unreachable")


# ------------------------------------------------------------------------------------------------- file storage


class _GridFiles:
    """GridFS (the ``fs`` bucket) through pymongo's GridFSBucket; ``find`` lists ``fs.files`` directly."""

    def __init__(self, db: Database) -> None:
        self._bucket = gridfs.GridFSBucket(db, bucket_name=BUCKET)
        self._files = db[f"{BUCKET}.files"]

    def put(self, data: bytes, metadata: dict[str, Any]) -> Any:
        return self._bucket.upload_from_stream(metadata.get("key", "blob"), data, metadata=metadata)

    def get(self, file_id: Any, max_bytes: int | None = None) -> bytes | None:
        """The file's bytes; None if it is gone. ``max_bytes``: a longer file raises BlobTooLarge unread."""
        try:
            with self._bucket.open_download_stream(file_id) as stream:
                if max_bytes is not None and stream.length > max_bytes:
                    raise BlobTooLarge(stream.length, max_bytes)
                return stream.read()
        except gridfs.errors.NoFile:
            return None

    def delete(self, file_id: Any) -> bool:
        try:
            self._bucket.delete(file_id)
            return True
        except gridfs.errors.NoFile:
            return False
        except OperationFailure as exc:  # nx-27017 0.8.1 reports a missing file as a plain command failure
            if "not found" in str(exc):
                return False
            raise

    def find(self, query: dict[str, Any]) -> list[dict[str, Any]]:
        return list(self._files.find(query, {"_id": 1, "length": 1, "metadata": 1}))


# --------------------------------------------------------------------------------------------------- blob store


def _check_run_id(run_id: str) -> None:
    if not isinstance(run_id, str) or not run_id or ":" in run_id:
        raise ValueError(f"run id must be a non-empty string without ':', got {run_id!r}")


def update_key(run_id: str, round: int, client_id: Any, activation_id: str | None = None) -> str:
    """``run:round:client:activation`` (one document per activation); ``run:round:client`` without an activation id
    (the key every update had before updates were keyed by activation, and what tools that name none write)."""
    if activation_id is None:
        return f"{run_id}:{round}:{client_id}"
    if not isinstance(activation_id, str) or not activation_id or ":" in activation_id:
        raise ValueError(f"activation id must be a non-empty string without ':', got {activation_id!r}")
    return f"{run_id}:{round}:{client_id}:{activation_id}"


def _public(doc: dict[str, Any], duplicate: bool) -> dict[str, Any]:
    out = {k: v for k, v in doc.items() if k != "blob"}
    out["duplicate"] = duplicate
    return out


@dataclass(frozen=True)
class UpdateItem:
    """One activation's update for `BlobStore.write_updates` (the arguments of `write_update`)."""

    run_id: str
    round: int
    client_id: Any
    weights: Mapping[str, np.ndarray]
    base_round: int
    num_examples: int
    metrics: Mapping[str, Any] | None = None
    activation_id: str | None = None
    attempt: int | None = None


class BlobStore:
    """Global models and client updates, stored inline or in GridFS, first write wins."""

    def __init__(self, db: Database, *, inline_limit: int = INLINE_LIMIT, retry: Retry | None = None,
                 hash_alg: str = "sha256") -> None:
        """``hash_alg``: the digest algorithm of every blob this store writes (``weights.HASH_IDS``; the run chooses
        it); blobs are verified with the algorithm they were written with, whatever this one is."""
        if not 0 <= inline_limit <= INLINE_LIMIT:
            raise ValueError(f"inline_limit must be between 0 and {INLINE_LIMIT} bytes (BSON documents max 16 MiB)")
        if not W.hash_available(hash_alg):
            raise ValueError(f"digest algorithm {hash_alg!r} is unknown or its package is not installed here "
                             f"(known: {', '.join(W.HASH_IDS)})")
        self.hash_alg = hash_alg
        self.db = db
        self.models = db[MODELS]
        self.updates = db[UPDATES]
        self.states = db[STATES]
        self.partials = db[PARTIALS]
        self.inline_limit = inline_limit
        self._retry: Retry = retry or default_retry
        self._grid: _GridFiles | None = None  # made on first use: most stores (a client's) never touch GridFS

    @property
    def _files(self) -> _GridFiles:
        """The GridFS bucket, built when a blob first needs it (building one costs a client call ~0.3 ms)."""
        if self._grid is None:
            self._grid = _GridFiles(self.db)
        return self._grid

    def ensure_indexes(self, *, embedded: bool = False) -> None:
        """Secondary indexes for listings; the natural keys are the ``_id``s.

        ``embedded`` (nx-27017, `Store.ensure_indexes`): the updates get an index on ``round`` alone instead of
        ``run_round_client``, and one an earlier version made is dropped. nx-27017 keeps an index as a SQLite
        index over ``json_extract`` expressions, so each one costs every insert and every prune of an update a
        parse of its 13 KB of document text; neosqlite writes a query's predicates so that SQLite can use an
        index on one field (it looks the field's index up first), but never uses the compound one. With
        ``round`` indexed, listing a round reads that round's rows instead of every row of every earlier round
        (at round 30 of 1000 clients, 57 instead of 113 ms), for about what the unused compound index cost an
        insert and a prune (0.59 against 0.575 ms of server CPU per update; none: 0.54) (issue 18)."""
        if not embedded:
            self._retry(lambda: self.updates.create_index(list(_UPDATE_LISTING_KEY), name="run_round_client"))
        else:  # by its key: nx-27017 names an index after its fields whatever name it was given
            for name, info in self._retry(lambda: self.updates.index_information()).items():
                if [tuple(k) for k in info.get("key", [])] == list(_UPDATE_LISTING_KEY):
                    self._retry(lambda name=name: self.updates.drop_index(name))
            self._retry(lambda: self.updates.create_index([("round", 1)], name="round"))
        self._retry(lambda: self.models.create_index([("run_id", 1), ("round", 1)], name="run_round"))
        self._retry(lambda: self.states.create_index([("run_id", 1), ("round", 1)], name="run_round"))
        self._retry(lambda: self.partials.create_index([("run_id", 1), ("round", 1)], name="run_round"))

    # ----------------------------------------------------------------------------------------------- blobs

    def _put_blob(self, blob: bytes, key: str, write_id: str, collection: str | None = None) -> dict[str, Any]:
        if len(blob) <= self.inline_limit:
            # bytes are BSON binary subtype 0 as they are: a bson.Binary would copy the blob once more
            return {"blob": {"inline": blob}, "storage": "inline", "size": len(blob), "file_id": None}
        meta: dict[str, Any] = {"key": key, "write_id": write_id, "created": time.time()}
        if collection is not None:  # gc_orphan_files tells models from updates by the key; others say where
            meta["collection"] = collection
        file_id = self._retry(lambda: self._files.put(blob, meta))
        return {"blob": {"gridfs": file_id, "size": len(blob)}, "storage": "gridfs", "size": len(blob), "file_id": file_id}

    def _get_blob(self, ref: Mapping[str, Any]) -> bytes | None:
        if "inline" in ref:
            return ref["inline"]
        return self._retry(lambda: self._files.get(ref["gridfs"]))

    def _drop_file(self, file_id: Any) -> None:
        if file_id is not None:
            self._retry(lambda: self._files.delete(file_id))

    def _insert_first(self, coll: Any, doc: dict[str, Any]) -> dict[str, Any]:
        """Insert ``doc``; if its key exists keep the stored one (and drop our GridFS file)."""
        try:
            self._retry(lambda: coll.insert_one(doc))
            return _public(doc, duplicate=False)
        except DuplicateKeyError:
            existing = self._retry(lambda: coll.find_one({"_id": doc["_id"]}, {"blob": 0}))
            if existing is not None and existing.get("write_id") == doc["write_id"]:
                return _public(doc, duplicate=False)  # our own insert, retried after a lost reply
            self._drop_file(doc.get("file_id"))
            if existing is None:
                raise
            return _public(existing, duplicate=True)

    # ---------------------------------------------------------------------------------------------- models

    def write_model(
        self, run_id: str, round: int, weights: Mapping[str, np.ndarray], metrics: Mapping[str, Any],
        *, num_updates: int | None = None, state_sha256: str | None = None,
    ) -> dict[str, Any]:
        """Store the global model of ``round``; a repeated write returns the stored doc with ``duplicate: True``.

        ``state_sha256``: the server state this round left (``write_state``, written first); the next round reads
        the state the committed model names, never one an uncommitted attempt left behind."""
        _check_run_id(run_id)
        key = f"{run_id}:{round}"
        existing = self._retry(lambda: self.models.find_one({"_id": key}, {"blob": 0}))
        if existing is not None:
            return _public(existing, duplicate=True)
        blob = W.encode(weights, self.hash_alg)
        write_id = uuid.uuid4().hex
        doc = {
            "_id": key, "run_id": run_id, "round": int(round), "sha256": W.digest_of(blob), "hash_alg": self.hash_alg,
            "num_params": W.num_params(weights), "metrics": dict(metrics), "num_updates": num_updates,
            "created": time.time(), "write_id": write_id, **self._put_blob(blob, key, write_id),
        }
        if state_sha256 is not None:  # absent for stateless strategies: their documents are as before
            doc["state_sha256"] = state_sha256
        return self._insert_first(self.models, doc)

    def read_model(
        self, run_id: str, round: int, expected: W.Expected | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Global weights (read-only views) and the model doc (without blob bytes)."""
        doc = self._retry(lambda: self.models.find_one({"_id": f"{run_id}:{round}"}))
        if doc is None:
            raise ModelMissing(run_id, round)
        if doc.get("blob") is None:
            raise ModelMissing(run_id, round, "pruned")
        blob = self._get_blob(doc["blob"])
        if blob is None:
            raise CorruptModel(run_id, round, "missing", f"GridFS file {doc['blob'].get('gridfs')} is gone")
        try:
            if W.digest_of(blob) != doc.get("sha256"):
                raise W.WeightsError("checksum", "blob digest differs from the digest recorded in the document")
            weights = W.decode(blob, expected)
        except W.WeightsError as exc:
            raise CorruptModel(run_id, round, exc.reason, str(exc)) from None
        return weights, _public(doc, duplicate=False)

    def get_model_doc(self, run_id: str, round: int) -> dict[str, Any] | None:
        return self._retry(lambda: self.models.find_one({"_id": f"{run_id}:{round}"}, {"blob": 0}))

    def list_model_docs(self, run_id: str) -> list[dict[str, Any]]:
        return self._retry(lambda: list(self.models.find({"run_id": run_id}, {"blob": 0}).sort("round", 1)))

    # ---------------------------------------------------------------------------------------- server state

    def write_state(self, run_id: str, round: int, state: Mapping[str, np.ndarray]) -> dict[str, Any]:
        """Store the server state after ``round`` under a key that holds its digest (the same state twice is one
        document); returns the doc without blob bytes, whose ``sha256`` the model document of ``round`` names."""
        _check_run_id(run_id)
        if not state:
            raise ValueError("an empty server state is not stored (stateless strategies have none)")
        blob = W.encode(state, self.hash_alg)
        digest = W.digest_of(blob)
        key = f"{run_id}:{round}:state:{digest}"
        existing = self._retry(lambda: self.states.find_one({"_id": key}, {"blob": 0}))
        if existing is not None and not existing.get("pruned"):
            return _public(existing, duplicate=True)
        if existing is not None:  # pruned, yet needed again (a round re-run after gc): store the bytes again
            self._retry(lambda: self.states.delete_one({"_id": key, "pruned": {"$exists": True}}))
        write_id = uuid.uuid4().hex
        doc = {
            "_id": key, "run_id": run_id, "round": int(round), "sha256": digest, "hash_alg": self.hash_alg,
            "num_arrays": len(state),
            "created": time.time(), "write_id": write_id, **self._put_blob(blob, key, write_id, STATES),
        }
        return self._insert_first(self.states, doc)

    def read_state(self, run_id: str, round: int, sha256: str) -> dict[str, np.ndarray]:
        """The server state the model document of ``round`` names (``state_sha256``), checked against that digest;
        ModelMissing (``reason`` ``state_missing``) or CorruptModel otherwise: a round cannot go on without it."""
        doc = self._retry(lambda: self.states.find_one({"_id": f"{run_id}:{round}:state:{sha256}"}))
        blob = self._get_blob(doc["blob"]) if doc is not None and doc.get("blob") is not None else None
        if blob is None:
            raise ModelMissing(run_id, round, "state_missing")
        try:
            if W.digest_of(blob) != sha256:
                raise W.WeightsError("checksum", "server state digest differs from the one the model names")
            return W.decode(blob)
        except W.WeightsError as exc:
            raise CorruptModel(run_id, round, exc.reason, f"server state: {exc}") from None

    # ------------------------------------------------------------------------------------------- partials

    def write_partial(self, key: str, run_id: str, round: int, level: int, index: int,
                      sums: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> dict[str, Any]:
        """Store a partial sum of tree aggregation under ``key``; first write wins (a retried invocation, or a
        duplicate one, gets the stored document back with ``duplicate: True``)."""
        _check_run_id(run_id)
        existing = self._retry(lambda: self.partials.find_one({"_id": key}, {"blob": 0}))
        if existing is not None:
            return _public(existing, duplicate=True)
        blob = W.encode(sums, self.hash_alg)
        write_id = uuid.uuid4().hex
        doc = {"_id": key, "run_id": run_id, "round": int(round), "level": int(level), "index": int(index),
               **dict(meta), "sha256": W.digest_of(blob), "created": time.time(), "write_id": write_id,
               **self._put_blob(blob, key, write_id, PARTIALS)}
        return self._insert_first(self.partials, doc)

    def get_partial_doc(self, key: str) -> dict[str, Any] | None:
        return self._retry(lambda: self.partials.find_one({"_id": key}, {"blob": 0}))

    def partials_present(self, keys: Iterable[str]) -> set[str]:
        """Which of ``keys`` are stored (one round trip): the orchestrator does not issue those again."""
        wanted = list(keys)
        if not wanted:
            return set()
        return {d["_id"] for d in self._retry(lambda: list(self.partials.find({"_id": {"$in": wanted}}, {"_id": 1})))}

    def read_partial(self, run_id: str, round: int, key: str, expected: W.Expected
                     ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The float64 sums of a stored partial (checked against its digest and ``expected``) and its document;
        CorruptModel (reason ``missing``, ``checksum``, ...) otherwise: the combining invocation cannot go on."""
        doc = self._retry(lambda: self.partials.find_one({"_id": key}))
        blob = self._get_blob(doc["blob"]) if doc is not None and doc.get("blob") is not None else None
        if blob is None:
            raise CorruptModel(run_id, round, "missing", f"partial {key} is not stored (or its blob is gone)")
        try:
            if doc.get("run_id") != run_id or doc.get("round") != round:
                raise W.WeightsError("names", f"the document names run {doc.get('run_id')!r} round "
                                              f"{doc.get('round')!r}")
            if W.digest_of(blob) != doc.get("sha256"):
                raise W.WeightsError("checksum", "partial digest differs from the digest recorded in the document")
            return W.decode(blob, expected), _public(doc, duplicate=False)
        except W.WeightsError as exc:
            raise CorruptModel(run_id, round, exc.reason, f"partial {key}: {exc}") from None

    def delete_partials(self, run_id: str, through_round: int, *, only_round: bool = False) -> int:
        """Delete the partial sums (documents and files) of rounds ``<= through_round`` (or of that round only)."""
        rounds: Any = int(through_round) if only_round else {"$lte": int(through_round)}
        query = {"run_id": run_id, "round": rounds}
        docs = self._retry(lambda: list(self.partials.find(query, {"_id": 1, "file_id": 1})))
        for doc in docs:
            self._drop_file(doc.get("file_id"))
        if not docs:
            return 0
        return self._retry(lambda: self.partials.delete_many({"_id": {"$in": [d["_id"] for d in docs]}})).deleted_count

    # --------------------------------------------------------------------------------------------- updates

    def write_update(
        self, run_id: str, round: int, client_id: Any, weights: Mapping[str, np.ndarray], *,
        base_round: int, num_examples: int, metrics: Mapping[str, Any] | None = None,
        activation_id: str | None = None, attempt: int | None = None,
    ) -> dict[str, Any]:
        """Store the update one activation computed (key: ``update_key``); the first write under that key wins and
        later ones get it back with ``duplicate: True`` (a retried delivery of the same activation). The result
        also holds ``offered_sha256``, the digest of the blob this call offered."""
        item = UpdateItem(run_id, round, client_id, weights, base_round=base_round, num_examples=num_examples,
                          metrics=metrics, activation_id=activation_id, attempt=attempt)
        result = self.write_updates([item])[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def write_updates(self, items: list["UpdateItem"]) -> list[dict[str, Any] | Exception]:
        """Store several activations' updates, each as `write_update` would, inline ones in one insert command.

        One result per item, in order: the stored document's public fields (with ``duplicate`` and
        ``offered_sha256``), or the exception that item alone raised (a bad argument, a write error), so one bad
        item never costs the others their write. Why: a local worker that runs several queued calls at once
        saves a round trip and most of the server's per-command work (measured: 0.45 -> 0.30 ms of the embedded
        server's CPU and 0.25 -> 0.10 ms of the caller's per document with four per command)."""
        results: list[dict[str, Any] | Exception | None] = [None] * len(items)
        batch: list[tuple[int, dict[str, Any], str]] = []  # (item index, document, offered digest)
        for i, item in enumerate(items):
            try:
                doc, offered, existing = self._update_doc(item)
            except Exception as exc:  # noqa: BLE001 - this item's error, returned for its caller to raise
                results[i] = exc
                continue
            if existing is not None:
                results[i] = {**_public(existing, duplicate=True), "offered_sha256": offered}
            else:
                batch.append((i, doc, offered))
        if len(batch) == 1:
            i, doc, offered = batch[0]
            try:
                results[i] = {**self._insert_first(self.updates, doc), "offered_sha256": offered}
            except pymongo.errors.PyMongoError as exc:
                results[i] = exc
        elif batch:
            failed = self._insert_many(self.updates, [doc for _, doc, _ in batch])
            for j, (i, doc, offered) in enumerate(batch):
                if j not in failed:
                    results[i] = {**_public(doc, duplicate=False), "offered_sha256": offered}
                    continue
                try:  # this document's key was taken (or its write failed): settle it as a single insert does
                    results[i] = {**self._insert_first(self.updates, doc), "offered_sha256": offered}
                except pymongo.errors.PyMongoError as exc:
                    results[i] = exc
        return [r if r is not None else RuntimeError("update not written") for r in results]

    def _update_doc(self, item: "UpdateItem") -> tuple[dict[str, Any], str, dict[str, Any] | None]:
        """(the update's document, its blob's digest, the document already under its key when a GridFS upload
        would otherwise be wasted)."""
        _check_run_id(item.run_id)
        key = update_key(item.run_id, item.round, item.client_id, item.activation_id)
        attempt = item.attempt
        if attempt is not None and (isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1):
            raise ValueError(f"attempt must be an integer >= 1, got {attempt!r}")
        blob = W.encode(item.weights, self.hash_alg)
        offered = W.PREFIX.unpack_from(blob, 0)[4].hex()  # = W.digest_of(blob), without re-parsing what encode wrote
        if len(blob) > self.inline_limit:  # look first only when a GridFS upload would be wasted
            existing = self._retry(lambda: self.updates.find_one({"_id": key}, {"blob": 0}))
            if existing is not None:
                return {}, offered, existing
        write_id = uuid.uuid4().hex
        doc = {
            "_id": key, "run_id": item.run_id, "round": int(item.round), "client_id": item.client_id,
            "base_round": int(item.base_round), "num_examples": int(item.num_examples),
            "metrics": dict(item.metrics or {}),
            "sha256": offered, "hash_alg": self.hash_alg, "num_params": W.num_params(item.weights),
            "activation_id": item.activation_id,
            "attempt": attempt, "created": time.time(), "write_id": write_id,
            **self._put_blob(blob, key, write_id),
        }
        # offered_sha256: what this call tried to store, so a caller told `duplicate` can tell a repeat of its own
        # write from someone else's document under the same key
        return doc, offered, None

    def _insert_many(self, coll: Any, docs: list[dict[str, Any]]) -> set[int]:
        """Insert `docs` in one unordered command; the positions of those not written (a duplicate key, a write
        error), for the caller to settle one by one. A retry after a lost reply finds its own documents as
        duplicates, which `_insert_first` recognises by their write id."""
        try:
            self._retry(lambda: coll.insert_many(docs, ordered=False))
            return set()
        except pymongo.errors.BulkWriteError as exc:
            return {int(e.get("index", -1)) for e in exc.details.get("writeErrors", [])}
        except AutoReconnect:
            return set(range(len(docs)))  # no reply after the retries: each is settled (and reported) alone

    def list_updates(self, run_id: str, round: int) -> list[dict[str, Any]]:
        """Update docs of one round without blob bytes, in client-id order (the aggregation order). Sorted here,
        not by the server: the embedded store's SQLite sorter would copy each document whole, blob text included
        (`bsonorder`)."""
        docs = self._retry(lambda: list(self.updates.find({"run_id": run_id, "round": int(round)}, {"blob": 0})))
        return sort_documents(docs, ("client_id", "attempt"))

    def find_update(self, run_id: str, round: int, client_id: Any, activation_id: str | None = None
                    ) -> dict[str, Any] | None:
        """The update document (blob reference included) one activation wrote, else the document an earlier version
        stored under ``run:round:client`` (whatever activation it names: the caller compares), else None.

        Not validated: what it says is the writer's word (``runtime.admission`` checks it)."""
        doc = self._retry(lambda: self.updates.find_one({"_id": update_key(run_id, round, client_id, activation_id)}))
        if doc is None and activation_id is not None:
            doc = self._retry(lambda: self.updates.find_one({"_id": update_key(run_id, round, client_id)}))
        return doc

    def find_updates(self, run_id: str, wanted: Iterable[tuple[int, Any, str | None]], *,
                     find: Callable[[Any, dict[str, Any]], list[Any]] | None = None,
                     ) -> dict[tuple[int, Any, str | None], dict[str, Any] | None]:
        """What ``find_update`` returns for each (round, client_id, activation_id) of ``wanted``, in one round trip:
        one ``$in`` over their keys (and the pre-activation keys, for documents of earlier versions) instead of a
        round trip per update. The aggregator reads a round's updates in chunks of these (``runtime.admission``).
        Not validated: every field is the writer's word. ``find(collection, query)``: how the documents are read
        (default ``list(collection.find(query))``; the aggregator's ``bsonview.find_views`` keeps each inline blob
        a view of the driver's reply)."""
        keys: dict[str, tuple[tuple[int, Any, str | None], int]] = {}
        out: dict[tuple[int, Any, str | None], dict[str, Any] | None] = {}
        for rnd, client_id, activation_id in wanted:
            item = (int(rnd), client_id, activation_id)
            out[item] = None
            keys[update_key(run_id, rnd, client_id, activation_id)] = (item, 0)
            if activation_id is not None:
                keys.setdefault(update_key(run_id, rnd, client_id), (item, 1))
        if not keys:
            return out
        rank: dict[tuple[int, Any, str | None], int] = {}
        query = {"_id": {"$in": list(keys)}}
        for doc in self._retry(lambda: find(self.updates, query) if find else list(self.updates.find(query))):
            item, preference = keys[doc["_id"]]
            if item not in rank or preference < rank[item]:  # the activation's own key before the old one
                out[item], rank[item] = doc, preference
        return out

    def blob_of(self, doc: Mapping[str, Any], max_bytes: int | None = None) -> bytes | None:
        """The bytes a stored document's ``blob`` field points at; None if pruned or gone. A reference of the wrong
        shape raises ValueError, a GridFS file longer than ``max_bytes`` BlobTooLarge: a document is untrusted."""
        ref = doc.get("blob")
        if ref is None:
            return None
        if not isinstance(ref, Mapping):
            raise ValueError(f"blob reference is a {type(ref).__name__}, not a document")
        if "inline" in ref:
            data = ref["inline"]
            if not isinstance(data, (bytes, memoryview)):  # memoryview: a view of the reply (runtime.bsonview)
                raise ValueError(f"inline blob is a {type(data).__name__}, not binary data")
            if max_bytes is not None and len(data) > max_bytes:
                raise BlobTooLarge(len(data), max_bytes)
            return data
        file_id = ref.get("gridfs")
        if not isinstance(file_id, bson.ObjectId):  # what _put_blob stores; never a query such as {"$gt": ""}
            raise ValueError(f"GridFS reference {file_id!r} is not an ObjectId")
        return self._retry(lambda: self._files.get(file_id, max_bytes))

    def read_update(
        self, run_id: str, round: int, client_id: Any, expected: W.Expected, *, base_round: int | None = None,
        activation_id: str | None = None,
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Validated update weights (read-only views) and doc; every rejection is a CorruptUpdate naming the client.

        ``activation_id`` picks the update of that activation (``find_update``); ``base_round``, when given, must
        equal the round of the global model the client trained on. The aggregator checks the rest of the
        metadata (``runtime.admission``).
        """
        def reject(reason: str, detail: str) -> CorruptUpdate:
            return CorruptUpdate(run_id, round, client_id, reason, detail)

        doc = self.find_update(run_id, round, client_id, activation_id)
        if doc is None:
            raise reject("missing", "no update stored")
        if doc.get("blob") is None:
            raise reject("missing", "update blob was garbage-collected")
        if base_round is not None and doc.get("base_round") != base_round:
            raise reject("stale_round", f"trained on round {doc.get('base_round')}, expected {base_round}")
        return self.decode_update(doc, expected, run_id, round, client_id), _public(doc, duplicate=False)

    def decode_update(
        self, doc: Mapping[str, Any], expected: W.Expected, run_id: str, round: int, client_id: Any,
        *, max_bytes: int | None = None, check_finite: bool = True,
    ) -> dict[str, np.ndarray]:
        """The weights of a stored update, checked against the digest its document records and against
        ``expected`` (names, shapes, dtypes, finite values: ``check_finite=False`` leaves the last to the caller,
        ``weights.decode``); CorruptUpdate otherwise."""
        def reject(reason: str, detail: str) -> CorruptUpdate:
            return CorruptUpdate(run_id, round, client_id, reason, detail)

        try:
            blob = self.blob_of(doc, max_bytes)
        except (BlobTooLarge, ValueError) as exc:  # a reference or a size no writer of ours produces
            raise reject("malformed", str(exc)) from None
        if blob is None:
            ref = doc.get("blob")
            what = "update blob was garbage-collected" if ref is None else f"GridFS file {ref.get('gridfs')} is gone"
            raise reject("missing", what)
        try:
            header = W.read_header(blob)  # parsed once: the digest and its algorithm, then the arrays
            if header.digest != doc.get("sha256"):
                raise W.WeightsError("checksum", "blob digest differs from the digest recorded in the document")
            if header.hash_alg != doc.get("hash_alg", "sha256"):  # documents of earlier versions: sha256
                raise W.WeightsError("checksum", f"blob digested with {header.hash_alg}, the document says "
                                                 f"{doc.get('hash_alg', 'sha256')!r}")
            return W.decode(blob, expected, header=header, check_finite=check_finite)
        except W.WeightsError as exc:
            raise reject(exc.reason, str(exc)) from None

    # -------------------------------------------------------------------------------------------------- gc

    def _prune(self, coll: Any, docs: Iterable[dict[str, Any]], batch: int | None = None,
               between: Callable[[], None] | None = None) -> int:
        """Drop blobs but keep the metadata; the docs are updated first so none points at a deleted file.

        One ``update_many`` for all of them (a round's thousand updates in one round trip, not a thousand), then
        the GridFS files of those that had one; deleting a file a concurrent pruner already deleted is a no-op.
        ``batch``: at most that many docs per ``update_many``, for a pruner that runs beside other work: the
        embedded server holds its database lock for a whole command (about 0.5 ms per update document), so one
        command over a round's thousand updates would stall every client write for half a second. ``between``:
        called between two batches (a background pruner gives the store's other users their turn there)."""
        docs = list(docs)
        if not docs:
            return 0
        step = len(docs) if batch is None else max(1, int(batch))
        modified = 0
        for start in range(0, len(docs), step):
            if start and between is not None:
                between()
            part = docs[start:start + step]
            res = self._retry(lambda part=part: coll.update_many(
                {"_id": {"$in": [d["_id"] for d in part]}, "blob": {"$ne": None}},
                {"$set": {"blob": None, "pruned": time.time()}}))
            for doc in part:
                self._drop_file(doc.get("file_id"))
            modified += int(res.modified_count)
        return modified

    def gc_models(self, run_id: str, keep_last: int, protect: Iterable[int] = ()) -> int:
        """Remove the blobs of global models older than the newest ``keep_last`` rounds, except ``protect``.

        The newest model is always kept (``keep_last >= 1``): a resumed run continues from it. Docs stay, with
        ``blob: None`` and ``pruned`` set, so the evaluation history survives. Returns the number of models pruned.
        Server states go with their models: the states of kept rounds stay (the next round reads the newest), the
        others are pruned, including those no committed model names (an attempt that died before committing).
        """
        if keep_last < 1:
            raise ValueError("keep_last must be at least 1: a resumed run needs the latest global model")
        docs = self._retry(
            lambda: list(self.models.find({"run_id": run_id, "blob": {"$ne": None}}, {"blob": 0}).sort("round", -1))
        )
        keep = {d["round"] for d in docs[:keep_last]} | {int(r) for r in protect}
        pruned = self._prune(self.models, [d for d in docs if d["round"] not in keep])
        named = {(d["round"], d.get("state_sha256")) for d in docs if d["round"] in keep}
        newest = docs[0]["round"] if docs else None
        states = self._retry(lambda: list(self.states.find({"run_id": run_id, "blob": {"$ne": None}}, {"blob": 0})))
        # a state newer than the newest model may belong to an aggregation under way: left alone
        self._prune(self.states, [s for s in states if (s["round"], s.get("sha256")) not in named
                                  and (newest is None or s["round"] < newest)])
        return pruned

    def gc_updates(self, run_id: str, through_round: int, *, after_round: int | None = None,
                   batch: int | None = None, between: Callable[[], None] | None = None) -> int:
        """Remove the blobs of updates of rounds ``<= through_round`` (already aggregated); metadata stays. The
        partial sums of those rounds (tree aggregation) go entirely: they are intermediates of the model.
        ``after_round``: only rounds above it (a caller that knows the earlier ones collected: finding the blobs
        left reads every document of the rounds looked at). ``batch``: documents per write, ``between``: called
        between two writes (``_prune``; None: all in one)."""
        self.delete_partials(run_id, through_round)
        rounds: dict[str, int] = {"$lte": int(through_round)}
        if after_round is not None:
            rounds["$gt"] = int(after_round)
        docs = self._retry(
            lambda: list(
                self.updates.find({"run_id": run_id, "round": rounds, "blob": {"$ne": None}},
                                  {"_id": 1, "file_id": 1})
            )
        )
        return self._prune(self.updates, docs, batch, between)

    def gc_orphan_files(self, older_than_s: float = 3600.0) -> int:
        """Delete GridFS files that no doc references (a writer died between upload and insert, or lost a race)."""
        cutoff = time.time() - older_than_s
        removed = 0
        for f in self._retry(lambda: self._files.find({"metadata.key": {"$exists": True}})):
            meta = f.get("metadata") or {}
            if float(meta.get("created", 0)) > cutoff:
                continue
            key = meta["key"]
            if meta.get("collection") in (STATES, PARTIALS):
                coll = self.states if meta["collection"] == STATES else self.partials
            else:
                coll = self.updates if key.count(":") >= 2 else self.models
            doc = self._retry(lambda: coll.find_one({"_id": key}, {"blob": 0}))
            if doc is None or doc.get("file_id") != f["_id"] or doc.get("pruned"):
                self._drop_file(f["_id"])
                removed += 1
        return removed

    def delete_run(self, run_id: str) -> int:
        """Delete every model, update, server state and partial sum of a run, blobs included; returns the number of
        docs removed."""
        removed = 0
        for coll in (self.models, self.updates, self.states, self.partials):
            docs = self._retry(lambda: list(coll.find({"run_id": run_id}, {"_id": 1, "file_id": 1})))
            for doc in docs:
                self._drop_file(doc.get("file_id"))
            removed += self._retry(lambda: coll.delete_many({"run_id": run_id})).deleted_count
        return removed

"""The repository: ``Store``, the one implementation of the orchestrator's reads and writes, and ``open_store``.

``open_store(mongo, workdir=...)`` gives a ``Store``: typed accessors for runs and activations, ``Store.blobs``
(``runtime.blobstore.BlobStore``) for models and updates, indexes, and bounded retries of transient network
errors. With ``mongo_config.url: embedded`` it first starts (or joins) an nx-27017 server that keeps its data
under ``<workdir>/.fedkeeper/`` (``store.embedded``: the server's files, sharing and lifetime).

The Store speaks plain pymongo to a real server (the embedded nx-27017 or MongoDB) and carries no code for
in-process fakes. nx-27017 0.8.1 gaps worked around here and in ``runtime/blobstore.py``:

- datetimes come back as strings and nested exclusion projections are ignored: times are unix floats and
  listings exclude whole fields; ``$inc`` with a dotted path in an upsert creates a literal dotted key, so
  counters are only ``$inc``-ed on documents that exist; ``replace_one`` is never used.
"""

from __future__ import annotations

import contextlib
import enum
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pymongo
from pymongo.database import Database
from pymongo.errors import AutoReconnect, BulkWriteError, ConfigurationError, DuplicateKeyError, OperationFailure
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from fedkeeper.runtime.blobstore import INLINE_LIMIT, BlobStore
from fedkeeper.store.audit import AuditReport, audit
from fedkeeper.store.connection import Connection, MongoSettings, _one_line, display_url, hosts_of, resolve
from fedkeeper.store.embedded import EmbeddedServer
from fedkeeper.store.errors import (
    ActivationConflict,
    ActivationMissing,
    RunMissing,
    StoreAuthError,
    StoreConfigError,
    StoreUnavailable,
)
from fedkeeper.store.runs import StoreUsage, purge_run, run_usage

T = TypeVar("T")

EMBEDDED = "embedded"
RUNS, ACTIVATIONS, LOCKS = "runs", "activations", "locks"
ACTIVATION_KEY = ("run_id", "round", "client_id", "attempt")  # unique: one document per attempt


# ------------------------------------------------------------------------------------------------------- store


def _plain(value: Any) -> Any:
    """Enums (e.g. providers.base.State) are stored as their values: BSON has no enum type, and queries compare
    the stored value whether the caller passes the enum or its value."""
    return value.value if isinstance(value, enum.Enum) else value


def _activation(doc: dict[str, Any]) -> dict[str, Any]:
    """An activation as stored: enum values, an ``_id`` (a new uuid unless given) and every key field present."""
    full = {k: _plain(v) for k, v in doc.items()}
    full.setdefault("_id", uuid.uuid4().hex)
    for key in ACTIVATION_KEY:
        full.setdefault(key, None)
    return full


def _public(doc: dict[str, Any], duplicate: bool) -> dict[str, Any]:
    return {**doc, "duplicate": duplicate}


def _answered(client: Any) -> bool:
    """True when some server of the URL answered the client's monitor (it is there, only not ready to serve):
    worth waiting for. A refused connection, a timeout or an unknown host leaves every server Unknown."""
    from pymongo.server_type import SERVER_TYPE

    return any(sd.server_type != SERVER_TYPE.Unknown
               for sd in client.topology_description.server_descriptions().values())


class Store:
    """Typed access to runs and activations, plus ``blobs`` for models and updates.

    ``url`` is what functions get as ``FK_MONGO_URL`` and may contain a password: log ``display_url`` instead.
    ``client`` is the MongoClient this Store owns and closes (``connect`` passes it); without one, the caller
    keeps ownership of ``db``'s client.
    Every operation retries transient network errors (AutoReconnect, NetworkTimeout) a few times and then
    raises StoreUnavailable; writes are keyed by natural ids, so a retried write cannot duplicate.
    """

    def __init__(
        self, db: Database, *, url: str, client: Any = None, secrets: Iterable[str] = (), attempts: int = 3,
        keep_models: int = 3, inline_limit: int = INLINE_LIMIT, embedded: EmbeddedServer | None = None,
    ) -> None:
        self.db = db
        self.db_name: str = db.name
        self.url = url
        self.display_url = display_url(url)
        self.hosts = hosts_of(url)
        self.client = client
        self.keep_models = keep_models
        self.embedded = embedded
        self._secrets = tuple(secrets)
        self._attempts = attempts
        self.runs = db[RUNS]
        self.activations = db[ACTIVATIONS]
        self.locks = db[LOCKS]
        self.blobs = BlobStore(db, inline_limit=inline_limit, retry=self._call)

    # ------------------------------------------------------------------------------------------- plumbing

    @classmethod
    def connect(cls, conn: Connection, db_name: str, *, attempts: int = 3, start_attempts: int = 3, **kw: Any) -> Store:
        """Connect and ping; StoreUnavailable if it cannot be reached.

        One ping already waits for the client's server selection (serverSelectionTimeoutMS, mongo_config's 2 s
        by default), re-checking the server twice a second meanwhile, so a store nobody answers for is reported
        after that one wait. Only a server that did answer (a replica set electing a primary, a server still
        starting up) is pinged again, up to `start_attempts` times.
        """
        try:
            client = pymongo.MongoClient(conn.url, **conn.options)
        except (ConfigurationError, ValueError) as exc:
            raise StoreConfigError(f"invalid MongoDB URL {conn.display_url}: {_one_line(exc, conn.secrets)}") from None
        try:
            for attempt in range(1, start_attempts + 1):
                try:
                    client.admin.command("ping")
                    break
                except AutoReconnect:
                    if attempt == start_attempts or not _answered(client):
                        raise
                    time.sleep(min(2.0, 0.2 * 2 ** (attempt - 1)))
        except AutoReconnect as exc:
            client.close()
            waited = client.options.server_selection_timeout  # seconds; named, not measured: the line is stable
            raise StoreUnavailable(f"cannot reach MongoDB at {conn.hosts} ({conn.display_url}) within {waited:g} s: "
                                   f"{_one_line(exc, conn.secrets)}") from None
        except OperationFailure as exc:
            client.close()
            if exc.code in (18, 13) or "auth" in str(exc).lower():
                raise StoreAuthError(
                    f"MongoDB at {conn.hosts} rejected the credentials: {_one_line(exc, conn.secrets)}"
                ) from None
            raise StoreUnavailable(f"MongoDB at {conn.hosts} refused ping: {_one_line(exc, conn.secrets)}") from None
        return cls(client[db_name], url=conn.url, client=client, secrets=conn.secrets, attempts=attempts, **kw)

    def _call(self, fn: Callable[[], T]) -> T:
        """`fn()` on a store that was reached, retrying transient network errors: each attempt may wait up to the
        server selection timeout, and the pauses between them grow (0.25 s, 0.5 s, 1 s, ...)."""
        try:
            for attempt in Retrying(
                stop=stop_after_attempt(self._attempts), wait=wait_exponential(multiplier=0.25, max=2.0),
                retry=retry_if_exception_type(AutoReconnect), reraise=True,
            ):
                with attempt:
                    return fn()
        except AutoReconnect as exc:
            raise StoreUnavailable(f"lost MongoDB at {self.hosts}: {_one_line(exc, self._secrets)}") from None
        raise AssertionError("unreachable")

    def ensure_indexes(self) -> None:
        """Indexes the orchestrator's queries rely on; the activation key is unique."""
        self._call(lambda: self.runs.create_index([("experiment", 1), ("started", 1)], name="experiment_started"))
        self._call(lambda: self.activations.create_index(
            [(key, 1) for key in ACTIVATION_KEY], unique=True, name="activation_key"))
        self._call(lambda: self.activations.create_index([("run_id", 1), ("state", 1)], name="run_state"))
        if self.embedded is not None:  # an index nx-27017 can use: a round's records, not the run's (BlobStore's)
            self._call(lambda: self.activations.create_index([("round", 1)], name="round"))
        self.blobs.ensure_indexes(embedded=self.embedded is not None)

    def ping(self) -> None:
        self._call(lambda: self.db.command("ping"))

    def close(self) -> None:
        """Close the client this Store owns (a Store over a caller's ``db`` leaves it open)."""
        if self.client is not None:
            self.client.close()

    # ----------------------------------------------------------------------------------------------- runs

    def create_run(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Insert a run (``_id`` is the run id); an existing run is returned unchanged with ``duplicate: True``."""
        run_id = doc.get("_id", doc.get("run_id"))
        if not isinstance(run_id, str) or not run_id or ":" in run_id:
            raise ValueError(f"run doc needs an '_id' without ':', got {run_id!r}")
        now = time.time()
        full = {k: _plain(v) for k, v in doc.items()}
        full.update(_id=run_id, run_id=run_id)
        full.setdefault("status", "running")
        full.setdefault("started", now)
        full.setdefault("updated", now)
        try:
            self._call(lambda: self.runs.insert_one(full))
            return _public(full, duplicate=False)
        except DuplicateKeyError:
            existing = self.get_run(run_id)
            if existing is None:
                raise
            return _public(existing, duplicate=True)

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        return self._call(lambda: self.runs.find_one({"_id": run_id}))

    def update_run(self, run_id: str, **fields: Any) -> dict[str, Any]:
        """``$set`` fields (dotted paths allowed) and return the run after the update."""
        values = {k: _plain(v) for k, v in fields.items()}
        values.setdefault("updated", time.time())
        doc = self._call(lambda: self.runs.find_one_and_update(
            {"_id": run_id}, {"$set": values}, return_document=pymongo.ReturnDocument.AFTER))
        if doc is None:
            raise RunMissing(run_id)
        return doc

    def list_runs(self, experiment: str | None = None) -> list[dict[str, Any]]:
        """Runs (optionally of one experiment), oldest first."""
        query = {} if experiment is None else {"experiment": experiment}
        return self._call(lambda: list(self.runs.find(query).sort([("started", 1), ("_id", 1)])))

    def latest_run(self, experiment: str) -> dict[str, Any] | None:
        runs = self._call(lambda: list(
            self.runs.find({"experiment": experiment}).sort([("started", -1), ("_id", -1)]).limit(1)))
        return runs[0] if runs else None

    def delete_run(self, run_id: str) -> int:
        """Remove a run with its activations, models and updates (blobs included); returns docs removed."""
        removed = self.blobs.delete_run(run_id)
        removed += self._call(lambda: self.activations.delete_many({"run_id": run_id})).deleted_count
        removed += self._call(lambda: self.runs.delete_one({"_id": run_id})).deleted_count
        return removed

    def run_usage(self, run_id: str) -> StoreUsage:
        """Documents and bytes of one run in every collection and GridFS (``store.runs.run_usage``)."""
        return run_usage(self, run_id)

    def purge_run(self, run_id: str) -> StoreUsage:
        """Remove everything of a run — documents of every collection (its lock too) and GridFS files, orphaned
        ones included — and return what that freed (``store.runs.purge_run``). Does not check for a live holder."""
        return purge_run(self, run_id)

    def audit(self) -> AuditReport:
        """Orphan files and chunks, documents naming a missing blob or run (``store.audit``)."""
        return audit(self)

    # ----------------------------------------------------------------------------------------- activations

    def insert_activation(self, doc: dict[str, Any]) -> str:
        """Record an activation (``_id`` defaults to a new uuid); returns its id. Repeating the same insert is a
        no-op; a different activation for the same (run, round, client, attempt) raises ActivationConflict."""
        full = _activation(doc)
        self._insert_activations([full])
        return str(full["_id"])

    def update_activation(self, activation_id: str, **fields: Any) -> dict[str, Any]:
        values = {k: _plain(v) for k, v in fields.items()}
        doc = self._call(lambda: self.activations.find_one_and_update(
            {"_id": activation_id}, {"$set": values}, return_document=pymongo.ReturnDocument.AFTER))
        if doc is None:
            raise ActivationMissing(activation_id)
        return doc

    def record_activations(self, inserts: Iterable[dict[str, Any]] = (),
                           updates: Iterable[tuple[str, dict[str, Any]]] = ()) -> None:
        """Many activation writes in two round trips (the tracker flushes once per polling pass).

        Inserts go first, so an update may follow its own insert in the same batch. Re-inserting the same
        ``_id`` (a retried flush) is a no-op, a second activation for the same key raises ActivationConflict, and
        any other write error is raised. An update of an unknown id changes nothing.
        """
        docs = [_activation(doc) for doc in inserts]
        if docs:
            self._insert_activations(docs)
        sets = [pymongo.UpdateOne({"_id": activation_id}, {"$set": {k: _plain(v) for k, v in fields.items()}})
                for activation_id, fields in updates]
        if sets:
            self._call(lambda: self.activations.bulk_write(sets, ordered=True))

    def _insert_activations(self, docs: list[dict[str, Any]]) -> None:
        """One unordered insert; duplicate ``_id``s with the same key are retried writes, anything else raises."""
        try:
            self._call(lambda: self.activations.insert_many(docs, ordered=False))
        except BulkWriteError as exc:
            for error in exc.details.get("writeErrors", []):
                if error.get("code") != 11000:
                    raise
                doc = docs[error["index"]]
                existing = self._call(lambda d=doc: self.activations.find_one({"_id": d["_id"]}))
                if existing is None or any(existing.get(k) != doc[k] for k in ACTIVATION_KEY):
                    raise ActivationConflict(doc["run_id"], doc["round"], doc["client_id"], doc["attempt"]) from None

    def find_activations(
        self, run_id: str, round: int | None = None, state: Any = None
    ) -> list[dict[str, Any]]:
        """Activations of a run (optionally one round, one state or a collection of states), in
        (round, client_id, attempt) order."""
        query: dict[str, Any] = {"run_id": run_id}
        if round is not None:
            query["round"] = round
        if state is not None:
            if isinstance(state, (list, tuple, set, frozenset)):
                query["state"] = {"$in": [_plain(s) for s in state]}
            else:
                query["state"] = _plain(state)
        return self._call(lambda: list(
            self.activations.find(query).sort([("round", 1), ("client_id", 1), ("attempt", 1)])))

    def find_server_activations(self, run_id: str, round: int) -> list[dict[str, Any]]:
        """The activations of one round that no client made (the aggregator's, tree aggregation's nodes), in
        attempt order: what resuming an aggregation reads (``Tracker.resume``), without the round's thousand
        client records (2 ms instead of 60 ms on the embedded server at 1000 clients)."""
        query = {"run_id": run_id, "round": round, "client_id": None}
        return self._call(lambda: list(self.activations.find(query).sort([("client_id", 1), ("attempt", 1)])))

    # ---------------------------------------------------------------------------------------------- locks

    def acquire_lock(self, name: str, holder: dict[str, Any], lease_s: float, *, now: float | None = None,
                     take_from: str | None = None) -> dict[str, Any]:
        """Take the lock ``name`` (one document in ``locks``, ``_id`` = name) for ``holder`` until now + lease_s.

        ``holder`` is stored as the lock's fields and must carry a ``token`` that identifies the holder. The lock
        is taken when it is free, its lease has lapsed (``expires`` ≤ now), it is already this token's, or it is
        held under the token ``take_from`` (a holder the caller found dead). Each step is one atomic write (an
        insert on the unique ``_id``, or a conditional update), so of two contenders exactly one gets it.
        Returns the lock as it is after the call: the caller's when its ``token`` is the holder's, else the
        current holder's. ``now`` is the caller's clock: hosts are expected to agree to well within a lease.
        """
        token = holder["token"]
        for _ in range(5):  # a lock released between the two steps is tried again
            stamp = time.time() if now is None else now
            fields = {**{k: _plain(v) for k, v in holder.items()}, "acquired": stamp, "renewed": stamp,
                      "expires": stamp + lease_s, "lease_s": lease_s}
            try:
                self._call(lambda: self.locks.insert_one({"_id": name, **fields}))
                return {"_id": name, **fields}
            except DuplicateKeyError:
                pass
            takeable: list[dict[str, Any]] = [{"expires": {"$lte": stamp}}, {"token": token}]
            if take_from is not None:
                takeable.append({"token": take_from})
            doc = self._call(lambda: self.locks.find_one_and_update(
                {"_id": name, "$or": takeable}, {"$set": fields}, return_document=pymongo.ReturnDocument.AFTER))
            if doc is not None:
                return doc
            current = self.get_lock(name)
            if current is not None:
                return current
        raise StoreUnavailable(f"lock {name} kept changing hands; try again")

    def renew_lock(self, name: str, token: str, lease_s: float, *, now: float | None = None) -> dict[str, Any] | None:
        """Extend the lease of the lock ``name`` held under ``token`` to now + lease_s; None when that token no
        longer holds it (it lapsed and another holder took it, or it was released)."""
        stamp = time.time() if now is None else now
        return self._call(lambda: self.locks.find_one_and_update(
            {"_id": name, "token": token}, {"$set": {"renewed": stamp, "expires": stamp + lease_s}},
            return_document=pymongo.ReturnDocument.AFTER))

    def release_lock(self, name: str, token: str) -> bool:
        """Give up the lock ``name`` if ``token`` holds it (another holder's lock is left alone)."""
        return self._call(lambda: self.locks.delete_one({"_id": name, "token": token})).deleted_count == 1

    def get_lock(self, name: str) -> dict[str, Any] | None:
        """The lock document ``name`` as stored (None: nobody holds it), lapsed or not."""
        return self._call(lambda: self.locks.find_one({"_id": name}))

    # ------------------------------------------------------------------------------------ models / updates

    def get_model_doc(self, run_id: str, round: int) -> dict[str, Any] | None:
        return self.blobs.get_model_doc(run_id, round)

    def list_model_docs(self, run_id: str) -> list[dict[str, Any]]:
        return self.blobs.list_model_docs(run_id)

    def collect_garbage(self, run_id: str, last_aggregated_round: int, protect: Iterable[int] = ()) -> dict[str, int]:
        """Drop blobs a resumed run no longer needs: global models beyond the newest ``keep_models`` (and not
        protected) and the updates of rounds already aggregated."""
        return {
            "models": self.blobs.gc_models(run_id, self.keep_models, protect),
            "updates": self.blobs.gc_updates(run_id, last_aggregated_round),
        }


@contextlib.contextmanager
def open_store(
    mongo: MongoSettings, *, workdir: Path | str, start_timeout_s: float = 30.0, attempts: int = 4
) -> Iterator[Store]:
    """Connect to the configured store (starting or joining the embedded server for ``url: embedded``), create
    the indexes, and clean up on exit, also on Ctrl-C and errors."""
    with contextlib.ExitStack() as stack:
        embedded = None
        if str(mongo.url).strip().lower() == EMBEDDED:
            embedded = stack.enter_context(EmbeddedServer(Path(workdir), start_timeout_s=start_timeout_s))
            conn = resolve(mongo, embedded_url=embedded.url)
        else:
            conn = resolve(mongo)
        store = Store.connect(
            conn, mongo.db, attempts=attempts, keep_models=int(getattr(mongo, "keep_models", 3)), embedded=embedded
        )
        stack.callback(store.close)
        store.ensure_indexes()
        yield store

"""Everything one run holds in the store: what it weighs (``run_usage``), removing all of it (``purge_run``),
and whether a live orchestrator still drives it (``live_holder``).

A run's data is spread over several collections — ``runs`` and ``locks`` (``_id`` = the run id), ``activations``,
``models``, ``updates``, ``server_states`` and whatever later versions add (a ``run_id`` field) — and over GridFS
files (``metadata.key`` = ``"<run>:..."``, or named by a document's ``file_id``). Collections are found by listing
them rather than from a fixed list, so a collection added later is measured and removed too.

Sizes are BSON sizes as the server returns the documents (blob bytes excluded), plus blob bytes: the ``size`` of an
inline blob and the ``length`` of a GridFS file. No aggregation pipeline: nx-27017 0.8.1 serves ``fs.files`` natively
and fails aggregate-based counts on it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import bson
import gridfs
from pymongo.errors import OperationFailure

from fedkeeper.runtime.blobstore import BUCKET
from fedkeeper.store.locks import Holder

if TYPE_CHECKING:
    from fedkeeper.store.repository import Store

#: collections whose documents carry blob bytes inline (excluded from listings, counted through ``size``)
BLOB_FIELD = "blob"
#: the bucket's collections; nx-27017 0.8.1 also lists its own tables behind them (``fs_files``, ``fs_chunks``), which
#: are not collections to query (a find on ``fs_files`` stalls that server)
GRIDFS_COLLECTIONS = (f"{BUCKET}.files", f"{BUCKET}.chunks", f"{BUCKET}_files", f"{BUCKET}_chunks")


@dataclass(frozen=True)
class StoreUsage:
    """What a run takes in the store (or what removing it freed)."""

    documents: int = 0       # documents of the run, every collection
    document_bytes: int = 0  # their BSON size without blob bytes
    blob_bytes: int = 0      # model, update and state blobs: inline ones and GridFS files
    files: int = 0           # GridFS files

    @property
    def bytes(self) -> int:
        return self.document_bytes + self.blob_bytes

    def __sub__(self, other: StoreUsage) -> StoreUsage:
        return StoreUsage(self.documents - other.documents, self.document_bytes - other.document_bytes,
                          self.blob_bytes - other.blob_bytes, self.files - other.files)

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "bytes": self.bytes}


def run_collections(store: Store) -> list[str]:
    """Every collection that may hold a run's documents (GridFS and system collections aside), sorted."""
    names = store._call(lambda: store.db.list_collection_names())
    return sorted(n for n in names if not n.startswith("system.") and n not in GRIDFS_COLLECTIONS)


def run_query(run_id: str) -> dict[str, Any]:
    """A run's documents in any collection: keyed by the run id (runs, locks) or naming it (everything else)."""
    return {"$or": [{"_id": run_id}, {"run_id": run_id}]}


def _run_files(store: Store, run_id: str, referenced: Iterable[Any]) -> list[dict[str, Any]]:
    """GridFS files of the run: named by one of its documents, or uploaded under one of its keys (a writer that
    died between the upload and the insert leaves such a file)."""
    wanted = set(referenced)
    prefix = f"{run_id}:"
    files = store._call(lambda: list(store.db[f"{BUCKET}.files"].find({}, {"_id": 1, "length": 1, "metadata": 1})))
    return [f for f in files
            if f["_id"] in wanted or str((f.get("metadata") or {}).get("key", "")).startswith(prefix)]


def _scan(store: Store, run_id: str) -> tuple[StoreUsage, list[tuple[str, Any]], list[dict[str, Any]]]:
    """(usage, (collection, _id) of every document, GridFS files) of one run."""
    documents, doc_bytes, inline_bytes = 0, 0, 0
    ids: list[tuple[str, Any]] = []
    referenced: list[Any] = []
    for name in run_collections(store):
        coll = store.db[name]
        docs = store._call(lambda c=coll: list(c.find(run_query(run_id), {BLOB_FIELD: 0})))
        for doc in docs:
            documents += 1
            doc_bytes += len(bson.encode(doc))
            ids.append((name, doc["_id"]))
            if doc.get("pruned"):
                continue  # its blob is gone (the document stays for the history)
            if doc.get("storage") == "inline":
                inline_bytes += int(doc.get("size") or 0)
            elif doc.get("file_id") is not None:
                referenced.append(doc["file_id"])
    files = _run_files(store, run_id, referenced)
    file_bytes = sum(int(f.get("length") or 0) for f in files)
    return StoreUsage(documents, doc_bytes, inline_bytes + file_bytes, len(files)), ids, files


def run_usage(store: Store, run_id: str) -> StoreUsage:
    """Documents and bytes the run takes in the store; all zero for a run the store does not know."""
    return _scan(store, run_id)[0]


def purge_run(store: Store, run_id: str) -> StoreUsage:
    """Remove every document and GridFS file of the run; returns what that freed.

    Documents go first, then their files, so no document is ever left pointing at a deleted file. Safe to repeat:
    a second call finds nothing and frees nothing. The caller checks ``live_holder`` first: this does not.
    """
    before, ids, files = _scan(store, run_id)
    by_collection: dict[str, list[Any]] = {}
    for name, doc_id in ids:
        by_collection.setdefault(name, []).append(doc_id)
    for name, doc_ids in by_collection.items():
        coll = store.db[name]
        for start in range(0, len(doc_ids), 500):
            batch = doc_ids[start:start + 500]
            store._call(lambda c=coll, b=batch: c.delete_many({"_id": {"$in": b}}))
    bucket = gridfs.GridFSBucket(store.db, bucket_name=BUCKET)
    for f in files:
        _delete_file(store, bucket, f["_id"])
    after = _scan(store, run_id)[0]  # a writer still at work (--force) may have added something meanwhile
    return before - after


def _delete_file(store: Store, bucket: gridfs.GridFSBucket, file_id: Any) -> None:
    def delete() -> None:
        try:
            bucket.delete(file_id)
        except gridfs.errors.NoFile:
            pass
        except OperationFailure as exc:  # nx-27017 0.8.1 reports a missing file as a plain command failure
            if "not found" not in str(exc):
                raise
    store._call(delete)


def live_holder(store: Store, run_id: str, *, now: float | None = None) -> Holder | None:
    """The orchestrator that holds the run's lock and is alive (lease not lapsed, and not a process of this host
    that is gone); None when nobody drives the run."""
    doc = store.get_lock(run_id)
    if doc is None:
        return None
    holder = Holder.of(doc)
    expires = doc.get("expires")
    lapsed = isinstance(expires, (int, float)) and expires <= (time.time() if now is None else now)
    if lapsed or holder.gone_from_this_host():
        return None
    return holder

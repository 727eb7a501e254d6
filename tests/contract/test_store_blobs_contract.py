"""Store contract, part 2: global models and client updates through ``Store.blobs`` (``runtime.blobstore.BlobStore``,
the code the functions run too), inline and through GridFS, validation and garbage collection, on every backend."""

from __future__ import annotations

import time

import bson
import gridfs
import numpy as np
import pytest
from pymongo.errors import AutoReconnect
from store_backends import Backend, backend, external_mongo, small_inline, store  # noqa: F401

from fedkeeper.runtime import weights as W
from fedkeeper.runtime.blobstore import (
    INLINE_LIMIT,
    BlobStore,
    BlobTooLarge,
    CorruptModel,
    CorruptUpdate,
    ModelMissing,
    UpdateItem,
)
from fedkeeper.store import Store

RUN = "run-a"


def model(value: float = 0.0, dtype: str = "float32") -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {
        "w1": (rng.standard_normal((16, 8)) + value).astype(dtype),
        "b1": np.full(8, value, dtype),
        "w2": (rng.standard_normal((8, 4)) + value).astype(dtype),
    }


SPEC = W.spec_of(model())


def file_ids(store: Store) -> set:
    # find, not count_documents: nx-27017 serves fs.files natively and fails aggregate-based counts on it
    return {f["_id"] for f in store.db["fs.files"].find({}, {"_id": 1})}


def write(blobs: BlobStore, client: str, weights=None, round: int = 1, **kw):
    args = {"base_round": round - 1, "num_examples": 10, "metrics": {"loss": 0.5}, "activation_id": f"act-{client}"}
    args.update(kw)
    return blobs.write_update(RUN, round, client, model() if weights is None else weights, **args)


# ---------------------------------------------------------------------------------------------------- models


def test_model_round_trip_inline(store: Store) -> None:
    doc = store.blobs.write_model(RUN, 0, model(1.0), {"accuracy": 0.5, "loss": 1.2}, num_updates=0)
    assert doc["_id"] == f"{RUN}:0" and doc["duplicate"] is False and doc["storage"] == "inline"
    assert "blob" not in doc and doc["num_params"] == 16 * 8 + 8 + 8 * 4 and doc["num_updates"] == 0
    weights, stored = store.blobs.read_model(RUN, 0, SPEC)
    for name, arr in model(1.0).items():
        np.testing.assert_array_equal(weights[name], arr)
        assert not weights[name].flags.writeable
    assert stored["metrics"] == {"accuracy": 0.5, "loss": 1.2} and stored["sha256"] == doc["sha256"]
    assert store.blobs.get_model_doc(RUN, 0)["round"] == 0
    assert "blob" not in store.blobs.get_model_doc(RUN, 0)


def test_model_first_write_wins(store: Store) -> None:
    first = store.blobs.write_model(RUN, 2, model(1.0), {"accuracy": 0.1})
    again = store.blobs.write_model(RUN, 2, model(9.0), {"accuracy": 0.9})
    assert again["duplicate"] is True and again["sha256"] == first["sha256"]
    assert store.blobs.models.count_documents({"run_id": RUN}) == 1
    np.testing.assert_array_equal(store.blobs.read_model(RUN, 2)[0]["b1"], np.full(8, 1.0, np.float32))


def test_missing_model(store: Store) -> None:
    with pytest.raises(ModelMissing) as info:
        store.blobs.read_model(RUN, 7)
    assert isinstance(info.value, KeyError) and "run-a round 7 does not exist" in str(info.value)
    assert store.blobs.get_model_doc(RUN, 7) is None


def test_gridfs_for_a_20_mb_blob(store: Store) -> None:
    big = {"w": np.random.default_rng(0).standard_normal(5 * 1024 * 1024).astype(np.float32)}  # 20 MiB
    doc = store.blobs.write_model(RUN, 1, big, {"accuracy": 0.0})
    assert doc["storage"] == "gridfs" and doc["size"] > INLINE_LIMIT
    assert file_ids(store) == {doc["file_id"]}
    weights, _ = store.blobs.read_model(RUN, 1, {"w": ((5 * 1024 * 1024,), "float32")})
    np.testing.assert_array_equal(weights["w"], big["w"])


def test_inline_limit_is_bounded_by_bson(backend: Backend) -> None:
    for limit in (INLINE_LIMIT + 1, -1):
        with pytest.raises(ValueError):
            Store(backend.db, url=backend.url, inline_limit=limit)


def test_run_ids_cannot_collide_with_the_key_separator(store: Store) -> None:
    with pytest.raises(ValueError):
        store.blobs.write_model("a:1", 0, model(), {})
    with pytest.raises(ValueError):
        store.blobs.write_update("a:1", 1, "c1", model(), base_round=0, num_examples=1)


def test_corrupt_model_is_typed(small_inline: Store) -> None:
    small_inline.blobs.write_model(RUN, 3, model(), {})
    small_inline.blobs.models.update_one({"_id": f"{RUN}:3"}, {"$set": {"sha256": "0" * 64}})
    with pytest.raises(CorruptModel) as info:
        small_inline.blobs.read_model(RUN, 3)
    assert info.value.reason == "checksum" and f"run {RUN} round 3" in str(info.value)


# --------------------------------------------------------------------------------------------------- updates


def test_update_first_write_wins_per_activation_and_keeps_one_document(store: Store) -> None:
    first = store.blobs.write_update(RUN, 1, "c1", model(1.0), base_round=0, num_examples=10,
                                     metrics={"loss": 0.5}, activation_id="act-c1", attempt=1)
    second = store.blobs.write_update(RUN, 1, "c1", model(2.0), base_round=0, num_examples=99,
                                      activation_id="act-c1", attempt=1)
    assert first["duplicate"] is False and second["duplicate"] is True
    assert first["_id"] == f"{RUN}:1:c1:act-c1" and first["offered_sha256"] == first["sha256"]
    assert second["sha256"] == first["sha256"] and second["offered_sha256"] != first["sha256"]
    assert store.blobs.updates.count_documents({"_id": f"{RUN}:1:c1:act-c1"}) == 1
    weights, doc = store.blobs.read_update(RUN, 1, "c1", SPEC, activation_id="act-c1")
    np.testing.assert_array_equal(weights["b1"], np.full(8, 1.0, np.float32))
    for key in ("base_round", "num_examples", "metrics", "sha256", "activation_id", "attempt", "created"):
        assert key in doc
    assert doc["base_round"] == 0 and doc["num_examples"] == 10 and doc["metrics"] == {"loss": 0.5}
    assert doc["attempt"] == 1


def test_another_activation_of_the_same_client_writes_its_own_document(store: Store) -> None:
    """A forger who wrote first under a client's key no longer decides which update that client stored."""
    store.blobs.write_update(RUN, 1, "c1", model(9.0), base_round=0, num_examples=10**6)  # no activation: old key
    store.blobs.write_update(RUN, 1, "c1", model(1.0), base_round=0, num_examples=10, activation_id="a1", attempt=1)
    retry = store.blobs.write_update(RUN, 1, "c1", model(1.0), base_round=0, num_examples=10, activation_id="a2",
                                     attempt=2)
    assert retry["duplicate"] is False
    assert sorted(d["_id"] for d in store.blobs.list_updates(RUN, 1)) == [
        f"{RUN}:1:c1", f"{RUN}:1:c1:a1", f"{RUN}:1:c1:a2"]
    assert [d["attempt"] for d in store.blobs.list_updates(RUN, 1)] == [None, 1, 2]  # by client, then attempt
    for aid in ("a1", "a2"):
        assert store.blobs.read_update(RUN, 1, "c1", SPEC, activation_id=aid)[1]["activation_id"] == aid
    assert store.blobs.find_update(RUN, 1, "c1", "a1")["_id"] == f"{RUN}:1:c1:a1"
    # an activation without a document of its own falls back to the pre-activation key (earlier versions)
    assert store.blobs.find_update(RUN, 1, "c1", "a3")["_id"] == f"{RUN}:1:c1"
    assert store.blobs.find_update(RUN, 1, "c2", "a1") is None
    for bad in ("", "a:b", 5):
        with pytest.raises(ValueError, match="activation id"):
            store.blobs.write_update(RUN, 1, "c1", model(), base_round=0, num_examples=1, activation_id=bad)
    with pytest.raises(ValueError, match="attempt"):
        store.blobs.write_update(RUN, 1, "c1", model(), base_round=0, num_examples=1, activation_id="x", attempt=0)


def test_write_updates_stores_each_as_write_update_would_and_settles_each_on_its_own(store: Store) -> None:
    """Several activations' updates in one call (a local worker's batch): new keys are written, a key already
    taken comes back as that document (`duplicate`), the same key twice in one batch keeps the first, and a bad
    item is that item's error alone."""
    taken = store.blobs.write_update(RUN, 1, "c0", model(7.0), base_round=0, num_examples=3, activation_id="a0",
                                     attempt=1)
    items = [UpdateItem(RUN, 1, f"c{i}", model(float(i)), base_round=0, num_examples=10 + i,
                        metrics={"loss": i / 10}, activation_id=f"a{i}", attempt=1) for i in range(4)]
    items.append(UpdateItem(RUN, 1, "c2", model(9.0), base_round=0, num_examples=1, activation_id="a2", attempt=1))
    items.append(UpdateItem(RUN, 1, "c5", model(), base_round=0, num_examples=1, activation_id="a:5", attempt=1))
    out = store.blobs.write_updates(items)
    assert len(out) == len(items)
    assert out[0]["duplicate"] is True and out[0]["sha256"] == taken["sha256"] != out[0]["offered_sha256"]
    for i in (1, 2, 3):
        assert out[i]["duplicate"] is False and out[i]["_id"] == f"{RUN}:1:c{i}:a{i}"
        assert out[i]["offered_sha256"] == out[i]["sha256"] and out[i]["num_examples"] == 10 + i
        weights, doc = store.blobs.read_update(RUN, 1, f"c{i}", SPEC, activation_id=f"a{i}")
        np.testing.assert_array_equal(weights["b1"], np.full(8, float(i), np.float32))
        assert doc["metrics"] == {"loss": i / 10} and doc["attempt"] == 1
    assert out[4]["duplicate"] is True and out[4]["sha256"] == out[2]["sha256"]  # the batch's first write won
    assert isinstance(out[5], ValueError) and "activation id" in str(out[5])
    assert store.blobs.updates.count_documents({"run_id": RUN}) == 4
    assert store.blobs.write_updates([]) == []


def test_write_updates_recognises_its_own_documents_after_a_lost_reply(store: Store) -> None:
    """A batch sent again after its reply was lost finds its own documents (same write id): not duplicates."""
    items = [UpdateItem(RUN, 1, f"c{i}", model(float(i)), base_round=0, num_examples=10, activation_id=f"a{i}",
                        attempt=1) for i in range(3)]
    sent: list[list[dict]] = []
    real_insert_many = store.blobs.updates.insert_many

    class LostReply:
        def __getattr__(self, name):
            return getattr(store.blobs.updates, name)

        def insert_many(self, docs, **kw):
            sent.append(docs)
            result = real_insert_many(docs, **kw)  # the second time: every key is taken (by this batch)
            if len(sent) == 1:
                raise AutoReconnect("connection closed after the write")
            return result

    blobs = BlobStore(store.db, retry=lambda fn: _retry_once(fn))
    blobs.updates = LostReply()
    out = blobs.write_updates(items)
    assert len(sent) == 2 and [o["duplicate"] for o in out] == [False] * 3
    assert store.blobs.updates.count_documents({"run_id": RUN}) == 3


def _retry_once(fn):
    try:
        return fn()
    except AutoReconnect:
        return fn()


def test_find_updates_reads_many_in_one_round_trip_as_find_update_would(store: Store) -> None:
    """The aggregator's batched read: the same document per (round, client, activation) as ``find_update``, the
    pre-activation key as the fallback, None where nothing is stored, and one query for all of them."""
    store.blobs.write_update(RUN, 1, 7, model(9.0), base_round=0, num_examples=3)  # old key, no activation
    for client in range(5):
        store.blobs.write_update(RUN, 1, client, model(float(client)), base_round=0, num_examples=10,
                                 activation_id=f"a{client}", attempt=1)
    store.blobs.write_update(RUN, 1, 3, model(), base_round=0, num_examples=1)  # an old-key doc beside a new one
    wanted = [(1, c, f"a{c}") for c in range(5)] + [(1, 7, "a7"), (1, 8, "a8"), (2, 0, "a0")]
    calls = []
    real_find = store.blobs.updates.find
    store.blobs.updates = type("Spy", (), {"find": lambda _self, *a, **k: calls.append(a) or real_find(*a, **k)})()
    got = store.blobs.find_updates(RUN, wanted)
    assert len(calls) == 1
    store.blobs.updates = store.db["updates"]
    assert list(got) == wanted
    for rnd, client, aid in wanted:
        single = store.blobs.find_update(RUN, rnd, client, aid)
        assert (got[(rnd, client, aid)] or {}).get("_id") == (single or {}).get("_id")
    assert got[(1, 3, "a3")]["_id"] == f"{RUN}:1:3:a3" and got[(1, 7, "a7")]["_id"] == f"{RUN}:1:7"
    assert got[(1, 8, "a8")] is None and got[(2, 0, "a0")] is None
    weights = store.blobs.decode_update(got[(1, 2, "a2")], SPEC, RUN, 1, 2)
    np.testing.assert_array_equal(weights["b1"], np.full(8, 2.0, np.float32))
    assert store.blobs.find_updates(RUN, []) == {}


@pytest.mark.parametrize("alg", sorted(W.HASH_IDS))
def test_each_digest_algorithm_is_recorded_and_verified(store: Store, alg: str) -> None:
    if not W.hash_available(alg):
        pytest.skip(f"{alg} is not installed")
    blobs = BlobStore(store.db, hash_alg=alg)
    model_doc = blobs.write_model(RUN, 0, model(1.0), {"accuracy": 0.0})
    update = write(blobs, "c1", model(2.0))
    assert model_doc["hash_alg"] == alg and update["hash_alg"] == alg
    # read back by a store of any algorithm: each blob is verified with the one it was written with
    weights, _ = store.blobs.read_model(RUN, 0, SPEC)
    np.testing.assert_array_equal(weights["b1"], np.full(8, 1.0, np.float32))
    doc = store.blobs.find_update(RUN, 1, "c1", "act-c1")
    assert W.hash_alg_of(store.blobs.blob_of(doc)) == alg
    np.testing.assert_array_equal(store.blobs.decode_update(doc, SPEC, RUN, 1, "c1")["b1"], np.full(8, 2.0, np.float32))
    other = "xxh3_128" if alg != "xxh3_128" else "sha256"
    with pytest.raises(CorruptUpdate) as info:  # a document that names another algorithm than its blob's
        store.blobs.decode_update({**doc, "hash_alg": other}, SPEC, RUN, 1, "c1")
    assert info.value.reason == "checksum"


def test_a_document_without_hash_alg_is_sha256(store: Store) -> None:
    """Documents written before the algorithm was a choice have no ``hash_alg``: they are read as sha256."""
    write(store.blobs, "c1", model(2.0))
    store.db["updates"].update_one({"_id": f"{RUN}:1:c1:act-c1"}, {"$unset": {"hash_alg": ""}})
    doc = store.blobs.find_update(RUN, 1, "c1", "act-c1")
    assert "hash_alg" not in doc
    np.testing.assert_array_equal(store.blobs.decode_update(doc, SPEC, RUN, 1, "c1")["b1"], np.full(8, 2.0, np.float32))
    with pytest.raises(ValueError, match="digest algorithm"):
        BlobStore(store.db, hash_alg="md5")


def test_decode_update_checks_the_blob_against_its_document(store: Store) -> None:
    write(store.blobs, "c1", model(2.0))
    doc = store.blobs.find_update(RUN, 1, "c1", "act-c1")
    weights = store.blobs.decode_update(doc, SPEC, RUN, 1, "c1")
    np.testing.assert_array_equal(weights["b1"], np.full(8, 2.0, np.float32))
    for changed, reason in (({"sha256": "0" * 64}, "checksum"), ({"blob": None}, "missing"),
                            ({"blob": {"inline": 3}}, "malformed")):
        with pytest.raises(CorruptUpdate) as info:
            store.blobs.decode_update({**doc, **changed}, SPEC, RUN, 1, "c1")
        assert info.value.reason == reason and f"run {RUN} round 1 client c1" in str(info.value)
    with pytest.raises(CorruptUpdate, match="at most 64 accepted") as info:
        store.blobs.decode_update(doc, SPEC, RUN, 1, "c1", max_bytes=64)
    assert info.value.reason == "malformed"


def test_blob_references_of_the_wrong_shape_are_refused(store: Store) -> None:
    write(store.blobs, "c1")
    doc = store.blobs.find_update(RUN, 1, "c1", "act-c1")
    for ref, match in (("text", "not a document"), ({"inline": "text"}, "not binary"),
                       ({"gridfs": {"$exists": True}}, "not an ObjectId")):
        with pytest.raises(ValueError, match=match):
            store.blobs.blob_of({**doc, "blob": ref})
        err = rejected(store, "c1", blob=ref)
        assert err.reason == "malformed"
    assert store.blobs.blob_of({**doc, "blob": None}) is None
    with pytest.raises(BlobTooLarge):
        store.blobs.blob_of(doc, max_bytes=10)


def test_duplicate_gridfs_update_leaves_no_orphan_file(small_inline: Store) -> None:
    first = write(small_inline.blobs, "c1")
    assert first["storage"] == "gridfs"
    assert write(small_inline.blobs, "c1", model(5.0))["duplicate"] is True
    assert file_ids(small_inline) == {first["file_id"]}
    np.testing.assert_array_equal(small_inline.blobs.read_update(RUN, 1, "c1", SPEC, activation_id="act-c1")[0]["w1"],
                                  model()["w1"])
    with pytest.raises(BlobTooLarge):  # a GridFS file longer than the caller accepts is not downloaded
        small_inline.blobs.blob_of(small_inline.blobs.find_update(RUN, 1, "c1", "act-c1"), max_bytes=100)


def test_list_updates_sorted_without_bytes(store: Store) -> None:
    for client in ("c3", "c1", "c2"):
        write(store.blobs, client)
    write(store.blobs, "c9", round=2)
    docs = store.blobs.list_updates(RUN, 1)
    assert [d["client_id"] for d in docs] == ["c1", "c2", "c3"]
    assert all("blob" not in d and d["storage"] == "inline" for d in docs)
    assert store.blobs.list_updates(RUN, 3) == []


def tamper(store: Store, client: str, data: bytes) -> None:
    store.blobs.updates.update_one({"_id": f"{RUN}:1:{client}:act-{client}"},
                                   {"$set": {"blob": {"inline": bson.Binary(data)}}})


def rejected(store: Store, client: str, blob=None, **kw) -> CorruptUpdate:
    """The rejection of `client`'s update (written by `write`); `blob` replaces its blob reference first."""
    if blob is not None:
        store.blobs.updates.update_one({"_id": f"{RUN}:1:{client}:act-{client}"}, {"$set": {"blob": blob}})
    with pytest.raises(CorruptUpdate) as info:
        store.blobs.read_update(RUN, 1, client, kw.pop("expected", SPEC), activation_id=f"act-{client}", **kw)
    err = info.value
    assert (err.run_id, err.round, err.client_id) == (RUN, 1, client)
    assert f"run {RUN} round 1 client {client}" in str(err)
    assert isinstance(err, W.WeightsError)
    return err


def test_corrupt_updates_are_rejected_naming_run_round_client(store: Store) -> None:
    good = W.encode(model())
    write(store.blobs, "trunc")
    tamper(store, "trunc", good[: len(good) // 2])
    assert rejected(store, "trunc").reason == "truncated"

    write(store.blobs, "magic")
    tamper(store, "magic", b"Z" + good[1:])
    assert rejected(store, "magic").reason == "bad_magic"

    write(store.blobs, "flip")
    flipped = bytearray(good)
    flipped[-5] ^= 0xFF
    tamper(store, "flip", bytes(flipped))
    assert rejected(store, "flip").reason == "checksum"

    write(store.blobs, "swap")  # a valid blob, but not the one the document describes
    tamper(store, "swap", W.encode(model(4.0)))
    assert rejected(store, "swap").reason == "checksum"

    nan = model()
    nan["w2"][1, 1] = np.nan
    write(store.blobs, "nan", nan)
    err = rejected(store, "nan")
    assert err.reason == "non_finite" and "w2" in str(err)

    inf = model()
    inf["b1"][0] = -np.inf
    write(store.blobs, "inf", inf)
    assert rejected(store, "inf").reason == "non_finite"

    write(store.blobs, "f64", model(dtype="float64"))
    assert rejected(store, "f64").reason == "dtype"

    shaped = model()
    shaped["w1"] = shaped["w1"].reshape(8, 16)
    write(store.blobs, "shape", shaped)
    assert rejected(store, "shape").reason == "shape"

    renamed = model()
    renamed["extra"] = np.zeros(1, np.float32)
    write(store.blobs, "names", renamed)
    assert rejected(store, "names").reason == "names"

    write(store.blobs, "stale", base_round=-5)
    assert rejected(store, "stale", base_round=0).reason == "stale_round"
    assert store.blobs.read_update(RUN, 1, "stale", SPEC, activation_id="act-stale")[1]["base_round"] == -5

    assert rejected(store, "nobody").reason == "missing"


def test_missing_gridfs_file_is_rejected(small_inline: Store) -> None:
    doc = write(small_inline.blobs, "c1")
    gridfs.GridFSBucket(small_inline.db).delete(doc["file_id"])
    assert rejected(small_inline, "c1").reason == "missing"


# -------------------------------------------------------------------------------------------------------- gc


def test_gc_models_keeps_latest_and_protected(small_inline: Store) -> None:
    for r in range(6):
        small_inline.blobs.write_model(RUN, r, model(float(r)), {"accuracy": r / 10})
    small_inline.blobs.write_model("other", 0, model(), {})
    assert len(file_ids(small_inline)) == 7
    assert small_inline.blobs.gc_models(RUN, keep_last=2, protect={0}) == 3
    assert len(file_ids(small_inline)) == 4
    for r in (0, 4, 5):
        np.testing.assert_array_equal(small_inline.blobs.read_model(RUN, r)[0]["b1"], np.full(8, r, np.float32))
    with pytest.raises(ModelMissing) as info:
        small_inline.blobs.read_model(RUN, 2)
    assert info.value.reason == "pruned" and "garbage-collected" in str(info.value)
    docs = small_inline.blobs.list_model_docs(RUN)
    assert [d["round"] for d in docs] == [0, 1, 2, 3, 4, 5]  # metadata survives
    assert [bool(d.get("pruned")) for d in docs] == [False, True, True, True, False, False]
    assert small_inline.blobs.gc_models(RUN, keep_last=2, protect={0}) == 0
    small_inline.blobs.read_model("other", 0)
    with pytest.raises(ValueError):
        small_inline.blobs.gc_models(RUN, keep_last=0, protect=set())


def test_gc_updates_drops_blobs_of_aggregated_rounds(small_inline: Store) -> None:
    for r in (1, 2, 3):
        for c in ("c1", "c2"):
            write(small_inline.blobs, c, round=r)
    assert small_inline.blobs.gc_updates(RUN, through_round=2) == 4
    assert len(file_ids(small_inline)) == 2
    assert len(small_inline.blobs.list_updates(RUN, 1)) == 2  # docs (metadata) stay
    assert rejected(small_inline, "c1").reason == "missing"
    small_inline.blobs.read_update(RUN, 3, "c2", SPEC, activation_id="act-c2")
    assert small_inline.blobs.gc_updates(RUN, through_round=2) == 0


def test_gc_orphan_files(small_inline: Store) -> None:
    kept = write(small_inline.blobs, "c1")
    bucket = gridfs.GridFSBucket(small_inline.db)
    blob = W.encode(model())
    orphan = bucket.upload_from_stream("x", blob, metadata={"key": f"{RUN}:1:ghost", "created": time.time() - 7200})
    fresh = bucket.upload_from_stream("y", blob, metadata={"key": f"{RUN}:1:racing", "created": time.time()})
    assert small_inline.blobs.gc_orphan_files(older_than_s=3600) == 1
    assert file_ids(small_inline) == {kept["file_id"], fresh} and orphan not in file_ids(small_inline)


def test_blobs_delete_run(small_inline: Store) -> None:
    small_inline.blobs.write_model(RUN, 0, model(), {})
    write(small_inline.blobs, "c1")
    kept = small_inline.blobs.write_model("keep", 0, model(), {})
    assert small_inline.blobs.delete_run(RUN) == 2
    assert file_ids(small_inline) == {kept["file_id"]}
    assert small_inline.blobs.list_model_docs(RUN) == [] and small_inline.blobs.list_updates(RUN, 1) == []


# ------------------------------------------------------------------------------------------------ server state


def server_state(value: float) -> dict[str, np.ndarray]:
    return {"strategy/m.w1": np.full((16, 8), value), "privacy/clip_norm": np.asarray(value + 1.0)}


def test_server_state_round_trip_gc_and_delete(small_inline: Store) -> None:
    """States go to GridFS past the inline limit, are keyed by digest, named by their model, collected with it."""
    shas = []
    for r in range(4):
        state = small_inline.blobs.write_state(RUN, r, server_state(float(r)))
        assert state["storage"] == "gridfs" and state["_id"] == f"{RUN}:{r}:state:{state['sha256']}"
        assert small_inline.blobs.write_state(RUN, r, server_state(float(r)))["duplicate"] is True
        shas.append(state["sha256"])
        doc = small_inline.blobs.write_model(RUN, r, model(float(r)), {}, state_sha256=state["sha256"])
        assert doc["state_sha256"] == state["sha256"]
    back = small_inline.blobs.read_state(RUN, 3, shas[3])
    np.testing.assert_array_equal(back["strategy/m.w1"], np.full((16, 8), 3.0))
    assert back["privacy/clip_norm"].shape == () and float(back["privacy/clip_norm"]) == 4.0
    with pytest.raises(ModelMissing) as info:
        small_inline.blobs.read_state(RUN, 3, shas[2])  # another round's digest: not this round's state
    assert info.value.reason == "state_missing"
    assert small_inline.blobs.gc_models(RUN, keep_last=2) == 2
    with pytest.raises(ModelMissing):
        small_inline.blobs.read_state(RUN, 1, shas[1])
    small_inline.blobs.read_state(RUN, 2, shas[2])
    assert len(file_ids(small_inline)) == 4  # models 2, 3 and their states
    assert small_inline.blobs.gc_orphan_files(older_than_s=0) == 0  # named state files are not orphans
    assert small_inline.blobs.delete_run(RUN) == 8
    assert file_ids(small_inline) == set()


def test_a_corrupt_server_state_is_refused(store: Store) -> None:
    sha = store.blobs.write_state(RUN, 1, server_state(1.0))["sha256"]
    store.db["server_states"].update_one({"_id": f"{RUN}:1:state:{sha}"},
                                         {"$set": {"blob": {"inline": bson.Binary(W.encode(server_state(2.0)))}}})
    with pytest.raises(CorruptModel) as info:
        store.blobs.read_state(RUN, 1, sha)
    assert info.value.reason == "checksum"


def partial_sums(value: float) -> dict[str, np.ndarray]:
    """A tree-aggregation partial: float64 sums of the model's arrays."""
    return {name: np.full(a.shape, value, np.float64) for name, a in model().items()}


PARTIAL_SPEC = W.spec_of(partial_sums(0.0))


def test_partials_round_trip_first_write_wins_and_are_deleted_by_round(small_inline: Store) -> None:
    """Tree aggregation's partial sums: one document per node key, the first write wins (a retried leaf gets the
    stored one back), GridFS past the inline limit, presence in one query, deletion per round with their files."""
    keys = []
    for r in (1, 2):
        for index in range(2):
            key = f"{RUN}:{r}:partial:1:{index}:digest{index}"
            doc = small_inline.blobs.write_partial(key, RUN, r, 1, index, partial_sums(r + index / 10), {"weight": 7.0 + index})
            assert doc["_id"] == key and doc["level"] == 1 and doc["index"] == index and doc["weight"] == 7.0 + index
            again = small_inline.blobs.write_partial(key, RUN, r, 1, index, partial_sums(99.0), {"weight": 1.0})
            assert again["duplicate"] is True and again["weight"] == 7.0 + index
            keys.append(key)
    sums, doc = small_inline.blobs.read_partial(RUN, 2, keys[3], PARTIAL_SPEC)
    np.testing.assert_array_equal(sums["w1"], np.full((16, 8), 2.1))  # the first write's sums, not the retry's
    assert small_inline.blobs.get_partial_doc(keys[0])["round"] == 1 and small_inline.blobs.get_partial_doc("nope") is None
    assert small_inline.blobs.partials_present([*keys, "absent"]) == set(keys) and small_inline.blobs.partials_present([]) == set()

    assert small_inline.blobs.delete_partials(RUN, 2, only_round=True) == 2
    assert small_inline.blobs.partials_present(keys) == set(keys[:2])
    with pytest.raises(CorruptModel) as info:
        small_inline.blobs.read_partial(RUN, 2, keys[3], PARTIAL_SPEC)
    assert info.value.reason == "missing"
    assert small_inline.blobs.delete_partials(RUN, 5) == 2 and small_inline.blobs.partials_present(keys) == set()
    assert file_ids(small_inline) == set()  # their GridFS files went with them


def test_a_corrupt_or_misplaced_partial_is_refused(store: Store) -> None:
    key = f"{RUN}:1:partial:1:0:d"
    store.blobs.write_partial(key, RUN, 1, 1, 0, partial_sums(1.0), {"weight": 2.0})
    with pytest.raises(CorruptModel):
        store.blobs.read_partial(RUN, 2, key, PARTIAL_SPEC)  # the document is round 1's
    store.db["partials"].update_one({"_id": key}, {"$set": {"blob": {"inline": bson.Binary(
        W.encode(partial_sums(2.0)))}}})
    with pytest.raises(CorruptModel) as info:
        store.blobs.read_partial(RUN, 1, key, PARTIAL_SPEC)
    assert info.value.reason == "checksum"

"""Contract suite of runtime/blobstore.py, run against mongomock and a real nx-27017 server (``any_db``)."""

from __future__ import annotations

import time

import bson
import numpy as np
import pytest

from fedkeeper.runtime import weights as W
from fedkeeper.runtime.blobstore import INLINE_LIMIT, BlobStore, CorruptModel, CorruptUpdate, ModelMissing

RUN = "run-a"


def model(value: float = 0.0, dtype: str = "float32") -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {
        "w1": (rng.standard_normal((16, 8)) + value).astype(dtype),
        "b1": np.full(8, value, dtype),
        "w2": (rng.standard_normal((8, 4)) + value).astype(dtype),
    }


SPEC = W.spec_of(model())


@pytest.fixture
def blobs(any_db) -> BlobStore:
    store = BlobStore(any_db)
    store.ensure_indexes()
    return store


@pytest.fixture
def small_inline(any_db) -> BlobStore:
    """Everything above 512 bytes goes to GridFS, so the GridFS paths run on small models."""
    return BlobStore(any_db, inline_limit=512)


def file_count(blobs: BlobStore) -> int:
    # find, not count_documents: nx-27017 serves fs.files natively and fails aggregate-based counts on it
    return len(blobs._files.find({}))


def write(blobs: BlobStore, client: str, weights=None, round: int = 1, **kw):
    args = {"base_round": round - 1, "num_examples": 10, "metrics": {"loss": 0.5}, "activation_id": f"act-{client}"}
    args.update(kw)
    return blobs.write_update(RUN, round, client, model() if weights is None else weights, **args)


# ---------------------------------------------------------------------------------------------------- models


def test_model_round_trip_inline(blobs: BlobStore) -> None:
    doc = blobs.write_model(RUN, 0, model(1.0), {"accuracy": 0.5, "loss": 1.2}, num_updates=0)
    assert doc["_id"] == f"{RUN}:0" and doc["duplicate"] is False and doc["storage"] == "inline"
    assert "blob" not in doc and doc["num_params"] == 16 * 8 + 8 + 8 * 4
    weights, stored = blobs.read_model(RUN, 0, SPEC)
    for name, arr in model(1.0).items():
        np.testing.assert_array_equal(weights[name], arr)
        assert not weights[name].flags.writeable
    assert stored["metrics"] == {"accuracy": 0.5, "loss": 1.2} and stored["sha256"] == doc["sha256"]
    assert blobs.get_model_doc(RUN, 0)["round"] == 0
    assert "blob" not in blobs.get_model_doc(RUN, 0)


def test_model_first_write_wins(blobs: BlobStore) -> None:
    first = blobs.write_model(RUN, 2, model(1.0), {"accuracy": 0.1})
    again = blobs.write_model(RUN, 2, model(9.0), {"accuracy": 0.9})
    assert again["duplicate"] is True and again["sha256"] == first["sha256"]
    assert blobs.models.count_documents({"run_id": RUN}) == 1
    np.testing.assert_array_equal(blobs.read_model(RUN, 2)[0]["b1"], np.full(8, 1.0, np.float32))


def test_missing_model(blobs: BlobStore) -> None:
    with pytest.raises(ModelMissing) as info:
        blobs.read_model(RUN, 7)
    assert isinstance(info.value, KeyError) and "run-a round 7 does not exist" in str(info.value)
    assert blobs.get_model_doc(RUN, 7) is None


def test_gridfs_for_a_20_mb_blob(blobs: BlobStore) -> None:
    big = {"w": np.random.default_rng(0).standard_normal(5 * 1024 * 1024).astype(np.float32)}  # 20 MiB
    doc = blobs.write_model(RUN, 1, big, {"accuracy": 0.0})
    assert doc["storage"] == "gridfs" and doc["size"] > INLINE_LIMIT
    assert file_count(blobs) == 1
    weights, _ = blobs.read_model(RUN, 1, {"w": ((5 * 1024 * 1024,), "float32")})
    np.testing.assert_array_equal(weights["w"], big["w"])


def test_inline_limit_is_bounded_by_bson(any_db) -> None:
    with pytest.raises(ValueError):
        BlobStore(any_db, inline_limit=INLINE_LIMIT + 1)


def test_run_ids_cannot_collide_with_the_key_separator(blobs: BlobStore) -> None:
    with pytest.raises(ValueError):
        blobs.write_model("a:1", 0, model(), {})


# --------------------------------------------------------------------------------------------------- updates


def test_update_first_write_wins_and_keeps_one_document(blobs: BlobStore) -> None:
    first = write(blobs, "c1", model(1.0))
    second = write(blobs, "c1", model(2.0), activation_id="retry")
    assert first["duplicate"] is False and second["duplicate"] is True
    assert second["activation_id"] == "act-c1" and second["sha256"] == first["sha256"]
    assert blobs.updates.count_documents({"_id": f"{RUN}:1:c1"}) == 1
    weights, doc = blobs.read_update(RUN, 1, "c1", SPEC)
    np.testing.assert_array_equal(weights["b1"], np.full(8, 1.0, np.float32))
    for key in ("base_round", "num_examples", "metrics", "sha256", "activation_id", "created"):
        assert key in doc
    assert doc["base_round"] == 0 and doc["num_examples"] == 10 and doc["metrics"] == {"loss": 0.5}


def test_duplicate_gridfs_update_leaves_no_orphan_file(small_inline: BlobStore) -> None:
    assert write(small_inline, "c1")["storage"] == "gridfs"
    assert write(small_inline, "c1", model(5.0))["duplicate"] is True
    assert file_count(small_inline) == 1
    np.testing.assert_array_equal(small_inline.read_update(RUN, 1, "c1", SPEC)[0]["w1"], model()["w1"])


def test_list_updates_sorted_without_bytes(blobs: BlobStore) -> None:
    for client in ("c3", "c1", "c2"):
        write(blobs, client)
    write(blobs, "c9", round=2)
    docs = blobs.list_updates(RUN, 1)
    assert [d["client_id"] for d in docs] == ["c1", "c2", "c3"]
    assert all("blob" not in d and d["storage"] == "inline" for d in docs)


def tamper(blobs: BlobStore, client: str, data: bytes) -> None:
    blobs.updates.update_one({"_id": f"{RUN}:1:{client}"}, {"$set": {"blob": {"inline": bson.Binary(data)}}})


def rejected(blobs: BlobStore, client: str, **kw) -> CorruptUpdate:
    with pytest.raises(CorruptUpdate) as info:
        blobs.read_update(RUN, 1, client, kw.pop("expected", SPEC), **kw)
    err = info.value
    assert (err.run_id, err.round, err.client_id) == (RUN, 1, client)
    assert f"run {RUN} round 1 client {client}" in str(err)
    assert isinstance(err, W.WeightsError)
    return err


def test_corrupt_updates_are_rejected_naming_run_round_client(blobs: BlobStore) -> None:
    good = W.encode(model())
    write(blobs, "trunc")
    tamper(blobs, "trunc", good[: len(good) // 2])
    assert rejected(blobs, "trunc").reason == "truncated"

    write(blobs, "magic")
    tamper(blobs, "magic", b"Z" + good[1:])
    assert rejected(blobs, "magic").reason == "bad_magic"

    write(blobs, "flip")
    flipped = bytearray(good)
    flipped[-5] ^= 0xFF
    tamper(blobs, "flip", bytes(flipped))
    assert rejected(blobs, "flip").reason == "checksum"

    write(blobs, "swap")  # a valid blob, but not the one the document describes
    tamper(blobs, "swap", W.encode(model(4.0)))
    assert rejected(blobs, "swap").reason == "checksum"

    nan = model()
    nan["w2"][1, 1] = np.nan
    write(blobs, "nan", nan)
    err = rejected(blobs, "nan")
    assert err.reason == "non_finite" and "w2" in str(err)

    inf = model()
    inf["b1"][0] = -np.inf
    write(blobs, "inf", inf)
    assert rejected(blobs, "inf").reason == "non_finite"

    write(blobs, "f64", model(dtype="float64"))
    assert rejected(blobs, "f64").reason == "dtype"

    shaped = model()
    shaped["w1"] = shaped["w1"].reshape(8, 16)
    write(blobs, "shape", shaped)
    assert rejected(blobs, "shape").reason == "shape"

    renamed = model()
    renamed["extra"] = np.zeros(1, np.float32)
    write(blobs, "names", renamed)
    assert rejected(blobs, "names").reason == "names"

    write(blobs, "stale", base_round=-5)
    assert rejected(blobs, "stale", base_round=0).reason == "stale_round"
    assert blobs.read_update(RUN, 1, "stale", SPEC)[1]["base_round"] == -5  # no check unless asked

    assert rejected(blobs, "nobody").reason == "missing"


def test_missing_gridfs_file_is_rejected(small_inline: BlobStore) -> None:
    doc = write(small_inline, "c1")
    small_inline._files.delete(doc["file_id"])
    assert rejected(small_inline, "c1").reason == "missing"


def test_corrupt_model_is_typed(small_inline: BlobStore) -> None:
    small_inline.write_model(RUN, 3, model(), {})
    small_inline.models.update_one({"_id": f"{RUN}:3"}, {"$set": {"sha256": "0" * 64}})
    with pytest.raises(CorruptModel) as info:
        small_inline.read_model(RUN, 3)
    assert info.value.reason == "checksum" and f"run {RUN} round 3" in str(info.value)


# -------------------------------------------------------------------------------------------------------- gc


def test_gc_models_keeps_latest_and_protected(small_inline: BlobStore) -> None:
    for r in range(6):
        small_inline.write_model(RUN, r, model(float(r)), {"accuracy": r / 10})
    small_inline.write_model("other", 0, model(), {})
    assert file_count(small_inline) == 7
    assert small_inline.gc_models(RUN, keep_last=2, protect={0}) == 3
    assert file_count(small_inline) == 4
    for r in (0, 4, 5):
        np.testing.assert_array_equal(small_inline.read_model(RUN, r)[0]["b1"], np.full(8, r, np.float32))
    with pytest.raises(ModelMissing) as info:
        small_inline.read_model(RUN, 2)
    assert info.value.reason == "pruned" and "garbage-collected" in str(info.value)
    docs = small_inline.list_model_docs(RUN)
    assert [d["round"] for d in docs] == [0, 1, 2, 3, 4, 5]  # metadata survives
    assert [bool(d.get("pruned")) for d in docs] == [False, True, True, True, False, False]
    assert small_inline.gc_models(RUN, keep_last=2, protect={0}) == 0
    small_inline.read_model("other", 0)
    with pytest.raises(ValueError):
        small_inline.gc_models(RUN, keep_last=0, protect=set())


def test_gc_updates_drops_blobs_of_aggregated_rounds(small_inline: BlobStore) -> None:
    for r in (1, 2, 3):
        for c in ("c1", "c2"):
            write(small_inline, c, round=r)
    assert small_inline.gc_updates(RUN, through_round=2) == 4
    assert file_count(small_inline) == 2
    assert len(small_inline.list_updates(RUN, 1)) == 2  # docs (metadata) stay
    assert rejected(small_inline, "c1").reason == "missing"
    small_inline.read_update(RUN, 3, "c2", SPEC)
    assert small_inline.gc_updates(RUN, through_round=2) == 0


def test_gc_orphan_files(small_inline: BlobStore) -> None:
    kept = write(small_inline, "c1")
    orphan = small_inline._files.put(W.encode(model()), {"key": f"{RUN}:1:ghost", "created": time.time() - 7200})
    fresh = small_inline._files.put(W.encode(model()), {"key": f"{RUN}:1:racing", "created": time.time()})
    assert small_inline.gc_orphan_files(older_than_s=3600) == 1
    ids = {f["_id"] for f in small_inline._files.find({})}
    assert ids == {kept["file_id"], fresh} and orphan not in ids


def test_delete_run(small_inline: BlobStore) -> None:
    small_inline.write_model(RUN, 0, model(), {})
    write(small_inline, "c1")
    small_inline.write_model("keep", 0, model(), {})
    assert small_inline.delete_run(RUN) == 2
    assert file_count(small_inline) == 1
    assert small_inline.list_model_docs(RUN) == [] and small_inline.list_updates(RUN, 1) == []

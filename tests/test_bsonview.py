"""runtime/bsonview.py: update documents read with their inline blob as a view of the driver's reply (issue 18).

The element walker and ``view_document`` are held to ``bson.decode`` on arbitrary and corrupted documents; the
cursor to ``collection.find`` on the embedded store; the aggregator's admission to what it decides from pymongo's
own documents (same accepted updates, same bits, same rejections and messages)."""

from __future__ import annotations

import ctypes
import datetime
import struct
from typing import Any

import bson
import numpy as np
import pytest
from bson.errors import InvalidBSON
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedkeeper.runtime import admission, blobstore, bsonview

from test_functions_fl import aggregator  # the handler, loaded once from functions/


def _plain(value: Any) -> Any:
    """memoryviews as bytes (what bson.decode gives), recursively."""
    if isinstance(value, memoryview):
        return bytes(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


_keys = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=8)
_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-2**63, 2**63 - 1), st.floats(allow_nan=False),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=20), st.binary(max_size=40),
    st.builds(bson.Binary, st.binary(max_size=20), st.sampled_from([0, 1, 2, 3, 5, 0x80])),
    st.builds(bson.ObjectId), st.builds(bson.Timestamp, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
    st.datetimes(min_value=datetime.datetime(1970, 1, 2), max_value=datetime.datetime(2100, 1, 1)).map(
        lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000)),
    st.builds(bson.Regex, st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)),
                                  max_size=5), st.sampled_from(["", "i", "mx"])),
    st.builds(bson.Code, st.text(max_size=10)), st.builds(bson.Code, st.text(max_size=10), st.just({"a": 1})),
    st.builds(bson.Decimal128, st.decimals(-10**12, 10**12, allow_nan=False, allow_infinity=False, places=3).map(str)),
    st.just(bson.MinKey()), st.just(bson.MaxKey()),
)
_values = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(_keys, inner, max_size=4)), max_leaves=12)
_blob = st.one_of(
    st.fixed_dictionaries({"inline": st.binary(max_size=300)}),
    st.fixed_dictionaries({"inline": st.binary(max_size=300)}, optional={"size": st.integers(0, 10), "x": _values}),
    st.fixed_dictionaries({"inline": st.builds(bson.Binary, st.binary(max_size=30), st.sampled_from([2, 5, 0x80]))}),
    st.fixed_dictionaries({"gridfs": st.builds(bson.ObjectId), "size": st.integers(0, 10)}),
    _values,
)
_docs = st.builds(lambda extra, blob, first: ({"blob": blob, **extra} if first else {**extra, "blob": blob}),
                  st.dictionaries(_keys.filter(lambda k: k != "blob"), _values, max_size=6), _blob, st.booleans())


def _decode_both(raw: bytes) -> tuple[Any, Any]:
    """(bson.decode's result or exception type, view_document's) on a writable copy."""
    out = []
    for decode in (bson.decode, lambda b: bsonview.view_document(memoryview(bytearray(b)))):
        try:
            out.append(_plain(decode(raw)))
        except Exception as exc:  # noqa: BLE001 - which exception each raises is compared below
            out.append(exc)
    return out[0], out[1]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_docs)
def test_view_document_is_bson_decode(doc):
    raw = bson.encode(doc)
    expected = bson.decode(raw)
    for buf in (memoryview(bytearray(raw)), memoryview(raw)):
        got = bsonview.view_document(buf)
        assert _plain(got) == expected and list(got) == list(expected)
    ref = got.get("blob")
    if isinstance(doc.get("blob"), dict) and type(doc["blob"].get("inline")) is bytes:
        assert isinstance(ref["inline"], memoryview) and ref["inline"].readonly  # the view, not a copy


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_docs, st.data())
def test_corrupted_documents_fail_as_bson_decode_does(doc, data):
    raw = bytearray(bson.encode(doc))
    how = data.draw(st.sampled_from(["flip", "truncate", "insert", "size"]))
    at = data.draw(st.integers(0, len(raw) - 1))
    if how == "flip":
        raw[at] ^= data.draw(st.integers(1, 255))
    elif how == "truncate":
        del raw[at:]
    elif how == "insert":
        raw[at:at] = data.draw(st.binary(min_size=1, max_size=4))
    else:  # an int32 length somewhere set to a hostile value
        at = min(at, max(0, len(raw) - 4))
        raw[at:at + 4] = struct.pack("<i", data.draw(st.sampled_from([-1, 0, 4, 5, 13, 2**31 - 1])))
    expected, got = _decode_both(bytes(raw))
    if isinstance(expected, Exception):
        assert isinstance(got, Exception), (expected, got)
    else:  # a flipped bit can make a double NaN, which equals nothing: then the two must print the same
        assert got == expected or repr(got) == repr(expected), (expected, got)


def test_malformed_structure_is_invalid_bson():
    good = bson.encode({"a": 1, "blob": {"inline": b"xyz"}})
    for bad in (good[:-1], good[:4], struct.pack("<i", len(good) + 1) + good[4:], good[:-1] + b"\x01",
                b"\x05\x00\x00\x00", good.replace(b"\x10a", b"\x42a")):
        with pytest.raises(InvalidBSON):
            bsonview.view_document(memoryview(bytearray(bad)))


def test_a_duplicated_blob_field_decodes_as_bson_does():
    """Hand-made BSON with ``blob`` twice: bson keeps the last value in the first place; so does the view."""
    one = bson.encode({"blob": {"inline": b"first"}})[4:-1]
    two = bson.encode({"blob": {"inline": b"second"}})[4:-1]
    body = one + bson.encode({"n": 1})[4:-1] + two
    raw = struct.pack("<i", len(body) + 5) + body + b"\x00"
    assert _plain(bsonview.view_document(memoryview(bytearray(raw)))) == bson.decode(raw)


def _address(view: memoryview) -> int:
    return np.frombuffer(view, np.uint8).ctypes.data if len(view) else 0


@pytest.mark.parametrize("pad", range(0, 70, 7))
def test_the_blob_is_moved_to_an_aligned_address(pad):
    blob = bytes(range(256)) * 40
    raw = bson.encode({"_id": "k" * pad, "meta": {"x": 1}, "blob": {"inline": blob, "size": 3}, "after": "z"})
    doc = bsonview.view_document(memoryview(bytearray(raw)))
    assert bytes(doc["blob"]["inline"]) == blob and _address(doc["blob"]["inline"]) % bsonview.ALIGN == 0
    assert _plain(doc) == bson.decode(raw)
    frozen = bsonview.view_document(memoryview(raw))  # a read-only buffer is never written
    assert bytes(frozen["blob"]["inline"]) == blob


def test_documents_splits_a_concatenated_batch():
    docs = [{"_id": i, "blob": {"inline": bytes([i]) * i}} for i in range(4)]
    stream = b"".join(bson.encode(d) for d in docs)
    assert [bson.decode(bytes(v)) for v in bsonview.documents(stream)] == docs
    with pytest.raises(InvalidBSON):
        list(bsonview.documents(stream[:-1]))


# ----------------------------------------------------------------------------------------- against the store


def _write(store: blobstore.BlobStore, run: str, count: int, size: int = 5000) -> list[dict[str, Any]]:
    rng = np.random.default_rng(3)
    return [store.write_update(run, 1, c, {"w": rng.standard_normal(size).astype(np.float32),
                                            "b": rng.standard_normal(7).astype(np.float32)},
                               base_round=0, num_examples=c + 1, activation_id=f"a{c}", attempt=1)
            for c in range(count)]


def test_find_views_reads_what_find_reads(nx_db):
    store = blobstore.BlobStore(nx_db)
    _write(store, "r", 3)
    store.updates.insert_one({"_id": "odd", "run_id": "r", "blob": {"gridfs": bson.ObjectId(), "size": 3}})
    query = {"run_id": "r"}
    before = bsonview.ViewCursor.views
    got = bsonview.find_views(store.updates, query)
    assert bsonview.ViewCursor.views > before  # the reply was unpacked here, not by pymongo's raw batches
    assert [_plain(d) for d in got] == list(store.updates.find(query))
    inline = [d["blob"]["inline"] for d in got if "inline" in d["blob"]]
    assert len(inline) == 3 and all(isinstance(v, memoryview) and _address(v) % bsonview.ALIGN == 0
                                    for v in inline)
    assert bsonview.find_views(store.updates, {"run_id": "none"}) == []


def test_pymongos_own_raw_batches_give_the_same_documents(nx_db, monkeypatch):
    """Were the hook not called (another pymongo), the raw batches pymongo makes are split the same way."""
    store = blobstore.BlobStore(nx_db)
    _write(store, "r", 3)
    monkeypatch.setattr(bsonview.ViewCursor, "_unpack_response", bsonview.RawBatchCursor._unpack_response)
    got = bsonview.find_views(store.updates, {"run_id": "r"})
    assert [_plain(d) for d in got] == list(store.updates.find({"run_id": "r"}))


def test_an_error_reply_raises_as_pymongo_does(nx_db):
    """A reply without a cursor (the server refused the query) goes to pymongo's own unpacking: the same error."""
    nx_db["updates"].insert_one({"_id": 1, "a": 1})
    raised = 0
    for query in ({"$bogus": 1}, {"a": {"$nonsense": 1}}, {"a": {"$regex": "("}}, {"$where": 3}):
        try:
            expected: Any = list(nx_db["updates"].find(query))
        except Exception as exc:  # noqa: BLE001 - the same type must come from the view cursor
            raised += 1
            with pytest.raises(type(exc), match=None):
                bsonview.find_views(nx_db["updates"], query)
        else:
            assert [_plain(d) for d in bsonview.find_views(nx_db["updates"], query)] == expected
    assert raised


def test_admission_decides_the_same_from_views(nx_db):
    """Valid, corrupted, truncated, forged, missing and pruned updates: the same accepted updates with the same
    bits, and the same rejections with the same messages, as from pymongo's own documents."""
    store = blobstore.BlobStore(nx_db)
    docs = _write(store, "r", 8)
    coll = store.updates
    key = lambda c: blobstore.update_key("r", 1, c, f"a{c}")  # noqa: E731
    blob = bytes(coll.find_one({"_id": key(1)})["blob"]["inline"])
    coll.update_one({"_id": key(1)}, {"$set": {"blob.inline": blob[:-8] + b"\x00" * 8}})  # checksum
    coll.update_one({"_id": key(2)}, {"$set": {"blob.inline": blob[:100]}})  # truncated
    coll.update_one({"_id": key(3)}, {"$set": {"blob": None}})  # pruned
    coll.update_one({"_id": key(4)}, {"$set": {"blob.inline": "text"}})  # not binary
    coll.update_one({"_id": key(5)}, {"$set": {"blob": {"gridfs": bson.ObjectId(), "size": 9}}})  # file gone
    coll.delete_one({"_id": key(6)})  # missing
    issued = [admission.Issued(c, f"a{c}", 1, d["sha256"]) for c, d in enumerate(docs)]
    spec = {"w": ((5000,), "float32"), "b": ((7,), "float32")}

    def run(source):
        admitted = admission.Admitted(issued, source, run_id="r", round=1, expected=spec, shard_sizes=[50] * 8)
        arrays = [(u.client_id, u.num_examples, {k: v.tobytes() for k, v in u.weights.items()}) for u in admitted]
        return arrays, admitted.accepted, admitted.rejected

    viewed, plain = run(aggregator.ViewedUpdates(store)), run(store)
    assert viewed == plain
    assert plain[1] == [0, 7] and {r["reason"] for r in plain[2]} == {"checksum", "truncated", "missing",
                                                                        "malformed"}


def test_large_models_are_read_as_views_small_ones_as_usual(nx_db):
    store = blobstore.BlobStore(nx_db)
    big = {"w": ((aggregator.VIEW_MIN_BYTES // 4 + 1,), "float32")}
    small = {"w": ((1000,), "float32")}
    assert isinstance(aggregator._update_source(store, big), aggregator.ViewedUpdates)
    assert aggregator._update_source(store, small) is store


def test_inline_bytes_are_stored_as_binary_subtype_0():
    """``_put_blob`` stores the encoded blob as it is (no bson.Binary copy): the same BSON bytes as before."""
    assert bson.encode({"inline": b"\x00\x01abc"}) == bson.encode({"inline": bson.Binary(b"\x00\x01abc", 0)})


def test_ctypes_addressing_matches_numpy():
    buf = memoryview(bytearray(100))[3:]
    assert ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf)) == _address(buf)

"""fedkeeper/store/nxfast.py: each fast path returns exactly what the nx-27017 / neosqlite code it replaces returns
(compared against the original functions, which stay importable), and a library version other than the one checked
leaves the original in place."""

from __future__ import annotations

import copy
import math
import sqlite3
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import bson
import neosqlite
import pytest
from bson import Decimal128
from bson.int64 import Int64
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from neosqlite.binary import Binary as NeoBinary
from neosqlite.objectid import ObjectId as NeoObjectId

import nx_27017.utils as nx_utils
import nx_27017.wire_protocol as nx_wire
from fedkeeper.store import nxfast

CHECKED = {"nx-27017": nxfast.NX_VERSION, "neosqlite": nxfast.NEOSQLITE_VERSION}
INSTALLED = nxfast.installed_versions()
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Compared against the installed originals: meaningful only at the versions the replacements were checked against
# (at another version the server leaves the originals alone, which test_only_checked_versions_are_patched shows).
at_checked_nx = pytest.mark.skipif(INSTALLED["nx-27017"] != nxfast.NX_VERSION, reason="nx-27017 not the checked one")
at_checked_neosqlite = pytest.mark.skipif(INSTALLED["neosqlite"] != nxfast.NEOSQLITE_VERSION,
                                          reason="neosqlite not the checked version")


def test_only_checked_versions_are_patched() -> None:
    """What the server applies at start: every patch whose library is at the version checked, no other."""
    applied = nxfast.apply_all()
    try:
        assert {p.name for p in applied} == {p.name for p in nxfast.patches()
                                             if INSTALLED[p.distribution] == p.version}
    finally:
        for patch in applied:
            patch.undo()


# --------------------------------------------------------------------------------------------- documents


def _leaves(exotic: bool) -> st.SearchStrategy[Any]:
    base = [
        st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.integers(-3, 3),
        st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12), st.binary(max_size=12),
        st.datetimes().map(lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000)),
        st.integers(-(2**63), 2**63 - 1).map(Int64),
        st.binary(min_size=12, max_size=12).map(NeoObjectId),
        st.binary(max_size=8).map(NeoBinary),
    ]
    if exotic:  # values the wire can bring that send the fast paths to the original code
        base += [
            st.binary(min_size=12, max_size=12).map(bson.ObjectId),
            st.tuples(st.binary(max_size=6), st.integers(1, 255)).map(lambda t: bson.Binary(*t)),
            st.decimals(min_value=-(10**6), max_value=10**6, places=3).map(Decimal),
            st.decimals(min_value=-(10**6), max_value=10**6, places=3).map(Decimal128),
            st.just(float("nan")), st.just(float("inf")),
            st.tuples(st.integers(), st.text(max_size=3)),
            st.dates(),
        ]
    return st.one_of(*base)


def documents(exotic: bool = True) -> st.SearchStrategy[dict[str, Any]]:
    keys = st.one_of(st.sampled_from(["_id", "id", "blob", "a", "b.c", "$x"]), st.text(max_size=6))
    values = st.recursive(
        _leaves(exotic),
        lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)),
        max_leaves=25,
    )
    return st.dictionaries(keys, values, max_size=8)


def same(a: Any, b: Any) -> bool:
    """Equal values of exactly the same types, all the way down (bytes subtypes and dict key order included)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, bytes) and hasattr(a, "subtype"):
        return bytes(a) == bytes(b) and a.subtype == b.subtype
    return a == b


def containers(x: Any) -> Iterator[Any]:
    if isinstance(x, (dict, list)):
        yield x
        for item in x.values() if isinstance(x, dict) else x:
            yield from containers(item)


# -------------------------------------------------------------------------------------------------- deepcopy


@SETTINGS
@given(documents())
def test_fast_deepcopy_is_deepcopy(doc: dict[str, Any]) -> None:
    mine, theirs = nxfast.fast_deepcopy(doc), copy.deepcopy(doc)
    assert same(mine, theirs)
    assert not {id(c) for c in containers(doc)} & {id(c) for c in containers(mine)}  # nothing mutable shared


def test_fast_deepcopy_keeps_shared_and_cyclic_structure() -> None:
    shared = [1, {"x": b"y"}]
    doc: dict[str, Any] = {"a": shared, "b": shared, "t": (shared,)}
    doc["self"] = doc
    mine = nxfast.fast_deepcopy(doc)
    assert mine["a"] is mine["b"] is mine["t"][0] and mine["self"] is mine
    assert mine["a"] is not shared and same(mine["a"], shared)
    memo: dict[int, Any] = {}
    nxfast.fast_deepcopy(doc, memo)
    assert doc in memo[id(memo)]  # the same keep-alive list copy.deepcopy keeps


# ------------------------------------------------------------------------------------------ ObjectId converters


@at_checked_nx
@SETTINGS
@given(st.one_of(documents(), st.lists(documents(), max_size=3), _leaves(exotic=True)))
def test_bson_to_neo_matches_nx(doc: Any) -> None:
    original = nx_utils.convert_bson_to_neo_objectids
    assert same(nxfast.make_bson_to_neo()(doc), original(doc))


@at_checked_nx
@SETTINGS
@given(st.one_of(documents(), st.lists(documents(), max_size=3), _leaves(exotic=True),
                 st.fixed_dictionaries({"id": st.sampled_from([0, 0.0, False, 1, Int64(0), "0"])})))
def test_neo_to_bson_matches_nx(doc: Any) -> None:
    original = nx_utils.convert_neo_to_bson_objectids
    assert nx_wire._convert_objectids is original or getattr(nx_wire._convert_objectids, "_fk_fast", False)
    assert same(nxfast.make_neo_to_bson()({"cursor": {"firstBatch": [doc], "id": 0}, "ok": 1}),
                original({"cursor": {"firstBatch": [doc], "id": 0}, "ok": 1}))
    assert same(nxfast.make_neo_to_bson()(doc), original(doc))


# ---------------------------------------------------------------------------- neosqlite insert and projection


@pytest.fixture(scope="module")
def conn() -> Iterator[Any]:
    db = neosqlite.Connection(":memory:")
    yield db
    db.close()


def _patch(name: str) -> nxfast.Patch:
    return next(p for p in nxfast.patches() if p.name == name)


def _outcome(coll: Any, doc: dict[str, Any]) -> tuple[Any, ...]:
    """What an insert leaves: the result or error, the stored row (its generated ObjectId masked), the document."""
    generated = "_id" not in doc or doc["_id"] is None
    try:
        result: Any = coll.insert_one(doc).inserted_id
    except Exception as exc:  # noqa: BLE001 - the error itself is compared
        return ("error", type(exc), str(exc), doc)
    rows = coll.db.execute(f'SELECT data, _id FROM "{coll.name}"').fetchall()
    assert len(rows) == 1
    data, stored_id = rows[0]
    if generated:
        assert type(result) is NeoObjectId
        data, stored_id = data.replace(str(result), "<oid>"), stored_id.replace(str(result), "<oid>")
        result = type(result)
    return ("ok", result, data, stored_id, doc)


def _inserted_both_ways(conn: Any, doc: dict[str, Any]) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """(patched, original) outcome of inserting a copy of ``doc`` into a new collection each."""
    patch = _patch("insert-copy")
    theirs = _outcome(conn[f"t{uuid.uuid4().hex}"], copy.deepcopy(doc))
    assert patch.apply(CHECKED)
    try:
        mine = _outcome(conn[f"t{uuid.uuid4().hex}"], copy.deepcopy(doc))
    finally:
        patch.undo()
    return mine, theirs


@at_checked_neosqlite
@SETTINGS
@given(documents())
def test_fast_insert_stores_what_neosqlite_stores(conn: Any, doc: dict[str, Any]) -> None:
    patch = _patch("insert-copy")
    before = copy.deepcopy(doc)
    theirs = _outcome(conn[f"t{uuid.uuid4().hex}"], copy.deepcopy(doc))
    assert patch.apply(CHECKED)
    try:
        mine = _outcome(conn[f"t{uuid.uuid4().hex}"], doc)
    finally:
        patch.undo()
    if mine[0] == "ok" and "_id" not in before:
        assert type(doc["_id"]) is NeoObjectId  # written back into the caller's document, as the original does
        doc.pop("_id"), theirs[-1].pop("_id")
    assert same(mine, theirs)


@at_checked_neosqlite
def test_fast_insert_takes_the_fast_path_for_wire_documents(conn: Any) -> None:
    """A document as the handler hands it over (BSON-decoded, ObjectIds converted) never reaches the original;
    one with a type the walk does not know (a bson Binary with a subtype) does, unchanged."""
    from neosqlite.collection.query_helper.crud_operations import CRUDOperationsMixin

    reached: list[Any] = []

    def spy(self: Any, document: Any) -> Any:
        reached.append(document)
        return CRUDOperationsMixin._internal_insert(self, document)

    fast = nxfast.make_internal_insert(spy)
    coll = conn[f"t{uuid.uuid4().hex}"]
    helpers = coll.query_engine.helpers
    wire = nx_utils.convert_bson_to_neo_objectids(bson.decode(bson.encode({
        "_id": "run:1:2", "blob": {"inline": bson.Binary(b"\x00" * 64)}, "metrics": {"loss": 0.5, "steps": 2},
        "when": datetime(2026, 1, 2, tzinfo=timezone.utc), "big": Int64(2**40), "oid": bson.ObjectId(),
        "tags": ["a", 1, None, [True]]})))
    assert fast(helpers, wire) == "run:1:2" and reached == []
    stored = coll.find_one({"_id": "run:1:2"})
    assert bytes(stored["blob"]["inline"]) == b"\x00" * 64 and stored["big"] == 2**40 and stored["tags"][3] == [True]
    other = {"_id": "x", "blob": bson.Binary(b"ab", 5)}
    assert fast(helpers, other) == "x" and reached == [other]


@at_checked_neosqlite
@settings(SETTINGS, max_examples=60)
@given(st.lists(documents(exotic=False), min_size=1, max_size=4),
       st.sampled_from([{"blob": 0}, {"_id": 0}, {"a": 1}, {"a": 1, "_id": 0}, {"id": 1, "blob": 1}, {},
                        {"blob": 0, "_id": 0}, {"blob": False, "a": 0.0}, {"_id": 1, "blob": 0}, {"a.b": 0},
                        {"blob": 0, "a": "$x"}, {"nope": 0}, {"_id": 1, "file_id": 1}, {"a": True, "b.c": 1},
                        {"a": 1.0, "b": 0, "_id": False}, {"id": 1, "a": {"$literal": 1}}, {"_id": 1}]),
       st.sampled_from([("projection-copy",), ("exclusion-projection",), ("projection-copy", "exclusion-projection")]))
def test_projection_with_fast_copy_finds_the_same(conn: Any, docs: list[dict[str, Any]],
                                                 projection: dict[str, Any], names: tuple[str, ...]) -> None:
    """Every projection shape, through either projection patch and both: the same documents, keys in the same
    order (``{"_id": 1, "blob": 0}`` is neosqlite's inclusion of ``_id`` alone, and stays so)."""
    coll = conn["projection"]
    coll.delete_many({})
    for i, doc in enumerate(docs):
        doc["_id"] = i
        coll.insert_one(doc)
    theirs = list(coll.find({}, projection))
    patches = [_patch(name) for name in names]
    for patch in patches:
        assert patch.apply(CHECKED)
    try:
        mine = list(coll.find({}, projection))
    finally:
        for patch in reversed(patches):
            patch.undo()
    assert same(mine, theirs)
    assert [list(d) for d in mine] == [list(d) for d in theirs]


@at_checked_neosqlite
def test_exclusion_projection_copies_only_what_stays() -> None:
    """The excluded values are not copied (the 10 KB blob of every listed update was), the kept ones are copied
    (the caller may mutate the result without touching the stored document), sharing between kept values kept."""
    copied: list[Any] = []
    shared = {"k": [1, 2]}
    document = {"_id": "u", "blob": bytearray(b"x" * 64), "a": shared, "b": shared, "n": 3}
    apply = nxfast.make_apply_projection(lambda *a: copied.append(a) or {})
    out = apply(None, {"blob": 0}, document)
    assert copied == [] and list(out) == ["_id", "a", "b", "n"]
    assert out["a"] == shared and out["a"] is not shared and out["a"] is out["b"]
    assert apply(None, {"blob": 0, "a": 1}, document) == {} and len(copied) == 1  # not exclusion-only: original


@at_checked_neosqlite
def test_inclusion_projection_copies_only_the_id(conn: Any) -> None:
    """A literal inclusion takes the included values from the document (as the original does: they are not copied
    there either), copies _id, and never copies the rest; a document holding something whose copy could run code
    (a bytearray, an object) goes to the original."""
    coll = conn["inclusion"]
    copied: list[Any] = []
    apply = nxfast.make_apply_projection(lambda *a: copied.append(a) or {"original": True})
    helpers = coll.query_engine.helpers
    oid, meta = NeoObjectId(), {"k": [1]}
    document = {"_id": {"o": oid}, "file_id": None, "blob": NeoBinary(b"x" * 64), "meta": meta}
    out = apply(helpers, {"_id": 1, "file_id": 1, "meta": 1}, document)
    assert copied == [] and list(out) == ["_id", "file_id", "meta"]  # _id where the projection names it
    assert out["meta"] is meta and out["_id"] == {"o": oid} and out["_id"] is not document["_id"]
    assert apply(helpers, {"meta": 1}, {**document, "odd": bytearray(b"x")}) == {"original": True}
    assert apply(helpers, {"meta": "$meta"}, document) == {"original": True} and len(copied) == 2


# ------------------------------------------------------------------------------------------------- versions


@at_checked_neosqlite
def test_a_different_version_leaves_the_original_in_place(caplog: pytest.LogCaptureFixture) -> None:
    from neosqlite.collection.query_engine import crud_operations as engine_crud
    from neosqlite.collection.query_helper import aggregation, crud_operations

    originals = (nx_utils.convert_bson_to_neo_objectids, nx_wire._convert_objectids,
                 crud_operations.CRUDOperationsMixin._internal_insert, aggregation.deepcopy,
                 engine_crud.CRUDOperationsMixin.update_many, vars(NeoBinary)["decode_from_storage"],
                 vars(NeoBinary)["encode_for_storage"])
    applied = nxfast.apply_all({"nx-27017": "0.9.0", "neosqlite": nxfast.NEOSQLITE_VERSION})
    try:
        assert {p.name for p in applied} == {"insert-copy", "projection-copy", "exclusion-projection", "prune-update",
                                             "binary-encode", "binary-decode"}
        assert type(vars(NeoBinary)["decode_from_storage"]) is classmethod
        assert vars(NeoBinary)["decode_from_storage"] is not originals[5]
        assert nx_utils.convert_bson_to_neo_objectids is originals[0] and nx_wire._convert_objectids is originals[1]
        assert crud_operations.CRUDOperationsMixin._internal_insert is not originals[2]
        assert aggregation.deepcopy is nxfast.fast_deepcopy
        assert "bson-to-neo skipped: nx-27017 0.9.0 installed, checked against 0.8.1" in caplog.text
    finally:
        for patch in applied:
            patch.undo()
    assert (nx_utils.convert_bson_to_neo_objectids, nx_wire._convert_objectids,
            crud_operations.CRUDOperationsMixin._internal_insert, aggregation.deepcopy,
            engine_crud.CRUDOperationsMixin.update_many, vars(NeoBinary)["decode_from_storage"],
            vars(NeoBinary)["encode_for_storage"]) == originals  # the classmethod object itself, not a bound one
    assert nxfast.apply_all({"nx-27017": None, "neosqlite": None}) == []


# ------------------------------------------------------------------------------------------ update_many (pruning)


def _state(coll: Any) -> list[Any]:
    return coll.db.execute(f'SELECT id, _id, data FROM "{coll.name}" ORDER BY id').fetchall()


def _result(res: Any) -> tuple[Any, ...]:
    return (res.matched_count, res.modified_count, res.upserted_id)


_SET_VALUES = st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False), st.integers(-(2**63), 2**63 - 1),
                        st.sampled_from([0, 1, 1.0, -0.0, 1e300, True, False, "", "1", "succeeded"]),
                        st.text(max_size=6).filter(lambda t: "\x00" not in t))
_SET_FIELDS = st.sampled_from(["blob", "pruned", "a", "id", "round"])


_PRUNABLE = st.fixed_dictionaries({}, optional={  # the fields the updates set, present or not, in every state
    name: st.one_of(_SET_VALUES, _leaves(exotic=False), st.dictionaries(st.text(max_size=3), _SET_VALUES, max_size=2))
    for name in ["blob", "pruned", "a", "id", "round"]})


@at_checked_neosqlite
@settings(SETTINGS, max_examples=100)
@given(st.lists(st.tuples(_PRUNABLE, documents(exotic=False)).map(lambda t: {**t[1], **t[0]}), min_size=1, max_size=5),
       st.dictionaries(_SET_FIELDS, _SET_VALUES, min_size=1, max_size=3),
       st.sampled_from(["all", "some", "blob-not-null", "none"]))
def test_fast_update_many_writes_and_counts_as_neosqlite(conn: Any, docs: list[dict[str, Any]],
                                                        fields: dict[str, Any], which: str) -> None:
    from neosqlite.collection.query_engine.crud_operations import CRUDOperationsMixin

    colls = [conn["upd_theirs"], conn["upd_mine"]]
    for coll in colls:
        coll.delete_many({})
        for i, doc in enumerate(docs):
            coll.insert_one({**copy.deepcopy(doc), "_id": f"k{i}"})
    query = {"all": {}, "some": {"_id": {"$in": ["k0", "k2", "missing"]}},
             "blob-not-null": {"_id": {"$in": [f"k{i}" for i in range(len(docs))]}, "blob": {"$ne": None}},
             "none": {"_id": "missing"}}[which]
    theirs = _result(colls[0].update_many(query, {"$set": dict(fields)}))
    fallbacks: list[Any] = []

    def original(*args: Any, **kw: Any) -> Any:
        fallbacks.append(args)
        return CRUDOperationsMixin.update_many(*args, **kw)

    mine = _result(nxfast.make_update_many(original)(colls[1].query_engine, query, {"$set": dict(fields)}))
    if not any("\x00" in key for doc in docs for key in doc):  # json_each cuts keys at NUL: those look duplicated
        assert fallbacks == []  # the fast path itself, not the original
    assert mine == theirs
    assert _state(colls[1]) == _state(colls[0])


@at_checked_neosqlite
def test_fast_update_many_counts_a_prune_twice_once(conn: Any) -> None:
    """What bench_scale's pruning does: blobs to null and a time stamp; a second prune of the same ids matches none."""
    patch = _patch("prune-update")
    coll = conn["prune"]
    coll.delete_many({})
    for i in range(5):
        coll.insert_one({"_id": f"u{i}", "blob": {"inline": bytes([i]) * 300}, "round": 1, "storage": "inline"})
    coll.update_one({"_id": "u4"}, {"$set": {"blob": None}})
    assert patch.apply(CHECKED)
    try:
        prune = {"_id": {"$in": [f"u{i}" for i in range(5)]}, "blob": {"$ne": None}}
        first = coll.update_many(prune, {"$set": {"blob": None, "pruned": 1796317060.670407}})
        second = coll.update_many(prune, {"$set": {"blob": None, "pruned": 1796317061.5}})
    finally:
        patch.undo()
    assert _result(first) == (4, 4, None) and _result(second) == (0, 0, None)
    assert [d["blob"] for d in coll.find({}, sort=[("_id", 1)])] == [None] * 5


@at_checked_neosqlite
@pytest.mark.parametrize("update, kwargs", [
    ({"$inc": {"a": 1}}, {}),
    ({"$set": {"a.b": 1}}, {}),
    ({"$set": {"a": "nul\x00"}}, {}),
    ({"$set": {"a": "\ud800"}}, {}),
    ({"$set": {"a": b"bytes"}}, {}),
    ({"$set": {"a": [1]}}, {}),
    ({"$set": {"a": float("nan")}}, {}),
    ({"$set": {"_id": 1}}, {}),
    ({"$set": {"a": 1}, "$unset": {"b": ""}}, {}),
    ({"$set": {"a": 1}}, {"upsert": True}),
    ({"$set": {"a": 1}}, {"array_filters": [{"x": 1}]}),
])
def test_other_updates_go_to_neosqlite(conn: Any, update: dict[str, Any], kwargs: dict[str, Any]) -> None:
    calls: list[Any] = []

    def spy(self: Any, *args: Any, **kw: Any) -> str:
        calls.append((args, kw))
        return "original"

    coll = conn["others"]
    assert nxfast.make_update_many(spy)(coll.query_engine, {"x": 1}, update, **kwargs) == "original"
    assert len(calls) == 1


@at_checked_neosqlite
@pytest.mark.parametrize("doc, fields", [
    ({"a": 1.0, "b": [1, {"c": "é"}]}, {"a": 1}),  # same loaded value, other JSON text: not modified
    ({"a": 1, "pruned": 2.5}, {"a": 1.0, "pruned": 2.5}),
    ({"blob": None, "x": 1}, {"blob": None}),  # null to null: not modified
    ({"blob": {"inline": b"\x01" * 40}}, {"blob": None, "pruned": 1796317060.670407}),
    ({"pruned": 1796317060.670407}, {"pruned": 1796317060.670407}),  # SQLite keeps 15 digits: modified
    ({"round": {"x": 0}}, {"round": 0}),
    ({"id": True}, {"id": 1}),  # JSON true loads as True == 1
    ({"state": "invoked", "cold": False}, {"state": "succeeded", "cold": True, "end": 2.5}),
    ({"state": "succeeded", "cold": 1}, {"state": "succeeded", "cold": True}),  # stored 1 == 1: not modified
])
def test_fast_update_many_modified_count_cases(conn: Any, doc: dict[str, Any], fields: dict[str, Any]) -> None:
    from neosqlite.collection.query_engine.crud_operations import CRUDOperationsMixin

    colls = [conn["case_theirs"], conn["case_mine"]]
    for coll in colls:
        coll.delete_many({})
        coll.insert_one({"_id": "k", **copy.deepcopy(doc)})
    theirs = _result(colls[0].update_many({}, {"$set": dict(fields)}))
    mine = _result(nxfast.make_update_many(CRUDOperationsMixin.update_many)(
        colls[1].query_engine, {}, {"$set": dict(fields)}))
    assert mine == theirs and _state(colls[1]) == _state(colls[0])


# ------------------------------------------------------------------------------------------ through the server


def test_a_round_of_store_traffic_through_the_patched_server(nx_db: Any) -> None:
    """The embedded server (nxserve applies the patches) over the wire: inserts with blobs, a projected find, the
    aggregator's read, a prune and a second prune, with the answers a MongoDB gives."""
    ids = [f"run:1:{c}" for c in range(30)]
    for c, _id in enumerate(ids):
        nx_db.updates.insert_one({"_id": _id, "client_id": c, "round": 1,
                                  "blob": {"inline": bson.Binary(bytes([c]) * 100)},
                                  "metrics": {"loss": c / 10, "steps": 2}, "oid": bson.ObjectId(b"x" * 12)})
    meta = list(nx_db.updates.find({"round": 1}, {"blob": 0}).sort("client_id", 1))
    assert [m["client_id"] for m in meta] == list(range(30)) and all("blob" not in m for m in meta)
    assert meta[3]["metrics"] == {"loss": 0.3, "steps": 2} and meta[3]["oid"] == bson.ObjectId(b"x" * 12)
    full = {d["_id"]: d for d in nx_db.updates.find({"_id": {"$in": ids[:10]}})}
    assert bytes(full["run:1:7"]["blob"]["inline"]) == bytes([7]) * 100
    prune = {"_id": {"$in": ids[:20]}, "blob": {"$ne": None}}
    first = nx_db.updates.update_many(prune, {"$set": {"blob": None, "pruned": 1796317060.5}})
    again = nx_db.updates.update_many(prune, {"$set": {"blob": None, "pruned": 1796317061.5}})
    assert (first.matched_count, first.modified_count, again.matched_count, again.modified_count) == (20, 20, 0, 0)
    left = {d["_id"]: d for d in nx_db.updates.find({})}
    assert [left[i]["blob"] is None for i in ids] == [True] * 20 + [False] * 10
    assert left[ids[0]]["pruned"] == 1796317060.5 and "pruned" not in left[ids[25]]


# ------------------------------------------------------------------------------ binaries: base64 and the splice


def _call(fn: Any, *args: Any) -> tuple[Any, ...]:
    try:
        out = fn(*args)
    except Exception as exc:  # noqa: BLE001 - the error itself is compared
        return ("error", type(exc), str(exc))
    return ("ok", out)


@at_checked_neosqlite
@SETTINGS
@given(st.binary(max_size=3000), st.integers(0, 255))
def test_binary_encode_for_storage_matches_neosqlite(data: bytes, subtype: int) -> None:
    original = vars(NeoBinary)["encode_for_storage"]
    value = NeoBinary(data, subtype)
    assert same(nxfast.make_encode_for_storage(original)(value), original(value))


_B64_TEXT = st.one_of(
    st.binary(max_size=300).map(lambda b: __import__("base64").b64encode(b).decode()),  # what neosqlite writes
    st.text(alphabet="ABCxyz019+/=-_ \n\t.é\x00", max_size=40),  # padding, other alphabets, junk, non-ASCII
    st.binary(max_size=30).map(lambda b: __import__("base64").b64encode(b).decode().rstrip("=")),  # no padding
)


@at_checked_neosqlite
@SETTINGS
@given(st.one_of(
    st.fixed_dictionaries({"__neosqlite_binary__": st.just(True), "data": _B64_TEXT},
                          optional={"subtype": st.integers(0, 255)}),
    st.fixed_dictionaries({"__neosqlite_binary__": st.just(True)},
                          optional={"data": st.one_of(st.binary(max_size=8), st.none(), st.integers())}),
    st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2),
    st.none(), st.text(max_size=3)))
def test_binary_decode_from_storage_matches_neosqlite(encoded: Any) -> None:
    """The same bytes and subtype for what neosqlite writes, the same error (type and message) or the same lenient
    result for anything else a stored document could hold."""
    raw = vars(NeoBinary)["decode_from_storage"]
    fast = nxfast.make_decode_from_storage(raw).__get__(None, NeoBinary)
    mine, theirs = _call(fast, copy.deepcopy(encoded)), _call(raw.__get__(None, NeoBinary), copy.deepcopy(encoded))
    assert same(mine, theirs)


@at_checked_neosqlite
def test_fast_insert_splices_blobs_and_gives_way_to_a_document_holding_its_marker(conn: Any) -> None:
    """Large and several binaries (nested, in lists) are stored as neosqlite stores them; a document holding the
    marker text anywhere (a value, a key), or a bytes _id, goes to the original and is stored the same."""
    patch = _patch("insert-copy")
    big = bytes(range(256)) * 40
    docs = [{"_id": "a", "blob": {"inline": big}, "more": [b"", b"\x00\xff", {"x": big[:999]}], "n": 1}]
    assert patch.apply(CHECKED)
    try:
        from neosqlite.collection.query_helper.crud_operations import CRUDOperationsMixin

        nonce = CRUDOperationsMixin._internal_insert._fk_nonce
    finally:
        patch.undo()
    docs += [{"_id": "b", "s": f"{nonce}0", "blob": b"ab"}, {"_id": "c", f'"{nonce}1"': 1, "blob": [b"a", b"b"]},
             {"_id": "d", "t": f"x{nonce}", "blob": b"ab"}, {"_id": b"raw-id", "blob": b"cd"}]
    for doc in docs:
        mine, theirs = _inserted_both_ways(conn, doc)
        assert same(mine, theirs), doc["_id"]
        assert mine[0] == "ok" and (doc["_id"] not in ("a", b"raw-id") or nonce not in mine[2])


_HOSTILE_TEXT = st.lists(st.one_of(st.characters(exclude_categories=[]),
                                   st.sampled_from(["\ud800", "\udfff", "\x00", "\x1f", "\x7f", "\u2028", '"', "\\",
                                                    "\\u0024", "é", "\U0001f600"])), max_size=6).map("".join)
_HOSTILE_LEAVES = st.one_of(
    _HOSTILE_TEXT, st.floats(), st.integers(-(10**30), 10**30), st.booleans(), st.none(),
    st.sampled_from([1e308, -1e308, 5e-324, -0.0, float("nan"), float("inf"), float("-inf")]),
    st.binary(max_size=40))


@at_checked_neosqlite
@SETTINGS
@given(st.dictionaries(st.one_of(_HOSTILE_TEXT, st.just("_id")),
                       st.recursive(_HOSTILE_LEAVES, lambda inner: st.one_of(
                           st.lists(inner, max_size=3), st.dictionaries(_HOSTILE_TEXT, inner, max_size=3)),
                           max_leaves=12), max_size=5))
def test_fast_insert_without_the_json_check_stores_and_fails_as_neosqlite(conn: Any, doc: dict[str, Any]) -> None:
    """Lone surrogates, control characters, quotes, escapes, huge ints, extreme and non-finite floats: the insert
    that checks the JSON text only when the INSERT fails stores the same text, or fails with the same error (NaN and
    infinities: the original's "Invalid JSON document")."""
    mine, theirs = _inserted_both_ways(conn, doc)
    if mine[0] == "ok" and "_id" not in doc:
        mine[-1].pop("_id"), theirs[-1].pop("_id")
    assert same(mine, theirs)


@at_checked_neosqlite
def test_fast_insert_failures_are_the_originals(tmp_path: Any) -> None:
    """A duplicate _id fails with the INSERT's own error, a closed database with the original's JSON-check error:
    the same as neosqlite's, whichever order the check and the INSERT run in."""
    patch = _patch("insert-copy")

    def failures() -> list[tuple[Any, ...]]:
        db = neosqlite.Connection(str(tmp_path / f"{uuid.uuid4().hex}.db"))
        coll = db["c"]
        coll.insert_one({"_id": "k", "blob": b"x" * 100})
        out = [_call(coll.insert_one, {"_id": "k", "blob": b"y" * 100})]
        db.db.close()
        out.append(_call(coll.insert_one, {"_id": "j", "n": 1}))
        return [(r[0], r[1]) if r[0] == "error" else r for r in out]

    theirs = failures()
    assert patch.apply(CHECKED)
    try:
        mine = failures()
    finally:
        patch.undo()
    assert mine == theirs and all(r[0] == "error" for r in mine)


# --------------------------------------------------------------------------------- one commit per insert command


def _insert_msg(coll: str, docs: list[dict[str, Any]], **body: Any) -> dict[str, Any]:
    return {"request_id": 7, "sections": [("body", {"insert": coll, "$db": "fk", **body}), ("payload", {"documents": docs})]}


@pytest.fixture
def handler(tmp_path) -> Iterator[Any]:
    """An nx-27017 handler in this process, on its own data folder, with the insert patch applied."""
    from nx_27017.handler import NeoSQLiteHandler

    patch = _patch("insert-transaction")
    assert patch.apply(nxfast.installed_versions())
    h = NeoSQLiteHandler(data_dir=str(tmp_path))
    try:
        yield h
    finally:
        patch.undo()
        h.close() if hasattr(h, "close") else None


def test_an_insert_command_commits_once_and_answers_as_the_original(handler: Any) -> None:
    conn = handler.get_database("fk").db
    statements: list[str] = []
    conn.set_trace_callback(lambda sql: statements.append(sql.split()[0].upper()))
    try:
        _, res = handler.handle_insert(_insert_msg("acts", [{"_id": i, "n": i} for i in range(5)]))
    finally:
        conn.set_trace_callback(None)
    assert res["ok"] == 1 and res["n"] == 5
    assert statements.count("BEGIN") == 1 and statements.count("COMMIT") == 1 and statements.count("INSERT") == 5
    assert not conn.in_transaction
    # a duplicate fails alone: unordered, the others are stored; ordered, those before it are
    _, res = handler.handle_insert(_insert_msg("acts", [{"_id": 10}, {"_id": 3}, {"_id": 11}], ordered=False))
    assert res["n"] == 2 and [e["index"] for e in res["writeErrors"]] == [1] and res["writeErrors"][0]["code"] == 11000
    _, res = handler.handle_insert(_insert_msg("acts", [{"_id": 20}, {"_id": 4}, {"_id": 21}], ordered=True))
    assert res["n"] == 1 and [e["index"] for e in res["writeErrors"]] == [1]
    assert not conn.in_transaction
    stored = sorted(d["_id"] for d in handler.get_database("fk")["acts"].find({}))
    assert stored == [0, 1, 2, 3, 4, 10, 11, 20]


def test_an_insert_inside_a_transaction_is_left_to_it(handler: Any) -> None:
    conn = handler.get_database("fk").db
    handler.handle_insert(_insert_msg("acts", [{"_id": 0}]))
    conn.execute("BEGIN")
    _, res = handler.handle_insert(_insert_msg("acts", [{"_id": 1}, {"_id": 2}]))
    assert res["n"] == 2 and conn.in_transaction  # not committed by the insert: the transaction is its owner's
    conn.execute("ROLLBACK")
    assert sorted(d["_id"] for d in handler.get_database("fk")["acts"].find({})) == [0]
    statements: list[str] = []
    conn.set_trace_callback(lambda sql: statements.append(sql.split()[0].upper()))
    try:  # a command of a client's transaction, and GridFS's collections: the original, as it is
        handler.handle_insert(_insert_msg("acts", [{"_id": 3}], autocommit=False, startTransaction=True))
        handler.handle_insert(_insert_msg("fs.files", [{"_id": 4, "length": 0, "chunkSize": 255}]))
    finally:
        conn.set_trace_callback(None)
        if conn.in_transaction:
            conn.execute("ROLLBACK")
    assert "BEGIN" not in statements and "COMMIT" not in statements  # the wrapper stayed out of both


def test_a_failing_commit_fails_the_command_and_leaves_no_transaction(handler: Any) -> None:
    real_db = handler.get_database("fk")
    conn = real_db.db
    handler.handle_insert(_insert_msg("acts", [{"_id": 0}]))

    class FailingCommit:  # the database's connection, whose COMMIT fails (as a full disk would make it)
        def __getattr__(self, name: str) -> Any:
            return getattr(conn, name)

        def execute(self, sql: str, *args: Any) -> Any:
            if sql == "COMMIT":
                raise sqlite3.OperationalError("disk I/O error")
            return conn.execute(sql, *args)

    class Database:  # the logical database, as the handler hands it out, with that connection
        db = FailingCommit()

        def __getattr__(self, name: str) -> Any:
            return getattr(real_db, name)

        def __getitem__(self, name: str) -> Any:
            return real_db[name]

    handler.get_database = lambda name: Database()
    try:
        with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
            handler.handle_insert(_insert_msg("acts", [{"_id": 1}, {"_id": 2}]))
    finally:
        del handler.get_database
    assert not conn.in_transaction
    assert sorted(d["_id"] for d in real_db["acts"].find({})) == [0]  # rolled back, both


@pytest.fixture
def writer_elsewhere(handler: Any) -> Iterator[Any]:
    """Another connection to the handler's database file that takes SQLite's write lock (as the WAL checkpointer's
    truncation does) and holds it until released."""
    import threading

    path = next(row[2] for row in handler.get_database("fk").db.execute("PRAGMA database_list") if row[1] == "main")
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    held, release = threading.Event(), threading.Event()
    threads: list[threading.Thread] = []

    def hold(seconds: float) -> threading.Thread:
        def run() -> None:
            other.execute("BEGIN IMMEDIATE")
            held.set()
            release.wait(seconds)
            other.execute("COMMIT")

        thread = threading.Thread(target=run, daemon=True)
        threads.append(thread)
        thread.start()
        held.wait(5)
        return thread

    try:
        yield hold
    finally:
        release.set()
        for thread in threads:  # its COMMIT done before the connection closes (one thread at a time on it)
            thread.join(5)
        other.close()


def test_an_insert_waits_for_a_write_lock_held_elsewhere(handler: Any, writer_elsewhere: Any) -> None:
    """The transaction takes the write lock at its start, so SQLite's busy timeout applies as it did to each
    autocommit statement. A deferred BEGIN failed here at once with 'database is locked': its first statement (the
    original's lookup of the table) made it a read, whose upgrade to a write does not wait."""
    handler.handle_insert(_insert_msg("acts", [{"_id": -1}]))
    thread = writer_elsewhere(0.3)
    _, res = handler.handle_insert(_insert_msg("acts", [{"_id": i} for i in range(3)]))
    thread.join(5)
    assert res["ok"] == 1 and res["n"] == 3 and "writeErrors" not in res
    assert sorted(d["_id"] for d in handler.get_database("fk")["acts"].find({})) == [-1, 0, 1, 2]


def test_an_insert_still_locked_after_the_busy_timeout_answers_as_the_original(handler: Any,
                                                                               writer_elsewhere: Any) -> None:
    conn = handler.get_database("fk").db
    handler.handle_insert(_insert_msg("acts", [{"_id": -1}]))
    conn.execute("PRAGMA busy_timeout = 50")
    thread = writer_elsewhere(10)
    _, res = handler.handle_insert(_insert_msg("acts", [{"_id": 0}, {"_id": 1}], ordered=False))
    assert res["n"] == 0 and {e["code"] for e in res["writeErrors"]} == {8}  # the original's answer: locked
    assert not conn.in_transaction


def test_many_documents_in_one_command_through_the_server(nx_db: Any) -> None:
    """Over the wire (the embedded server applies the patch): an unordered insert with a duplicate stores the
    others, and they are visible to another connection at once (committed)."""
    import pymongo

    nx_db.acts.insert_one({"_id": "a1"})
    with pytest.raises(pymongo.errors.BulkWriteError) as info:
        nx_db.acts.insert_many([{"_id": f"a{i}", "n": i} for i in range(5)], ordered=False)
    assert [e["index"] for e in info.value.details["writeErrors"]] == [1]
    other = pymongo.MongoClient(nx_db.client.address[0], nx_db.client.address[1], directConnection=True)
    try:
        assert sorted(d["_id"] for d in other[nx_db.name].acts.find({})) == [f"a{i}" for i in range(5)]
    finally:
        other.close()

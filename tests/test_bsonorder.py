"""`bsonorder`: sorting on the client gives the order the store's own sort gives (issue 18: `list_updates` sorts
its metadata documents itself, because the embedded store's SQLite sorter copied every blob)."""

from __future__ import annotations

import math

import bson
import neosqlite
from hypothesis import given, settings
from hypothesis import strategies as st

from fedkeeper.runtime.bsonorder import sort_documents, sort_key

_values = st.one_of(st.none(), st.integers(-3, 3), st.floats(-3, 3, allow_nan=False), st.text(max_size=3))
_docs = st.lists(st.fixed_dictionaries({}, optional={"client_id": _values, "attempt": _values}), max_size=25)


@settings(max_examples=150, deadline=None)
@given(_docs)
def test_sorting_here_matches_the_embedded_stores_sort(docs: list[dict]) -> None:
    """Numbers, strings, nulls and missing fields, mixed: the same order as neosqlite's `find().sort()` (what the
    embedded server runs), ties kept in insertion order by both."""
    conn = neosqlite.Connection(":memory:")
    coll = conn["updates"]
    for i, doc in enumerate(docs):
        coll.insert_one({"_id": f"d{i}", "n": i, **doc})
    served = [d["n"] for d in coll.find({}).sort([("client_id", 1), ("attempt", 1)])]
    here = [d["n"] for d in sort_documents(list(coll.find({})), ("client_id", "attempt"))]
    # the server's order among ties is not specified; compare the sequence of keys, then stability on our side
    by_n = {i: doc for i, doc in enumerate(docs)}
    keys = lambda order: [(sort_key(by_n[n].get("client_id")), sort_key(by_n[n].get("attempt"))) for n in order]  # noqa: E731
    assert keys(here) == keys(served)
    for a, b in zip(here, here[1:]):
        if keys([a]) == keys([b]):
            assert a < b  # stable: equal keys keep the order the documents came in


def test_the_order_across_types_is_mongodbs() -> None:
    ordered = [None, math.nan, -2, 1.5, 2, bson.Int64(3), "", "a", "b", {"a": 1}, [1], b"\x01", b"\x00\x00",
               bson.ObjectId(b"\x00" * 12), False, True]
    assert sorted(ordered[::-1], key=sort_key)[2:] == ordered[2:]  # None and NaN: checked apart (NaN != NaN)
    assert sort_key(None) < sort_key(math.nan) < sort_key(-math.inf)
    assert sort_key(True) > sort_key(10**9)  # a bool is not a number in BSON


def test_a_missing_field_sorts_as_null() -> None:
    docs = [{"client_id": 1, "attempt": 2}, {"client_id": 1}, {"client_id": 1, "attempt": None},
            {"client_id": 0, "attempt": 5}]
    assert sort_documents(docs, ("client_id", "attempt")) == [docs[3], docs[1], docs[2], docs[0]]

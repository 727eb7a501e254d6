"""Faster, behaviour-identical replacements for hot paths of the embedded nx-27017 server (issue 18).

``nxserve`` applies them in the server process when it starts (``FK_NX_FAST=0`` leaves the libraries as they are,
for comparisons). At 1000 clients per round the store server spent about 1.8 ms of CPU per client, much of it in
pure-Python walks over every document: neosqlite deep-copies each inserted and each projected document
(``copy.deepcopy`` dispatches per object through its memo machinery), nx-27017 rebuilds every document on the way
in and on the way out to swap ObjectId classes (``isinstance`` chains per value), and neosqlite's ``update_many``
loads, rewrites and reloads each matched document one by one (pruning a round's blobs decoded every blob first).
The walks below use exact-type dispatch for the types a BSON-decoded or JSON-loaded document is made of and hand
anything else to the original code; the ``update_many`` replacement runs the original's SQL over many rows at once
for the one update shape pruning sends. Each returns what the original returns and stores what it stores.

A client's 10 KB update blob is stored as 13 KB of base64 inside the document's JSON text, so the second set of
paths is about that text (store CPU per client 1.15 -> 1.0 ms at 1000 clients, bench_scale): its base64 (pybase64,
both ways: every listing, read and prune lookup loads the blob), its JSON serialisation (the base64 spliced in
rather than escaped character by character), SQLite's ``json_valid`` of each insert (only when the INSERT fails),
and the deep copy of whole documents for an ``{"_id": 1, ...}`` projection.

Each patch names the distribution and the version its replacement was checked against (by reading the original's
source, and by the property tests in tests/test_nx_fastpaths.py, which compare against the original functions).
A different installed version leaves the original in place: ``apply_all`` logs the skip and goes on. Nothing here
changes the wire protocol or what is stored; a client (or a real MongoDB) cannot tell the difference.
"""

from __future__ import annotations

import copy
import importlib
import logging
import math
import os
import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from importlib import metadata
from typing import Any

log = logging.getLogger("fedkeeper.store.nxfast")

NX_VERSION = "0.8.1"
NEOSQLITE_VERSION = "1.17.2"

# Exact types that copy.deepcopy returns as they are (its _deepcopy_atomic) and that no converter below changes.
_ATOMIC: frozenset[type] = frozenset({str, int, float, bool, type(None), bytes})


# ------------------------------------------------------------------------------------------------- deep copy


def _keep_alive(x: Any, memo: dict[int, Any]) -> None:
    """copy._keep_alive: the memo keys by id(), so the originals must outlive the copy."""
    try:
        memo[id(memo)].append(x)
    except KeyError:
        memo[id(memo)] = [x]


def _copy(x: Any, memo: dict[int, Any]) -> Any:
    cls = type(x)
    if cls in _ATOMIC:
        return x
    if cls is dict:
        y = memo.get(id(x), memo)  # the memo itself is never a copy: a cheap "not found"
        if y is not memo:
            return y
        out: dict[Any, Any] = {}
        memo[id(x)] = out
        for key, value in x.items():  # value first, then key: the order of `y[deepcopy(k)] = deepcopy(v)`
            value = value if type(value) in _ATOMIC else _copy(value, memo)
            out[key if type(key) in _ATOMIC else _copy(key, memo)] = value
        _keep_alive(x, memo)
        return out
    if cls is list:
        y = memo.get(id(x), memo)
        if y is not memo:
            return y
        items: list[Any] = []
        memo[id(x)] = items
        append = items.append
        for item in x:
            append(item if type(item) in _ATOMIC else _copy(item, memo))
        _keep_alive(x, memo)
        return items
    return copy.deepcopy(x, memo)


def fast_deepcopy(x: Any, memo: dict[int, Any] | None = None, _nil: Any = None) -> Any:
    """``copy.deepcopy`` with the same signature and result: exact dicts and lists are copied here (same memo, so
    shared and cyclic structure comes out shared and cyclic as before, same keep-alive list), the atomic types
    deepcopy itself returns unchanged are returned unchanged, and every other object goes to ``copy.deepcopy``
    with the same memo. About 3x faster on a client's update document (14 us -> 5 us), where nearly every object
    is a dict, a list or an atomic value."""
    if type(x) in _ATOMIC:
        return x
    if memo is None:
        memo = {}
    return _copy(x, memo)


# ----------------------------------------------------------------------------------------- ObjectId converters


def _bson_to_neo(doc: Any, bson_oid: type, neo_oid: type) -> Any:
    cls = type(doc)
    if cls in _ATOMIC:
        return doc
    if cls is dict:
        return {k: (v if type(v) in _ATOMIC else _bson_to_neo(v, bson_oid, neo_oid)) for k, v in doc.items()}
    if cls is list:
        return [v if type(v) in _ATOMIC else _bson_to_neo(v, bson_oid, neo_oid) for v in doc]
    # the original's isinstance chain, for subclasses and everything else
    if isinstance(doc, bson_oid):
        return neo_oid(doc.binary)
    if isinstance(doc, list):
        return [_bson_to_neo(item, bson_oid, neo_oid) for item in doc]
    if isinstance(doc, dict):
        return {k: _bson_to_neo(v, bson_oid, neo_oid) for k, v in doc.items()}
    return doc


def make_bson_to_neo() -> Callable[[Any], Any]:
    """Replacement for ``nx_27017.utils.convert_bson_to_neo_objectids`` (nx-27017 0.8.1), which the handler runs
    on every inserted document, filter and update: the same recursion (bson ObjectId -> neosqlite ObjectId, new
    lists and dicts everywhere, other values as they are), with exact-type checks first so a str, int, float,
    bool, None or bytes value (none of them an ObjectId, list or dict) skips the three isinstance calls."""
    from bson import ObjectId as BsonObjectId
    from neosqlite.objectid import ObjectId as NeoObjectId

    def convert_bson_to_neo_objectids(doc: Any) -> Any:
        return _bson_to_neo(doc, BsonObjectId, NeoObjectId)

    return convert_bson_to_neo_objectids


def make_neo_to_bson() -> Callable[[Any], Any]:
    """Replacement for ``nx_27017.utils.convert_neo_to_bson_objectids`` as bound in ``nx_27017.wire_protocol``
    (nx-27017 0.8.1), which runs on every reply document: neosqlite ObjectId -> bson ObjectId, Decimal ->
    Decimal128, a key ``"id"`` whose value ``== 0`` -> Int64(0) (in every dict, at any depth, evaluated with the
    same ``==``), new lists and dicts everywhere. Exact str/int/float/bool/None/bytes values, which none of the
    original's branches change, are passed through without its isinstance chain."""
    from decimal import Decimal as PyDecimal

    from bson import Decimal128
    from bson import ObjectId as BsonObjectId
    from bson.int64 import Int64
    from neosqlite.objectid import ObjectId as NeoObjectId

    def value(v: Any) -> Any:  # the original's _convert_value
        cls = type(v)
        if cls in _ATOMIC:
            return v
        if cls is dict:
            return convert(v)
        if cls is list:
            return [x if type(x) in _ATOMIC else value(x) for x in v]
        if isinstance(v, NeoObjectId):
            return BsonObjectId(v.binary)
        if isinstance(v, PyDecimal):
            return Decimal128(v)
        if isinstance(v, list):
            return [value(x) for x in v]
        if isinstance(v, dict):
            return convert(v)
        return v

    def convert(doc: Any) -> Any:  # the original's top level
        if isinstance(doc, dict):
            result = {}
            for key, v in doc.items():
                if key == "id" and v == 0:
                    result[key] = Int64(0)
                else:
                    result[key] = v if type(v) in _ATOMIC else value(v)
            return result
        if isinstance(doc, list):
            return [value(item) for item in doc]
        if isinstance(doc, PyDecimal):
            return Decimal128(doc)
        if isinstance(doc, NeoObjectId):
            return BsonObjectId(doc.binary)
        return doc

    return convert


# ---------------------------------------------------------------------------------------------- neosqlite insert


class _Other(Exception):
    """A value outside the types the fast insert path handles: run the original instead."""


def make_internal_insert(original: Callable[..., Any]) -> Callable[..., Any]:
    """Replacement for ``CRUDOperationsMixin._internal_insert`` (neosqlite 1.17.2,
    collection/query_helper/crud_operations.py), which every insert goes through. The original deep-copies the
    document, sets ``_id`` on the copy, converts bytes to neosqlite ``Binary`` with a second full walk
    (``_convert_bytes_to_binary``), then serialises it. The copy exists only to be serialised and dropped, so this
    builds the converted copy in one walk: new dicts and lists, ``bytes`` -> ``Binary(bytes)``, and the leaves as
    they are (str, int, float, bool, None, bson Int64, datetime, neosqlite ObjectId and Binary: immutable values
    whose deep copy serialises to the same JSON). The ``_id`` rules, the JSON text, its validation, the SQL, the
    return value and the ``_id`` written back into the caller's document are the original's. A document that is not
    an exact dict with str keys, or holds any other type (a bson Binary with a subtype, Decimal128, a tuple, a
    cycle...), goes to the original unchanged; the walk has no side effect before that decision.

    The JSON text: ``json.dumps`` escapes a string character by character (57 us for the 13 KB base64 text of a
    client's 10 KB blob, more than half the serialisation), and base64 text (``A-Za-z0-9+/=``) never needs an
    escape, so each bytes value is serialised as the dict ``Binary.encode_for_storage`` returns with a short
    marker (a per-process random nonce and its index) in place of the base64 text, which is then put in place of
    the marker: the same characters as serialising the base64 text itself. If the nonce shows up anywhere else
    (a document that holds it) the original runs instead.

    The JSON check: the original asks SQLite ``json_valid`` about every text before the INSERT (a 13 KB parse per
    update). What ``json.dumps`` writes for the types the walk lets through (str keys, str escaped to ASCII, ints,
    bools, None, finite floats, and the dicts the encoder makes of Binary, ObjectId and datetime) is always valid
    JSON for SQLite, lone surrogates and control characters included (``\\uXXXX`` escapes; property-tested); the
    one thing json.dumps writes that SQLite refuses, NaN/Infinity, sends the document to the original. So the check
    runs only when the INSERT fails, before its error goes up: where the original's check would have failed (a
    closed or unusable database) its error is raised, as the original raises it; otherwise the INSERT's own error
    (a duplicate key, ...) is, as in the original. Without SQLite's JSON functions the check runs first, as before."""
    from bson.int64 import Int64
    from neosqlite._sqlite import sqlite3
    from neosqlite.binary import Binary
    from neosqlite.collection import json_helpers
    from neosqlite.objectid import ObjectId
    from neosqlite.sql_utils import quote_table_name

    leaves = frozenset({Int64, datetime, ObjectId, Binary})
    b64 = _b64encode_text()
    json_always_valid = _sqlite_json_valid_works(sqlite3)
    nonce = f"fk{os.urandom(12).hex()}x"  # never written: every occurrence is replaced before the INSERT

    def walk(x: Any, depth: int, blobs: list[bytes]) -> Any:
        cls = type(x)
        if cls in _ATOMIC:
            if cls is float and x - x != 0:  # NaN or an infinity: json.dumps writes NaN/Infinity, which SQLite
                raise _Other                 # refuses; the original raises its "Invalid JSON document" error
            if cls is bytes:  # what Binary(x).encode_for_storage() gives, its base64 text left for the splice
                blobs.append(x)
                return {"__neosqlite_binary__": True, "data": f"{nonce}{len(blobs) - 1:x}", "subtype": 0}
            return x
        if cls in leaves:
            return x
        if depth > 100:  # deeper than BSON's own nesting limit: let the original decide what happens
            raise _Other
        if cls is dict:
            out = {}
            for key, value in x.items():
                if type(key) is not str:
                    raise _Other
                out[key] = walk(value, depth + 1, blobs)
            return out
        if cls is list:
            return [walk(item, depth + 1, blobs) for item in x]
        raise _Other

    def splice(text: str, blobs: list[bytes]) -> str | None:
        """``text`` with each ``"<nonce><i>"`` replaced by the base64 of ``blobs[i]``; None unless each index
        occurs exactly once and the nonce nowhere else (a document holding the nonce goes to the original)."""
        parts = text.split(nonce)
        if len(parts) != len(blobs) + 1:
            return None
        out, seen = [parts[0]], set()
        for part in parts[1:]:
            end = part.find('"')
            try:
                index = int(part[:end], 16) if end > 0 and part[:end].isalnum() else -1
            except ValueError:
                return None
            if not 0 <= index < len(blobs) or index in seen or not out[-1].endswith('"'):
                return None
            seen.add(index)
            out.append(b64(blobs[index]))
            out.append(part[end:])
        return "".join(out)

    def _internal_insert(self: Any, document: dict[str, Any]) -> Any:
        if type(document) is not dict:
            return original(self, document)
        blobs: list[bytes] = []
        try:
            doc_to_insert = walk(document, 0, blobs)
        except _Other:
            return original(self, document)
        original_has_id = "_id" in doc_to_insert
        if not original_has_id or document["_id"] is None:
            generated_id: Any = ObjectId()
        else:
            generated_id = document["_id"]
        id_blobs: list[bytes] = []
        doc_to_insert["_id"] = walk(generated_id, 0, id_blobs)  # an exact known type: checked by the walk above
        if id_blobs:  # a bytes _id: rare, and its first walk's marker is gone from the copy
            return original(self, document)
        json_str = splice(json_helpers.neosqlite_json_dumps(doc_to_insert), blobs) if blobs else (
            json_helpers.neosqlite_json_dumps(doc_to_insert))
        if json_str is None:
            return original(self, document)

        def invalid() -> None:  # the original's check and its errors
            if not self._validate_json_document(json_str):
                error_pos = self._get_json_error_position(json_str)
                if error_pos >= 0:
                    raise ValueError(f"Invalid JSON document at position {error_pos}")
                raise ValueError("Invalid JSON document")

        if not json_always_valid:
            invalid()
        try:
            cursor = self.collection.db.execute(
                f"INSERT INTO {quote_table_name(self.collection.name)}(data, _id) VALUES (?, ?)",
                (json_str, str(generated_id) if hasattr(generated_id, "__str__") else generated_id),
            )
        except BaseException:
            invalid()  # where the original would have stopped before the INSERT (a closed database...): its error
            raise
        inserted_id = cursor.lastrowid
        if inserted_id is None:
            raise sqlite3.Error("Failed to get last row id.")
        if not original_has_id:
            document["_id"] = generated_id
        return generated_id

    _internal_insert.__doc__ = original.__doc__
    _internal_insert._fk_nonce = nonce  # type: ignore[attr-defined]  # for the tests of the fallback
    return _internal_insert


def _b64encode_text() -> Callable[[bytes], str]:
    """``base64.b64encode(x).decode("utf-8")``: pybase64's SIMD encoder where it is installed (10x faster on a
    10 KB blob, the same characters: standard alphabet, ``=`` padding, no newlines), else the standard library."""
    try:
        import pybase64
    except ImportError:
        import base64

        return lambda data: base64.b64encode(data).decode("utf-8")
    return pybase64.b64encode_as_string


def _sqlite_json_valid_works(sqlite3: Any) -> bool:
    """SQLite's JSON functions answer (built in since 3.38 unless compiled out): the condition for checking an
    insert's text only when the INSERT fails (``make_internal_insert``)."""
    try:
        db = sqlite3.connect(":memory:")
        try:
            return db.execute("SELECT json_valid(?)", ('{"a": [1, "\\ud800"]}',)).fetchone() == (1,)
        finally:
            db.close()
    except Exception:  # noqa: BLE001 - any failure: keep the original's order
        return False


def make_encode_for_storage(original: Callable[..., Any]) -> Callable[..., Any]:
    """neosqlite 1.17.2 ``Binary.encode_for_storage`` (binary.py), which every stored binary goes through: the same
    dict, its base64 text from pybase64 (identical characters, ~16 us -> ~2 us for 10 KB). Raises ImportError
    without pybase64: the patch is then skipped."""
    import pybase64

    def encode_for_storage(self: Any) -> dict[str, Any]:
        return {"__neosqlite_binary__": True, "data": pybase64.b64encode_as_string(self), "subtype": self._subtype}

    encode_for_storage.__doc__ = original.__doc__
    return encode_for_storage


def make_decode_from_storage(original: Any) -> Any:
    """neosqlite 1.17.2 ``Binary.decode_from_storage`` (a classmethod), which every stored binary goes through when a
    document is loaded (a read, a projected listing, pruning's lookup: each decoded the 13 KB base64 of a client's
    blob in ~30 us). pybase64 decodes text that is canonical base64 (what neosqlite writes) in ~2 us and refuses
    anything else (``validate=True``: other characters, bad padding, non-ASCII), which then goes to the original
    (``base64.b64decode``, non-strict), so every input gives the original's bytes or the original's error. The
    checks before the decoding and the result's construction are the original's. Raises ImportError without
    pybase64: the patch is then skipped."""
    import binascii

    import pybase64

    func = original.__func__

    def decode_from_storage(cls: Any, encoded_data: dict[str, Any]) -> Any:
        if type(encoded_data) is not dict or "__neosqlite_binary__" not in encoded_data or "data" not in encoded_data:
            return func(cls, encoded_data)
        text = encoded_data["data"]
        if type(text) is not str:
            return func(cls, encoded_data)
        try:
            data = pybase64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            return func(cls, encoded_data)
        return cls(data, encoded_data.get("subtype", cls.BINARY_SUBTYPE))

    decode_from_storage.__doc__ = func.__doc__
    return classmethod(decode_from_storage)


# ------------------------------------------------------------------------------------------ neosqlite update_many

_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_CHUNK = 500  # ids per statement, far below SQLite's bound-parameter limit


def _text(value: str) -> bool:
    """A str SQLite binds as it is: UTF-8 encodable (no lone surrogate), no NUL (SQLite's JSON functions stop there)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in value


def _plain_set(update: Any) -> dict[str, Any] | None:
    """The update's ``$set`` fields when it is nothing but a ``$set`` of plain top-level names (not ``_id``) to
    None, a bool, a finite float, a 64-bit int or a plain str (pruning sends None and a float). None for anything
    else."""
    if type(update) is not dict or len(update) != 1 or type(update.get("$set")) is not dict or not update["$set"]:
        return None
    fields = update["$set"]
    for key, value in fields.items():
        if type(key) is not str or key == "_id" or not _FIELD.match(key):
            return None
        if value is None or type(value) is bool or (type(value) is float and math.isfinite(value)) or (
                type(value) is int and -(2**63) <= value < 2**63) or (type(value) is str and _text(value)):
            continue
        return None
    return fields


def _set_writer() -> Callable[[Any, list[int], dict[str, Any]], int | None]:
    """The write of the update_many replacement: ``$set`` ``fields`` on the rows ``ids`` (integer row ids, as the
    original selected them) with the original's UPDATE expression, grouped by which fields each row has already;
    returns how many documents the original would count modified, or None (before any write) when a row is not a
    valid JSON object with an ``_id`` and no duplicate top-level keys. (The same for update_one, one small
    activation document at a time, measured slower than neosqlite's own path: the extra JSON functions cost more
    than loading a small document.)"""
    from neosqlite.collection import json_helpers
    from neosqlite.collection.json_path_utils import parse_json_path
    from neosqlite.collection.query_helper import _get_json_function
    from neosqlite.sql_utils import quote_table_name

    def write(self: Any, ids: list[int], fields: dict[str, Any]) -> int | None:
        db = self.collection.db
        table = quote_table_name(self.collection.name)
        names = list(fields)
        paths = [f"'{parse_json_path(name)}'" for name in names]
        valued = [i for i, name in enumerate(names) if fields[name] is not None]
        ok = "json_valid(data) AND json_type(data) = 'object'"
        select = ", ".join(
            [f"CASE WHEN {ok} THEN json_type(data, '$._id') END",
             f"CASE WHEN {ok} THEN (SELECT count(*) - count(DISTINCT key) FROM json_each(data)) END",
             f"CASE WHEN {ok} THEN json_remove(data, {', '.join(paths)}) END"]
            + [f"CASE WHEN {ok} THEN json_type(data, {paths[i]}) END" for i in range(len(names))]
            + [f"CASE WHEN {ok} THEN data -> {paths[i]} END" for i in valued])

        def rows(sql: str, chunk: list[int]) -> list[Any]:
            return db.execute(sql.format(ids=",".join("?" * len(chunk))), chunk).fetchall()

        before: dict[int, Any] = {}
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start:start + _CHUNK]
            for row in rows(f"SELECT id, data, {select} FROM {table} WHERE id IN ({{ids}})", chunk):
                if type(row[1]) is not str or row[2] is None or row[3] != 0:  # not valid, no _id, duplicate keys
                    return None
                before[row[0]] = row
        if len(before) != len(set(ids)):
            return None

        groups: dict[tuple[bool, ...], list[int]] = {}
        for int_id in ids:
            groups.setdefault(tuple(t is not None for t in before[int_id][5:5 + len(names)]), []).append(int_id)
        for exists, members in groups.items():
            current, params = "data", []
            inserts = [i for i, there in enumerate(exists) if not there]
            replaces = [i for i, there in enumerate(exists) if there]
            if inserts:
                current = (f"{_get_json_function('insert', False)}({current}, "
                           f"{', '.join(f'{paths[i]}, ?' for i in inserts)})")
                params += [fields[names[i]] for i in inserts]
            if replaces:
                current = (f"{_get_json_function('replace', False)}({current}, "
                           f"{', '.join(f'{paths[i]}, ?' for i in replaces)})")
                params += [fields[names[i]] for i in replaces]
            for start in range(0, len(members), _CHUNK):
                chunk = members[start:start + _CHUNK]
                db.execute(f"UPDATE {table} SET data = {current} WHERE id IN ({','.join('?' * len(chunk))})",
                           params + chunk)

        after_select = ", ".join([f"json_remove(data, {', '.join(paths)})"] + [f"data -> {paths[i]}" for i in valued])
        loads = json_helpers.neosqlite_json_loads
        modified = 0
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start:start + _CHUNK]
            for row in rows(f"SELECT id, {after_select}, data FROM {table} WHERE id IN ({{ids}})", chunk):
                old = before[row[0]]
                if old[4] != row[1]:  # the rest of the document changed text: compare it all, as the original
                    modified += loads(old[1]) != loads(row[-1])
                    continue
                changed = False
                for i in range(len(names)):
                    old_type = old[5 + i]
                    if old_type is None:
                        changed = True
                    elif fields[names[i]] is None:
                        changed = old_type != "null"
                    else:
                        j = valued.index(i)
                        changed = loads(old[5 + len(names) + j]) != loads(row[2 + j])
                    if changed:
                        break
                modified += changed
        return modified

    return write


def _fast_set_allowed(self: Any, update: Any, upsert: bool, array_filters: Any) -> dict[str, Any] | None:
    """The ``$set`` fields when the fast path may run; None sends the call to the original."""
    from neosqlite._sqlite import sqlite3
    from neosqlite.collection.query_helper import utils as helper_utils

    fields = _plain_set(update)
    if (fields is None or upsert or array_filters or helper_utils.get_force_fallback()
            or self.jsonb.jsonb_supported or sqlite3.sqlite_version_info < (3, 38)):
        return None
    return fields


def make_update_many(original: Callable[..., Any]) -> Callable[..., Any]:
    """Replacement for ``QueryEngine.update_many`` (neosqlite 1.17.2, collection/query_engine/crud_operations.py)
    for one shape of update, a ``$set`` of plain top-level fields to scalars (``_plain_set``: what pruning a
    round's blobs sends), without upsert or array filters. The original selects the matching ids, then for each
    id loads the whole document into Python (a 10 KB blob decoded from base64 just to be dropped), builds one
    ``UPDATE ... SET data = json_replace(json_insert(data, <new fields>), <existing fields>) WHERE id = ?``, reads
    the document back and counts it modified when the reloaded document differs from the first. This runs the
    same ids query, then the same UPDATE expression (same SQL functions, paths and parameters, so the same stored
    text) once per group of documents that have the same set fields already, ``WHERE id IN (...)``, and decides
    "modified" without decoding blobs: the rest of the document (``json_remove`` of the set fields) must come back
    as the same text (else both whole documents are loaded and compared as the original does), a field absent
    before is a change, a field set to null changed iff it was not JSON null (a loaded non-null JSON value is never
    None), and any other field compares its loaded old and new values. The result (matched, modified, no upsert)
    is the original's. Anything else goes to the original before any write: another update shape, upsert, array
    filters, neosqlite's forced-fallback switch, JSONB storage, SQLite < 3.38 (no ``->``), a filter the SQL
    translator cannot handle, or a matched row that is not a valid JSON object with an ``_id`` and no duplicate
    top-level keys (documents neosqlite itself wrote always are). Rows are read and written under the nx handler's
    database lock, as the original's are. Two differences only a failure can show: a group's rows change in one
    statement (all or none) where the original commits row by row, and an UPDATE that SQLite rejects raises here
    where the original would retry the row with its slower update paths."""
    from neosqlite.collection.type_utils import validate_session
    from neosqlite.results import UpdateResult
    from neosqlite.sql_utils import quote_table_name

    write = _set_writer()

    def update_many(self: Any, filter: dict[str, Any], update: dict[str, Any], upsert: bool = False,
                    array_filters: list[dict[str, Any]] | None = None, session: Any = None) -> Any:
        def fallback() -> Any:
            return original(self, filter, update, upsert=upsert, array_filters=array_filters, session=session)

        fields = _fast_set_allowed(self, update, upsert, array_filters)
        if fields is None:
            return fallback()
        validate_session(session, self.collection._database)
        where_clause, where_params = self.sql_translator.translate_match(self.helpers._normalize_id_query(filter))
        if where_clause is None:
            return fallback()
        table = quote_table_name(self.collection.name)
        ids = [row[0] for row in self.collection.db.execute(
            f"SELECT id FROM {table} {where_clause}", where_params).fetchall()]
        if not ids:
            return UpdateResult(matched_count=0, modified_count=0, upserted_id=None)
        modified = write(self, ids, fields)
        if modified is None:
            return fallback()
        return UpdateResult(matched_count=len(ids), modified_count=modified, upserted_id=None)

    update_many.__doc__ = original.__doc__
    return update_many



# ------------------------------------------------------------------------------------- one commit per insert


def _command_body(msg: Any) -> dict[str, Any] | None:
    for kind, doc in msg.get("sections", ()) if isinstance(msg, dict) else ():
        if kind == "body" and isinstance(doc, dict):
            return doc
    return None


def make_insert_transaction(original: Callable[..., Any]) -> Callable[..., Any]:
    """Replacement for ``NeoSQLiteHandler.handle_insert`` (nx-27017 0.8.1, handler.py) that runs the original inside
    one SQLite transaction, so an insert command's documents are committed together. neosqlite's connections are in
    autocommit mode and the original inserts its documents one by one, so each document was a transaction of its
    own: its table and index pages appended to the write-ahead log once per document. Measured in process on this
    project's test machine: a tracker batch of 125 activation records 0.13 -> 0.04-0.075 ms of CPU per document
    (wall 0.2 -> 0.085 ms), a client batch of 4 update documents of 13 KB 0.25 -> 0.16-0.20 ms (wall 0.44 ->
    0.30 ms).

    The original runs unchanged inside, under its database's lock (taken here first: an RLock, which the
    original's own ``_serialize`` takes again), so the response, the per-document write errors and what is stored
    are the original's: a document that fails (a duplicate key) fails alone, SQLite rolling back that statement
    only, and the others commit, in an ordered insert those before the failure. A command in a transaction of its
    own (``startTransaction``, ``autocommit: false``, a transaction already open on the connection) and GridFS's
    collections (whose adapter commits itself) go to the original as they are.

    The transaction takes SQLite's write lock at its start (``BEGIN IMMEDIATE``), as each autocommit statement did:
    a deferred ``BEGIN`` starts as a read (the original's lookup of the table comes first), and upgrading a read to
    a write while another connection (the WAL checkpointer's truncation) holds the write lock fails at once with
    "database is locked", without the busy timeout the original's statements wait through. A clean-clone CI run
    failed so (tests/test_store_checkpoint.py). Still locked after the busy timeout, the command goes to the
    original, which answers as it always did. If the commit fails, the command
    fails (rolled back): the client retries it, as after any failed write. What a crash can lose is what it
    could: an unacknowledged command, now all of it or none."""
    from nx_27017.handler import _msg_db_name

    def handle_insert(self: Any, msg: Any) -> Any:
        body = _command_body(msg)
        coll = body.get("insert") if body is not None else None
        if (body is None or not isinstance(coll, str) or coll.startswith("fs.") or body.get("startTransaction")
                or body.get("autocommit") is False):
            return original(self, msg)
        db_name = _msg_db_name(msg)
        with self._lock_for(db_name):
            conn = self.get_database(db_name).db
            if conn.in_transaction:
                return original(self, msg)
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError:  # still locked after the busy timeout: the original answers as it does
                return original(self, msg)
            try:
                return original(self, msg)
            finally:  # also after an error: what was written before it stays, as autocommit would have kept it
                if conn.in_transaction:
                    try:
                        conn.execute("COMMIT")
                    except BaseException:
                        if conn.in_transaction:
                            conn.execute("ROLLBACK")
                        raise

    handle_insert.__doc__ = original.__doc__
    handle_insert._fk_transaction = True  # type: ignore[attr-defined]
    return handle_insert


# ------------------------------------------------------------------------------------------- exclusion projection


def _exclusion_keys(projection: Any) -> frozenset[str] | None:
    """The keys of a projection made only of literal exclusions (``{"blob": 0}``), else None. Any value that is not
    0/False/0.0 (an inclusion, an expression, a ``$`` reference) takes the original's other branches: neosqlite
    reads ``{"_id": 1, "blob": 0}`` as an inclusion of ``_id`` alone, and that stays its business."""
    if type(projection) is not dict or not projection:
        return None
    for key, value in projection.items():
        if type(key) is not str or type(value) not in (int, bool, float) or value != 0:
            return None
    return frozenset(projection)


def make_apply_projection(original: Callable[..., Any]) -> Callable[..., Any]:
    """neosqlite 1.17.2 ``AggregationMixin._apply_projection`` (query_helper/aggregation.py), exclusion-only
    projections (and literal inclusions, see below): the original deep-copies the whole document, then pops each
    excluded top-level key (and ``_id`` when it is excluded). Copying only the values that stay, in the document's order, with one memo shared by all of
    them, gives the same dict (same keys, same order, equal values, the same sharing between kept values) without
    copying what is dropped: the update listing (``{"blob": 0}``) copied every 10 KB blob to throw it away, which
    made a projected find slower than fetching the blobs (0.14 vs 0.12 ms a document at 1000 updates).

    Literal inclusions (``{"_id": 1, "file_id": 1}``: pruning's and deletion's lookups): the original copies the
    whole document too, yet takes each included value from the document itself (``_field_exists`` and ``_get_val``,
    called here the same way) and only ``_id`` from the copy; this copies ``_id`` alone. Taken only for a document
    made of dicts, lists and the types a stored document loads as, whose copy cannot fail or run code."""

    from neosqlite.binary import Binary
    from neosqlite.objectid import ObjectId
    from bson.int64 import Int64

    copy_safe = _ATOMIC | {Binary, ObjectId, datetime, Int64}

    def plain(x: Any, depth: int = 0) -> bool:
        """Made only of values whose deep copy cannot fail or run code of its own (what a stored document loads
        as): then copying it, or not, makes no difference but the time."""
        cls = type(x)
        if cls is dict:
            if depth >= 100:
                return False
            for k, v in x.items():
                if type(k) is not str or (type(v) not in _ATOMIC and not plain(v, depth + 1)):
                    return False
            return True
        if cls is list:
            if depth >= 100:
                return False
            for v in x:
                if type(v) not in _ATOMIC and not plain(v, depth + 1):
                    return False
            return True
        return cls in copy_safe

    def _apply_projection(self: Any, projection: dict[str, Any], document: dict[str, Any]) -> dict[str, Any]:
        excluded = _exclusion_keys(projection)
        if excluded is not None and type(document) is dict:
            memo: dict[int, Any] = {}
            return {key: fast_deepcopy(value, memo) for key, value in document.items() if key not in excluded}
        if _literal_inclusion(projection) and type(document) is dict and plain(document):
            # the original's inclusion branch: it deep-copies the whole document (a 10 KB blob included) and then
            # takes every included value from the document itself, and only _id from the copy
            projected: dict[str, Any] = {}
            for key, value in projection.items():
                if value == 1 and self._field_exists(document, key):
                    projected[key] = self.collection._get_val(document, key)
            if projection.get("_id", 1) == 1 and "_id" in document:
                projected["_id"] = fast_deepcopy(document["_id"])
            return projected
        return original(self, projection, document)

    return _apply_projection


def _literal_inclusion(projection: Any) -> bool:
    """A projection of str keys to literal numbers/bools, at least one of them == 1: neosqlite's inclusion branch
    without expressions (no dict, no ``$`` string among the values), as ``_id``-and-file-id listings send."""
    if type(projection) is not dict or not projection:
        return False
    values = projection.values()
    return (all(type(k) is str for k in projection) and all(type(v) in (int, bool, float) for v in values)
            and any(v == 1 for v in values))

# ------------------------------------------------------------------------------------------------- the patches


@dataclass
class Patch:
    """One attribute replaced in one module or class, if the distribution is at the version checked."""

    name: str
    distribution: str
    version: str
    module: str
    owner: str | None  # a class in `module`, or None for a module attribute
    attribute: str
    make: Callable[[Any], Any]  # original -> replacement
    original: Any = field(default=None, init=False)

    def target(self) -> Any:
        mod = importlib.import_module(self.module)
        return getattr(mod, self.owner) if self.owner else mod

    def apply(self, installed: dict[str, str | None]) -> bool:
        have = installed.get(self.distribution)
        if have != self.version:
            log.warning("nx fast path %s skipped: %s %s installed, checked against %s",
                        self.name, self.distribution, have, self.version)
            return False
        target = self.target()
        # a class's own entry as it is stored (a classmethod object, not a method bound to the class), so that
        # undo puts back exactly that
        current = vars(target)[self.attribute] if self.owner and self.attribute in vars(target) else getattr(
            target, self.attribute)
        if getattr(current, "_fk_fast", False):
            return True
        self.original = current
        replacement = self.make(current)
        replacement._fk_fast = True
        setattr(target, self.attribute, replacement)
        return True

    def undo(self) -> None:
        if self.original is not None:
            setattr(self.target(), self.attribute, self.original)
            self.original = None


def patches() -> list[Patch]:
    """The patches, fresh (each remembers the original it replaced)."""
    return [
        Patch("insert-copy", "neosqlite", NEOSQLITE_VERSION, "neosqlite.collection.query_helper.crud_operations",
              "CRUDOperationsMixin", "_internal_insert", make_internal_insert),
        # _apply_projection (every find with a projection) and the $lookup/$group helpers of this module call
        # the module's `deepcopy`: the same function, faster
        Patch("projection-copy", "neosqlite", NEOSQLITE_VERSION, "neosqlite.collection.query_helper.aggregation",
              None, "deepcopy", lambda _orig: fast_deepcopy),
        Patch("exclusion-projection", "neosqlite", NEOSQLITE_VERSION, "neosqlite.collection.query_helper.aggregation",
              "AggregationMixin", "_apply_projection", make_apply_projection),
        Patch("prune-update", "neosqlite", NEOSQLITE_VERSION, "neosqlite.collection.query_engine.crud_operations",
              "CRUDOperationsMixin", "update_many", make_update_many),
        # every binary stored (the update blobs) and every one loaded: base64 by pybase64 where it is installed
        Patch("binary-encode", "neosqlite", NEOSQLITE_VERSION, "neosqlite.binary", "Binary", "encode_for_storage",
              make_encode_for_storage),
        Patch("binary-decode", "neosqlite", NEOSQLITE_VERSION, "neosqlite.binary", "Binary", "decode_from_storage",
              make_decode_from_storage),
        Patch("bson-to-neo", "nx-27017", NX_VERSION, "nx_27017.utils", None, "convert_bson_to_neo_objectids",
              lambda _orig: make_bson_to_neo()),
        Patch("neo-to-bson", "nx-27017", NX_VERSION, "nx_27017.wire_protocol", None, "_convert_objectids",
              lambda _orig: make_neo_to_bson()),
        # an insert command's documents in one SQLite transaction instead of one each
        Patch("insert-transaction", "nx-27017", NX_VERSION, "nx_27017.handler", "NeoSQLiteHandler", "handle_insert",
              make_insert_transaction),
    ]


def installed_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for dist in ("nx-27017", "neosqlite"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def apply_all(installed: dict[str, str | None] | None = None) -> list[Patch]:
    """Apply every patch whose library version matches; returns those applied (``undo()`` puts each back)."""
    installed = installed_versions() if installed is None else installed
    applied = []
    for patch in patches():
        try:
            if patch.apply(installed):
                applied.append(patch)
        except (ImportError, AttributeError) as exc:  # moved or renamed in a build of the same version
            log.warning("nx fast path %s skipped: %s", patch.name, exc)
    return applied

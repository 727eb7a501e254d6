"""Update documents read with their weight blob as a view of the driver's reply, not a copy of it (issue 18).

Why: the aggregator's memory peaks while it reads an update, beside the float64 running sums (twice the model).
pymongo receives a reply into a ``bytearray`` and every way it offers to decode one (dict documents,
``RawBSONDocument``, ``find_raw_batches``) copies the blob out of that buffer (measured with pymongo 4.20: reply
plus one copy at least, ``find_raw_batches`` three), so the sums, the reply and the copy coexist: 2x one model plus
one update. Here the reply's ``firstBatch``/``nextBatch`` documents are kept as memoryviews of the reply
(``ViewCursor``), and an update document is decoded with ``bson`` except its inline blob, which stays a read-only
view (``view_document``): the reply is the blob's only copy, and the decoded weights are views of it. Once the
document is decoded, the blob is moved back (``memmove``, inside the reply) to a 64-byte address: NumPy copies an
array that is not aligned to its item size before a BLAS call (measured: the NaN/Inf dot product then made two).

The wire protocol and the query are pymongo's own (a ``find`` through a ``RawBatchCursor``, any MongoDB server);
what this module adds is how a reply is unpacked, through ``_unpack_response``: a private method of pymongo's,
the one ``RawBatchCursor`` itself overrides (its signature has not changed since pymongo 3.6). When it is not
called as expected (another pymongo, a reply without a cursor), the batches are pymongo's own raw bytes, split the
same way: the same documents, with pymongo's copies (tests/test_bsonview.py checks both, and that the hook is used).

The structure of every document is checked here (``elements``: sizes, terminators, names, the extent of each
value by its type) and each value other than the blob is decoded by ``bson`` itself, so a document decodes to what
``bson.decode`` returns, the blob as a memoryview instead of ``bytes``; malformed BSON raises ``InvalidBSON``
(tests/test_bsonview.py holds both to ``bson.decode`` on arbitrary and corrupted documents).
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Iterator, Mapping
from typing import Any

import bson
from bson.codec_options import DEFAULT_CODEC_OPTIONS, CodecOptions
from bson.errors import InvalidBSON
from pymongo.collection import Collection
from pymongo.cursor import RawBatchCursor

_INT32 = struct.Struct("<i")
#: the fixed extent of values by BSON type (double, undefined, ObjectId, bool, datetime, null, int32, timestamp,
#: int64, decimal128, min key, max key)
_FIXED = {0x01: 8, 0x06: 0, 0x07: 12, 0x08: 1, 0x09: 8, 0x0A: 0, 0x10: 4, 0x11: 8, 0x12: 8, 0x13: 16, 0xFF: 0,
          0x7F: 0}
_STRING, _DOCUMENT, _ARRAY, _BINARY = 0x02, 0x03, 0x04, 0x05
_REGEX, _DBPOINTER, _CODE, _SYMBOL, _CODE_W_SCOPE = 0x0B, 0x0C, 0x0D, 0x0E, 0x0F
#: the batches of a cursor reply (``{cursor: {firstBatch|nextBatch: [documents]}}``)
_BATCHES = (b"firstBatch", b"nextBatch")
#: names are looked for in windows of this many bytes (not the rest of a megabyte reply at each element)
_NAME_WINDOW = 64
#: where a blob's bytes are moved to in the reply buffer, when they can be (``_aligned``): a cache line, the
#: alignment ``weights`` gives every array relative to its blob's start
ALIGN = 64


def _int32(buf: memoryview, pos: int, end: int) -> int:
    if pos + 4 > end:
        raise InvalidBSON("bad object or element length")
    return _INT32.unpack_from(buf, pos)[0]


def _cstring_end(buf: memoryview, pos: int, end: int) -> int:
    """The index of the NUL that ends the C string at ``pos`` (before ``end``)."""
    window = _NAME_WINDOW
    while True:
        stop = min(end, pos + window)
        found = bytes(buf[pos:stop]).find(b"\x00")
        if found >= 0:
            return pos + found
        if stop == end:
            raise InvalidBSON("bad C string: no terminating NUL")
        window *= 4


def _string_end(buf: memoryview, pos: int, end: int) -> int:
    """The end of a BSON string (int32 length, bytes, NUL) at ``pos``."""
    size = _int32(buf, pos, end)
    stop = pos + 4 + size
    if size < 1 or stop > end or buf[stop - 1] != 0:
        raise InvalidBSON("bad string length")
    return stop


def _document_end(buf: memoryview, pos: int, end: int) -> int:
    """The end of an embedded document (or array) at ``pos``: its size, inside ``end``, NUL-terminated."""
    size = _int32(buf, pos, end)
    stop = pos + size
    if size < 5 or stop > end or buf[stop - 1] != 0:
        raise InvalidBSON("bad object or element length")
    return stop


def _value_end(kind: int, buf: memoryview, pos: int, end: int) -> int:
    fixed = _FIXED.get(kind)
    if fixed is not None:
        stop = pos + fixed
    elif kind in (_STRING, _CODE, _SYMBOL):
        stop = _string_end(buf, pos, end)
    elif kind in (_DOCUMENT, _ARRAY):
        stop = _document_end(buf, pos, end)
    elif kind == _BINARY:
        size = _int32(buf, pos, end)
        if size < 0:
            raise InvalidBSON("bad binary object length")
        stop = pos + 5 + size
    elif kind == _REGEX:
        stop = _cstring_end(buf, _cstring_end(buf, pos, end) + 1, end) + 1
    elif kind == _DBPOINTER:
        stop = _string_end(buf, pos, end) + 12
    elif kind == _CODE_W_SCOPE:
        size = _int32(buf, pos, end)
        if size < 14:
            raise InvalidBSON("bad code with scope length")
        stop = pos + size
    else:
        raise InvalidBSON(f"unknown BSON type 0x{kind:02x}")
    if stop > end:
        raise InvalidBSON("bad object or element length")
    return stop


def elements(buf: memoryview, start: int = 0, end: int | None = None) -> Iterator[tuple[bytes, int, int, int, int]]:
    """The elements of the BSON document at ``buf[start:]`` as (name bytes, type, element start, value start, value
    end), after checking its size (exactly ``end - start`` when given) and terminator and each element's extent;
    nested documents are checked for their size and terminator only (``bson`` decodes them). InvalidBSON
    otherwise."""
    limit = len(buf) if end is None else end
    stop = _document_end(buf, start, limit)
    if end is not None and stop != end:
        raise InvalidBSON("bad object or element length")
    pos, last = start + 4, stop - 1
    while pos < last:
        kind = buf[pos]
        name_end = _cstring_end(buf, pos + 1, last)
        value_end = _value_end(kind, buf, name_end + 1, last)
        yield bytes(buf[pos + 1:name_end]), kind, pos, name_end + 1, value_end
        pos = value_end
    if pos != last:
        raise InvalidBSON("bad object or element length")


def _decode_elements(buf: memoryview, spans: list[tuple[int, int]], options: CodecOptions) -> dict[str, Any]:
    """The elements at ``spans`` decoded by ``bson`` as one document that holds them alone (a value does not
    depend on the rest of its document): what ``bson.decode`` gives them in place."""
    parts = [buf[a:b] for a, b in spans]
    size = 5 + sum(len(p) for p in parts)
    return bson.decode(b"".join([_INT32.pack(size), *parts, b"\x00"]), options)


def _plain(options: CodecOptions | None) -> CodecOptions:
    """Codec options that decode to dicts (a raw cursor's own options decode to ``RawBSONDocument``)."""
    if options is None:
        return DEFAULT_CODEC_OPTIONS
    if not issubclass(options.document_class, dict):
        return options.with_options(document_class=dict)
    return options


def _with_view(buf: memoryview, start: int, end: int, field: bytes, options: CodecOptions, view: Any
               ) -> dict[str, Any] | None:
    """The document at ``buf[start:end]`` decoded by ``bson`` with its one element named ``field`` replaced by
    ``view(kind, value start, value end)`` (None: decode it as usual), in the place ``bson.decode`` puts it; None
    when the shape is not that (no such element, or several: the caller decodes the whole document)."""
    els = list(elements(buf, start, end))
    hits = [i for i, e in enumerate(els) if e[0] == field]
    if len(hits) != 1:
        return None
    name, kind, _, value, value_end = els[hits[0]]
    replaced = view(kind, value, value_end)
    if replaced is None:
        return None
    try:
        before = {e[0].decode("utf-8") for e in els[:hits[0]]}
    except UnicodeDecodeError:
        return None  # bson decides what such a name becomes (or refuses it)
    rest = _decode_elements(buf, [(e[2], e[4]) for i, e in enumerate(els) if i != hits[0]], options)
    out = {k: v for k, v in rest.items() if k in before}
    out[name.decode("ascii")] = replaced
    out.update((k, v) for k, v in rest.items() if k not in out)
    return out


def view_document(buf: memoryview, options: CodecOptions | None = None, *, blob_field: str = "blob"
                  ) -> dict[str, Any]:
    """The one BSON document ``buf`` as ``bson.decode`` gives it, except that the binary (subtype 0) ``inline`` of
    its ``blob_field`` subdocument (``blobstore``'s ``{"inline": <bytes>}``) is a read-only memoryview of ``buf``.
    Any other shape (no such blob, a GridFS reference, another subtype) decodes as ``bson.decode`` does."""
    opts = _plain(options)

    span: list[int] = []

    def inline(kind: int, value: int, value_end: int) -> memoryview | None:
        if kind != _BINARY or buf[value + 4] != 0:  # subtype 0: what bson decodes to bytes
            return None
        span[:] = [value + 5, value_end]
        return buf[value + 5:value_end].toreadonly()

    def blob(kind: int, value: int, value_end: int) -> dict[str, Any] | None:
        return _with_view(buf, value, value_end, b"inline", opts, inline) if kind == _DOCUMENT else None

    out = _with_view(buf, 0, len(buf), blob_field.encode("utf-8"), opts, blob)
    if out is None:
        return bson.decode(buf, opts)
    if span and not buf.readonly:  # every field is decoded: the bytes before the blob may be overwritten
        out[blob_field]["inline"] = _aligned(buf, *span)
    return out


def _aligned(buf: memoryview, start: int, end: int) -> memoryview:
    """``buf[start:end]`` moved back within ``buf`` to an ``ALIGN``-byte address, when the bytes before it (already
    decoded) leave room; read-only. A blob lies anywhere in a reply, and an array that is not aligned to its item
    size is copied by NumPy's BLAS calls (the NaN/Inf dot product: twice the update) and read element-wise by
    others; a blob of its own (``bytes``) is aligned. ``memmove``: the ranges overlap, and nothing is allocated."""
    if end > start:
        base = ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf))
        shift = (base + start) % ALIGN
        if 0 < shift <= start:
            ctypes.memmove(base + start - shift, base + start, end - start)
            start, end = start - shift, end - shift
    return buf[start:end].toreadonly()


def documents(batch: Any) -> Iterator[memoryview]:
    """The BSON documents of a batch: one document (``ViewCursor``) or pymongo's concatenation of a whole batch
    (``RawBatchCursor``, when the hook was not used), each a memoryview of it."""
    buf = memoryview(batch).cast("B") if not isinstance(batch, memoryview) or batch.format != "B" else batch
    pos = 0
    while pos < len(buf):
        stop = _document_end(buf, pos, len(buf))
        yield buf[pos:stop]
        pos = stop


def _reply_document(payload: memoryview, options: CodecOptions) -> dict[str, Any] | None:
    """A cursor reply decoded as pymongo decodes it, except that the documents of its batches stay views; None
    when it is not one (an error reply has no cursor: pymongo's own unpacking handles it)."""

    def batches(kind: int, value: int, value_end: int) -> dict[str, Any] | None:
        if kind != _DOCUMENT:
            return None
        cursor: dict[str, Any] = {}
        for name, ckind, start, cvalue, cvalue_end in elements(payload, value, value_end):
            if name in _BATCHES and ckind == _ARRAY:
                batch = []
                for _, dkind, _, dvalue, dvalue_end in elements(payload, cvalue, cvalue_end):
                    if dkind != _DOCUMENT:
                        raise InvalidBSON(f"cursor.{name.decode()} holds a value of BSON type 0x{dkind:02x}")
                    batch.append(payload[dvalue:dvalue_end])
                cursor[name.decode()] = batch
            else:
                cursor.update(_decode_elements(payload, [(start, cvalue_end)], options))
        return cursor

    return _with_view(payload, 0, len(payload), b"cursor", options, batches)


class ViewCursor(RawBatchCursor):
    """A ``find`` whose batches are the reply's documents, each a read-only memoryview of the reply buffer (one
    item per document). When the reply is not an OP_MSG ``payload_document`` view, pymongo's own raw batches."""

    #: how many replies were unpacked here (tests check that the hook is in use)
    views = 0

    def _unpack_response(self, response: Any, cursor_id: Any, codec_options: Any, user_fields: Any = None,
                         legacy_response: bool = False) -> list[Any]:
        payload = getattr(response, "payload_document", None)
        if legacy_response or not user_fields or not isinstance(payload, memoryview):
            return super()._unpack_response(response, cursor_id, codec_options, user_fields, legacy_response)
        view = payload.cast("B") if payload.format != "B" else payload
        reply = _reply_document(view, _plain(codec_options))
        if reply is None:
            return super()._unpack_response(response, cursor_id, codec_options, user_fields, legacy_response)
        ViewCursor.views += 1
        return [reply]


def find_views(collection: Collection, query: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``list(collection.find(query))`` with each document's inline blob a view of the reply (``view_document``)."""
    options = _plain(collection.codec_options)
    with ViewCursor(collection, dict(query)) as cursor:
        return [view_document(doc, options) for batch in cursor for doc in documents(batch)]

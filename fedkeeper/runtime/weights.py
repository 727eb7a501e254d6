"""Weight blob codec: a small self-describing header followed by raw little-endian arrays.

Why a custom format: client updates are untrusted input, so nothing may be unpickled, and the aggregator reads
many large blobs per round, so decoding must not copy (``np.frombuffer`` views into the received buffer).

Layout (all integers little-endian)::

    offset  size  field
    0       8     magic            b"\\x89FKW\\r\\n\\x1a\\n" (catches text-mode mangling, like PNG)
    8       2     version          u16, currently 1
    10      2     flags            u16: bits 0-3 the digest's algorithm (``HASH_IDS``: 0 sha256), the rest 0
    12      4     header_len       u32, length of the JSON header in bytes
    16      32    digest           digest over (JSON header bytes + payload bytes), zero-padded to 32 bytes
    48      8     payload_len      u64
    56      H     JSON header      utf-8, {"arrays": [{"name", "dtype", "shape", "offset", "nbytes"}, ...]}
    ...           zero padding     up to payload_start = align(56 + H, 64)
    payload_start payload          arrays at 64-byte aligned offsets relative to payload_start

``dtype`` is numpy's explicit little-endian string (``"<f4"``, ``"|u1"``, ...), restricted to bool, signed and unsigned
integers and IEEE floats. Arrays keep insertion order. The digest covers everything that is not fixed by the
format, so equal digests mean equal blobs: it doubles as the blob's identity (``digest_of``) in the store.

The digest's algorithm is chosen by the writer (``encode(..., hash_alg=)``) and named in the flags, so a reader
verifies each blob with the algorithm it was written with, and blobs of older versions (flags 0) are sha256:

- ``sha256`` (default, the standard library everywhere): about 1 ms per 1.6 MB blob, three times a float32 add;
- ``blake3`` (PyPI ``blake3``): cryptographic like sha256, about 2.5x faster;
- ``xxh3_128`` (PyPI ``xxhash``): about 20x faster, catches corruption but is no defence against a writer who
  forges a collision on purpose (the admission of updates compares digests the clients acknowledged).

An algorithm whose package is not installed can neither write nor verify (``hash_available``).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import threads as _threads

MAGIC = b"\x89FKW\r\n\x1a\n"
VERSION = 1
PREFIX = struct.Struct("<8sHHI32sQ")  # magic, version, flags, header_len, digest, payload_len
PREFIX_SIZE = PREFIX.size  # 56
ALIGN = 64
MAX_HEADER_LEN = 16 * 1024 * 1024  # a header this large is an attack or a bug, never a model

REASONS = frozenset(
    {"truncated", "bad_magic", "bad_version", "bad_header", "checksum", "non_finite", "dtype", "shape", "names"}
)

#: digest algorithm -> its id in the flags (bits 0-3); 0 is what every blob before the choice existed carries
HASH_IDS = {"sha256": 0, "blake3": 1, "xxh3_128": 2}
HASH_NAMES = {v: k for k, v in HASH_IDS.items()}
_HASH_MASK = 0x000F
_HASH_MODULES = {"blake3": "blake3", "xxh3_128": "xxhash"}


def _hasher(alg: str) -> Any:
    """A new hash object (``update``, ``digest``) of ``alg``; WeightsError('bad_header') if it is not installed."""
    make = _CONSTRUCTORS.get(alg)
    if make is not None:
        return make()
    if alg not in HASH_IDS:
        raise WeightsError("bad_header", f"unknown digest algorithm {alg!r} (known: {', '.join(HASH_IDS)})")
    try:
        module = importlib.import_module(_HASH_MODULES[alg])
    except ImportError:
        raise WeightsError("bad_header", f"digest algorithm {alg} needs the {_HASH_MODULES[alg]} package, "
                                         "which is not installed here") from None
    make = module.blake3 if alg == "blake3" else module.xxh3_128
    _CONSTRUCTORS[alg] = make  # found once per process: import_module costs a microsecond per blob
    return make()


#: digest algorithm -> the constructor of its hash objects, once its package was found
_CONSTRUCTORS: dict[str, Any] = {"sha256": hashlib.sha256}


def hash_available(alg: str) -> bool:
    """Whether blobs digested with ``alg`` can be written and verified in this process."""
    try:
        _hasher(alg)
        return True
    except WeightsError:
        return False


def _digest32(h: Any) -> bytes:
    return h.digest().ljust(32, b"\0")  # xxh3_128 gives 16 bytes: the prefix field has room for 32


# Only plain numeric kinds: no object, string, void, datetime or complex arrays can enter or leave the codec.
_ALLOWED_DTYPES = frozenset(
    np.dtype(t).newbyteorder("<").str
    for t in (
        np.bool_, np.int8, np.int16, np.int32, np.int64,
        np.uint8, np.uint16, np.uint32, np.uint64,
        np.float16, np.float32, np.float64,
    )
)
_DTYPES = {s: np.dtype(s) for s in _ALLOWED_DTYPES}  # parsed once: np.dtype("<f4") costs a microsecond a call

#: JSON headers up to this long are parsed once per process (every update of a model carries the same header)
_CACHED_HEADER_LEN = 4096

Expected = Mapping[str, tuple[Any, Any]]  # name -> (shape, dtype)


class WeightsError(ValueError):
    """A blob or weight mapping that cannot be encoded or trusted; ``reason`` is one of ``REASONS``."""

    def __init__(self, reason: str, message: str, *, array: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.array = array


@dataclass(frozen=True)
class ArrayInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int  # relative to the payload start
    nbytes: int


@dataclass(frozen=True)
class Header:
    version: int
    digest: str  # hex of the 32-byte digest field
    header_len: int
    payload_start: int
    payload_len: int
    arrays: tuple[ArrayInfo, ...]
    hash_alg: str = "sha256"

    @property
    def total_size(self) -> int:
        return self.payload_start + self.payload_len


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def _canonical(arr: np.ndarray, name: str) -> np.ndarray:
    """C-contiguous, little-endian, allowed dtype; raises WeightsError('dtype') otherwise."""
    arr = np.asarray(arr)
    le = arr.dtype.newbyteorder("<")  # big-endian input is converted by value, not reinterpreted
    if le.str not in _ALLOWED_DTYPES:
        raise WeightsError("dtype", f"array {name!r} has unsupported dtype {arr.dtype}", array=name)
    return arr.astype(le, order="C", copy=False)  # keeps 0-d arrays 0-d, unlike ascontiguousarray


def encode(weights: Mapping[str, np.ndarray], hash_alg: str = "sha256") -> bytes:
    """Encode named arrays, digested with ``hash_alg`` (``HASH_IDS``); one hashing pass and one copy."""
    h = _hasher(hash_alg)
    if not isinstance(weights, Mapping):
        raise WeightsError("names", f"weights must be a mapping of name to array, got {type(weights).__name__}")
    arrays: list[tuple[str, np.ndarray]] = []
    for name, arr in weights.items():
        if not isinstance(name, str) or not name:
            raise WeightsError("names", f"array names must be non-empty strings, got {name!r}")
        arrays.append((name, _canonical(arr, name)))

    entries = []
    offset = 0
    for name, arr in arrays:
        offset = _align(offset)
        entries.append(
            {"name": name, "dtype": arr.dtype.str, "shape": list(arr.shape), "offset": offset, "nbytes": arr.nbytes}
        )
        offset += arr.nbytes
    payload_len = offset
    header = json.dumps({"arrays": entries}, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    payload_start = _align(PREFIX_SIZE + len(header))

    pieces: list[Any] = []
    pos = 0
    for (_, arr), entry in zip(arrays, entries):
        if entry["offset"] > pos:
            pieces.append(bytes(entry["offset"] - pos))
        pieces.append(memoryview(arr.reshape(-1)).cast("B") if arr.nbytes else b"")
        pos = entry["offset"] + arr.nbytes

    h.update(header)
    for piece in pieces:
        h.update(piece)
    prefix = PREFIX.pack(MAGIC, VERSION, HASH_IDS[hash_alg], len(header), _digest32(h), payload_len)
    head_pad = bytes(payload_start - PREFIX_SIZE - len(header))
    return b"".join([prefix, header, head_pad, *pieces])


def _parse_entries(raw: Any, payload_len: int) -> tuple[ArrayInfo, ...]:
    if not isinstance(raw, dict) or not isinstance(raw.get("arrays"), list):
        raise WeightsError("bad_header", "header must be an object with an 'arrays' list")
    infos: list[ArrayInfo] = []
    seen: set[str] = set()
    end_prev = 0
    for i, e in enumerate(raw["arrays"]):
        if not isinstance(e, dict):
            raise WeightsError("bad_header", f"header entry {i} is not an object")
        name, dtype, shape, offset, nbytes = (e.get(k) for k in ("name", "dtype", "shape", "offset", "nbytes"))
        if not isinstance(name, str) or not name or name in seen:
            raise WeightsError("bad_header", f"header entry {i} has a missing or repeated name {name!r}")
        seen.add(name)
        if not isinstance(dtype, str) or dtype not in _ALLOWED_DTYPES:
            raise WeightsError("bad_header", f"array {name!r} has unsupported dtype {dtype!r}", array=name)
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise WeightsError("bad_header", f"array {name!r} has an invalid shape {shape!r}", array=name)
        if type(offset) is not int or type(nbytes) is not int or offset < end_prev or offset % ALIGN:
            raise WeightsError("bad_header", f"array {name!r} has an invalid offset {offset!r}", array=name)
        if nbytes != math.prod(shape) * np.dtype(dtype).itemsize:
            raise WeightsError("bad_header", f"array {name!r}: nbytes {nbytes} does not match shape and dtype", array=name)
        if offset + nbytes > payload_len:
            raise WeightsError("bad_header", f"array {name!r} extends past the payload", array=name)
        end_prev = offset + nbytes
        infos.append(ArrayInfo(name, dtype, tuple(shape), offset, nbytes))
    return tuple(infos)


def read_header(buf: bytes | bytearray | memoryview) -> Header:
    """Parse and check the structure (not the digest, not the values); raises WeightsError."""
    mv = memoryview(buf).cast("B") if not isinstance(buf, memoryview) or buf.format != "B" else buf
    n = len(mv)
    if n < len(MAGIC):
        if MAGIC.startswith(bytes(mv)):
            raise WeightsError("truncated", f"blob is {n} bytes, shorter than the magic")
        raise WeightsError("bad_magic", "blob does not start with the FedKeeper weights magic")
    if bytes(mv[: len(MAGIC)]) != MAGIC:
        raise WeightsError("bad_magic", "blob does not start with the FedKeeper weights magic")
    if n < PREFIX_SIZE:
        raise WeightsError("truncated", f"blob is {n} bytes, shorter than the {PREFIX_SIZE}-byte prefix")
    _, version, flags, header_len, digest, payload_len = PREFIX.unpack_from(mv, 0)
    if version != VERSION:
        raise WeightsError("bad_version", f"blob format version {version} is not supported (expected {VERSION})")
    if flags & ~_HASH_MASK or (flags & _HASH_MASK) not in HASH_NAMES:
        raise WeightsError("bad_header", f"unknown flags 0x{flags:04x}")
    if header_len > MAX_HEADER_LEN:
        raise WeightsError("bad_header", f"header length {header_len} is implausible")
    payload_start = _align(PREFIX_SIZE + header_len)
    total = payload_start + payload_len
    if n < total:
        raise WeightsError("truncated", f"blob is {n} bytes, its header announces {total}")
    if n > total:
        raise WeightsError("bad_header", f"blob has {n - total} bytes after the announced end")
    text = bytes(mv[PREFIX_SIZE : PREFIX_SIZE + header_len])
    arrays = _entries_cached(text, payload_len) if header_len <= _CACHED_HEADER_LEN else _entries(text, payload_len)
    return Header(VERSION, digest.hex(), header_len, payload_start, payload_len, arrays, HASH_NAMES[flags & _HASH_MASK])


def _entries(text: bytes, payload_len: int) -> tuple[ArrayInfo, ...]:
    try:
        raw = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise WeightsError("bad_header", f"header is not valid JSON: {exc}") from None
    return _parse_entries(raw, payload_len)


# Why a cache: the aggregator decodes a round's updates of one model, whose JSON headers are byte-identical; parsing
# and checking one costs tens of microseconds, a fifth of adding a 400k-parameter update. The entries are frozen
# dataclasses, so sharing them is safe; a header that fails raises every time (exceptions are not cached).
_entries_cached = functools.lru_cache(maxsize=64)(_entries)


def digest_of(buf: bytes | bytearray | memoryview) -> str:
    """The hex digest recorded in the blob's prefix (no hashing: use ``decode`` to verify it)."""
    return read_header(buf).digest


def hash_alg_of(buf: bytes | bytearray | memoryview) -> str:
    """The algorithm the blob's digest was computed with (``sha256`` for every blob of older versions)."""
    return read_header(buf).hash_alg


def _check_expected(infos: tuple[ArrayInfo, ...], expected: Expected) -> None:
    """Raise unless ``infos`` are exactly ``expected``: once per (header, expectation) pair when both are hashable
    (a round checks the same pair for every update), else every time."""
    try:
        key = tuple((name, tuple(shape), dtype) for name, (shape, dtype) in expected.items())
        hash(key)
    except (TypeError, ValueError):  # an unhashable or malformed entry: the plain check says what is wrong
        _check_expected_now(infos, expected)
        return
    _check_expected_cached(infos, key)


@functools.lru_cache(maxsize=64)
def _check_expected_cached(infos: tuple[ArrayInfo, ...], key: tuple[tuple[str, tuple[Any, ...], Any], ...]) -> None:
    _check_expected_now(infos, {name: (shape, dtype) for name, shape, dtype in key})


def _check_expected_now(infos: tuple[ArrayInfo, ...], expected: Expected) -> None:
    names = [i.name for i in infos]
    if set(names) != set(expected):
        missing = sorted(set(expected) - set(names))
        extra = sorted(set(names) - set(expected))
        raise WeightsError("names", f"array names differ from the model: missing {missing}, unexpected {extra}")
    for info in infos:
        shape, dtype = expected[info.name]
        try:
            want = np.dtype(dtype).newbyteorder("<")
        except TypeError:
            raise WeightsError("dtype", f"expected dtype {dtype!r} for {info.name!r} is not a dtype") from None
        if np.dtype(info.dtype) != want:
            raise WeightsError(
                "dtype", f"array {info.name!r} has dtype {np.dtype(info.dtype).name}, expected {want.name}",
                array=info.name,
            )
        if tuple(int(d) for d in shape) != info.shape:
            raise WeightsError(
                "shape", f"array {info.name!r} has shape {info.shape}, expected {tuple(shape)}", array=info.name
            )


#: arrays up to this many elements are checked with one isfinite call (a temporary of at most 64 KB): about half the
#: time of min+max on the small arrays of a small model, where the per-call cost is all there is
_SMALL_CHECK = 1 << 16


def all_finite(arr: np.ndarray) -> bool:
    """Whether no element is NaN or ±Inf, exactly.

    Fast path for float32/float64: the BLAS dot product x·x, one pass without a temporary (measured 0.034 ms for
    400k float32 against 0.042 ms for ``isfinite(x).all()`` and two passes for min+max). It is a sum of squares,
    so a NaN or an Inf anywhere makes it NaN or +Inf (no cancellation: every term is >= 0): a finite dot proves
    every element finite. A dot that is not finite may also be an overflow of finite values (|x| above ~1e19 in
    float32), so then the exact scan decides."""
    kind = arr.dtype.kind
    if kind == "c":
        return bool(np.isfinite(arr).all())
    if kind != "f" or not arr.size:
        return True
    if arr.dtype.itemsize >= 4:
        flat = arr.reshape(-1)
        with np.errstate(all="ignore"):
            if math.isfinite(np.dot(flat, flat)):
                return True
    if arr.size <= _SMALL_CHECK:
        return bool(np.isfinite(arr).all())
    # min/max propagate NaN and expose +-Inf without a boolean array of the tensor's size
    return bool(np.isfinite(arr.min()) and np.isfinite(arr.max()))


def _finite_failure(arrays: list[tuple[str, np.ndarray]], whole: np.ndarray | None = None) -> str | None:
    """The name of the first array that holds NaN or Inf, else None. ``whole``: one float view over every array
    (and the zero padding between them, ``_Layout.whole``): when its dot product is finite, every array is (one
    BLAS call instead of one check per array); otherwise each array is checked exactly (padding a writer filled
    with NaN bits only costs the exact checks, it cannot make a finite array fail)."""
    if whole is not None:
        with np.errstate(all="ignore"):
            if math.isfinite(np.dot(whole, whole)):
                return None
    return next((name for name, arr in arrays if not all_finite(arr)), None)


@dataclass(frozen=True)
class _Layout:
    """How to view a payload, worked out once per header (a round's updates share theirs): per array its name,
    dtype, element count, offset from the blob's start and shape; the float arrays with elements; and, when every
    array is of one float dtype (the usual model), the element count of one view over the whole payload."""

    views: tuple[tuple[str, np.dtype, int, int, tuple[int, ...]], ...]
    floats: frozenset[str]
    whole: tuple[np.dtype, int] | None


@functools.lru_cache(maxsize=64)
def _layout(arrays: tuple[ArrayInfo, ...], payload_start: int, payload_len: int) -> _Layout:
    views = tuple((i.name, _DTYPES[i.dtype], i.nbytes // _DTYPES[i.dtype].itemsize, payload_start + i.offset, i.shape)
                  for i in arrays)
    floats = frozenset(name for name, dtype, count, _, _ in views if dtype.kind == "f" and count)
    kinds = {dtype for _, dtype, _, _, _ in views}
    whole = None
    if len(kinds) == 1 and floats:
        (dtype,) = kinds
        if dtype.itemsize >= 4 and payload_len % dtype.itemsize == 0:  # the dot fast path of all_finite
            whole = (dtype, payload_len // dtype.itemsize)
    return _Layout(views, floats, whole)


#: payloads from this many bytes have their NaN/Inf scan run on another thread while this one hashes (both read
#: the same memory, one pass each; below this the hand-off costs more than the overlap saves)
_PARALLEL_VERIFY_BYTES = 256 << 10


def decode(
    buf: bytes | bytearray | memoryview,
    expected: Expected | None = None,
    *,
    verify: bool = True,
    header: Header | None = None,
    threads: int | None = None,
    check_finite: bool = True,
) -> dict[str, np.ndarray]:
    """Decode to read-only arrays that view ``buf`` (zero-copy).

    ``expected`` (name -> (shape, dtype)) must match exactly. ``verify=False`` skips the digest and the NaN/Inf
    scan: only for blobs this process wrote itself, never for client updates. ``header``: ``read_header(buf)``
    when the caller parsed it already (the digest is still verified against the bytes). ``threads``: with more
    than one (None: ``threads.default_threads()``), a large payload's NaN/Inf scan runs on a pool thread while
    this one computes the digest; the checks and the order of the errors (checksum, then names/shapes/dtypes,
    then NaN/Inf) are the same either way. ``check_finite=False`` verifies the digest and the layout but leaves the
    NaN/Inf scan to the caller: only for a caller that proves every value finite another way (the FedAvg family's
    aggregation checks its sums once, ``runtime.admission.deferred_mean``).
    """
    header = header if header is not None else read_header(buf)
    mv = memoryview(buf).cast("B") if not isinstance(buf, memoryview) or buf.format != "B" else buf
    layout = _layout(header.arrays, header.payload_start, header.payload_len)
    out: dict[str, np.ndarray] = {}
    whole = None
    if layout.whole is not None:
        # one view over the payload, the arrays sliced from it: a slice costs a third of a frombuffer call, and a
        # decode of a small model is mostly these calls
        whole = np.frombuffer(mv, dtype=layout.whole[0], count=layout.whole[1], offset=header.payload_start)
        whole.flags.writeable = False  # its slices inherit it
        itemsize = layout.whole[0].itemsize
        for name, _, count, offset, shape in layout.views:
            start = (offset - header.payload_start) // itemsize
            out[name] = whole[start:start + count].reshape(shape)
    else:
        for name, dtype, count, offset, shape in layout.views:
            arr = np.frombuffer(mv, dtype=dtype, count=count, offset=offset).reshape(shape)
            arr.flags.writeable = False
            out[name] = arr
    if not verify:
        if expected is not None:
            _check_expected(header.arrays, expected)
        return out
    floats = [(name, arr) for name, arr in out.items() if name in layout.floats] if check_finite else []
    pending = None
    if header.payload_len >= _PARALLEL_VERIFY_BYTES and floats and _threads.resolve(threads) > 1:
        pending = _threads.submit(_finite_failure, floats, whole)
    try:
        # The JSON header ends before its padding: hash exactly header_len bytes, then the payload.
        h = _hasher(header.hash_alg)
        h.update(mv[PREFIX_SIZE : PREFIX_SIZE + header.header_len])
        h.update(mv[header.payload_start : header.total_size])
        digest_ok = _digest32(h).hex() == header.digest
    finally:
        bad = pending.result() if pending is not None else None  # never leave a scan of this buffer running
    if not digest_ok:
        raise WeightsError("checksum", "blob digest does not match its content (corrupted in transit or storage)")
    if expected is not None:
        _check_expected(header.arrays, expected)
    if pending is None:
        bad = _finite_failure(floats, whole) if floats else None
    if bad is not None:
        raise WeightsError("non_finite", f"array {bad!r} contains NaN or Inf", array=bad)
    return out


def sha256_hex(buf: bytes | bytearray | memoryview) -> str:
    """sha256 of arbitrary bytes (e.g. a whole blob), without copying."""
    return hashlib.sha256(buf).hexdigest()


def num_params(weights: Mapping[str, np.ndarray]) -> int:
    return int(sum(np.asarray(a).size for a in weights.values()))


def spec_of(weights: Mapping[str, np.ndarray]) -> dict[str, tuple[tuple[int, ...], str]]:
    """The ``expected`` mapping that describes ``weights`` (to validate updates against the global model)."""
    return {name: (tuple(np.shape(a)), np.asarray(a).dtype.name) for name, a in weights.items()}

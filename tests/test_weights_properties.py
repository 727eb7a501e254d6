"""Property tests of the weight codec (runtime/weights.py): a blob is untrusted input, so whatever bytes arrive,
decoding gives a typed `WeightsError` or a correct decode, and whatever arrays are encoded come back equal."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedkeeper.runtime import weights as W

# moderate counts: seconds per test on a shared 2-core machine, and every path (decodes and each reason) is reached
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MANY = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ALLOWED = ("?", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8")
allowed_dtypes = st.sampled_from(ALLOWED).flatmap(
    lambda t: st.sampled_from(["<", ">", "="]).map(lambda order: np.dtype(order + t) if t != "?" else np.dtype(t)))
shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)
names = st.text(min_size=1, max_size=12)


def weight_maps(dtypes: st.SearchStrategy[np.dtype] = allowed_dtypes) -> st.SearchStrategy[dict[str, np.ndarray]]:
    arrays = st.tuples(dtypes, shapes).flatmap(lambda ds: hnp.arrays(ds[0], ds[1]))
    return st.dictionaries(names, arrays, min_size=1, max_size=5)


def finite(weights: dict[str, np.ndarray]) -> bool:
    return all(a.dtype.kind != "f" or bool(np.all(np.isfinite(a))) for a in weights.values())


def assert_same(decoded: dict[str, np.ndarray], original: dict[str, np.ndarray]) -> None:
    assert list(decoded) == list(original)  # insertion order kept
    for name, arr in original.items():
        got = decoded[name]
        assert got.dtype == arr.dtype.newbyteorder("<") and got.shape == arr.shape
        assert not got.flags.writeable
        np.testing.assert_array_equal(got, arr)  # by value (big-endian input converted), NaN equal to NaN


@SETTINGS
@given(weight_maps())
def test_arbitrary_arrays_round_trip(weights: dict[str, np.ndarray]) -> None:
    blob = W.encode(weights)
    assert W.encode(weights) == blob  # deterministic: the digest is the blob's identity
    assert_same(W.decode(blob, verify=False), weights)
    assert_same(W.decode(blob, W.spec_of(weights), verify=False), weights)
    header = W.read_header(blob)
    assert header.total_size == len(blob) and all(a.offset % W.ALIGN == 0 for a in header.arrays)
    if finite(weights):
        assert_same(W.decode(blob), weights)
    else:
        with pytest.raises(W.WeightsError) as info:
            W.decode(blob)
        assert info.value.reason == "non_finite" and info.value.array in weights


@SETTINGS
@given(st.dictionaries(names, st.tuples(hnp.scalar_dtypes() | hnp.byte_string_dtypes() | hnp.unicode_string_dtypes(),
                                        shapes).flatmap(lambda ds: hnp.arrays(ds[0], ds[1])),
                       min_size=1, max_size=3))
def test_any_dtype_is_encoded_exactly_or_refused(weights: dict[str, np.ndarray]) -> None:
    if all(a.dtype.newbyteorder("<").str in W._ALLOWED_DTYPES for a in weights.values()):
        assert_same(W.decode(W.encode(weights), verify=False), weights)
    else:
        with pytest.raises(W.WeightsError) as info:
            W.encode(weights)
        assert info.value.reason == "dtype"


def decoded_or_typed(buf: bytes, expected: W.Expected | None = None) -> dict[str, np.ndarray] | None:
    """`decode`, where the only exception allowed is a WeightsError with a documented reason."""
    try:
        return W.decode(buf, expected)
    except W.WeightsError as exc:
        assert exc.reason in W.REASONS, exc.reason
        return None


@MANY
@given(st.binary(max_size=600)
       | st.binary(max_size=600).map(lambda b: W.MAGIC + b)
       | st.tuples(st.integers(0, 3), st.integers(0, 2), st.integers(0, 2**32 - 1), st.binary(min_size=32, max_size=32),
                   st.integers(0, 2**64 - 1), st.binary(max_size=400))
       .map(lambda t: W.PREFIX.pack(W.MAGIC, t[0], t[1], t[2], t[3], t[4]) + t[5]))
def test_arbitrary_bytes_give_a_typed_error_never_a_crash(buf: bytes) -> None:
    out = decoded_or_typed(buf)
    assert out is None or all(isinstance(a, np.ndarray) for a in out.values())
    decoded_or_typed(buf, {"w": ((2, 3), "float32")})
    for probe in (W.read_header, W.digest_of):
        try:
            probe(buf)
        except W.WeightsError as exc:
            assert exc.reason in W.REASONS


mutations = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.integers(0, 255)),
    st.tuples(st.just("delete"), st.integers(0, 10**6), st.just(0)),
)


def mutate(blob: bytes, how: tuple[str, int, int]) -> bytes:
    kind, at, value = how
    at %= len(blob) + (kind in ("truncate", "insert"))
    if kind == "flip":
        return blob[:at] + bytes([blob[at] ^ value]) + blob[at + 1:]
    if kind == "truncate":
        return blob[:at]
    if kind == "insert":
        return blob[:at] + bytes([value]) + blob[at:]
    return blob[:at] + blob[at + 1:]


@SETTINGS
@given(weight_maps(st.sampled_from([np.dtype("<f4"), np.dtype("<f2"), np.dtype("<i4")])), mutations)
def test_a_changed_blob_is_refused_or_still_decodes_to_the_original(weights: dict[str, np.ndarray],
                                                                   how: tuple[str, int, int]) -> None:
    """One changed byte anywhere: a typed rejection, or (a byte of padding that nothing reads) the same arrays."""
    weights = {k: np.nan_to_num(v) for k, v in weights.items()}
    blob = W.encode(weights)
    out = decoded_or_typed(mutate(blob, how), W.spec_of(weights))
    if out is not None:
        assert_same(out, weights)


def craft(entries: list, payload: bytes) -> bytes:
    """A blob with an arbitrary header and a correct digest: only the structural checks stand in the way."""
    header = json.dumps({"arrays": entries}).encode()
    start = -(-(W.PREFIX_SIZE + len(header)) // W.ALIGN) * W.ALIGN
    digest = hashlib.sha256(header + payload).digest()
    prefix = W.PREFIX.pack(W.MAGIC, W.VERSION, 0, len(header), digest, len(payload))
    return prefix + header + bytes(start - W.PREFIX_SIZE - len(header)) + payload


json_values = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=5),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                                        max_size=3), max_leaves=6)
entries = st.fixed_dictionaries(
    {"name": names | json_values,
     "dtype": st.sampled_from([np.dtype(t).newbyteorder("<").str if t != "?" else "|b1" for t in ALLOWED]
                              + [">f4", "<c8", "|O", "<M8[s]", "f4"]) | json_values,
     "shape": st.lists(st.integers(-2, 6), max_size=3) | st.lists(st.integers(0, 2**62), max_size=2) | json_values,
     "offset": st.sampled_from([0, 64, 128, 192, 1, -64]) | json_values,
     "nbytes": st.integers(-1, 200) | st.integers(2**62, 2**64) | json_values})


@SETTINGS
@given(st.lists(entries, max_size=4) | json_values, st.binary(max_size=300))
def test_crafted_headers_with_valid_digests_decode_exactly_what_they_say_or_are_refused(raw: object,
                                                                                       payload: bytes) -> None:
    arrays = raw if isinstance(raw, list) else None
    buf = craft(arrays if arrays is not None else raw, payload)  # type: ignore[arg-type]
    try:
        out = W.decode(buf, verify=False)
    except W.WeightsError as exc:
        assert exc.reason in W.REASONS
        return
    assert arrays is not None and len(out) == len(arrays)
    for entry, (name, arr) in zip(arrays, out.items()):
        assert name == entry["name"] and arr.shape == tuple(entry["shape"]) and arr.dtype.str == entry["dtype"]
        assert arr.tobytes() == payload[entry["offset"]:entry["offset"] + entry["nbytes"]]
    if decoded_or_typed(buf) is not None:  # verified too: then every float is finite
        assert all(a.dtype.kind != "f" or bool(np.all(np.isfinite(a))) for a in out.values())

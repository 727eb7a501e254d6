"""The weight blob codec: round trips, zero-copy decoding, and every way a blob can be rejected."""

from __future__ import annotations

import hashlib
import json
import pickle
import struct

import numpy as np
import pytest

from fedkeeper.runtime import weights as W


def model() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "dense1/w": rng.standard_normal((64, 32)).astype(np.float32),
        "dense1/b": np.zeros(32, np.float32),
        "dense2/w": rng.standard_normal((32, 10)).astype(np.float32),
        "dense2/b": np.arange(10, dtype=np.float32),
    }


def craft(entries: list[dict], payload: bytes, *, version: int = W.VERSION, flags: int = 0) -> bytes:
    """A blob with an arbitrary header and a *correct* digest, to reach the structural checks."""
    header = json.dumps({"arrays": entries}).encode()
    digest = hashlib.sha256(header + payload).digest()
    start = -(-(W.PREFIX_SIZE + len(header)) // W.ALIGN) * W.ALIGN
    prefix = W.PREFIX.pack(W.MAGIC, version, flags, len(header), digest, len(payload))
    return prefix + header + bytes(start - W.PREFIX_SIZE - len(header)) + payload


def reason(buf: bytes, expected=None) -> str:
    with pytest.raises(W.WeightsError) as info:
        W.decode(buf, expected)
    assert info.value.reason in W.REASONS
    return info.value.reason


# ------------------------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize(
    "dtype", ["float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint64", "bool"]
)
def test_round_trip_each_dtype(dtype: str) -> None:
    arr = (np.arange(24) % 3).astype(dtype).reshape(2, 3, 4)
    out = W.decode(W.encode({"x": arr}), {"x": ((2, 3, 4), dtype)})
    assert out["x"].dtype == np.dtype(dtype)
    assert out["x"].shape == (2, 3, 4)
    np.testing.assert_array_equal(out["x"], arr)


def test_round_trip_keeps_order_values_and_odd_shapes() -> None:
    weights = {"z": np.float64(2.5) * np.ones(()), "empty": np.zeros((0, 3), np.float32), **model(), "a": np.ones(1)}
    out = W.decode(W.encode(weights), W.spec_of(weights))
    assert list(out) == list(weights)
    for name, arr in weights.items():
        assert out[name].shape == arr.shape and out[name].dtype == arr.dtype
        np.testing.assert_array_equal(out[name], arr)


def test_encoding_is_deterministic_and_digest_identifies_content() -> None:
    a, b = W.encode(model()), W.encode(model())
    assert a == b and W.digest_of(a) == W.digest_of(b)
    other = model()
    other["dense2/b"] = other["dense2/b"] + 1
    assert W.digest_of(W.encode(other)) != W.digest_of(a)


def test_big_endian_and_non_contiguous_input_are_normalised_by_value() -> None:
    be = np.arange(6, dtype=">f4").reshape(2, 3)
    strided = np.arange(20, dtype=np.int32)[::2]
    out = W.decode(W.encode({"be": be, "strided": strided}))
    assert out["be"].dtype == np.dtype("<f4")
    np.testing.assert_array_equal(out["be"], be)
    np.testing.assert_array_equal(out["strided"], strided)


def test_decode_is_zero_copy_and_read_only() -> None:
    blob = W.encode(model())
    base = np.frombuffer(blob, np.uint8)
    for buf in (blob, bytearray(blob), memoryview(blob)):
        out = W.decode(buf)
        for arr in out.values():
            assert not arr.flags.writeable
            if arr.size:
                assert np.shares_memory(arr, np.frombuffer(buf, np.uint8))
    assert np.shares_memory(W.decode(blob)["dense1/w"], base)


def test_arrays_are_aligned_for_fast_access() -> None:
    blob = W.encode(model())
    header = W.read_header(blob)
    assert header.payload_start % W.ALIGN == 0
    assert all(info.offset % W.ALIGN == 0 for info in header.arrays)
    assert header.total_size == len(blob)


# --------------------------------------------------------------------------------------------------- rejection


def test_truncated_anywhere_is_truncated() -> None:
    blob = W.encode(model())
    for cut in (3, 20, W.PREFIX_SIZE + 5, len(blob) // 2, len(blob) - 1):
        assert reason(blob[:cut]) == "truncated", cut


def test_bad_magic_and_pickles_are_rejected_before_anything_else() -> None:
    blob = W.encode(model())
    assert reason(b"X" + blob[1:]) == "bad_magic"
    assert reason(pickle.dumps(model())) == "bad_magic"
    assert reason(b"") == "truncated"
    assert reason(b"PK\x03") == "bad_magic"


def test_unknown_version_and_flags() -> None:
    blob = bytearray(W.encode(model()))
    struct.pack_into("<H", blob, 8, 99)
    assert reason(bytes(blob)) == "bad_version"
    assert reason(craft([], b"", flags=0x10)) == "bad_header"  # a bit no version defines
    assert reason(craft([], b"", flags=0x3)) == "bad_header"  # a digest algorithm id no version defines


@pytest.mark.parametrize("alg", sorted(W.HASH_IDS))
def test_each_digest_algorithm_round_trips_and_catches_a_flipped_bit(alg: str) -> None:
    if not W.hash_available(alg):
        pytest.skip(f"{alg} is not installed")
    weights = model()
    blob = W.encode(weights, hash_alg=alg)
    assert W.hash_alg_of(blob) == alg
    assert len(W.digest_of(blob)) == 64
    out = W.decode(blob, W.spec_of(weights))
    assert all(np.array_equal(out[k], weights[k]) for k in weights)
    assert W.encode(weights, hash_alg=alg) == blob  # deterministic
    for where in (-3, W.PREFIX_SIZE + 2):  # payload, JSON header
        bad = bytearray(blob)
        bad[where] ^= 0x01
        assert reason(bytes(bad)) in ("checksum", "bad_header")
    bad = bytearray(blob)
    bad[-3] ^= 0x01
    assert reason(bytes(bad)) == "checksum"


def test_a_blob_of_an_older_version_is_sha256_and_its_digest_is_unchanged() -> None:
    weights = model()
    blob = W.encode(weights)
    assert struct.unpack_from("<H", blob, 10)[0] == 0  # flags 0: what every earlier writer produced
    assert W.hash_alg_of(blob) == "sha256"
    header_len = struct.unpack_from("<I", blob, 12)[0]
    start = (W.PREFIX_SIZE + header_len + W.ALIGN - 1) // W.ALIGN * W.ALIGN
    assert W.digest_of(blob) == hashlib.sha256(blob[W.PREFIX_SIZE:W.PREFIX_SIZE + header_len] + blob[start:]).hexdigest()


def test_different_algorithms_give_different_digests_and_a_relabelled_blob_fails() -> None:
    algs = [a for a in sorted(W.HASH_IDS) if W.hash_available(a)]
    blobs = {a: W.encode(model(), hash_alg=a) for a in algs}
    assert len({W.digest_of(b) for b in blobs.values()}) == len(algs)
    for alg, blob in blobs.items():
        for other in algs:
            if other != alg:  # the flags say another algorithm than the digest was made with
                bad = bytearray(blob)
                struct.pack_into("<H", bad, 10, W.HASH_IDS[other])
                assert reason(bytes(bad)) == "checksum"


def test_an_unknown_or_missing_algorithm_is_refused_when_writing() -> None:
    with pytest.raises(W.WeightsError, match="unknown digest algorithm"):
        W.encode(model(), hash_alg="md5")


def test_checksum_mismatch_in_payload_and_in_header() -> None:
    blob = bytearray(W.encode(model()))
    blob[-3] ^= 0x01
    assert reason(bytes(blob)) == "checksum"
    blob = bytearray(W.encode({"x": np.zeros((4, 4), np.float32)}))
    # Same-length edit of the JSON header that stays valid: 4x4 -> 2x8 passes the structure checks.
    text = bytes(blob).replace(b'"shape":[4,4]', b'"shape":[2,8]')
    assert text != bytes(blob)
    assert reason(text) == "checksum"


def test_trailing_bytes_and_malformed_headers() -> None:
    blob = W.encode(model())
    assert reason(blob + b"\0") == "bad_header"
    f4 = np.dtype("<f4").str
    cases = [
        [{"name": "x", "dtype": "|O", "shape": [1], "offset": 0, "nbytes": 8}],  # object dtype: never
        [{"name": "x", "dtype": "<c8", "shape": [1], "offset": 0, "nbytes": 8}],  # complex: not a weight
        [{"name": "x", "dtype": f4, "shape": [3], "offset": 0, "nbytes": 8}],  # nbytes vs shape
        [{"name": "x", "dtype": f4, "shape": [4], "offset": 0, "nbytes": 16}],  # past the payload
        [{"name": "x", "dtype": f4, "shape": [-1], "offset": 0, "nbytes": 4}],
        [{"name": "x", "dtype": f4, "shape": [1], "offset": 4, "nbytes": 4}],  # unaligned
        [{"name": "x", "dtype": f4, "shape": [1], "offset": 0, "nbytes": 4},
         {"name": "x", "dtype": f4, "shape": [1], "offset": 0, "nbytes": 4}],  # repeated / overlapping
        [{"name": "", "dtype": f4, "shape": [1], "offset": 0, "nbytes": 4}],
    ]
    for entries in cases:
        assert reason(craft(entries, bytes(8))) == "bad_header", entries
    prefix_only = W.PREFIX.pack(W.MAGIC, W.VERSION, 0, 3, bytes(32), 0) + b"{x}"
    assert reason(prefix_only + bytes(64 - len(prefix_only))) == "bad_header"


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("size", [100, W._SMALL_CHECK + 1])  # both ways of scanning (one isfinite call, min/max)
def test_non_finite_values(dtype: str, bad: float, size: int) -> None:
    weights = model()
    weights["w"] = np.ones(size, dtype)
    weights["w"][57 if size == 100 else size - 2] = bad
    with pytest.raises(W.WeightsError) as info:
        W.decode(W.encode(weights))
    assert info.value.reason == "non_finite" and info.value.array == "w"
    # verify=False (only for blobs this process wrote itself) skips the digest and the scan.
    assert not np.all(np.isfinite(W.decode(W.encode(weights), verify=False)["w"]))


def test_expected_dtype_shape_and_names() -> None:
    blob = W.encode(model())
    spec = W.spec_of(model())
    assert set(W.decode(blob, spec)) == set(spec)
    wrong_dtype = {**spec, "dense1/b": ((32,), "float64")}
    assert reason(blob, wrong_dtype) == "dtype"
    wrong_shape = {**spec, "dense2/w": ((10, 32), "float32")}
    assert reason(blob, wrong_shape) == "shape"
    missing = {k: v for k, v in spec.items() if k != "dense2/b"}
    assert reason(blob, missing) == "names"
    extra = {**spec, "dense3/w": ((1,), "float32")}
    assert reason(blob, extra) == "names"


def test_encode_refuses_what_cannot_be_a_weight() -> None:
    for bad in (np.array(["a"]), np.array([object()]), np.array([1 + 2j]), np.array(["2020-01-01"], "M8[D]")):
        with pytest.raises(W.WeightsError) as info:
            W.encode({"x": bad})
        assert info.value.reason == "dtype"
    with pytest.raises(W.WeightsError) as info:
        W.encode({"": np.ones(1)})
    assert info.value.reason == "names"
    with pytest.raises(W.WeightsError):
        W.encode([np.ones(1)])  # type: ignore[arg-type]


def test_num_params_and_spec() -> None:
    assert W.num_params(model()) == 64 * 32 + 32 + 32 * 10 + 10
    assert W.spec_of({"a": np.zeros((2, 3), np.int16)}) == {"a": ((2, 3), "int16")}

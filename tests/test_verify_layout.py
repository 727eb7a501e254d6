"""decode's per-header layout and its one-call NaN/Inf test over the whole payload (runtime/weights.py, issue 18):
a blob whose arrays are all of one float dtype is checked with one dot product over its payload, padding included.
The verdict must be the exact one: the first array (in the blob's order) holding NaN or Inf is named, whatever the
dtypes, and bytes a writer put in the padding cannot make finite arrays fail."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedkeeper.runtime import weights as W

ALG = "xxh3_128" if W.hash_available("xxh3_128") else "sha256"


def first_bad(values: dict[str, np.ndarray]) -> str | None:
    return next((k for k, v in values.items() if v.dtype.kind == "f" and not np.isfinite(v).all()), None)


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32 - 1),
       layout=st.lists(st.tuples(st.sampled_from([0, 1, 3, 16, 17, 1000]),
                                 st.sampled_from(["float32", "float32", "float64", "float16", "int32"])),
                       min_size=1, max_size=4),
       poison=st.lists(st.tuples(st.integers(0, 3), st.sampled_from([np.nan, np.inf, -np.inf])), max_size=2),
       huge=st.booleans(), threads=st.sampled_from([1, 2]))
def test_decode_names_the_first_non_finite_array(seed, layout, poison, huge, threads):
    rng = np.random.default_rng(seed)
    values = {}
    for i, (size, dtype) in enumerate(layout):
        scale = float(np.finfo(dtype).max) / 2 if huge and dtype != "int32" else 10.0  # x·x overflows: exact scan
        values[f"a{i}"] = (rng.uniform(-1, 1, size) * scale).astype(dtype)
    for index, bad in poison:
        arr = values[f"a{index % len(values)}"]
        if arr.dtype.kind == "f" and arr.size:
            arr[rng.integers(arr.size)] = bad
    blob = W.encode(values, ALG)
    want = first_bad(values)
    if want is None:
        got = W.decode(blob, W.spec_of(values), threads=threads)
        assert {k: v.tobytes() for k, v in got.items()} == {k: v.tobytes() for k, v in values.items()}
    else:
        with pytest.raises(W.WeightsError) as info:
            W.decode(blob, W.spec_of(values), threads=threads)
        assert (info.value.reason, info.value.array) == ("non_finite", want)


def redigest(blob: bytearray) -> bytes:
    """The blob with its digest recomputed over its (changed) bytes, as a writer that put them there would."""
    header = W.read_header(blob)
    h = W._hasher(header.hash_alg)
    h.update(blob[W.PREFIX_SIZE: W.PREFIX_SIZE + header.header_len])
    h.update(blob[header.payload_start: header.total_size])
    digest = W._digest32(h)
    blob[16:48] = digest  # the prefix's digest field
    return bytes(blob)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_nan_bits_in_the_padding_do_not_fail_finite_arrays(dtype):
    values = {"a": np.arange(3, dtype=dtype), "b": np.ones(5, dtype)}  # a's 3 elements leave padding before b
    blob = bytearray(W.encode(values, ALG))
    header = W.read_header(blob)
    a, b = header.arrays
    pad = slice(header.payload_start + a.offset + a.nbytes, header.payload_start + b.offset)
    assert pad.stop - pad.start >= 8
    nan = np.full((pad.stop - pad.start) // np.dtype(dtype).itemsize, np.nan, dtype)
    blob[pad] = nan.tobytes()
    got = W.decode(redigest(blob), W.spec_of(values))  # the digest matches, the arrays are finite
    assert got["a"].tolist() == [0, 1, 2] and got["b"].tolist() == [1] * 5


def test_one_layout_per_header():
    """Blobs of one model share their header's parse and layout (the round's updates): no per-blob work."""
    values = {"w": np.ones((4, 3), np.float32), "b": np.zeros(3, np.float32)}
    one, two = W.encode(values, ALG), W.encode({k: v + 1 for k, v in values.items()}, ALG)
    h1, h2 = W.read_header(one), W.read_header(two)
    assert h1.arrays is h2.arrays
    layout = W._layout(h1.arrays, h1.payload_start, h1.payload_len)
    assert layout is W._layout(h2.arrays, h2.payload_start, h2.payload_len)
    assert layout.whole == (np.dtype("<f4"), h1.payload_len // 4) and layout.floats == {"w", "b"}
    mixed = W.read_header(W.encode({**values, "n": np.arange(2, dtype=np.int32)}, ALG))
    assert W._layout(mixed.arrays, mixed.payload_start, mixed.payload_len).whole is None

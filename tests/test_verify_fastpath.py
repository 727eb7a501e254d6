"""The cheaper verification of weight blobs (runtime/weights.py, issue 18): the dot-product test for NaN/Inf must
be exact (a finite x·x proves every element finite; anything else falls back to the full scan), and verifying on
two threads (digest here, NaN/Inf scan on the pool) must refuse exactly what one thread refuses, for the same
reason, in the same order (checksum, then names/shapes/dtypes, then NaN/Inf)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedkeeper.runtime import weights as W

#: around SIMD widths and BLAS blocking, small and large (the large ones take the parallel path when verified)
SIZES = [1, 2, 7, 8, 9, 15, 16, 17, 31, 33, 64, 100, 1023, 4097, 70_001]


@settings(max_examples=200, deadline=None)
@given(dtype=st.sampled_from(["float16", "float32", "float64"]), size=st.sampled_from(SIZES),
       seed=st.integers(0, 2**32 - 1), magnitude=st.sampled_from(["normal", "huge", "tiny"]),
       bad=st.sampled_from([None, np.nan, np.inf, -np.inf]), where=st.floats(0, 1, exclude_max=True),
       zero_d=st.booleans())
def test_all_finite_is_exact(dtype, size, seed, magnitude, bad, where, zero_d):
    """Equal to isfinite(x).all() whatever the values: huge ones overflow x·x (the fallback decides), tiny ones
    underflow it, and one NaN or Inf anywhere (head, SIMD tail, any block) is found."""
    rng = np.random.default_rng(seed)
    top = float(np.finfo(dtype).max)
    scale = {"normal": 1.0, "huge": top / 4, "tiny": float(np.finfo(dtype).tiny)}[magnitude]
    arr = (rng.uniform(-1, 1, size) * scale).astype(dtype)
    if bad is not None:
        arr[int(where * size)] = bad
    if zero_d:
        arr = arr[:1].reshape(())
    assert W.all_finite(arr) == bool(np.isfinite(arr).all())


def test_all_finite_other_kinds():
    assert W.all_finite(np.array([1, 2], np.int64)) and W.all_finite(np.array([True])) and W.all_finite(np.ones(0))
    assert not W.all_finite(np.array([1 + 1j, complex(np.inf, 0)]))
    assert W.all_finite(np.ones(10, np.float32)[::2])  # not contiguous


def blob_of(values: dict[str, np.ndarray], alg: str = "xxh3_128") -> bytes:
    return W.encode(values, alg if W.hash_available(alg) else "sha256")


def reason(blob: bytes | bytearray, expected=None, threads: int = 1) -> str | None:
    try:
        W.decode(blob, expected, threads=threads)
        return None
    except W.WeightsError as exc:
        return exc.reason


@pytest.mark.parametrize("case", ["ok", "nan_small", "inf_big", "nan_both", "flip", "flip_and_nan", "shape",
                                  "shape_and_nan"])
def test_parallel_verify_refuses_what_one_thread_refuses(case):
    """Payloads above the parallel threshold: the same verdict and reason with one thread and with three."""
    rng = np.random.default_rng(3)
    values = {"w": rng.standard_normal(W._PARALLEL_VERIFY_BYTES // 4 + 1000).astype(np.float32),
              "b": rng.standard_normal(100).astype(np.float64)}
    if case in ("nan_small", "nan_both", "flip_and_nan", "shape_and_nan"):
        values["b"][50] = np.nan
    if case in ("inf_big", "nan_both"):
        values["w"][-1] = np.inf
    expected = W.spec_of(values)
    if case.startswith("shape"):
        expected = {**expected, "b": ((99,), "float64")}
    blob = bytearray(blob_of(values))
    if case.startswith("flip"):
        blob[-5] ^= 0x01
    want = {"ok": None, "nan_small": "non_finite", "inf_big": "non_finite", "nan_both": "non_finite",
            "flip": "checksum", "flip_and_nan": "checksum", "shape": "shape", "shape_and_nan": "shape"}[case]
    assert reason(blob, expected, threads=1) == want
    assert reason(blob, expected, threads=3) == want
    if want == "non_finite":
        arrays = {}
        for t in (1, 3):
            with pytest.raises(W.WeightsError) as info:
                W.decode(blob, expected, threads=t)
            arrays[t] = info.value.array
        assert arrays[1] == arrays[3] == ("w" if case == "inf_big" else "b" if case != "nan_both" else "w")

"""The streaming mean's chunked kernel (runtime/strategies/streaming.py) against the textbook float64 FedAvg it
replaced, written here on whole arrays: acc += float64(w)·n (float64 models scaled by 2**-64), then
(acc / Σn)·2**64 cast to the model's dtype. Equal bits for any dtype, shape, chunk length, count and magnitude:
a run's model must not change when the kernel is tuned (issue 18)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedkeeper.runtime.strategies import StrategyError, StreamingMean
from fedkeeper.runtime.strategies import streaming
from fedkeeper.runtime.strategies.errors import MAX_EXAMPLES

SIZES = [0, 1, 2, 5, 63, 64, 65, 1000]  # around the small chunk lengths below


def reference(updates: list[tuple[dict[str, np.ndarray], int]], spec: dict) -> dict[str, np.ndarray]:
    acc = {name: np.zeros(shape, np.float64) for name, (shape, _) in spec.items()}
    for w, n in updates:
        for name, (_, dtype) in spec.items():
            scale = 2.0**-64 if np.dtype(dtype) == np.float64 else 1.0
            acc[name] += w[name].astype(np.float64) * (np.float64(n) * scale)
    total = np.float64(sum(n for _, n in updates))
    out = {}
    for name, (_, dtype) in spec.items():
        avg = acc[name] / total
        if np.dtype(dtype) == np.float64:
            avg *= 1.0 / 2.0**-64
        avg = avg.astype(dtype)
        if not np.all(np.isfinite(avg)):
            raise StrategyError(f"the average of {name!r} is not finite")
        out[name] = avg
    return out


def make_updates(seed: int, spec: dict, count: int, poison: bool) -> list[tuple[dict[str, np.ndarray], int]]:
    rng = np.random.default_rng(seed)
    updates = []
    for _ in range(count):
        w = {}
        for name, (shape, dtype) in spec.items():
            info = np.finfo(dtype)
            top = np.log10(float(info.max))  # ordinary magnitudes, or near the dtype's largest value
            exponent = rng.uniform(-3, 3) if rng.random() < 0.5 else rng.uniform(top - 3, top - 1.5)
            w[name] = (rng.standard_normal(shape) * 10.0**exponent).astype(dtype)
            if poison and w[name].size and rng.random() < 0.3:
                w[name].reshape(-1)[rng.integers(w[name].size)] = rng.choice([np.nan, np.inf, -np.inf])
        updates.append((w, int(rng.choice([1, int(rng.integers(1, 1000)), MAX_EXAMPLES]))))
    return updates


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1),
       layout=st.lists(st.tuples(st.sampled_from(SIZES), st.sampled_from(["float16", "float32", "float64"]),
                                 st.booleans()), min_size=1, max_size=4),
       count=st.integers(1, 6), chunk=st.sampled_from([1, 7, 64, streaming._CHUNK]), poison=st.booleans())
def test_bit_identical_to_the_whole_array_formula(seed, layout, count, chunk, poison):
    # a size-1 entry may be a 0-d array (the codec carries those); other sizes as a matrix when they factor
    spec = {f"a{i}": ((() if zero_d and size == 1 else (size,) if size % 5 else (5, size // 5)), dtype)
            for i, (size, dtype, zero_d) in enumerate(layout)}
    updates = make_updates(seed, spec, count, poison)
    with np.errstate(all="ignore"):  # NaN/Inf inputs (poison) warn in both
        try:
            want = reference(updates, spec)
        except StrategyError:
            want = None
    with pytest.MonkeyPatch.context() as mp, np.errstate(all="ignore"):
        mp.setattr(streaming, "_CHUNK", chunk)
        mean = StreamingMean()
        mean.begin(spec)
        for cid, (w, n) in enumerate(updates):
            mean.add(w, n, client_id=cid)
        if want is None:
            with pytest.raises(StrategyError, match="not finite"):
                mean.result()
            return
        got = mean.result()
    assert list(got) == list(want)
    for name in want:
        assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape
        assert got[name].tobytes() == want[name].tobytes(), name


def test_chunks_cover_the_model_exactly():
    """Every element in exactly one chunk, for lengths around the chunk size."""
    for size in (0, 1, streaming._CHUNK - 1, streaming._CHUNK, streaming._CHUNK + 1, 3 * streaming._CHUNK + 7):
        acc = np.zeros(size)
        plan = streaming._chunk_plan(acc, np.empty(streaming._CHUNK))
        covered = [i for start, stop, _, _ in plan for i in range(start, stop)]
        assert covered == list(range(size))
        assert all(stop - start <= streaming._CHUNK and len(buf) == stop - start for start, stop, _, buf in plan)

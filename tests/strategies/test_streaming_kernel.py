"""The streaming mean's chunked kernel (runtime/strategies/streaming.py) against the textbook float64 FedAvg it
replaced, written here on whole arrays: acc += float64(w)·n (float64 models scaled by 2**-64), then
(acc / Σn)·2**64 cast to the model's dtype. Equal bits for any dtype, shape, chunk length, count and magnitude, and
with either kernel (NumPy's, or numba's where installed: runtime/kernels.py): a run's model must not change when the
kernel is tuned (issue 18)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedkeeper.runtime import kernels
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


def streamed(updates, spec, *, chunk: int, threads: int, min_per_thread: int = 1, kernel: str = "numpy"):
    """StreamingMean's result (None when it refuses a non-finite mean), with the chunk length, the threads and the
    kernel given (``numba`` is NumPy's where numba is not installed); ``min_per_thread=1`` lets even a tiny model
    be split between the threads."""
    with pytest.MonkeyPatch.context() as mp, np.errstate(all="ignore"):
        mp.setattr(streaming, "_CHUNK", chunk)
        mp.setattr(streaming, "_MIN_PER_THREAD", min_per_thread)
        mp.setenv(kernels.ENV, kernel)
        mean = StreamingMean(threads=threads)
        mean.begin(spec)
        assert mean.kernel == kernels.active()
        for cid, (w, n) in enumerate(updates):
            mean.add(w, n, client_id=cid)
        try:
            return mean.result()
        except StrategyError as exc:
            assert "not finite" in str(exc)
            return None


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**32 - 1),
       layout=st.lists(st.tuples(st.sampled_from(SIZES), st.sampled_from(["float16", "float32", "float64"]),
                                 st.booleans()), min_size=1, max_size=4),
       count=st.integers(1, 6), chunk=st.sampled_from([1, 7, 64, streaming._CHUNK]), poison=st.booleans(),
       threads=st.sampled_from([1, 2, 3]), kernel=st.sampled_from(["numpy", "numba"]))
def test_bit_identical_to_the_whole_array_formula(seed, layout, count, chunk, poison, threads, kernel):
    # a size-1 entry may be a 0-d array (the codec carries those); other sizes as a matrix when they factor
    spec = {f"a{i}": ((() if zero_d and size == 1 else (size,) if size % 5 else (5, size // 5)), dtype)
            for i, (size, dtype, zero_d) in enumerate(layout)}
    updates = make_updates(seed, spec, count, poison)
    with np.errstate(all="ignore"):  # NaN/Inf inputs (poison) warn in both
        try:
            want = reference(updates, spec)
        except StrategyError:
            want = None
    got = streamed(updates, spec, chunk=chunk, threads=threads, kernel=kernel)
    if want is None:
        assert got is None
        return
    assert got is not None and list(got) == list(want)
    for name in want:
        assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape
        assert got[name].tobytes() == want[name].tobytes(), name


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), sizes=st.lists(st.sampled_from(SIZES + [4099]), min_size=1, max_size=5),
       chunk=st.sampled_from([7, 64, 1000]), threads=st.sampled_from([2, 3]), kernel=st.sampled_from(["numpy", "numba"]))
def test_threads_give_the_single_threaded_bits(seed, sizes, chunk, threads, kernel):
    """Split between 2 or 3 threads (at any cut, a model of many small arrays too), with either kernel: the bits
    of one thread and the NumPy kernel."""
    spec = {f"a{i}": ((size,), "float32") for i, size in enumerate(sizes)}
    updates = make_updates(seed, spec, 4, poison=False)
    one = streamed(updates, spec, chunk=chunk, threads=1)
    many = streamed(updates, spec, chunk=chunk, threads=threads, kernel=kernel)
    assert (one is None) == (many is None)
    if one is not None:
        assert {k: v.tobytes() for k, v in one.items()} == {k: v.tobytes() for k, v in many.items()}


def test_plan_splits_the_model_between_threads():
    """Every element in exactly one chunk of one thread's group, the groups about equal, each with the scratch its
    chunks need, the scratches together at most ``_CHUNK`` long; a model below ``_MIN_PER_THREAD`` elements per
    thread stays on one thread."""
    acc = {"w": np.zeros((600, 500)), "b": np.zeros(500), "v": np.zeros(()), "e": np.zeros(0)}
    total = sum(a.size for a in acc.values())
    for threads in (1, 2, 3):
        groups = streaming._plan(acc, threads)
        assert len(groups) == threads
        seen = {name: np.zeros(a.size, int) for name, a in acc.items()}
        for chunks, scratch in groups:
            assert scratch == max(stop - start for _, start, stop, _ in chunks)  # the scratch its chunks need
            for name, start, stop, view in chunks:
                assert 0 < stop - start <= streaming._CHUNK // threads and len(view) == stop - start
                assert np.shares_memory(view, acc[name])
                seen[name][start:stop] += 1
        assert all((s == 1).all() for s in seen.values())
        sizes = [sum(stop - start for _, start, stop, _ in chunks) for chunks, _ in groups]
        assert max(sizes) - min(sizes) <= 1 and sum(sizes) == total
        assert sum(scratch for _, scratch in groups) <= streaming._CHUNK
    small = {"w": np.zeros(streaming._MIN_PER_THREAD * 2 - 1)}
    assert len(streaming._plan(small, 3)) == 1

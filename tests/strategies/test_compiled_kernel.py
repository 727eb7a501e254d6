"""The optional numba kernel (runtime/kernels.py) against NumPy's: the same bits for any float32/float64 input,
specials included, no FMA in its machine code, and the NumPy kernel whenever numba is absent, fails or is not
wanted (issue 18). The whole StreamingMean under both kernels: test_streaming_kernel.py."""

from __future__ import annotations

import importlib.util
import stat
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedkeeper.runtime import kernels
from fedkeeper.runtime.strategies import StrategyError, StreamingMean
from fedkeeper.runtime.strategies.errors import MAX_EXAMPLES

needs_numba = pytest.mark.skipif(importlib.util.find_spec("numba") is None,
                                 reason="numba is not installed (the fast-agg extra)")


@pytest.fixture
def use_numba(monkeypatch):
    monkeypatch.setenv(kernels.ENV, "numba")
    add = kernels.compiled_add()
    if add is None:
        pytest.skip(kernels.status())
    return add


def host_has_fma() -> bool:
    import llvmlite.binding as llvm

    return bool(llvm.get_host_cpu_features().get("fma", False))


def numpy_add(acc: np.ndarray, x: np.ndarray, factor: np.float64) -> None:
    """StreamingMean's NumPy kernel on one chunk: widen, multiply, add."""
    buf = x.astype(np.float64)
    np.multiply(buf, factor, out=buf)
    np.add(acc, buf, out=acc)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal bytes, except that any NaN equals any NaN (a poisoned sum is refused whatever its payload)."""
    nan = np.isnan(a)
    return bool((nan == np.isnan(b)).all() and a[~nan].tobytes() == b[~nan].tobytes())


def floats(dtype) -> st.SearchStrategy:
    return st.floats(width=np.dtype(dtype).itemsize * 8, allow_nan=True, allow_infinity=True, allow_subnormal=True)


@needs_numba
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), dtype=st.sampled_from([np.float32, np.float64]), n=st.integers(1, MAX_EXAMPLES),
       size=st.integers(0, 300), readonly=st.booleans())
def test_compiled_add_has_the_numpy_bits(use_numba, data, dtype, n, size, readonly):
    x = data.draw(hnp.arrays(dtype, size, elements=floats(dtype)))
    x.flags.writeable = not readonly  # decoded updates are read-only views: their own compiled signature
    start = data.draw(hnp.arrays(np.float64, size, elements=st.floats(-1e300, 1e300, allow_subnormal=True)))
    factor = np.float64(n) * (2.0**-64 if dtype == np.float64 else 1.0)
    want, got = start.copy(), start.copy()
    with np.errstate(all="ignore"):
        numpy_add(want, x, factor)
        use_numba(got, x, factor)
    assert same_bits(got, want)


@needs_numba
@pytest.mark.parametrize("fastmath", [False, True])
def test_no_fused_multiply_add_in_the_machine_code(use_numba, fastmath):
    """An FMA would skip the product's rounding: the bits would change. The kernel's code and options compiled
    afresh (numba shows no machine code for a kernel loaded from its cache), for writable and read-only float32
    and float64: no FMA, on any CPU that has one. With fastmath (the control), the FMA is there."""
    import numba

    dispatcher = numba.njit(**{**kernels.JIT_OPTIONS, "fastmath": fastmath})(kernels._add_scaled)
    for dtype in (np.float32, np.float64):
        for writable in (True, False):
            x = np.ones(4, dtype)
            x.flags.writeable = writable
            dispatcher(np.zeros(4), x, np.float64(3))
    assert len(dispatcher.signatures) == 4
    for sig in dispatcher.signatures:
        asm = dispatcher.inspect_asm(sig).lower()
        if not fastmath:
            assert "mulpd" in asm or "mulsd" in asm  # the multiply is there, as a multiply
        fused = any(op in asm for op in ("fmadd", "fmsub", "fnmadd", "fnmsub"))
        assert fused == (fastmath and host_has_fma()), sig


@needs_numba
def test_compiled_add_refuses_unequal_lengths(use_numba):
    acc = np.zeros(5)
    with pytest.raises(ValueError):
        use_numba(acc, np.ones(6, np.float32), np.float64(1))
    assert not acc.any()


@needs_numba
def test_a_refused_update_leaves_the_sums_untouched(use_numba):
    """add() checks everything it can refuse before the kernel writes: a wrong dtype, shape or count after a good
    update leaves the sums as the good update made them."""
    spec = {"w": ((300,), "float32"), "b": ((3,), "float64")}
    good = {"w": np.linspace(-1, 1, 300, dtype=np.float32), "b": np.array([1.0, 2.0, 3.0])}
    mean = StreamingMean(threads=1)
    mean.begin(spec)
    assert mean.kernel == "numba"
    mean.add(good, 7, client_id=0)
    sums = {k: v.copy() for k, v in mean._acc.items()}
    bad = [({"w": good["w"].astype(np.float64), "b": good["b"]}, 3), ({"w": good["w"][:299], "b": good["b"]}, 3),
           (good, 0), (good, MAX_EXAMPLES + 1)]
    for weights, n in bad:
        with pytest.raises(StrategyError):
            mean.add(weights, n, client_id=1)
        assert all(mean._acc[k].tobytes() == sums[k].tobytes() for k in sums)
    assert mean.count == 1


def test_the_choice_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(kernels.ENV, "numpy")
    assert kernels.compiled_add() is None and kernels.active() == "numpy" and "numpy" in kernels.status()
    mean = StreamingMean(threads=1)
    mean.begin({"w": ((3,), "float32")})
    assert mean.kernel == "numpy"
    monkeypatch.setenv(kernels.ENV, "fast")
    with pytest.raises(ValueError, match=kernels.ENV):
        kernels.compiled_add()


def test_auto_waits_until_numba_pays(monkeypatch):
    """``auto``: NumPy in a process that has added little; numba once it has added ``AUTO_AFTER_ELEMENTS``
    elements with NumPy, or has loaded the kernel already. Only the decision is checked."""
    monkeypatch.setenv(kernels.ENV, "auto")
    monkeypatch.setattr(kernels, "_compiled", None)
    monkeypatch.setattr(kernels, "_added", 0)
    monkeypatch.setattr(kernels, "AUTO_AFTER_ELEMENTS", 1000)
    assert not kernels.numba_wanted()
    kernels.note_added(999)
    assert not kernels.numba_wanted()
    kernels.note_added(1)
    assert kernels.numba_wanted()
    monkeypatch.setattr(kernels, "_added", 0)
    monkeypatch.setattr(kernels, "_compiled", numpy_add)  # loaded already: nothing more to pay
    assert kernels.numba_wanted()
    monkeypatch.setenv(kernels.ENV, "numpy")
    assert not kernels.numba_wanted()


def test_streaming_counts_what_the_numpy_kernel_adds(monkeypatch):
    monkeypatch.setenv(kernels.ENV, "numpy")
    monkeypatch.setattr(kernels, "_added", 0)
    mean = StreamingMean(threads=1)
    mean.begin({"w": ((10, 3), "float32"), "b": ((4,), "float16")})
    mean.add({"w": np.ones((10, 3), np.float32), "b": np.ones(4, np.float16)}, 2)
    assert kernels._added == 34


def test_without_numba_the_numpy_kernel_runs(monkeypatch):
    monkeypatch.setenv(kernels.ENV, "numba")
    monkeypatch.setattr(kernels, "_status", None)
    monkeypatch.setattr(kernels, "_compiled", None)
    monkeypatch.setitem(sys.modules, "numba", None)  # import numba raises ImportError
    assert kernels.compiled_add() is None
    assert kernels.status() == "numpy (numba is not installed)"
    mean = StreamingMean(threads=1)
    mean.begin({"w": ((3,), "float32")})
    mean.add({"w": np.array([1, 2, 3], np.float32)}, 2)
    assert mean.kernel == "numpy" and mean.result()["w"].tolist() == [1, 2, 3]


@needs_numba
def test_a_numba_failure_falls_back_to_numpy(monkeypatch):
    def broken(numba):
        raise RuntimeError("no LLVM today")

    monkeypatch.setenv(kernels.ENV, "numba")
    monkeypatch.setattr(kernels, "_status", None)
    monkeypatch.setattr(kernels, "_compiled", None)
    monkeypatch.setattr(kernels, "_build", broken)
    assert kernels.compiled_add() is None
    assert "failed: RuntimeError: no LLVM today" in kernels.status()


def test_the_cache_directory_is_private(monkeypatch, tmp_path):
    monkeypatch.setattr(kernels.tempfile, "gettempdir", lambda: str(tmp_path))
    path = kernels._private_cache_dir()
    assert path is not None and path.startswith(str(tmp_path))
    base = next(tmp_path.iterdir())
    assert stat.S_IMODE(base.stat().st_mode) == 0o700
    assert kernels._private_cache_dir() == path  # one per version of kernels.py, stable
    base.chmod(0o777)  # another user could plant a pickle: no cache
    assert kernels._private_cache_dir() is None

"""An optional compiled kernel for the FedAvg running sums: ``acc[i] += float64(x[i]) * factor`` in one pass (issue 18).

Why: NumPy needs three calls per chunk for it (widen into a float64 scratch, multiply, add), because a mixed-type
multiply-add cannot be written as one ufunc call; a loop compiled by numba reads the update once and the sums once.
Measured on the 784-500-10 MLP (bench/bench_fedavg.py, 2-vCPU AMD EPYC): 0.13 ms per update against 0.31-0.33 ms,
1.3x a plain float32 ``acc += w`` instead of 3.3x.

Why the bits do not change: each element gets the same two IEEE operations, a float64 multiply rounded to float64
and a float64 add, in the same order. numba compiles without ``fastmath`` (the default), so LLVM neither reassociates
nor contracts the multiply and the add into an FMA (which would skip the product's rounding);
tests/strategies/test_compiled_kernel.py compares the two kernels bit for bit and checks the machine code for FMA.
The widening of float32 (and float64 as it is) is exact either way. float16 has no numba type: those arrays stay on
the NumPy kernel.

Optional, and only where it pays: loading it costs a process about 1.2 s with numba's on-disk cache and 1.9 s
without (numba's import alone 0.4 s; bench_fedavg.py prints both) and ~150 MB of resident memory (LLVM), against
about 0.5 ns saved per element added: the price of some 2 * 10**9 elements, thousands of updates of a
400k-parameter model. So ``FK_AGG_KERNEL`` (``numba_wanted``) is

- ``auto`` (default): numba once it pays: once this process has added ``AUTO_AFTER_ELEMENTS`` elements with the
  NumPy kernel (a long-lived aggregator: the local platform's workers, a warm function), or when the kernel is
  loaded already; so a short-lived process never pays more than about twice the cheaper choice;
- ``numba``: whenever it imports (benchmarks, tests, a dedicated aggregator); ``numpy``: never.

The kernels give the same bits, so a switch between rounds (or between ``begin`` calls) changes no result. Without
numba (the ``fast-agg`` extra), or when it fails to compile, the NumPy kernel runs (``active()`` says which,
``status()`` why). It is not bundled into cloud functions (llvmlite alone is ~170 MB unpacked, most of Lambda's
250 MB, and the resident memory would crowd a 256 MB OpenWhisk action): there it runs only when the platform image
provides numba.

Compiled once per process and signature, lazily. The on-disk cache goes to ``NUMBA_CACHE_DIR`` when set, else
to a directory of this user's under the temp dir (function platforms' code directories are read-only), one per
version of this file, so a cached kernel never outlives its source; it is skipped when that directory is not this
user's alone (numba's cache files are pickles). ``nogil``: the threads of ``runtime.threads`` run it in parallel.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

#: the environment variable that picks the kernel: ``auto`` (default), ``numba`` or ``numpy`` (module docstring)
ENV = "FK_AGG_KERNEL"
CHOICES = ("auto", "numba", "numpy")

#: ``auto`` turns numba on after this many elements added in the process (~0.9 s of the NumPy kernel's time: about
#: what loading numba and its kernel costs)
AUTO_AFTER_ELEMENTS = 1 << 30

#: element types the compiled kernel takes (float16 has no numba type)
COMPILED_DTYPES = frozenset({np.dtype(np.float32), np.dtype(np.float64)})

#: numba's options for the kernel: no fastmath (no FMA, no reassociation: the bits), nogil (threads), bounds
#: unchecked (the wrapper checks the lengths once)
JIT_OPTIONS: dict[str, Any] = {"nogil": True, "fastmath": False, "boundscheck": False, "error_model": "numpy"}

AddScaled = Callable[[np.ndarray, np.ndarray, np.float64], None]

_LOCK = threading.Lock()
_compiled: AddScaled | None = None
_status: str | None = None  # None: not tried yet
_added = 0  # elements added by the NumPy kernel in this process (``note_added``)


def choice() -> str:
    """``FK_AGG_KERNEL`` checked (unset: ``auto``): an unknown value is an error, so a typo does not silently change
    the kernel."""
    raw = os.environ.get(ENV, "").strip().lower() or "auto"
    if raw not in CHOICES:
        raise ValueError(f"{ENV} must be one of {', '.join(CHOICES)}, got {raw!r}")
    return raw


def numba_wanted() -> bool:
    """Whether the compiled kernel should run now: ``numba``, or ``auto`` once it pays (module docstring)."""
    mode = choice()
    if mode == "numpy":
        return False
    return mode == "numba" or _compiled is not None or _added >= AUTO_AFTER_ELEMENTS


def note_added(elements: int) -> None:
    """Count elements the NumPy kernel added (``auto`` switches to numba after ``AUTO_AFTER_ELEMENTS``)."""
    global _added
    _added += elements


def compiled_add() -> AddScaled | None:
    """The compiled ``add_scaled(acc, x, factor)`` (1-D arrays of equal length, ``acc`` float64 and writable, ``x``
    float32 or float64) when ``numba_wanted()``, else None (and None when numba is absent or failed)."""
    if not numba_wanted():
        return None
    if _status is None:
        _load()
    return _compiled


def active() -> str:
    """``numba`` or ``numpy``: the kernel ``StreamingMean`` uses for float32/float64 models in this process now."""
    return "numba" if compiled_add() is not None else "numpy"


def status() -> str:
    """Why ``active()`` is what it is (for logs and the benchmark)."""
    if not numba_wanted():
        why = "numpy" if choice() == "numpy" else f"auto, {_added:,} of {AUTO_AFTER_ELEMENTS:,} elements added"
        return f"numpy ({ENV}={why})"
    compiled_add()
    return _status or "numpy"


def _load() -> None:
    global _compiled, _status
    with _LOCK:
        if _status is not None:
            return
        try:
            import numba
        except ImportError:
            _status = "numpy (numba is not installed)"
            return
        try:
            _compiled = _build(numba)
            _status = f"numba {numba.__version__}"
        except Exception as exc:  # noqa: BLE001 - any failure of an optional accelerator means: use NumPy
            _compiled = None
            _status = f"numpy (numba {getattr(numba, '__version__', '?')} failed: {type(exc).__name__}: {exc})"


def _add_scaled(acc: np.ndarray, x: np.ndarray, factor: np.float64) -> None:
    for i in range(x.shape[0]):
        acc[i] += np.float64(x[i]) * factor


def _build(numba: Any) -> AddScaled:
    """``_add_scaled`` jitted with ``JIT_OPTIONS``, cached on disk when a private cache directory exists, behind a
    length check. Compiles nothing yet (lazy)."""
    from numba.core import config

    cache_dir = config.CACHE_DIR or _private_cache_dir()
    saved = config.CACHE_DIR
    try:
        # numba picks a function's cache directory when it is decorated: point it at ours for this one only, so
        # other numba users in the process keep their own setting
        config.CACHE_DIR = cache_dir or ""
        fn = numba.njit(cache=bool(cache_dir), **JIT_OPTIONS)(_add_scaled)
    finally:
        config.CACHE_DIR = saved

    def add_scaled(acc: np.ndarray, x: np.ndarray, factor: np.float64) -> None:
        if acc.shape != x.shape or acc.ndim != 1:
            raise ValueError(f"add_scaled needs 1-D arrays of one length, got {acc.shape} and {x.shape}")
        fn(acc, x, factor)

    add_scaled.dispatcher = fn  # type: ignore[attr-defined]  # for tests (machine code) and the bench
    return add_scaled


def _private_cache_dir() -> str | None:
    """``<tempdir>/fedkeeper-numba-<uid>/<hash of this file>``, created 0700; None when it cannot be created or is
    not this user's alone (then nothing is cached: a directory others can write could plant a pickle)."""
    try:
        source = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
        getuid = getattr(os, "getuid", None)
        owner = getuid() if getuid is not None else None
        base = Path(tempfile.gettempdir()) / f"fedkeeper-numba-{owner if owner is not None else 'user'}"
        base.mkdir(mode=0o700, exist_ok=True)
        info = base.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_mode & 0o022 or (owner is not None and info.st_uid != owner):
            return None
        path = base / source
        path.mkdir(mode=0o700, exist_ok=True)
        return str(path)
    except OSError:
        return None

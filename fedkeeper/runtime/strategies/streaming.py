"""The streaming weighted mean: today's FedAvg accumulator, moved here with its arithmetic unchanged (the bits of a
FedAvg run must not change: tests/strategies/test_streaming_kernel.py holds it to the whole-array formula).

Contract (a Flower ``Strategy.aggregate_fit`` cut into streaming steps, so that the aggregator never holds
more than one client update in memory):

1. ``begin(spec)`` with the expected ``name → (shape, dtype)`` of the global model (the previous round's model);
2. ``add(weights, num_examples, client_id=...)`` once per accepted update, in ascending client-id order
   (the order fixes the float rounding, so the same updates give the same bits every time);
3. ``result()`` → the new global weights, in the spec's dtypes.

Validation of blobs (checksum, NaN/Inf, stale round) happens before ``add``, when the aggregator decodes them;
``add`` checks names, shapes and dtypes again and leaves the running sums untouched when it refuses an update.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Mapping

import numpy as np

from .. import kernels as _kernels
from .. import threads as _threads
from ..weights import all_finite
from .errors import MAX_EXAMPLES, NonFiniteMean, StrategyError

Spec = Mapping[str, tuple[tuple[int, ...], Any]]

#: float64 arrays are summed scaled by 2**-64 (exact: a power of two) so that n·w cannot overflow for any finite w;
#: float32 and float16 values times MAX_EXAMPLES fit in float64 as they are, so their bits do not change
_F64_SCALE = 2.0**-64

# Elements per step of the weighted add and of the final division. The float64 scratch (512 KB) stays in a 1 MB L2,
# so each update costs one pass over main memory (read w, read+write the accumulator) and no model-sized temporary;
# chunks this long also keep the per-update count of NumPy calls low (3 per chunk, about a microsecond each): measured
# on the 784-500-10 MLP against 32768, 5-10% less time per update. Elementwise operations: the chunk length does not
# change a bit of the result.
_CHUNK = 65536

#: elements per step when the compiled kernel (runtime/kernels.py) adds the model: it needs no scratch, so a step is
#: a whole array (or a thread's share of one): fewer calls, about a microsecond each
_COMPILED_CHUNK = 1 << 26

#: elements each thread gets at least (a smaller model is summed by fewer threads, down to one): handing a thread
#: less work costs more (~20 us a hand-off) than it saves
_MIN_PER_THREAD = 65536


class StreamingMean:
    """The example-weighted mean w = Σ nₖ·wₖ / Σ nₖ (FedAvg, McMahan et al., 2017) with float64 running sums,
    memory O(model): one update in, folded into the sums, dropped.

    ``threads``: how many threads share each update's chunks (None: ``runtime.threads.default_threads()``: 1
    unless ``FK_AGG_THREADS`` asks for more; 1: no thread is started). The operations on each
    element do not depend on the split, so any number of threads gives the same bits.

    The kernel: the compiled one of ``runtime.kernels`` for float32 and float64 arrays when numba is installed and
    ``FK_AGG_KERNEL`` asks for it (by default once the process has added enough to pay for loading it), else
    NumPy's; chosen at ``begin``, ``kernel`` says which. Both apply the same two float64 operations to each
    element: the same bits."""

    def __init__(self, threads: int | None = None) -> None:
        self._spec: dict[str, tuple[tuple[int, ...], np.dtype]] | None = None
        self._acc: dict[str, np.ndarray] = {}
        self._groups: list[_Group] = []
        self._add_groups: list[_Group] = []
        self._size = 0
        self._scale: dict[str, float] = {}
        self._compiled: _kernels.AddScaled | None = None
        self._compiled_only = False  # every array goes through the compiled kernel (no NumPy step, no errstate)
        self.kernel = "numpy"
        self.threads = _threads.resolve(threads)
        self.total_examples = 0
        self.count = 0
        self._last_client: int | None = None

    def begin(self, spec: Spec) -> None:
        self._spec = {name: (tuple(int(d) for d in shape), np.dtype(dtype)) for name, (shape, dtype) in spec.items()}
        if not self._spec:
            raise StrategyError("the model spec is empty")
        self._acc = {name: np.zeros(shape, np.float64) for name, (shape, _) in self._spec.items()}
        self._scale = {name: _F64_SCALE if dtype == np.float64 else 1.0 for name, (_, dtype) in self._spec.items()}
        # The chunk views are made once here, not per update: per-call overhead matters next to a 0.2 ms sum. The
        # scratch is not: each step allocates its own (a few microseconds), so it is not held while the next update
        # is read, when the aggregator's memory peaks (the sums, the driver's reply and the decoded update).
        self._compiled = _kernels.compiled_add()
        self.kernel = "numba" if self._compiled is not None else "numpy"
        compiled_only = self._compiled is not None and all(
            dtype in _kernels.COMPILED_DTYPES for _, dtype in self._spec.values())
        self._compiled_only = compiled_only
        self._size = sum(a.size for a in self._acc.values())
        self._groups = _plan(self._acc, self.threads)
        # the compiled kernel's steps: whole arrays (a thread's share), no scratch; result() keeps the short chunks
        self._add_groups = _plan(self._acc, self.threads, _COMPILED_CHUNK) if compiled_only else self._groups
        self.total_examples = 0
        self.count = 0
        self._last_client = None

    def add(self, weights: Mapping[str, np.ndarray], num_examples: int, client_id: int | None = None) -> None:
        spec = self._require_spec()
        who = "update" if client_id is None else f"update of client {client_id}"
        if isinstance(num_examples, bool) or not isinstance(num_examples, (int, np.integer)) or num_examples <= 0:
            raise StrategyError(f"{who}: num_examples must be a positive integer, got {num_examples!r}")
        if num_examples > MAX_EXAMPLES:
            raise StrategyError(f"{who}: num_examples {num_examples} is above {MAX_EXAMPLES}")
        if client_id is not None:
            if self._last_client is not None and client_id <= self._last_client:
                raise StrategyError(f"{who} added after client {self._last_client}: add in ascending client-id order")
        if list(weights) != list(spec):
            raise StrategyError(f"{who} holds {list(weights)}, the model has {list(spec)}")
        for name, (shape, dtype) in spec.items():
            w = weights[name]
            if tuple(w.shape) != shape or w.dtype != dtype:
                raise StrategyError(f"{who}: {name!r} is {w.dtype}{list(w.shape)}, expected {dtype}{list(shape)}")
        # A float64 scalar (not a Python float, which NumPy 2 treats as "weak" and would multiply in float32):
        # the product of a float32 weight and an integer count below 2**29 is exact in float64.
        n = np.float64(int(num_examples))
        flats = {name: weights[name].reshape(-1) for name in spec}  # views for contiguous arrays (decoded blobs are)
        factors = {name: n * self._scale[name] for name in spec}
        if self._compiled_only:  # numba raises no floating-point warnings: no errstate needed (_add_chunks)
            _threads.run_all([partial(_compiled_steps, group[0], flats, factors, self._compiled)
                              for group in self._add_groups])
        else:
            _threads.run_all([partial(_add_chunks, group, flats, factors, self._compiled)
                              for group in self._add_groups])
        if self._compiled is None:
            _kernels.note_added(self._size)
        self.total_examples += int(num_examples)
        self.count += 1
        if client_id is not None:
            self._last_client = client_id

    def result(self) -> dict[str, np.ndarray]:
        spec = self._require_spec()
        if self.count == 0:
            raise StrategyError("no updates were added")
        dest = {name: np.empty(shape, dtype) for name, (shape, dtype) in spec.items()}
        flats = {name: dest[name].reshape(-1) for name in spec}
        unscale = {name: 1.0 / self._scale[name] for name in spec}
        # acc / total, rescaled, cast to the model's dtype, chunk by chunk through the scratch: the same elementwise
        # operations as on whole arrays (the same bits), without two model-sized float64 temporaries
        _threads.run_all([partial(_mean_chunks, group, flats, np.float64(self.total_examples), unscale)
                          for group in self._groups])
        for name in spec:
            if not all_finite(dest[name]):
                raise NonFiniteMean(f"the average of {name!r} is not finite")
        return dest

    def _require_spec(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        if self._spec is None:
            raise StrategyError("call begin(spec) first")
        return self._spec


#: (array name, start, stop, accumulator view): one step of the kernel
_Chunk = tuple[str, int, int, np.ndarray]
#: one thread's chunks and the length of the float64 scratch they need
_Group = tuple[list[_Chunk], int]


def _add_chunks(group: _Group, flats: Mapping[str, np.ndarray], factors: Mapping[str, Any],
                compiled: _kernels.AddScaled | None = None) -> None:
    chunks, length = group
    # An update may hold NaN or Inf when the aggregation checks the mean instead (admission.deferred_mean): Inf
    # meeting -Inf in the sums is then expected, not a warning (nor an error under np.seterr(all="raise")); per
    # thread, as NumPy's error state is
    with np.errstate(invalid="ignore", over="ignore"):
        _add_steps(chunks, length, flats, factors, compiled)


def _compiled_steps(chunks: list[_Chunk], flats: Mapping[str, np.ndarray], factors: Mapping[str, Any],
                    compiled: Any) -> None:
    for name, start, stop, acc in chunks:
        compiled(acc, flats[name][start:stop], factors[name])  # acc[i] += float64(x[i]) * factor, one pass


def _add_steps(chunks: list[_Chunk], length: int, flats: Mapping[str, np.ndarray], factors: Mapping[str, Any],
               compiled: _kernels.AddScaled | None) -> None:
    scratch = None  # allocated only if a chunk needs the NumPy kernel (never in a plan of _COMPILED_CHUNK steps)
    for name, start, stop, acc in chunks:
        x = flats[name][start:stop]
        if compiled is not None and x.dtype in _kernels.COMPILED_DTYPES:
            compiled(acc, x, factors[name])  # acc[i] += float64(x[i]) * factor, one pass
            continue
        if scratch is None:
            scratch = np.empty(length, np.float64)
        buf = scratch[: stop - start]
        # widen into the cache-resident scratch, scale there, add: measured faster than one mixed-type multiply,
        # which widens through NumPy's own internal buffer first
        np.copyto(buf, x)
        np.multiply(buf, factors[name], out=buf)
        np.add(acc, buf, out=acc)


def _mean_chunks(group: _Group, flats: Mapping[str, np.ndarray], total: np.float64,
                 unscale: Mapping[str, float]) -> None:
    chunks, length = group
    scratch = np.empty(length, np.float64)
    for name, start, stop, acc in chunks:
        buf = scratch[: stop - start]
        np.divide(acc, total, out=buf)
        if unscale[name] != 1.0:
            np.multiply(buf, unscale[name], out=buf)
        np.copyto(flats[name][start:stop], buf, casting="unsafe")  # what astype does


def _plan(acc: Mapping[str, np.ndarray], threads: int, chunk_len: int | None = None) -> list[_Group]:
    """The model's elements (its arrays one after the other) cut into ``threads`` ranges of about equal length,
    each cut into chunks (``_chunk_plan``) with a scratch of its own: one group per thread. The threads share the
    scratch budget (``_CHUNK`` float64 in all, so the aggregator's memory does not grow with its CPUs). A thread
    gets at least ``_MIN_PER_THREAD`` elements: below that, handing work to another thread costs more than it
    saves. ``chunk_len``: the longest chunk (default ``_CHUNK``, split between the threads). The cuts do not change
    a bit (the kernel is elementwise)."""
    sizes = {name: a.size for name, a in acc.items()}
    total = sum(sizes.values())
    groups = max(1, min(threads, total // max(1, _MIN_PER_THREAD)))
    chunk = max(1, (chunk_len or _CHUNK) // groups)
    out: list[_Group] = []
    for g in range(groups):
        lo, hi = total * g // groups, total * (g + 1) // groups
        spans: list[tuple[str, int, int, np.ndarray]] = []
        offset = 0
        for name, a in acc.items():
            first, last = max(lo, offset) - offset, min(hi, offset + sizes[name]) - offset
            if first < last:
                flat = a.reshape(-1)
                spans += [(name, first + start, first + stop, view)
                          for start, stop, view, _ in _chunk_plan(flat[first:last], _NO_SCRATCH, chunk)]
            offset += sizes[name]
        out.append((spans, max((stop - start for _, start, stop, _ in spans), default=0)))
    return out


_NO_SCRATCH = np.empty(0, np.float64)


def _chunk_plan(acc: np.ndarray, scratch: np.ndarray, chunk: int | None = None
                ) -> list[tuple[int, int, np.ndarray, np.ndarray]]:
    """(start, stop, accumulator view, scratch view) per chunk of about equal size, at most ``chunk`` (default
    ``_CHUNK``) long."""
    size = acc.shape[0]
    if size == 0:
        return []
    pieces = max(1, -(-size // (chunk or _CHUNK)))
    step = -(-size // pieces)
    return [
        (start, min(start + step, size), acc[start : start + step], scratch[: min(start + step, size) - start])
        for start in range(0, size, step)
    ]

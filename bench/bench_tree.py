"""Tree aggregation against flat: peak memory and time of one invocation per level, for the sample model.

    .venv-test/bin/python bench/bench_tree.py [--updates 64] [--fan-in 8] [--params 397510]

What one aggregator invocation holds and spends, without the store (blobs are encoded and decoded here, with the
integrity check, as the function reads them): the flat aggregation of all n updates (StreamingMean), a leaf (k
updates into a float64 partial sum, runtime/partials.py), the final node (k partial sums read back and added,
then the mean). Memory is tracemalloc's peak of the step (numpy's buffers included), beyond its inputs' blobs.
The wall time of the tree is the slowest leaf plus the final node when the leaves run in parallel.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np

from fedkeeper.runtime import partials
from fedkeeper.runtime import weights as W
from fedkeeper.runtime.strategies import StreamingMean


def measure(step: Callable[[], Any]) -> tuple[float, float]:
    """(seconds, peak MiB) of one call."""
    tracemalloc.start()
    t0 = time.perf_counter()
    step()
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return seconds, peak / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--updates", type=int, default=64)
    ap.add_argument("--fan-in", type=int, default=8)
    ap.add_argument("--params", type=int, default=397_510, help="float32 parameters (the sample MLP 784-500-10)")
    args = ap.parse_args()
    n, k = args.updates, args.fan_in
    rng = np.random.default_rng(0)
    spec = {"w": ((args.params,), np.dtype("<f4"))}
    blobs = [W.encode({"w": rng.normal(0, 0.1, args.params).astype(np.float32)}) for _ in range(n)]
    digests = [W.digest_of(b) for b in blobs]

    def read(i: int) -> dict[str, np.ndarray]:
        assert W.digest_of(blobs[i]) == digests[i]
        return W.decode(blobs[i], spec)

    def flat() -> Any:
        mean = StreamingMean()
        mean.begin(spec)
        for i in range(n):
            mean.add(read(i), 10 + i, client_id=i)
        return mean.result()

    def leaf(start: int, stop: int) -> bytes:
        total = partials.PartialSum.empty(partials.MEAN, spec)
        for i in range(start, stop):
            total.add_update(i, read(i), 10 + i)
        return W.encode(total.sums), total.meta()

    groups = [(i, min(i + k, n)) for i in range(0, n, k)]
    stored = [leaf(a, b) for a, b in groups]
    sum_spec = partials.sum_spec(spec)

    def root() -> Any:
        total = partials.PartialSum.empty(partials.MEAN, spec)
        for blob, meta in stored:
            total.add_partial(partials.PartialSum.from_stored(meta, W.decode(blob, sum_spec), spec))
        return total.mean()

    flat_s, flat_mb = measure(flat)
    leaf_s, leaf_mb = measure(lambda: leaf(*groups[0]))
    root_s, root_mb = measure(root)
    same = all(np.array_equal(a, b) for a, b in zip(flat().values(), root().values()))
    model_mb = args.params * 4 / 2**20
    print(f"{n} updates of {args.params:,} float32 parameters ({model_mb:.2f} MiB), fan-in {k}: "
          f"levels {[len(groups)]} + final")
    print(f"{'invocation':<12}{'updates':>9}{'time s':>10}{'peak MiB':>10}{'x model':>9}")
    for name, count, seconds, mb in (("flat", n, flat_s, flat_mb), ("leaf", groups[0][1], leaf_s, leaf_mb),
                                     ("final", len(groups), root_s, root_mb)):
        print(f"{name:<12}{count:>9}{seconds:>10.3f}{mb:>10.2f}{mb / model_mb:>9.2f}")
    print(f"tree wall time with parallel leaves: {leaf_s + root_s:.3f} s vs flat {flat_s:.3f} s "
          f"(the longest invocation: {max(leaf_s, root_s):.3f} s vs {flat_s:.3f} s); "
          f"model identical to flat: {same}")


if __name__ == "__main__":
    main()

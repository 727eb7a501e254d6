"""Streaming FedAvg: time for 100 updates of the 784-500-10 MLP and peak memory for 10 vs 100 updates.

Run: ``python bench/bench_fedavg.py``. Prints figures and same-run ratios (no pass/fail exit code):

- FedAvg (float64 running sums, weighted by num_examples) next to a plain float32 ``acc += w`` over the same
  100 in-memory arrays: the floor any aggregation has to pay. Target: FedAvg within 3x of the plain sum.
- the same FedAvg fed from encoded blobs (decode + sha256 + NaN/Inf scan per update), as the aggregator runs it.
- peak traced memory (tracemalloc) while aggregating 10 and 100 updates produced one at a time by a generator,
  so the figure is the strategy's own footprint. Target: the two peaks within 20% of each other.
"""

from __future__ import annotations

import gc
import importlib.util
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Iterator

import numpy as np
import pymongo

from fedkeeper.runtime import blobstore, data
from fedkeeper.runtime import weights as W
from fedkeeper.runtime.strategies import FedAvg
from fedkeeper.store import NxServer

AGGREGATOR = Path(__file__).resolve().parents[1] / "functions" / "fl_server_aggregator" / "handler.py"
MODEL = {"model": "mlp", "input_size": 784, "hidden_size": 500, "output_size": 10}

SHAPES = {"w1": (784, 500), "b1": (500,), "w2": (500, 10), "b2": (10,)}
SPEC = {k: (s, np.float32) for k, s in SHAPES.items()}
NUM_PARAMS = sum(int(np.prod(s)) for s in SHAPES.values())
REPEATS = 15


def make_update(i: int) -> tuple[dict[str, np.ndarray], int]:
    rng = np.random.default_rng([7, i])
    return {k: rng.standard_normal(s, dtype=np.float32) for k, s in SHAPES.items()}, int(rng.integers(20, 200))


def lazy_updates(count: int) -> Iterator[tuple[dict[str, np.ndarray], int]]:
    for i in range(count):
        yield make_update(i)


def plain_sum(updates: list) -> dict[str, np.ndarray]:
    acc = {k: np.zeros(s, np.float32) for k, s in SHAPES.items()}
    for w, _ in updates:
        for k, a in acc.items():
            a += w[k]
    return acc


def fedavg(updates) -> dict[str, np.ndarray]:
    agg = FedAvg()
    agg.begin(SPEC)
    for cid, (w, n) in enumerate(updates):
        agg.add(w, n, client_id=cid)
    return agg.result()


def paired_timings(updates: list) -> tuple[list[float], list[float]]:
    """Plain sum and FedAvg timed back to back in each repeat, so machine noise hits both alike."""
    plain, avg = [], []
    for _ in range(REPEATS):
        gc.collect()
        t0 = time.perf_counter()
        plain_sum(updates)
        t1 = time.perf_counter()
        fedavg(updates)
        t2 = time.perf_counter()
        plain.append(t1 - t0)
        avg.append(t2 - t1)
    return plain, avg


def fedavg_from_blobs(count: int) -> tuple[float, float]:
    """Seconds spent in decode(+verify) and add for `count` blobs (encoding is outside the timed part)."""
    decode_s = add_s = 0.0
    agg = FedAvg()
    agg.begin(SPEC)
    for cid, (w, n) in enumerate(lazy_updates(count)):
        blob = W.encode(w)
        t0 = time.perf_counter()
        view = W.decode(blob, SPEC)
        t1 = time.perf_counter()
        agg.add(view, n, client_id=cid)
        add_s += time.perf_counter() - t1
        decode_s += t1 - t0
    agg.result()
    return decode_s, add_s


def peak_memory(count: int) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        fedavg(lazy_updates(count))
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _load_aggregator():
    spec = importlib.util.spec_from_file_location("fk_bench_aggregator", AGGREGATOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def handler_peak_memory(counts: tuple[int, ...]) -> dict[int, int]:
    """Peak traced memory of the real aggregator handler (embedded nx-27017 store, 200 random 28x28 test images)."""
    aggregator = _load_aggregator()
    peaks = {}
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        np.save(f"{tmp}/x.npy", rng.integers(0, 256, (200, 28, 28), dtype=np.uint8))
        np.save(f"{tmp}/y.npy", rng.integers(0, 10, 200))
        files = {"train_images": f"{tmp}/x.npy", "train_labels": f"{tmp}/y.npy",
                 "test_images": f"{tmp}/x.npy", "test_labels": f"{tmp}/y.npy"}  # fmt: skip
        data.load_split(data.DataSpec.from_params(files), "test")  # cached: not part of the peak
        server = NxServer.in_dir(Path(tmp) / "nx")
        client: pymongo.MongoClient = pymongo.MongoClient(server.start())
        try:
            for count in counts:
                db = client[f"bench_{count}"]
                store = blobstore.BlobStore(db)
                store.write_model("b", 0, make_update(10_000)[0], {"accuracy": 0.0, "loss": 0.0})
                shards = data.shard_sizes(data.DataSpec.from_params(files), count, 0)  # bounds num_examples
                for cid, (w, n) in enumerate(lazy_updates(count)):
                    store.write_update("b", 1, cid, w, base_round=0, num_examples=min(n, shards[cid]),
                                       activation_id=f"a{cid}", attempt=1)
                issued = [{"client_id": cid, "activation_id": f"a{cid}", "attempt": 1} for cid in range(count)]
                params = {"mode": "aggregate", "run_id": "b", "round": 1, "num_clients": count, "updates": issued,
                          "seed": 0, "model": MODEL, "data": files}  # fmt: skip
                gc.collect()
                tracemalloc.start()
                try:
                    result = aggregator.handle(params, db=db)
                    peaks[count] = tracemalloc.get_traced_memory()[1]
                finally:
                    tracemalloc.stop()
                assert result["num_updates"] == count, result
        finally:
            client.close()
            server.stop()
    return peaks


def main() -> None:
    n_updates = 100
    mb = NUM_PARAMS * 4 / 2**20
    print(f"model: 784-500-10 MLP, {NUM_PARAMS:,} float32 parameters ({mb:.2f} MB per update), {n_updates} updates")
    updates = [make_update(i) for i in range(n_updates)]

    # correctness against the textbook formula, float64
    total = sum(n for _, n in updates)
    got = fedavg(updates)
    err = max(
        float(np.max(np.abs(got[k] - sum(n * w[k].astype(np.float64) for w, n in updates) / total))) for k in SHAPES
    )

    plain, avg = paired_timings(updates)
    plain_best, plain_med = min(plain), statistics.median(plain)
    avg_best, avg_med = min(avg), statistics.median(avg)
    pair_ratio = statistics.median(a / p for a, p in zip(avg, plain))
    del updates
    gc.collect()
    decode_s, add_s = fedavg_from_blobs(n_updates)
    peak10, peak100 = peak_memory(10), peak_memory(100)

    print()
    print(f"{'measurement':<52}{'best':>10}{'median':>10}{'per update':>12}")
    print(f"{'plain float32 sum (acc += w)':<52}{plain_best * 1e3:>8.1f}ms{plain_med * 1e3:>8.1f}ms"
          f"{plain_best / n_updates * 1e3:>10.3f}ms")
    print(f"{'FedAvg (float64 sums, weighted)':<52}{avg_best * 1e3:>8.1f}ms{avg_med * 1e3:>8.1f}ms"
          f"{avg_best / n_updates * 1e3:>10.3f}ms")
    print(f"{'  from blobs: decode + verify (sha256, NaN/Inf)':<52}{decode_s * 1e3:>8.1f}ms{'':>10}"
          f"{decode_s / n_updates * 1e3:>10.3f}ms")
    print(f"{'  from blobs: add':<52}{add_s * 1e3:>8.1f}ms{'':>10}{add_s / n_updates * 1e3:>10.3f}ms")
    print()
    ratio = avg_best / plain_best
    print(f"FedAvg / plain float32 sum, best of {REPEATS} each: {ratio:.2f}x   "
          f"(median of paired ratios {pair_ratio:.2f}x)   target <= 3x: {'met' if ratio <= 3 else 'MISSED'}")
    print(f"max |FedAvg - textbook float64 formula|: {err:.2e}")
    print()
    print(f"peak traced memory, 10 updates:  {peak10 / 2**20:7.2f} MB")
    print(f"peak traced memory, 100 updates: {peak100 / 2**20:7.2f} MB")
    mem_ratio = peak100 / peak10
    print(f"100 / 10 updates: {mem_ratio:.3f}   target within 20%: {'met' if abs(mem_ratio - 1) <= 0.2 else 'MISSED'}")
    hp = handler_peak_memory((10, 100))
    print(f"aggregator handler (nx-27017), 10 updates:   {hp[10] / 2**20:7.2f} MB")
    print(f"aggregator handler (nx-27017), 100 updates: {hp[100] / 2**20:7.2f} MB   ratio {hp[100] / hp[10]:.3f}")
    print(f"(for scale: one float32 update {mb:.2f} MB, the float64 running sums {2 * mb:.2f} MB, "
          f"100 updates held at once {100 * mb:.0f} MB)")


if __name__ == "__main__":
    main()

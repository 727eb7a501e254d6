"""Streaming FedAvg: time for 100 updates of the 784-500-10 MLP and peak memory for 10 vs 100 updates (issue 18).

Run: ``python bench/bench_fedavg.py``. Prints figures and same-run ratios (no pass/fail exit code):

- FedAvg (float64 running sums, weighted by num_examples) next to a plain float32 ``acc += w`` over the same
  100 in-memory arrays: the floor any aggregation has to pay;
- FedAvg fed from the encoded blobs as the aggregator runs it — decode and digest check of every update, the
  NaN/Inf check once on the mean (``admission.deferred_mean``) — once per digest algorithm installed (sha256,
  blake3, xxh3_128), timed in the same repeats as the plain sum, and split into decode + verify and add; beside it,
  marked [scan each], the NaN/Inf scan of every update instead (what the aggregator did before, and still does
  for the strategies that are not a mean). Goal (issue 18): within 2x of the plain sum;
- peak traced memory (tracemalloc) while aggregating 10 and 100 updates produced one at a time by a generator,
  so the figure is the strategy's own footprint, and of the real aggregator handler. Goals: flat in the clients,
  and within 2x of one model plus one update (the float64 running sums alone are one model's size twice).

Each configuration runs with one thread (the aggregator's default) and with as many threads as this process has
CPUs (what ``FK_AGG_THREADS`` can turn on, ``runtime.threads``): the chunks of each update split between them, the
NaN/Inf scan of a blob beside its digest; the bits are the same. Both clocks are read in the same repeats: wall time
(``time.perf_counter``: what the goal is about) and CPU time of this process (``time.process_time``, all its
threads: the work, which other jobs on the machine disturb less). The plain sum is single-threaded. Each figure is
the best of the repeats, and ``paired`` is the median of the per-repeat ratios to the plain sum.

The kernel that adds each update (``runtime.kernels``: numba's compiled one-pass loop when numba is installed,
``FK_AGG_KERNEL=numba``, else NumPy's three calls per chunk) is printed; with numba, the one-thread rows are also run with ``FK_AGG_KERNEL=numpy``
for comparison, and the first call's cost (compile, or load from numba's on-disk cache) is timed in fresh processes.
"""

from __future__ import annotations

import gc
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pymongo

from fedkeeper.runtime import blobstore, data, kernels, threads
from fedkeeper.runtime import weights as W
from fedkeeper.runtime.strategies import ClientUpdate, FedAvg, make_strategy
from fedkeeper.store import NxServer

AGGREGATOR = Path(__file__).resolve().parents[1] / "functions" / "fl_server_aggregator" / "handler.py"
MODEL = {"model": "mlp", "input_size": 784, "hidden_size": 500, "output_size": 10}

SHAPES = {"w1": (784, 500), "b1": (500,), "w2": (500, 10), "b2": (10,)}
SPEC = {k: (s, np.float32) for k, s in SHAPES.items()}
NUM_PARAMS = sum(int(np.prod(s)) for s in SHAPES.values())
REPEATS = 9


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


def _kernel_env(kernel: str) -> None:
    """Pick the add kernel for the next ``begin`` (``numba`` when installed, or ``numpy``)."""
    os.environ[kernels.ENV] = kernel


def fedavg(updates, n_threads: int | None = 1, kernel: str = "numba") -> dict[str, np.ndarray]:
    _kernel_env(kernel)
    agg = FedAvg(threads=n_threads)
    agg.begin(SPEC)
    for cid, (w, n) in enumerate(updates):
        agg.add(w, n, client_id=cid)
    return agg.result()


def fedavg_blobs(blobs: list[tuple[bytes, int]], n_threads: int | None = 1, kernel: str = "numba",
                 scan_each: bool = False) -> dict[str, np.ndarray]:
    """FedAvg over encoded updates: each decoded (zero-copy views), its digest verified, added; NaN/Inf checked
    on the mean (``result()``: the aggregator's ``admission.deferred_mean``), or with ``scan_each`` in every update
    as it is decoded."""
    _kernel_env(kernel)
    agg = FedAvg(threads=n_threads)
    agg.begin(SPEC)
    for cid, (blob, n) in enumerate(blobs):
        agg.add(W.decode(blob, SPEC, threads=n_threads, check_finite=scan_each), n, client_id=cid)
    return agg.result()


_FIRST_CALL = """
import time
t0 = time.perf_counter()
import numpy as np
from fedkeeper.runtime import kernels
add = kernels.compiled_add()
x = np.ones(8, np.float32)
x.flags.writeable = False  # decoded updates are read-only views: the signature the aggregator compiles
add(np.zeros(8), x, np.float64(1))
print(time.perf_counter() - t0)
"""


def first_call_seconds() -> tuple[float, float] | None:
    """Seconds from importing numba to the first update added, in a fresh process: with an empty on-disk cache
    (compile) and again with the cache it left (load). None without numba."""
    if kernels.active() != "numba":
        return None
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache, kernels.ENV: "numba"}
        cold, warm = (float(subprocess.run([sys.executable, "-c", _FIRST_CALL], env=env, check=True,
                                           capture_output=True, text=True).stdout) for _ in range(2))
    return cold, warm


def paired_timings(updates: list, blob_sets: dict[str, list[tuple[bytes, int]]], thread_counts: list[int],
                   compare_numpy: bool) -> dict[str, dict[str, list[float]]]:
    """The plain sum, FedAvg, and FedAvg from blobs per digest algorithm, with each thread count (and with the
    NumPy kernel on one thread when ``compare_numpy``), timed back to back in each repeat (wall and CPU), so the
    machine's noise hits all of them alike."""
    runs: dict[str, Any] = {"plain": lambda: plain_sum(updates)}
    for t in thread_counts:
        runs[f"fedavg/{t}"] = lambda t=t: fedavg(updates, t)
        for alg, blobs in blob_sets.items():
            runs[f"{alg}/{t}"] = lambda blobs=blobs, t=t: fedavg_blobs(blobs, t)
    for alg, blobs in blob_sets.items():
        runs[f"{alg}/1/scan"] = lambda blobs=blobs: fedavg_blobs(blobs, 1, scan_each=True)
    if compare_numpy:
        runs["fedavg/1/numpy"] = lambda: fedavg(updates, 1, "numpy")
        for alg, blobs in blob_sets.items():
            runs[f"{alg}/1/numpy"] = lambda blobs=blobs: fedavg_blobs(blobs, 1, "numpy")
    times: dict[str, dict[str, list[float]]] = {"wall": {k: [] for k in runs}, "cpu": {k: [] for k in runs}}
    for _ in range(REPEATS):
        gc.collect()
        for key, run in runs.items():
            c0, w0 = time.process_time(), time.perf_counter()
            run()
            w1, c1 = time.perf_counter(), time.process_time()
            times["wall"][key].append(w1 - w0)
            times["cpu"][key].append(c1 - c0)
    _kernel_env("numba")
    return times


def split_from_blobs(blobs: list[tuple[bytes, int]], n_threads: int, kernel: str = "numba") -> tuple[float, float]:
    """Wall seconds spent in decode (+ verify) and in add over the blobs, best of the repeats for each."""
    _kernel_env(kernel)
    best_decode = best_add = float("inf")
    for _ in range(3):
        decode_s = add_s = 0.0
        agg = FedAvg(threads=n_threads)
        agg.begin(SPEC)
        for cid, (blob, n) in enumerate(blobs):
            t0 = time.perf_counter()
            view = W.decode(blob, SPEC, threads=n_threads, check_finite=False)  # NaN/Inf: on the mean
            t1 = time.perf_counter()
            agg.add(view, n, client_id=cid)
            add_s += time.perf_counter() - t1
            decode_s += t1 - t0
        agg.result()
        best_decode, best_add = min(best_decode, decode_s), min(best_add, add_s)
    _kernel_env("numba")
    return best_decode, best_add


def peak_memory(count: int) -> int:
    """Peak of ``StreamingMean`` driven by a plain loop (whose variable still holds the last update at result())."""
    gc.collect()
    tracemalloc.start()
    try:
        fedavg(lazy_updates(count))
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def strategy_peak_memory(count: int) -> int:
    """Peak of the ``fedavg`` strategy as the aggregator calls it (``aggregate`` over ``ClientUpdate``s, which drops
    each update before reading the next and before the result); the previous model exists before the measurement."""
    def client_updates() -> Iterator[ClientUpdate]:
        for cid in range(count):
            w, n = make_update(cid)
            update = ClientUpdate(cid, n, w)
            del w
            yield update
            update = None  # noqa: F841 - as admission.Admitted does: drop it before the next one is made

    previous = make_update(10_000)[0]
    updates = client_updates()
    gc.collect()
    tracemalloc.start()
    try:
        make_strategy("fedavg").aggregate(updates, previous, {})
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
    _kernel_env("numba")  # numba's kernel where installed: this process adds enough to pay for it
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
    algs = [a for a in W.HASH_IDS if W.hash_available(a)]
    blob_sets = {alg: [(W.encode(w, alg), n) for w, n in updates] for alg in algs}
    many = max(threads.default_threads(), threads.available_cpus())  # threads are opt-in; the bench shows both
    thread_counts = [1] if many == 1 else [1, many]
    kernel = kernels.active()
    compare_numpy = kernel != "numpy"
    for alg, blobs in blob_sets.items():  # the same model whatever the digest, the threads and the kernel
        for t in thread_counts:
            assert all(fedavg_blobs(blobs, t)[k].tobytes() == got[k].tobytes() for k in SHAPES), (alg, t)
            assert all(fedavg_blobs(blobs, t, scan_each=True)[k].tobytes() == got[k].tobytes() for k in SHAPES)
            assert all(fedavg(updates, t)[k].tobytes() == got[k].tobytes() for k in SHAPES), t
        assert all(fedavg_blobs(blobs, 1, "numpy")[k].tobytes() == got[k].tobytes() for k in SHAPES), alg
    _kernel_env("numba")
    first_call = first_call_seconds()
    times = paired_timings(updates, blob_sets, thread_counts, compare_numpy)
    splits = {(alg, t, kernel): split_from_blobs(blobs, t) for alg, blobs in blob_sets.items() for t in thread_counts}
    if compare_numpy:
        splits.update({(alg, 1, "numpy"): split_from_blobs(blobs, 1, "numpy") for alg, blobs in blob_sets.items()})
    del updates, blob_sets
    gc.collect()
    peak10, peak100 = peak_memory(10), peak_memory(100)
    strategy10, strategy100 = strategy_peak_memory(10), strategy_peak_memory(100)

    print(f"threads: {thread_counts} (CPUs this process may use: {threads.available_cpus()}, "
          f"{threads.ENV}={os.environ.get(threads.ENV, 'unset')})")
    print(f"add kernel: {kernels.status()}" + ("; the NumPy kernel's rows are marked [numpy]" if compare_numpy else ""))
    if first_call is not None:
        print(f"first update's kernel, fresh process (numba import + compile, or + load from the on-disk cache): "
              f"{first_call[0]:.2f} s cold, {first_call[1]:.2f} s cached")
    for clock, label in (("wall", "wall time"), ("cpu", "CPU time (all threads)")):
        t = times[clock]
        best = {k: min(v) for k, v in t.items()}
        paired = {k: statistics.median(a / p for a, p in zip(v, t["plain"])) for k, v in t.items()}
        print()
        print(f"{label + ', same repeats, best of ' + str(REPEATS):<62}{'best':>10}{'median':>10}"
              f"{'per update':>12}{'x plain':>9}{'paired':>8}")
        rows = [("plain", "plain float32 sum (acc += w), arrays in memory, 1 thread")]
        for n in thread_counts:
            rows.append((f"fedavg/{n}", f"FedAvg (float64 sums, weighted), arrays in memory, {n} thr"))
            rows += [(f"{alg}/{n}", f"FedAvg from blobs: decode + verify ({alg}) + add, {n} thr") for alg in algs]
        rows += [(f"{alg}/1/scan", f"[scan each] FedAvg from blobs ({alg}), 1 thr") for alg in algs]
        if compare_numpy:
            rows.append(("fedavg/1/numpy", "[numpy] FedAvg, arrays in memory, 1 thr"))
            rows += [(f"{alg}/1/numpy", f"[numpy] FedAvg from blobs ({alg}), 1 thr") for alg in algs]
        for key, text in rows:
            print(f"{text:<62}{best[key] * 1e3:>8.1f}ms{statistics.median(t[key]) * 1e3:>8.1f}ms"
                  f"{best[key] / n_updates * 1e3:>10.3f}ms{best[key] / best['plain']:>8.2f}x{paired[key]:>7.2f}x")
        for n in thread_counts:
            for alg in algs:
                ratio = best[f"{alg}/{n}"] / best["plain"]
                print(f"  {label}: FedAvg with decode and verify ({alg}, {n} thr, {kernel}) / plain float32 sum: {ratio:.2f}x "
                      f"best, {paired[f'{alg}/{n}']:.2f}x paired median   goal <= 2x: {'met' if ratio <= 2 else 'MISSED'}")
    print()
    for (alg, n, kern), (decode_s, add_s) in splits.items():
        print(f"{'  ' + alg + f' blobs, {n} thr, {kern}, wall split: decode + verify | add':<62}{decode_s * 1e3:>8.1f}ms"
              f"{add_s * 1e3:>8.1f}ms{decode_s / n_updates * 1e3:>8.3f} |{add_s / n_updates * 1e3:>6.3f}ms")
    print()
    print(f"max |FedAvg - textbook float64 formula|: {err:.2e}; the same model from blobs of every digest")
    print()
    model_plus_update = 2 * NUM_PARAMS * 4

    def verdict(label: str, peak10: int, peak100: int) -> None:
        flat, size = peak100 / peak10, peak100 / model_plus_update
        print(f"{label:<54}{peak10 / 2**20:7.2f} MB {peak100 / 2**20:7.2f} MB   100/10 {flat:.3f} "
              f"(flat: {'met' if abs(flat - 1) <= 0.2 else 'MISSED'})   / (model + update) {size:.2f} "
              f"(<= 2: {'met' if size <= 2 else 'MISSED'})")

    print(f"peak traced memory (goals: flat in the clients within 20%; within 2x of one model + one update, "
          f"{model_plus_update / 2**20:.2f} MB)")
    print(f"{'':<54}{'10 upd.':>10}{'100 upd.':>11}")
    verdict("StreamingMean in a loop (last update still referenced)", peak10, peak100)
    verdict("fedavg strategy, as the aggregator calls it", strategy10, strategy100)
    hp = handler_peak_memory((10, 100))
    verdict("aggregator handler (nx-27017)", hp[10], hp[100])
    print("(the handler's peak: the float64 sums while the driver's reply buffer and the decoded document of one\n"
          " update both exist, i.e. 2 x model + 2 x update; and, at the end, the new model, its encoding and the\n"
          " driver's two copies of it. FedAvg keeps only the previous model's spec, updates of 1 MB and more are read\n"
          " one per round trip, the kernel's scratch exists only while an update is added)")
    print(f"(for scale: one float32 update {mb:.2f} MB, the float64 running sums {2 * mb:.2f} MB, "
          f"100 updates held at once {100 * mb:.0f} MB)")


if __name__ == "__main__":
    main()

"""Blob codec throughput next to a plain copy, and store round trips against the embedded nx-27017 server.

Run: python bench/bench_store.py [--repeat N] [--docs N]. Figures are best-of-N wall times measured in this run;
the ratios compare against a plain bytes copy of the same size measured right next to them (target: decode within
2x of the copy, i.e. no copy in decode).

Last, what a round's client updates cost the embedded server, per update document (10 KB blob, as the small
model's), with its WAL checkpoints on their own thread and left to SQLite (``FK_NX_CHECKPOINT=0``), side by side,
alternating which goes first: the server process's CPU and the client's wall time per document for each step an
update goes through (inserted one per command, as a client does, and eight per command, for comparison; listed
without blobs; read; pruned).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fedkeeper.runtime import weights as W
from fedkeeper.runtime.blobstore import BlobStore
from fedkeeper.store import open_store

MB = 1_000_000


def best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def make_model(total_bytes: int, seed: int = 0) -> dict[str, np.ndarray]:
    """An MLP-like set of float32 arrays adding up to about ``total_bytes``."""
    rng = np.random.default_rng(seed)
    n = total_bytes // 4
    hidden = max(8, int((n / 2) ** 0.5))
    inputs = max(1, (n - hidden * hidden - 2 * hidden - 10) // hidden)
    shapes = {"l1/w": (inputs, hidden), "l1/b": (hidden,), "l2/w": (hidden, hidden), "l2/b": (hidden,), "out/b": (10,)}
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}


def codec_rows(repeat: int) -> list[tuple]:
    rows = []
    for label, size in (("1.6 MB", int(1.6 * MB)), ("100 MB", 100 * MB)):
        weights = make_model(size)
        blob = W.encode(weights)
        spec = W.spec_of(weights)
        n = len(blob)
        r = repeat if size < 10 * MB else max(2, repeat // 2)
        t_copy = best(lambda: memoryview(blob).tobytes(), r)
        t_enc = best(lambda: W.encode(weights), r)
        t_dec = best(lambda: W.decode(blob, spec), r)
        t_raw = best(lambda: W.decode(blob, spec, verify=False), r)
        rows.append((label, n, t_copy, t_enc, t_dec, t_raw))
    return rows


def store_rows(repeat: int) -> tuple[float | None, list[tuple]]:
    settings = types.SimpleNamespace(
        url="embedded", db="bench", username=None, password=None, auth_source=None, tls=None, tls_ca_file=None,
        tls_allow_invalid_certificates=False, connect_timeout_ms=5000, server_selection_timeout_ms=5000, keep_models=3,
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="fk-bench-") as tmp:
        t0 = time.perf_counter()
        with open_store(settings, workdir=Path(tmp)) as store:
            opened = time.perf_counter() - t0
            startup = store.embedded.startup_s if store.embedded else None
            gridfs_only = BlobStore(store.db, inline_limit=0)
            cases = [
                ("inline", "1.6 MB", store.blobs, int(1.6 * MB)),
                ("gridfs", "1.6 MB", gridfs_only, int(1.6 * MB)),
                ("inline", "14 MB", store.blobs, 14 * MB),
                ("gridfs", "14 MB", gridfs_only, 14 * MB),
                ("gridfs", "20 MB", store.blobs, 20 * MB),
            ]
            for i, (kind, label, blobs, size) in enumerate(cases):
                weights = make_model(size, seed=i)
                spec = W.spec_of(weights)
                writes, reads = [], []
                for k in range(repeat):
                    t = time.perf_counter()
                    doc = blobs.write_model(f"bench{i}", k, weights, {"accuracy": 0.0})
                    writes.append(time.perf_counter() - t)
                    assert doc["storage"] == kind and not doc["duplicate"], doc
                    t = time.perf_counter()
                    blobs.read_model(f"bench{i}", k, spec)
                    reads.append(time.perf_counter() - t)
                rows.append((kind, label, doc["size"], min(writes), min(reads)))
    return startup, [("open_store (start + connect + indexes)", opened)], rows


UPDATE_STEPS = ("insert, 1 per command", "insert, 8 per command", "list without blobs", "read with blobs", "prune")


def update_doc_costs(docs: int, checkpoint: bool) -> dict[str, tuple[float, float]]:
    """(server CPU s, wall s) per document for each of `UPDATE_STEPS`, on a fresh embedded server."""
    import bson
    import psutil
    import pymongo

    from fedkeeper.store.embedded import NxServer

    before = os.environ.get("FK_NX_CHECKPOINT")
    os.environ["FK_NX_CHECKPOINT"] = "1" if checkpoint else "0"
    try:
        with tempfile.TemporaryDirectory(prefix="fk-bench-updates-") as tmp:
            server = NxServer.in_dir(Path(tmp))
            url = server.start()
            try:
                proc = psutil.Process(server.pid)
                client = pymongo.MongoClient(url, directConnection=True)
                coll = client["bench"]["updates"]
                coll.create_index([("run_id", 1), ("round", 1), ("client_id", 1)], name="run_round_client")
                blob = np.random.default_rng(0).bytes(10_000)
                out: dict[str, tuple[float, float]] = {}

                def step(name: str, fn: Callable[[], object]) -> object:
                    cpu = proc.cpu_times()
                    t0 = time.perf_counter()
                    result = fn()
                    wall = time.perf_counter() - t0
                    after = proc.cpu_times()
                    out[name] = ((after.user + after.system - cpu.user - cpu.system) / docs, wall / docs)
                    return result

                def round_docs(r: int) -> list[dict[str, object]]:
                    return [{"_id": f"bench:{r}:{i}:a{i:08d}", "run_id": "bench", "round": r, "client_id": i,
                             "activation_id": f"a{i:08d}", "attempt": 1, "num_examples": 50,
                             "metrics": {"train_loss": 0.5, "duration_s": 0.001}, "blob": bson.Binary(blob),
                             "sha256": "0" * 64} for i in range(docs)]

                one, many = round_docs(1), round_docs(2)
                step(UPDATE_STEPS[0], lambda: [coll.insert_one(d) for d in one])
                step(UPDATE_STEPS[1], lambda: [coll.insert_many(many[k:k + 8]) for k in range(0, docs, 8)])
                ids = step(UPDATE_STEPS[2], lambda: [d["_id"] for d in coll.find({"run_id": "bench", "round": 1},
                                                                                  {"blob": 0})])
                step(UPDATE_STEPS[3], lambda: list(coll.find({"run_id": "bench", "round": 1})))
                step(UPDATE_STEPS[4], lambda: [coll.update_many(
                    {"_id": {"$in": ids[k:k + 250]}, "blob": {"$ne": None}},  # as BlobStore._prune's batches
                    {"$set": {"blob": None, "pruned": time.time()}}) for k in range(0, docs, 250)])
                client.close()
                return out
            finally:
                server.stop()
    finally:
        if before is None:
            os.environ.pop("FK_NX_CHECKPOINT", None)
        else:
            os.environ["FK_NX_CHECKPOINT"] = before


def print_update_costs(docs: int, pairs: int) -> None:
    runs: dict[bool, list[dict[str, tuple[float, float]]]] = {True: [], False: []}
    for k in range(pairs):
        for checkpoint in ((False, True) if k % 2 == 0 else (True, False)):
            runs[checkpoint].append(update_doc_costs(docs, checkpoint))
    print(f"Client update documents on the embedded server ({docs} of 10 KB per step; median of {pairs} runs each, "
          f"alternating): server CPU and client wall time, ms per document")
    print(f"{'step':<24} {'CPU, SQLite checkpoints':>24} {'CPU, own thread':>16} {'wall, SQLite':>13} "
          f"{'wall, own thread':>17}")
    med = lambda values: float(np.median(values))  # noqa: E731
    for name in UPDATE_STEPS:
        cpu_off, cpu_on = (med([r[name][0] for r in runs[c]]) for c in (False, True))
        wall_off, wall_on = (med([r[name][1] for r in runs[c]]) for c in (False, True))
        print(f"{name:<24} {cpu_off * 1e3:>24.3f} {cpu_on * 1e3:>16.3f} {wall_off * 1e3:>13.3f} {wall_on * 1e3:>17.3f}")
    print("  (own thread: the checkpoints' CPU is still the server's, but no request waits for their fsyncs)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--docs", type=int, default=1000, help="update documents per step in the last table")
    parser.add_argument("--pairs", type=int, default=3, help="runs of each checkpoint setting in the last table")
    args = parser.parse_args()

    print("Blob codec (best of N; MB/s = 1e6 bytes per second)")
    print(f"{'model':>7} {'bytes':>11} {'copy MB/s':>10} {'encode MB/s':>12} {'decode MB/s':>12} "
          f"{'decode/copy':>12} {'no-verify':>10} {'no-verify/copy':>15}")
    for label, n, t_copy, t_enc, t_dec, t_raw in codec_rows(args.repeat):
        print(f"{label:>7} {n:>11,} {n / t_copy / MB:>10.0f} {n / t_enc / MB:>12.0f} {n / t_dec / MB:>12.0f} "
              f"{t_dec / t_copy:>11.2f}x {t_raw * 1e6:>8.0f}us {t_raw / t_copy:>14.4f}x")
    print("  decode = header checks + sha256 + NaN/Inf scan over zero-copy views; no-verify = views only.")
    print()

    startup, extra, rows = store_rows(max(2, args.repeat // 2 + 1))
    print("Embedded nx-27017 store (write_model / read_model incl. encode, sha256 and validation)")
    print(f"  server start-up until a ping answers: {startup:.2f} s" if startup is not None else "  (not embedded)")
    for name, seconds in extra:
        print(f"  {name}: {seconds:.2f} s")
    print(f"{'storage':>8} {'model':>7} {'bytes':>11} {'write ms':>9} {'read ms':>8} {'write MB/s':>11} {'read MB/s':>10}")
    for kind, label, size, w, r in rows:
        print(f"{kind:>8} {label:>7} {size:>11,} {w * 1e3:>9.0f} {r * 1e3:>8.0f} {size / w / MB:>11.0f} {size / r / MB:>10.0f}")
    by = {(k, lbl): (w, r) for k, lbl, _, w, r in rows}
    for label in ("1.6 MB", "14 MB"):
        (wi, ri), (wg, rg) = by[("inline", label)], by[("gridfs", label)]
        print(f"  {label}: GridFS/inline time ratio  write {wg / wi:.2f}x  read {rg / ri:.2f}x")
    print()
    print_update_costs(args.docs, args.pairs)


if __name__ == "__main__":
    main()

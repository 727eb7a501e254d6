"""Blob codec throughput next to a plain copy, and store round trips against the embedded nx-27017 server.

Run: python bench/bench_store.py [--repeat N]. Figures are best-of-N wall times measured in this run; the
ratios compare against a plain bytes copy of the same size measured right next to them (target: decode within
2x of the copy, i.e. no copy in decode).
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
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


if __name__ == "__main__":
    main()

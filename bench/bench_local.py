"""Benchmark of the local platform: warm round trip, throughput through 2 workers, cold start.

    python bench/bench_local.py [--calls 1000] [--repeats 300] [--colds 8]

Prints figures measured in this run and their ratios; no thresholds are asserted (the issue's target of
>= 200 no-op invocations per second through a 2-worker cluster is printed next to the measured value).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from fedkeeper import packaging
from fedkeeper.providers.local.config import LocalCluster
from fedkeeper.providers.base import DeploySpec, State
from fedkeeper.providers.local.provider import LocalProvider

NOOP = "def handle(params):\n    return {}\n"
NUMPY = "import numpy\nimport pymongo\n\n\ndef handle(params):\n    return {'numpy': numpy.__version__}\n"


def make_function(root: Path, name: str, source: str) -> DeploySpec:
    folder = root / "functions" / name
    folder.mkdir(parents=True)
    (folder / "handler.py").write_text(source)
    art = packaging.build(folder, "local")
    return DeploySpec(name=name, function=name, artifact=art.data, digest=art.sha256, memory_mb=256, timeout_s=60)


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def round_trips(p: LocalProvider, name: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        st = p.wait(p.invoke(name, {}), 60)
        out.append(time.perf_counter() - t)
        assert st.state is State.SUCCEEDED, st.error
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=300)
    ap.add_argument("--colds", type=int, default=8)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="fk-bench-local-") as tmp:
        root = Path(tmp)
        noop = make_function(root, "noop", NOOP)
        heavy = make_function(root, "numpy-import", NUMPY)

        # warm round trip and throughput, 2 workers
        p = LocalProvider("bench", LocalCluster(concurrency=2, keep_warm_s=600), workdir=root)
        try:
            p.deploy(noop)
            warm_up = [p.invoke(noop.name, {}) for _ in range(4)]  # both workers spawned and warm
            for inv in warm_up:
                p.wait(inv, 60)
            rt = round_trips(p, noop.name, args.repeats)
            t0 = time.perf_counter()
            invs = [p.invoke(noop.name, {"i": i}) for i in range(args.calls)]
            submit_s = time.perf_counter() - t0
            statuses = [p.wait(inv, 120) for inv in invs]
            total_s = time.perf_counter() - t0
            ok = sum(s.state is State.SUCCEEDED for s in statuses)
            cold_in_batch = sum(bool(s.cold) for s in statuses)
            poll_t = time.perf_counter()
            for inv in invs:
                p.poll(inv)
            poll_us = (time.perf_counter() - poll_t) / len(invs) * 1e6
        finally:
            p.close()

        # cold starts: keep_warm_s=0 retires each worker as soon as it is idle, so every call spawns one
        colds: dict[str, list[float]] = {}
        for spec in (noop, heavy):
            c = LocalProvider(f"cold-{spec.name}", LocalCluster(concurrency=1, keep_warm_s=0), workdir=root)
            try:
                c.deploy(spec)
                times = []
                for _ in range(args.colds):
                    while c.worker_pids():  # the previous worker is still exiting
                        time.sleep(0.005)
                    t = time.perf_counter()
                    st = c.wait(c.invoke(spec.name, {}), 60)
                    times.append(time.perf_counter() - t)
                    assert st.state is State.SUCCEEDED and st.cold, (st.state, st.cold, st.error)
                colds[spec.name] = times
            finally:
                c.close()

    warm_ms = statistics.median(rt) * 1000
    tput = args.calls / total_s
    cold_ms = statistics.median(colds["noop"]) * 1000
    cold_np_ms = statistics.median(colds["numpy-import"]) * 1000
    rows = [
        ("warm no-op round trip, median", f"{warm_ms:.3f} ms", f"p95 {percentile(rt, 0.95) * 1000:.3f} ms, n={len(rt)}"),
        (f"throughput, {args.calls} no-op calls, 2 workers", f"{tput:,.0f} /s",
         f"target >= 200/s: {tput / 200:.1f}x; submit {submit_s * 1000:.0f} ms; {ok}/{args.calls} ok; "
         f"{cold_in_batch} cold"),
        ("poll() cost", f"{poll_us:.2f} us", "dict lookup"),
        ("cold start, no-op handler, median", f"{cold_ms:.1f} ms",
         f"spawn + interpreter + import, n={len(colds['noop'])}"),
        ("cold start, numpy+pymongo handler, median", f"{cold_np_ms:.1f} ms", f"n={len(colds['numpy-import'])}"),
        ("cold / warm (no-op)", f"{cold_ms / warm_ms:,.0f}x", ""),
        ("numpy cold / no-op cold", f"{cold_np_ms / cold_ms:.2f}x", ""),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"local platform benchmark (Python {sys.version.split()[0]})")
    for label, value, note in rows:
        print(f"  {label:<{width}}  {value:>12}  {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""OpenWhisk provider against the fake controller (tests/fake_openwhisk.py) on 127.0.0.1.

Run: ``python bench/bench_openwhisk.py [--n 40]``. Prints figures measured in this run and same-run ratios
(no pass/fail exit code). Absolute numbers are the fake's, not a real cluster's; the ratios show what the
provider's choices buy:

- poll cost: `provider.poll` (one GET over the pooled keep-alive session) next to the same GET on a fresh
  connection each time, interleaved. On plain-HTTP loopback a TCP handshake costs little, so expect a ratio
  near 1 here; the pool pays off against a remote controller over TLS, where every new connection costs a
  handshake round trip or more. The figure mainly shows that the provider adds no overhead of its own.
- invoke submit cost (POST blocking=false → activation id), per call.
- cold vs warm activation: the record's `duration` for an activation that started a new process (initTime)
  next to one that reused a warm process.
- n concurrent nodeinfo activations: submit all, then poll them from 8 threads as the tracker does.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fake_openwhisk import FakeOpenWhisk  # noqa: E402

from fedkeeper import packaging  # noqa: E402
from fedkeeper.providers.openwhisk.config import OpenWhiskCluster  # noqa: E402
from fedkeeper.providers.base import LABEL_DIGEST, LABEL_EXPERIMENT, LABEL_FUNCTION, DeploySpec, Invocation, \
    State, Status, spec_digest  # noqa: E402
from fedkeeper.providers.openwhisk.provider import OpenWhiskProvider  # noqa: E402


def wait(provider: OpenWhiskProvider, inv: Invocation) -> Status:
    while True:
        status = provider.poll(inv)
        if status.state.done:
            return status
        time.sleep(0.005)


def timed(fn, repeat: int) -> list[float]:  # type: ignore[no-untyped-def]
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=40, help="concurrent activations in the throughput figure")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, FakeOpenWhisk(workdir=Path(tmp) / "fake") as fake:
        config = OpenWhiskCluster(api_host=fake.url, auth=fake.auth)
        artifact = packaging.build("nodeinfo", "openwhisk")
        digest = spec_digest(artifact.sha256, 256, 30.0, 1, {}, {})
        spec = DeploySpec(name="fk-bench-nodeinfo", function="nodeinfo", artifact=artifact.data, digest=digest,
                          memory_mb=256, timeout_s=30.0, labels={LABEL_EXPERIMENT: "bench", LABEL_FUNCTION: "nodeinfo",
                                                                 LABEL_DIGEST: digest})
        with OpenWhiskProvider("bench", config, workdir=Path(tmp)) as provider:
            t = time.perf_counter()
            provider.deploy(spec)
            deploy_s = time.perf_counter() - t
            t = time.perf_counter()
            provider.deploy(spec)
            noop_s = time.perf_counter() - t

            cold = wait(provider, provider.invoke(spec.name, {}))
            warm = [wait(provider, provider.invoke(spec.name, {})) for _ in range(5)]
            assert cold.cold and not any(w.cold for w in warm)

            inv = provider.invoke(spec.name, {})
            wait(provider, inv)
            url = fake.url + provider.client.activation_path(inv.activation_id)
            auth = tuple(fake.auth.split(":", 1))

            def fresh() -> None:
                with requests.Session() as s:
                    s.get(url, auth=auth, timeout=10).raise_for_status()

            pooled, unpooled = [], []
            for _ in range(300):  # interleaved, so that load from other processes hits both alike
                pooled += timed(lambda: provider.poll(inv), 1)
                unpooled += timed(fresh, 1)
            submit = timed(lambda: provider.invoke(spec.name, {}), 20)
            fake.wait_idle()

            t = time.perf_counter()
            invs = [provider.invoke(spec.name, {"i": i}) for i in range(args.n)]
            with ThreadPoolExecutor(max_workers=8) as pool:
                statuses = list(pool.map(lambda i: wait(provider, i), invs))
            burst_s = time.perf_counter() - t
            assert all(s.state is State.SUCCEEDED for s in statuses)

    med = statistics.median
    rows = [
        ("deploy (create, %d KB zip)" % (len(artifact.data) // 1024), deploy_s * 1e3, "ms"),
        ("deploy again (no-op: one GET)", noop_s * 1e3, "ms"),
        ("poll, pooled session (median)", med(pooled) * 1e3, "ms"),
        ("poll, new connection each (median)", med(unpooled) * 1e3, "ms"),
        ("invoke submit (median)", med(submit) * 1e3, "ms"),
        ("cold activation duration", (cold.duration_s or 0) * 1e3, "ms"),
        ("warm activation duration (median)", med(w.duration_s or 0 for w in warm) * 1e3, "ms"),
        (f"{args.n} activations, submit + poll to done", burst_s, "s"),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value, unit in rows:
        print(f"{name:<{width}}  {value:9.2f} {unit}")
    print()
    print(f"{'ratio unpooled / pooled poll':<{width}}  {med(unpooled) / med(pooled):9.2f} x")
    print(f"{'ratio deploy / no-op redeploy':<{width}}  {deploy_s / noop_s:9.2f} x")
    warm_ms = max(1e-3, med(w.duration_s or 0 for w in warm))
    print(f"{'ratio cold / warm activation':<{width}}  {(cold.duration_s or 0) / warm_ms:9.2f} x")


if __name__ == "__main__":
    main()

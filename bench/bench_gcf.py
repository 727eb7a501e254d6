"""Benchmark of the Cloud Functions provider against the tests' fake (admin API + functions-framework runtime).

    python bench/bench_gcf.py [--calls 96]

Prints figures measured in this run and their ratios; no thresholds are asserted. The absolute numbers are
those of a local fake (no network, no Google front end); what carries over to the real service are the ratios:

- deploy: a first deploy (upload + create + operation + runtime start) next to a repeated deploy of the same
  spec (one `get_function`, nothing uploaded);
- invocations per second through the provider's thread pool with max_inflight 1 and 8;
- ID tokens: calls with the per-audience token cache next to minting a fresh token for every call (what
  calling `fetch_id_token` per request would cost; against Google that is one more HTTPS round trip per call).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from fake_gcf import FakeGcf, loopback_only  # noqa: E402

from fedkeeper import packaging  # noqa: E402
from fedkeeper.providers.google.config import GcfCluster  # noqa: E402
from fedkeeper.providers.base import (  # noqa: E402
    LABEL_DIGEST,
    LABEL_EXPERIMENT,
    LABEL_FUNCTION,
    DeploySpec,
    State,
    spec_digest,
)
from fedkeeper.providers.google.provider import GcfProvider  # noqa: E402
from fedkeeper.providers.google.auth import IdTokenCache  # noqa: E402

NAME = "fk-bench-nodeinfo"


def spec() -> DeploySpec:
    artifact = packaging.build("nodeinfo", "google")
    env = {"FK_MONGO_DB": "bench"}
    digest = spec_digest(artifact.sha256, 256, 30.0, 1, env, {})
    return DeploySpec(name=NAME, function="nodeinfo", artifact=artifact.data, digest=digest, memory_mb=256,
                      timeout_s=30.0, env=env,
                      labels={LABEL_EXPERIMENT: "bench", LABEL_FUNCTION: "nodeinfo", LABEL_DIGEST: digest})


def calls_per_s(provider: GcfProvider, calls: int) -> float:
    started = time.perf_counter()
    invocations = [provider.invoke(NAME, {"i": i}) for i in range(calls)]
    pending = list(invocations)
    while pending:
        still = []
        for inv in pending:
            status = provider.poll(inv)
            if not status.state.done:
                still.append(inv)
            elif status.state is not State.SUCCEEDED:
                raise RuntimeError(f"call failed: {status.error}")
        pending = still
        if pending:
            time.sleep(0.002)
    return calls / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=96)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, loopback_only(), FakeGcf(workdir=Path(tmp) / "fake") as fake:
        base = dict(project_id="bench", region="r1", credentials="anonymous", api_endpoint=fake.endpoint,
                    id_token=False)
        the_spec = spec()
        with GcfProvider("gcf", GcfCluster(**base, max_inflight=1), workdir=Path(tmp)) as serial:
            t0 = time.perf_counter()
            assert serial.deploy(the_spec).action == "created"
            created_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            for _ in range(10):
                assert serial.deploy(the_spec).action == "unchanged"
            unchanged_s = (time.perf_counter() - t0) / 10
            calls_per_s(serial, 4)  # warm the instance and the connection pool
            serial_rate = calls_per_s(serial, args.calls)
        with GcfProvider("gcf", GcfCluster(**base, max_inflight=8), workdir=Path(tmp)) as parallel:
            parallel_rate = calls_per_s(parallel, args.calls)

        key = Path(tmp) / "sa.json"
        fake.service_account(key, "bench")
        fake.require_id_token = True
        authed = dict(base, credentials=str(key), id_token=True, max_inflight=8)
        with GcfProvider("gcf", GcfCluster(**authed), workdir=Path(tmp)) as cached:
            calls_per_s(cached, 4)
            minted_before = len(fake.token_requests)
            cached_rate = calls_per_s(cached, args.calls)
            cached_mints = len(fake.token_requests) - minted_before
        with GcfProvider("gcf", GcfCluster(**authed), workdir=Path(tmp)) as uncached:
            uncached._tokens = IdTokenCache(uncached._tokens._fetch, margin_s=float("inf"))  # never reuse
            calls_per_s(uncached, 4)
            minted_before = len(fake.token_requests)
            uncached_rate = calls_per_s(uncached, args.calls)
            uncached_mints = len(fake.token_requests) - minted_before

    print(f"{'figure':48} {'value':>12}")
    print(f"{'first deploy (upload, create, operation, start) s':48} {created_s:12.3f}")
    print(f"{'repeated deploy of the same spec s':48} {unchanged_s:12.4f}")
    print(f"{'  ratio first / repeated':48} {created_s / unchanged_s:12.0f}x")
    print(f"{'calls/s, max_inflight 1':48} {serial_rate:12.1f}")
    print(f"{'calls/s, max_inflight 8':48} {parallel_rate:12.1f}")
    print(f"{'  ratio 8 / 1':48} {parallel_rate / serial_rate:12.2f}x")
    print(f"{'calls/s with ID token cache (tokens minted)':48} {cached_rate:12.1f} ({cached_mints})")
    print(f"{'calls/s minting a token per call (tokens minted)':48} {uncached_rate:12.1f} ({uncached_mints})")
    print(f"{'  ratio cached / per call':48} {cached_rate / uncached_rate:12.2f}x")


if __name__ == "__main__":
    main()

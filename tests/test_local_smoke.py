"""`fedkeeper smoke` logic: nodeinfo deployed, invoked, reported and removed on every selected cluster."""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from fedkeeper import config
from fedkeeper.fabric import Fabric
from fedkeeper.providers.base import LABEL_EXPERIMENT, PlatformError
from fedkeeper.scenarios.smoke import SmokeResult, render_smoke_table, run_smoke

pytestmark = pytest.mark.integration

CONFIG = """
experiment: smoke-test
providers:
  local:
    laptop: {concurrency: 1}
    edge: {concurrency: 1, cold_start_ms: 20}
functions:
  nodeinfo:
    local: {memory: 300, timeout: 20}
scenarios: {smoke: {}}
"""


def test_smoke_on_every_local_cluster(tmp_path: Path) -> None:
    cfg = config.load_text(CONFIG)
    stages: list[tuple[str, str]] = []
    with Fabric(cfg, tmp_path) as fabric:
        rows = run_smoke(fabric, None, progress=lambda cluster, stage: stages.append((cluster, stage)))
        for cluster in ("laptop", "edge"):
            assert fabric.provider(cluster).list({LABEL_EXPERIMENT: "smoke-test"}) == []  # removed again
    assert [r.cluster for r in rows] == ["laptop", "edge"]
    for r in rows:
        assert r.ok, r.error
        assert r.platform == "local" and r.state == "succeeded" and r.removed is True
        assert r.cold is True and r.duration_s is not None and r.activation_id
        assert r.hostname == socket.gethostname()
        assert r.python == sys.version.split()[0]
        assert r.cpu_count and r.cpu_count >= 1
        assert r.memory_limit_mb == 300  # the limit the local platform enforces on the worker
        assert r.name == "fk-smoke-test-nodeinfo"
    assert ("laptop", "deploying") in stages and ("edge", "removing") in stages and ("edge", "done") in stages

    console = Console(record=True, width=200)
    render_smoke_table(rows, console)
    text = console.export_text()
    assert "laptop" in text and "edge" in text and "cold" in text and "ok" in text


def test_smoke_selected_clusters_only(tmp_path: Path) -> None:
    cfg = config.load_text(CONFIG)
    with Fabric(cfg, tmp_path) as fabric:
        rows = run_smoke(fabric, ["edge"])
        with pytest.raises(KeyError, match="nowhere"):
            run_smoke(fabric, ["nowhere"])
    assert [r.cluster for r in rows] == ["edge"] and rows[0].ok


class _BrokenProvider:
    """Deploys, then the platform fails the invocation: the row fails and the function is still removed."""

    def __init__(self) -> None:
        self.removed: list[str] = []

    def deploy(self, spec: Any) -> None:
        return None

    def invoke(self, name: str, payload: dict) -> Any:
        raise PlatformError("broken", "HTTP 503 from the controller")

    def remove(self, name: str) -> bool:
        self.removed.append(name)
        return True


class _MixedFabric:
    """A real fabric whose cluster 'broken' is replaced by a failing stand-in."""

    def __init__(self, real: Fabric) -> None:
        self.real = real
        self.config = real.config
        self.clusters = {**real.clusters, "broken": real.clusters["laptop"]}
        self.broken = _BrokenProvider()

    def kind(self, cluster: str) -> str:
        return "openwhisk" if cluster == "broken" else self.real.kind(cluster)

    def provider(self, cluster: str) -> Any:
        return self.broken if cluster == "broken" else self.real.provider(cluster)

    def deploy_spec(self, function: str, cluster: str, store_env: dict[str, str]) -> Any:
        return self.real.deploy_spec(function, "laptop" if cluster == "broken" else cluster, store_env)


def test_one_failing_cluster_does_not_stop_the_others(tmp_path: Path) -> None:
    cfg = config.load_text(CONFIG)
    with Fabric(cfg, tmp_path) as real:
        fabric = _MixedFabric(real)
        rows = run_smoke(fabric, ["broken", "laptop"])
    broken, laptop = rows
    assert not broken.ok and "HTTP 503" in broken.error and broken.platform == "OpenWhisk"
    assert fabric.broken.removed == ["fk-smoke-test-nodeinfo"]  # removed even though the invocation failed
    assert laptop.ok
    console = Console(record=True, width=200)
    render_smoke_table(rows, console)
    assert "HTTP 503" in console.export_text()


def test_smoke_result_as_dict() -> None:
    row = SmokeResult(cluster="c", platform="local", state="failed", error="x")
    assert row.as_dict()["cluster"] == "c" and not row.ok

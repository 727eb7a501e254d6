"""Helpers for the local platform tests: build a provider on a tmp workdir and deploy tests/functions/<name>."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psutil

from fedkeeper import packaging
from fedkeeper.providers.local.config import Faults, LocalCluster
from fedkeeper.providers.base import LABEL_EXPERIMENT, LABEL_FUNCTION, DeploySpec, spec_digest
from fedkeeper.providers.local.provider import LocalProvider

FUNCTIONS = Path(__file__).resolve().parent / "functions"


def make_provider(workdir: Path, cluster: str = "lab", *, faults: dict[str, Any] | None = None,
                  **settings: Any) -> LocalProvider:
    config = LocalCluster(**settings, faults=Faults(**(faults or {})))
    return LocalProvider(cluster, config, workdir=workdir)


def local_spec(function: str, *, name: str | None = None, memory_mb: int = 256, timeout_s: float = 10.0,
               env: dict[str, str] | None = None, experiment: str = "t") -> DeploySpec:
    artifact = packaging.build(FUNCTIONS / function, "local")
    env = dict(env or {})
    digest = spec_digest(artifact.sha256, memory_mb, timeout_s, 1, env, {})
    return DeploySpec(name=name or f"fk-{experiment}-{function.replace('_', '-')}", function=function,
                      artifact=artifact.data, digest=digest, memory_mb=memory_mb, timeout_s=timeout_s, env=env,
                      labels={LABEL_EXPERIMENT: experiment, LABEL_FUNCTION: function})


def deploy(provider: LocalProvider, function: str, **kwargs: Any) -> str:
    spec = local_spec(function, **kwargs)
    provider.deploy(spec)
    return spec.name


def running(pid: int) -> bool:
    """True while the process exists and is not a zombie (an unreaped corpse runs nothing)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_until(predicate: Any, timeout_s: float = 10.0, interval_s: float = 0.02) -> bool:
    """Wait for a condition (bounded); returns its final value. Not a timing assertion: only a bound on waiting."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return bool(predicate())

"""What a validated `Config` means for a run: clients per cluster, the server's cluster, each function's
limits, and the config as data without secrets (for logs and the runs document).

Its own module because both the cross-field checks (`config_checks`) and the rest of FedKeeper (through the
`config` facade) read these, and the checks must not import the loader that runs them.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from fedkeeper.config import legacy as config_legacy
from fedkeeper.config.errors import is_secret_key
from fedkeeper.config.models import FUNCTION_DEFAULTS, Config
from fedkeeper.providers import registry
from fedkeeper.secrets import Redactor


class _PlacementError(ValueError):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path, self.message = path, message


def placement(config: Config) -> dict[str, int]:
    """Clients per cluster: explicit `placement`, the legacy per-platform counts, or all on the only cluster.

    Client ids are dealt out in this order (fabric.client_clusters), so the dict order matters.
    """
    info = config.fl.clients_info
    base = "scenarios.federated_learning.clients_info"
    if info.placement is not None:
        return dict(info.placement)
    legacy = {k: getattr(info, k) for k in config_legacy.LEGACY_COUNT_KEYS}
    if any(v is not None for v in legacy.values()):
        owners = {key: spec for spec in registry.platforms() for key in spec.legacy_count_keys}
        counts: dict[str, int] = {}
        for key, count in legacy.items():
            if not count:
                continue
            spec = owners.get(key)
            names = spec.legacy_count_targets(key, getattr(config.providers, spec.kind)) if spec else []
            if not names:
                what = spec.legacy_count_description(key) if spec else "cluster"
                raise _PlacementError(f"{base}.{key}", f"{count} clients, but no {what} is defined under providers")
            for i, name in enumerate(names):  # spread evenly, earlier clusters take the remainder
                counts[name] = counts.get(name, 0) + count // len(names) + (1 if i < count % len(names) else 0)
        return counts
    clusters = config.clusters()
    if len(clusters) == 1:
        return {next(iter(clusters)): info.total_num_clients}
    raise _PlacementError(f"{base}.placement", "required when several clusters are defined, e.g. "
                                               "{" + ", ".join(f"{n}: 5" for n in list(clusters)[:2]) + "}")


def server_cluster(config: Config) -> str:
    """The cluster that hosts fl_server_aggregator: server.cluster, else the first cluster with clients."""
    fl = config.fl
    if fl.server.cluster:
        return fl.server.cluster
    counts = placement(config)
    return next((n for n, c in counts.items() if c > 0), next(iter(config.clusters())))


def hosting_clusters(config: Config) -> list[str]:
    """Clusters that run a function of the FL scenario (they must reach the store)."""
    names = [n for n, c in placement(config).items() if c > 0]
    server = server_cluster(config)
    return names + ([server] if server not in names else [])


def function_limits(config: Config, function: str, kind: str, *, cluster: str | None = None) -> tuple[int, float, int]:
    """(memory MB, timeout s, concurrency) of a function on a platform kind.

    Precedence: functions.<fn>.<kind>, then (when `cluster` is given) that cluster's own memory/timeout/
    concurrency, then FedKeeper's defaults fitted into the cluster's limits (the platform's stock limits, or
    the cluster's `limits:`), so that a config that says nothing deploys on a stock installation: the
    aggregator's 1024 MB becomes 512 on a stock OpenWhisk (its maximum). Timeouts come back in seconds whatever
    the platform's unit.
    """
    memory, timeout = FUNCTION_DEFAULTS.get(function, (256, 60.0))
    concurrency = 1
    spec = registry.get(kind)
    s = config.function_settings(function, kind)
    cluster_cfg: Any = config.clusters().get(cluster) if cluster else None
    c_memory, c_timeout, c_concurrency = cluster_cfg.default_limits() if cluster_cfg is not None else (None,) * 3
    limits = spec.limits(cluster_cfg)
    if s.memory is not None:
        memory = s.memory
    elif c_memory:
        memory = c_memory
    elif limits.memory_mb is not None:
        memory = min(max(memory, limits.memory_mb[0]), limits.memory_mb[1])
    if s.timeout is not None:
        timeout = spec.timeout_seconds(s.timeout)
    elif c_timeout:
        timeout = float(c_timeout)
    elif limits.timeout_s is not None:
        timeout = min(max(timeout, limits.timeout_s[0]), limits.timeout_s[1])
    if s.concurrency is not None:
        concurrency = s.concurrency
    elif c_concurrency:
        concurrency = c_concurrency
    return memory, timeout, concurrency


def redacted(config: Config) -> dict[str, Any]:
    """The config as plain data with every secret replaced by '***' (for Logs/ and the runs document)."""
    data = config.model_dump(mode="json")
    redact = Redactor(config.secrets())

    def scrub(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: ("***" if v not in (None, "", {}, []) and not isinstance(v, bool) and is_secret_key(k)
                        else scrub(v)) for k, v in node.items()}
        if isinstance(node, list):
            return [scrub(v) for v in node]
        if isinstance(node, str):
            return redact(node)
        return node

    return scrub(data)


def config_digest(config: Config) -> str:
    """sha256 of the redacted config: identifies an experiment's settings without holding secrets."""
    return hashlib.sha256(json.dumps(redacted(config), sort_keys=True).encode()).hexdigest()

"""The FaaS fabric of one experiment: which cluster hosts what, under which name, with which limits.

Names are deterministic (`fk-<experiment>-<function>[-<client>]`, underscores turned into hyphens because
Cloud Functions ids allow no underscores) and every function is labelled with the experiment, so `deploy` is
safe to repeat and `remove` finds exactly what this experiment created, orphans of a crashed deploy included.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedkeeper import config as cfg
from fedkeeper import providers
from fedkeeper.providers import registry
from fedkeeper.config.models import Config
from fedkeeper.providers.base import (
    LABEL_CODE,
    LABEL_DIGEST,
    LABEL_EXPERIMENT,
    LABEL_FUNCTION,
    DeployResult,
    DeploySpec,
    Provider,
    code_digest,
    spec_digest,
)
from fedkeeper.runtime import urls


@dataclass(frozen=True)
class Deployment:
    """One function on one cluster, as the plan wants it."""

    function: str
    cluster: str
    kind: str
    name: str
    memory_mb: int
    timeout_s: float
    concurrency: int
    client_id: int | None = None


@dataclass(frozen=True)
class Removal:
    cluster: str
    name: str
    function: str | None
    removed: bool


class Fabric:
    """Provider objects per cluster (created lazily, closed together) and the experiment's deployment plan."""

    def __init__(self, config: Config, workdir: Path | str) -> None:
        self.config = config
        self.workdir = Path(workdir)
        self.clusters = config.clusters()
        self._providers: dict[str, Provider] = {}
        self._placement: dict[int, str] | None = None
        #: per-cluster facts the tracker asks for on every call and poll, read from the config once
        self._limits: dict[tuple[str, str], tuple[int, float, int]] = {}
        self._poll_max: dict[str, float | None] = {}

    # ------------------------------------------------------------------ providers

    def kind(self, cluster: str) -> str:
        return self.clusters[cluster].kind

    def max_inflight(self, cluster: str) -> int:
        """Calls the tracker keeps in flight on a cluster; more would only queue inside the provider."""
        return int(self.clusters[cluster].max_inflight)

    def poll_max_s(self, cluster: str) -> float | None:
        """The platform's cap on the pause between two polls, where polling costs no network call."""
        if cluster not in self._poll_max:
            self._poll_max[cluster] = registry.get(self.kind(cluster)).poll_max_s
        return self._poll_max[cluster]

    def provider(self, cluster: str) -> Provider:
        if cluster not in self._providers:
            if cluster not in self.clusters:
                raise KeyError(f"unknown cluster {cluster!r}; defined: {', '.join(self.clusters)}")
            self._providers[cluster] = providers.create(
                self.kind(cluster), cluster, self.clusters[cluster], workdir=self.workdir)
        return self._providers[cluster]

    def close(self) -> None:
        errors = []
        for provider in self._providers.values():
            try:
                provider.close()
            except Exception as exc:  # closing one must not keep the others running
                errors.append(exc)
        self._providers.clear()
        if errors:
            raise errors[0]

    def __enter__(self) -> "Fabric":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ names and placement

    def function_name(self, function: str, client_id: int | None = None) -> str:
        base = f"fk-{self.config.experiment}-{function.replace('_', '-')}"
        return base if client_id is None else f"{base}-{client_id}"

    @property
    def labels(self) -> dict[str, str]:
        return {LABEL_EXPERIMENT: self.config.experiment}

    def client_clusters(self) -> dict[int, str]:
        """client id → cluster. Ids are dealt out in placement order: 0..n₁-1 to the first cluster, and so on."""
        if self._placement is None:
            mapping: dict[int, str] = {}
            next_id = 0
            for cluster, count in cfg.placement(self.config).items():
                for _ in range(count):
                    mapping[next_id] = cluster
                    next_id += 1
            self._placement = mapping
        return self._placement

    def client_function(self, client_id: int) -> tuple[str, str]:
        """(cluster, function name) that serves one client."""
        cluster = self.client_clusters()[client_id]
        per_client = self.config.fl.clients_info.deployment == "per_client"
        return cluster, self.function_name("fl_client", client_id if per_client else None)

    def server_cluster(self) -> str:
        return cfg.server_cluster(self.config)

    # ------------------------------------------------------------------ plans

    def limits(self, function: str, cluster: str) -> tuple[int, float, int]:
        """(memory MB, timeout s, concurrency): function settings for the kind, else the cluster's, else defaults.
        Read from the config once per (function, cluster): every client job of every round asks."""
        key = (function, cluster)
        if key not in self._limits:
            self._limits[key] = cfg.function_limits(self.config, function, self.kind(cluster), cluster=cluster)
        return self._limits[key]

    def plan(self, scenario: str = "federated_learning", clusters: Iterable[str] | None = None,
             functions: Iterable[str] | None = None) -> list[Deployment]:
        """What `deploy` would create, in a stable order."""
        wanted_clusters = set(clusters) if clusters else None
        wanted_functions = set(functions) if functions else None
        out: list[Deployment] = []

        def add(function: str, cluster: str, client_id: int | None = None) -> None:
            if wanted_clusters is not None and cluster not in wanted_clusters:
                return
            if wanted_functions is not None and function not in wanted_functions:
                return
            memory, timeout, concurrency = self.limits(function, cluster)
            out.append(Deployment(function, cluster, self.kind(cluster), self.function_name(function, client_id),
                                  memory, timeout, concurrency, client_id))

        if scenario == "federated_learning":
            per_client = self.config.fl.clients_info.deployment == "per_client"
            seen: set[str] = set()
            for client_id, cluster in sorted(self.client_clusters().items()):
                if per_client:
                    add("fl_client", cluster, client_id)
                elif cluster not in seen:
                    seen.add(cluster)
                    add("fl_client", cluster)
            add("fl_server_aggregator", self.server_cluster())
        elif scenario == "smoke":
            for cluster in self.clusters:
                add("nodeinfo", cluster)
        else:
            raise ValueError(f"unknown scenario {scenario!r}; known: federated_learning, smoke")
        return out

    def function_env(self, function: str) -> dict[str, str]:
        """Deploy-time settings beyond the store's: the credentials of the data URLs, for the functions that
        download the data (the invocation payloads carry the URLs without them). Part of the digest, so a
        changed credential redeploys."""
        fl = self.config.scenarios.federated_learning
        if fl is None or function not in ("fl_client", "fl_server_aggregator"):
            return {}
        _clean, credentials = urls.detach_credentials(fl.training_test_data.model_dump())
        return {urls.DATA_CREDENTIALS_ENV: urls.encode_credentials(credentials)} if credentials else {}

    def deploy_spec(self, function: str, cluster: str, store_env: dict[str, str],
                    name: str | None = None) -> DeploySpec:
        from fedkeeper import packaging, task_packaging

        kind = self.kind(cluster)
        memory, timeout, concurrency = self.limits(function, cluster)
        task = task_packaging.bundle_for(self.config, function)
        artifact = packaging.build(function, kind, packaging.options_for(self.clusters[cluster]), task)
        size = packaging.check_artifact(artifact, function, cluster, self.clusters[cluster], task)
        if size.problems:  # over a limit, or requirements the cluster cannot get: the message names the route
            raise packaging.PackagingError("; ".join(size.problems))
        settings = self.config.function_settings(function, kind)
        extra: dict[str, Any] = {k: v for k, v in settings.model_dump().items()
                                 if k not in ("memory", "timeout", "concurrency") and v not in (None, {}, [])}
        env = {**store_env, **self.function_env(function)}
        digest = spec_digest(artifact.sha256, memory, timeout, concurrency, env, extra)
        labels = {**self.labels, LABEL_FUNCTION: function, LABEL_DIGEST: digest,
                  LABEL_CODE: code_digest(artifact.sha256, memory, timeout, concurrency, extra)}
        return DeploySpec(name=name or self.function_name(function), function=function, artifact=artifact.data,
                          digest=digest, memory_mb=memory, timeout_s=timeout, concurrency=concurrency,
                          env=env, labels=labels, extra=extra)

    def deploy(self, plan: list[Deployment], store_env: dict[str, str],
               on_done: Callable[[Deployment, DeployResult], None] | None = None) -> list[DeployResult]:
        results = []
        for item in plan:
            spec = self.deploy_spec(item.function, item.cluster, store_env, name=item.name)
            result = self.provider(item.cluster).deploy(spec)
            results.append(result)
            if on_done:
                on_done(item, result)
        return results

    def removal_targets(self, clusters: Iterable[str] | None = None,
                        functions: Iterable[str] | None = None) -> list[tuple[str, str, str | None]]:
        """(cluster, name, function) of every function labelled with this experiment — orphans included."""
        wanted_functions = set(functions) if functions else None
        out = []
        for cluster in clusters or self.clusters:
            for info in self.provider(cluster).list(self.labels):
                function = info.labels.get(LABEL_FUNCTION)
                if wanted_functions is None or function in wanted_functions:
                    out.append((cluster, info.name, function))
        return out

    def remove(self, targets: list[tuple[str, str, str | None]],
               on_done: Callable[[Removal], None] | None = None, *, sweeps: int = 3) -> list[Removal]:
        """Remove the targets, then list their clusters again and remove what is still labelled with the
        experiment (at most `sweeps` more passes, until one finds nothing): a platform's listing can miss
        functions that changed while it was read (OpenWhisk pages by `skip`), or that another deploy created."""
        out: list[Removal] = []
        done: set[tuple[str, str]] = set()
        functions = {f for _c, _n, f in targets}
        clusters = list(dict.fromkeys(c for c, _n, _f in targets))
        for sweep in range(sweeps + 1):
            if sweep:
                targets = [t for t in self.removal_targets(clusters) if t[2] in functions
                           and (t[0], t[1]) not in done]
                if not targets:
                    break
            for cluster, name, function in targets:
                if (cluster, name) in done:
                    continue
                done.add((cluster, name))
                removal = Removal(cluster, name, function, self.provider(cluster).remove(name))
                out.append(removal)
                if on_done:
                    on_done(removal)
        return out

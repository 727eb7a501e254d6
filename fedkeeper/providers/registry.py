"""The one registry of platforms: a platform registers its `PlatformSpec` once, everything else asks here.

Built-in platforms register when their package is imported (each `providers/<kind>/__init__.py` calls
`register`); this module imports them on first use, then any third-party platform advertised under the
`fedkeeper.platforms` entry-point group (the entry point names a module that calls `register` on import), then
the modules named in the environment variable `FK_PLATFORMS` (comma-separated; for a platform under
development that is not installed as a package).
The built-in order, then registration order, is the order of `providers:` sections, of clusters in
`Config.clusters()` and of tables.
"""

from __future__ import annotations

import importlib
import os
import threading
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from fedkeeper.errors import ConfigProblem
from fedkeeper.providers.base import PlatformSpec, Provider

BUILTIN_PLATFORMS = ("fedkeeper.providers.local", "fedkeeper.providers.openwhisk", "fedkeeper.providers.aws",
                     "fedkeeper.providers.google", "fedkeeper.providers.ray",
                     "fedkeeper.providers.openfaas", "fedkeeper.providers.knative",
                     "fedkeeper.providers.azure")
ENTRY_POINT_GROUP = "fedkeeper.platforms"
ENV_PLATFORMS = "FK_PLATFORMS"

_specs: dict[str, PlatformSpec] = {}
_lock = threading.RLock()
_loaded = False


class UnknownPlatform(ConfigProblem, ValueError):
    """A kind no registered platform has (a config or usage problem: exit 2)."""


def register(spec: PlatformSpec) -> PlatformSpec:
    """Add a platform; registering the same kind again replaces it (a module reload)."""
    model_kind = getattr(spec.cluster_model, "kind", None)
    if model_kind != spec.kind:
        raise ValueError(f"platform {spec.kind!r}: its cluster model {spec.cluster_model.__name__} says kind "
                         f"{model_kind!r}; they must agree")
    with _lock:
        _specs[spec.kind] = spec
    return spec


def _load() -> None:
    global _loaded
    if _loaded:
        return
    with _lock:
        if _loaded:
            return
        _loaded = True  # set first: the platform packages call register() while we import them
        for module in BUILTIN_PLATFORMS:
            importlib.import_module(module)
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            importlib.import_module(ep.value.split(":", 1)[0])
        for module in filter(None, (m.strip() for m in os.environ.get(ENV_PLATFORMS, "").split(","))):
            importlib.import_module(module)


def platforms() -> list[PlatformSpec]:
    """Every registered platform: the built-in ones in their fixed order, then others as they registered
    (a fixed order whatever was imported first, since it orders config sections, clusters and tables)."""
    _load()
    rank = {module: i for i, module in enumerate(BUILTIN_PLATFORMS)}
    specs = list(_specs.values())
    return sorted(specs, key=lambda s: (rank.get(s.package, len(rank)), specs.index(s)))


def kinds() -> tuple[str, ...]:
    return tuple(s.kind for s in platforms())


def get(kind: str) -> PlatformSpec:
    _load()
    try:
        return _specs[kind]
    except KeyError:
        raise UnknownPlatform(f"unknown provider kind {kind!r}; known: {', '.join(kinds())}") from None


def of(cluster: Any) -> PlatformSpec:
    """The platform of a typed cluster config (by its model class; an exact match wins over a subclass)."""
    specs = platforms()
    for spec in specs:
        if type(cluster) is spec.cluster_model:
            return spec
    for spec in specs:
        if isinstance(cluster, spec.cluster_model):
            return spec
    raise UnknownPlatform(f"no registered platform has the cluster model {type(cluster).__name__}")


def provider_class(kind: str) -> type[Provider]:
    module_name, class_name = get(kind).provider_class.split(":")
    return getattr(importlib.import_module(module_name), class_name)


def create(kind: str, cluster: str, config: Any, *, workdir: Path) -> Provider:
    """Build the provider object for one cluster of the config."""
    return provider_class(kind)(cluster, config, workdir=workdir)

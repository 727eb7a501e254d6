"""FaaS platforms behind one interface (`base.Provider`); one module per platform, imported lazily."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from fedkeeper.providers.base import Provider

#: provider kind (the key under `providers:` in the config) -> "module:class"
PROVIDER_CLASSES: dict[str, str] = {
    "local": "fedkeeper.providers.local.provider:LocalProvider",
    "openwhisk": "fedkeeper.providers.openwhisk.provider:OpenWhiskProvider",
    "aws": "fedkeeper.providers.aws.provider:LambdaProvider",
    "google": "fedkeeper.providers.google.provider:GcfProvider",
}

#: human names of the platforms, for tables and reports
PLATFORM_NAMES: dict[str, str] = {
    "local": "local",
    "openwhisk": "OpenWhisk",
    "aws": "AWS Lambda",
    "google": "Google Cloud Functions",
}


def provider_class(kind: str) -> type[Provider]:
    try:
        target = PROVIDER_CLASSES[kind]
    except KeyError:
        raise ValueError(f"unknown provider kind {kind!r}; known: {', '.join(sorted(PROVIDER_CLASSES))}") from None
    module_name, class_name = target.split(":")
    return getattr(importlib.import_module(module_name), class_name)


def create(kind: str, cluster: str, config: Any, *, workdir: Path) -> Provider:
    """Build the provider object for one cluster of the config."""
    return provider_class(kind)(cluster, config, workdir=workdir)

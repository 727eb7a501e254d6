"""Config: YAML → a validated `Config` (models, sources and `${ENV}`, legacy keys, checks, views).

`fedkeeper.config` is the one import for the rest of FedKeeper; each step lives in its own module here. The
names are resolved lazily (PEP 562) because platform config models import `fedkeeper.config.base` while the
platform registry is being filled, before the whole `Config` can be assembled.
"""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "Config": "models", "FederatedLearning": "models", "MongoConfig": "models", "ClusterConfig": "models",
    "FUNCTION_DEFAULTS": "models",
    "ConfigError": "errors", "ConfigIssue": "errors", "is_secret_key": "errors", "_unwrap": "errors",
    "load": "loader", "load_text": "loader", "SCENARIO_FUNCTIONS": "loader",
    "placement": "views", "server_cluster": "views", "hosting_clusters": "views", "function_limits": "views",
    "redacted": "views", "config_digest": "views",
    "MAX_VALUES": "sources", "url_passwords": "sources",
}

__all__ = sorted(n for n in _PUBLIC if not n.startswith("_"))


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'fedkeeper.config' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"fedkeeper.config.{module}"), name)
    globals()[name] = value
    return value

"""Helpers for the store tests: a ``mongo_config`` stand-in, so store tests do not depend on the config models."""

from __future__ import annotations

import types
from typing import Any


def settings(**kw: Any) -> types.SimpleNamespace:
    """What ``open_store`` and ``resolve`` read (``store.connection.MongoSettings``), with mongo_config's defaults."""
    base = dict(
        url="embedded", db="fedkeeper", username=None, password=None, auth_source=None, tls=None, tls_ca_file=None,
        tls_allow_invalid_certificates=False, connect_timeout_ms=2000, server_selection_timeout_ms=2000, keep_models=3,
    )
    base.update(kw)
    return types.SimpleNamespace(**base)

"""The orchestrator's MongoDB state; ``from fedkeeper.store import ...`` is the one import its users need.

Layout, one job per module:

- ``repository.py``  ``Store``, the one repository (runs, activations, indexes, gc; models and updates through
  ``Store.blobs``, the ``runtime.blobstore.BlobStore`` the functions use too), and ``open_store``;
- ``connection.py``  ``mongo_config`` → one URL plus client options, and its password-free forms;
- ``embedded.py``    the embedded nx-27017 server behind ``url: embedded`` (start, join, leases, stop);
- ``nxserve.py``     that server's process entry (nx-27017 plus a lease watchdog);
- ``locks.py``       ``RunLock``: one orchestrator per run (a lease in ``locks``, renewed by a heartbeat);
- ``runs.py``        a run's whole footprint (``run_usage``), removing it (``purge_run``), its live holder;
- ``audit.py``       the store audit: no orphan file or chunk, no document naming a missing blob or run;
- ``errors.py``      the typed errors.

Production code speaks plain pymongo to real servers. Tests run one contract suite
(``tests/contract/test_store_*.py``) over the embedded server and, with ``FK_TEST_MONGO_URL``, any MongoDB.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Imported on first use (PEP 562): the server process runs ``python -m fedkeeper.store.nxserve``, which imports
# this package first and should not pay for pymongo's client, numpy and tenacity.
_EXPORTS = {
    "connection": ("Connection", "MongoSettings", "display_url", "hosts_of", "resolve"),
    "embedded": ("HOME", "EmbeddedServer", "NxServer"),
    "errors": ("ActivationConflict", "ActivationMissing", "EmbeddedServerError", "RunMissing", "StoreAuthError",
               "StoreConfigError", "StoreError", "StoreUnavailable"),
    "locks": ("Holder", "RunLock", "RunLocked"),
    "repository": ("EMBEDDED", "Store", "open_store"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:
    from fedkeeper.store.connection import Connection, MongoSettings, display_url, hosts_of, resolve
    from fedkeeper.store.embedded import HOME, EmbeddedServer, NxServer
    from fedkeeper.store.errors import (
        ActivationConflict,
        ActivationMissing,
        EmbeddedServerError,
        RunMissing,
        StoreAuthError,
        StoreConfigError,
        StoreError,
        StoreUnavailable,
    )
    from fedkeeper.store.locks import Holder, RunLock, RunLocked
    from fedkeeper.store.repository import EMBEDDED, Store, open_store

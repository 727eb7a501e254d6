"""What FedKeeper knows about the `local` platform: worker processes on this machine, free, polled in-process."""

from __future__ import annotations

from typing import ClassVar

from fedkeeper.providers.base import PlatformSpec, UnitPrice
from fedkeeper.providers.local.config import LocalCluster


class LocalPlatform(PlatformSpec):
    kind: ClassVar[str] = "local"
    title: ClassVar[str] = "local"
    cluster_model = LocalCluster
    provider_class: ClassVar[str] = "fedkeeper.providers.local.provider:LocalProvider"
    #: the worker loop (one JSON line per call over stdin/stdout); see docs/contracts.md
    entry_name: ClassVar[str] = "fk_local_entry.py"
    price: ClassVar[UnitPrice] = UnitPrice(0.0, 0.0, "local worker processes: free")
    #: polling is a dictionary lookup in this process: keep it tight so a finished call is seen at once
    poll_max_s: ClassVar[float | None] = 0.01


SPEC = LocalPlatform()

"""A platform that lives outside FedKeeper, registered through `FK_PLATFORMS=toy_platform`.

It proves that one registration is all a platform needs: config validation, placement, limits, packaging,
deploy, start, status, report and pricing pick it up without any edit to FedKeeper. To have something that
really runs, it reuses the local platform's worker pool under its own name, title, limits and price.
"""

from __future__ import annotations

from typing import ClassVar

from fedkeeper.providers.base import PlatformSpec, UnitPrice
from fedkeeper.providers.local.config import LocalCluster
from fedkeeper.providers.local.provider import LocalProvider
from fedkeeper.providers.local.spec import SPEC as LOCAL
from fedkeeper.providers.registry import register


class ToyCluster(LocalCluster):
    """Same settings as a local cluster (workers on this machine)."""

    kind: ClassVar[str] = "toy"


class ToyProvider(LocalProvider):
    kind = "toy"


class ToyPlatform(PlatformSpec):
    kind: ClassVar[str] = "toy"
    title: ClassVar[str] = "Toy FaaS"
    cluster_model = ToyCluster
    provider_class: ClassVar[str] = "toy_platform:ToyProvider"
    entry_name: ClassVar[str] = LOCAL.entry_name
    price: ClassVar[UnitPrice] = UnitPrice(0.5, 1000.0, "toy list price")
    memory_mb: ClassVar[tuple[int, int] | None] = (128, 2048)
    max_timeout_s: ClassVar[float | None] = 600
    poll_max_s: ClassVar[float | None] = LOCAL.poll_max_s

    def entry_source(self):  # type: ignore[no-untyped-def]
        return LOCAL.entry_source()


SPEC = register(ToyPlatform())

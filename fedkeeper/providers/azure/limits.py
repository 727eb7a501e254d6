"""Azure Functions limits per hosting plan and the Python versions: the one table validation and the docs read
(docs/platforms.md, "Azure Functions").

Sources: "Azure Functions hosting options" and "Function app time-out duration"
(learn.microsoft.com/en-us/azure/azure-functions/functions-scale#timeout): Consumption 5 min default, 10 min at
most; Flex Consumption and Premium 30 min default, unbounded; but whatever the plan, an HTTP-triggered function
must answer within 230 s, the Azure Load Balancer's idle timeout ("the maximum amount of time that an HTTP
triggered function can take to respond to a request"). FedKeeper calls every function over HTTP, so 230 s is the
largest timeout on every plan. Memory: Consumption instances have 1.5 GB (not a setting: billing rounds the
observed memory up to 128 MB steps); Flex Consumption instance sizes are 512, 2048 and 4096 MB
(learn.microsoft.com/en-us/azure/azure-functions/flex-consumption-plan#instance-memory); Premium EP1/EP2/EP3 have
3.5, 7 and 14 GB (functions-premium-plan#available-instance-skus). HTTP requests are limited to 100 MB
(functions-bindings-http-webhook-trigger#limits). Python versions: "Supported languages"
(learn.microsoft.com/en-us/azure/azure-functions/supported-languages), Linux only.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedkeeper.providers.limits import Limits, RuntimeKind

#: seconds an HTTP-triggered function has to answer, on every plan (Azure Load Balancer idle timeout)
HTTP_TIMEOUT_S = 230.0
PAYLOAD_BYTES = 100 * 2**20
SOURCE = "Azure Functions hosting options and scale (learn.microsoft.com/en-us/azure/azure-functions/functions-scale)"


@dataclass(frozen=True)
class Plan:
    """One hosting plan: the memory a function may name, its host.json functionTimeout default and maximum."""

    name: str
    memory_mb: tuple[int, int]
    #: instance sizes to round a memory setting up to; empty where memory is not a setting of the app
    memory_sizes: tuple[int, ...]
    default_timeout_s: float
    max_timeout_s: float | None  # None: unbounded (HTTP calls still end at HTTP_TIMEOUT_S)
    sku: str

    @property
    def limits(self) -> Limits:
        top = HTTP_TIMEOUT_S if self.max_timeout_s is None else min(self.max_timeout_s, HTTP_TIMEOUT_S)
        return Limits(memory_mb=self.memory_mb, timeout_s=(1.0, top), concurrency=(1, 1000),
                      payload_bytes=PAYLOAD_BYTES, package_bytes=None, source=SOURCE)


PLANS: dict[str, Plan] = {
    "consumption": Plan("consumption", (128, 1536), (), 300.0, 600.0, "Y1"),
    "flex": Plan("flex", (128, 4096), (512, 2048, 4096), 1800.0, None, "FC1"),
    "premium": Plan("premium", (128, 14336), (), 1800.0, None, "EP1"),
}

STOCK = PLANS["consumption"].limits

SYSTEM = "Linux (Oryx installs requirements.txt)"
KINDS: dict[str, RuntimeKind] = {
    f"python3.{minor}": RuntimeKind(f"python3.{minor}", f"3.{minor}", None, SYSTEM) for minor in (10, 11, 12)
}

"""Public unit prices of the FaaS platforms, for the cost *estimates* of `fedkeeper report`.

One table, in USD, keyed by provider kind (the keys under `providers:` in the config). The figures are the
platforms' published list prices as of 2024 (pay-as-you-go, no free tier, no discounts, no network or storage
charges) and are only estimates: a real bill differs by region, tier, free allowance and rounding. A config
may override any platform under `pricing: {aws: {gb_second: ..., per_million_invocations: ...}, ...}`.

GB-seconds are computed as ``memory_mb / 1024 × duration_s`` per activation (what Lambda and Cloud Functions
call GB-seconds is really GiB-seconds of configured memory).

Sources (checked 2024):

- ``aws``: AWS Lambda, x86, first pricing tier — $0.0000166667 per GB-s and $0.20 per 1M requests
  (https://aws.amazon.com/lambda/pricing/).
- ``google``: Cloud Functions 2nd gen is billed as Cloud Run (tier 1): $0.0000025 per GiB-s of memory plus
  $0.000024 per vCPU-s, and $0.40 per 1M invocations (https://cloud.google.com/functions/pricing). CPU is
  allocated with memory; at the common 1 GiB setting a function gets 0.583 vCPU, so one GiB-s costs
  0.0000025 + 0.583 × 0.000024 ≈ $0.0000165 — that GB-s equivalent is used for every memory size.
- ``openwhisk``: IBM Cloud Functions (the hosted OpenWhisk, historical; retired 2024) — $0.000017 per GB-s,
  no per-invocation fee. A self-hosted cluster costs what its machines cost; override it in the config.
- ``local``: worker processes on this machine — free.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: vCPU a Cloud Functions 2nd gen instance gets per GiB at the 1 GiB setting (used for the GB-s equivalent)
GCF_VCPU_PER_GIB = 0.583
GCF_GIB_SECOND = 0.0000025
GCF_VCPU_SECOND = 0.000024


@dataclass(frozen=True)
class UnitPrice:
    """Price of one platform: per GB-second of configured memory and per million invocations (USD)."""

    gb_second: float
    per_million_invocations: float
    source: str

    def cost(self, gb_seconds: float, invocations: int) -> tuple[float, float]:
        """(compute USD, request USD)."""
        return gb_seconds * self.gb_second, invocations / 1_000_000 * self.per_million_invocations


#: The documented default table (see the module docstring for dates and sources).
DEFAULT_PRICES: dict[str, UnitPrice] = {
    "aws": UnitPrice(0.0000166667, 0.20, "AWS Lambda x86 list price, 2024"),
    "google": UnitPrice(round(GCF_GIB_SECOND + GCF_VCPU_PER_GIB * GCF_VCPU_SECOND, 10), 0.40,
                        "Cloud Functions 2nd gen (Cloud Run tier 1) GB-s equivalent at 0.583 vCPU/GiB, 2024"),
    "openwhisk": UnitPrice(0.000017, 0.0, "IBM Cloud Functions (hosted OpenWhisk) historical list price"),
    "local": UnitPrice(0.0, 0.0, "local worker processes: free"),
}


def price_table(overrides: Mapping[str, Any] | None = None) -> dict[str, UnitPrice]:
    """The default table with a config's `pricing:` entries laid over it.

    `overrides` maps a provider kind to anything with `gb_second` and `per_million_invocations` (the config's
    `PlatformPrice` models, or plain dicts).
    """
    table = dict(DEFAULT_PRICES)
    for kind, price in (overrides or {}).items():
        get = price.get if isinstance(price, Mapping) else lambda k, p=price: getattr(p, k)
        table[kind] = UnitPrice(float(get("gb_second")), float(get("per_million_invocations")),
                                "config pricing override")
    return table


def price_for(kind: str, table: Mapping[str, UnitPrice]) -> UnitPrice | None:
    """The price of a platform kind, or None for a kind the table does not know (its cost is then unknown)."""
    return table.get(kind)

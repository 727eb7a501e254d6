"""Public unit prices of the FaaS platforms, for the cost *estimates* of `fedkeeper report`.

Each platform states its list price in its own folder (`PlatformSpec.price`, with date and source); this module
lays a config's `pricing:` overrides over them. Prices are USD, pay-as-you-go, no free tier, no discounts, no
network or storage charges: only estimates, since a real bill differs by region, tier, free allowance and
rounding. A config may override any platform under `pricing: {aws: {gb_second: ..., per_million_invocations:
...}, ...}`.

GB-seconds are computed as ``memory_mb / 1024 × duration_s`` per activation (what Lambda and Cloud Functions
call GB-seconds is really GiB-seconds of configured memory).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedkeeper.providers import registry
from fedkeeper.providers.base import UnitPrice

__all__ = ["UnitPrice", "default_prices", "price_table", "price_for"]


def default_prices() -> dict[str, UnitPrice]:
    """Every registered platform's list price, by kind."""
    return {spec.kind: spec.price for spec in registry.platforms()}


def price_table(overrides: Mapping[str, Any] | None = None) -> dict[str, UnitPrice]:
    """The default table with a config's `pricing:` entries laid over it.

    `overrides` maps a provider kind to anything with `gb_second` and `per_million_invocations` (the config's
    `PlatformPrice` models, or plain dicts).
    """
    table = default_prices()
    for kind, price in (overrides or {}).items():
        get = price.get if isinstance(price, Mapping) else lambda k, p=price: getattr(p, k)
        table[kind] = UnitPrice(float(get("gb_second")), float(get("per_million_invocations")),
                                "config pricing override")
    return table


def price_for(kind: str, table: Mapping[str, UnitPrice]) -> UnitPrice | None:
    """The price of a platform kind, or None for a kind the table does not know (its cost is then unknown)."""
    return table.get(kind)

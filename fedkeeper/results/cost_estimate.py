"""What an experiment would cost before anything is deployed: planned calls × duration × memory × unit price.

The plan (how many calls each function gets on each cluster, with what memory) is built from the config by
`scenarios.cost_plan`; this module only prices it, so it stays a pure function that a test can check by hand.
Durations come from one of two bases:

- a measured run (`measured_durations`): per (cluster, function), the mean and the 95th percentile of
  `duration_s` over *every* row of the run's activations.csv (failed attempts included, as `report` bills them);
  a cluster the run did not use takes the function's figures over all clusters;
- a calibration on this machine (`scenarios.cost_plan.calibrate`), stated as such in the result.

GB-seconds follow `results.stats.gb_seconds` (``memory_mb / 1024 × duration_s``) and prices `results.pricing`,
so for a plan equal to what a run did (no retries) and that run's durations, the estimate equals the cost
`fedkeeper report` computes for the run: n × mean = the sum of the n durations.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from fedkeeper.errors import UsageProblem
from fedkeeper.results.pricing import UnitPrice, price_for
from fedkeeper.results.stats import percentile

NOTE = ("estimate from list prices (fedkeeper/results/pricing.py) and the stated durations; excludes free tiers, "
        "retries, cold starts beyond the durations used, storage and network")


@dataclass(frozen=True)
class Duration:
    """Seconds one call of a function takes: its mean and 95th percentile, and where the figures come from."""

    mean_s: float
    p95_s: float
    samples: int
    source: str


@dataclass(frozen=True)
class PlannedCalls:
    """The calls of one function on one cluster over the whole experiment."""

    cluster: str
    platform: str
    function: str
    memory_mb: int
    invocations: int


def measured_durations(activations: Iterable[Mapping[str, Any]], source: str) -> dict[tuple[str | None, str],
                                                                                        Duration]:
    """Mean and p95 of `duration_s` per (cluster, function), and per (None, function) over all clusters."""
    groups: dict[tuple[str | None, str], list[float]] = {}
    for row in activations:
        if row.get("duration_s") is None or not row.get("function"):
            continue
        value = float(row["duration_s"])
        for key in ((str(row.get("cluster") or ""), str(row["function"])), (None, str(row["function"]))):
            groups.setdefault(key, []).append(value)
    return {key: Duration(sum(values) / len(values), float(percentile(values, 95) or 0.0), len(values), source)
            for key, values in groups.items()}


def duration_for(durations: Mapping[tuple[str | None, str], Duration], cluster: str, function: str) -> Duration:
    """The cluster's own figures for the function, else the function's over all clusters."""
    found = durations.get((cluster, function)) or durations.get((None, function))
    if found is None:
        raise UsageProblem(f"no duration of {function} to estimate from: the run has no activation of it with a "
                           f"duration (use another run, or leave out --from to calibrate)")
    return found


def _priced(price: UnitPrice | None, gb_seconds: float, invocations: int) -> tuple[float | None, float | None]:
    if price is None:
        return None, None
    return price.cost(gb_seconds, invocations)


def _add(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a + b


def estimate(calls: Sequence[PlannedCalls], durations: Mapping[tuple[str | None, str], Duration],
             prices: Mapping[str, UnitPrice], *, basis: str, rounds: int,
             notes: Sequence[str] = ()) -> dict[str, Any]:
    """The JSON-ready estimate: one row per cluster × function, subtotals per cluster, the experiment total.

    Costs are None (shown as "—") for a platform the price table does not know; the total is then None too,
    while GB-seconds and invocations are still summed.
    """
    rows: list[dict[str, Any]] = []
    for call in calls:
        d = duration_for(durations, call.cluster, call.function)
        price = price_for(call.platform, prices)
        gbs = call.invocations * call.memory_mb / 1024.0 * d.mean_s
        gbs_p95 = call.invocations * call.memory_mb / 1024.0 * d.p95_s
        compute, requests = _priced(price, gbs, call.invocations)
        compute_p95, _ = _priced(price, gbs_p95, call.invocations)
        rows.append({**asdict(call), "duration_mean_s": d.mean_s, "duration_p95_s": d.p95_s,
                     "duration_samples": d.samples, "duration_source": d.source,
                     "gb_seconds": gbs, "gb_seconds_p95": gbs_p95,
                     "gb_second_usd": price.gb_second if price else None,
                     "per_million_invocations_usd": price.per_million_invocations if price else None,
                     "price_source": price.source if price else None,
                     "requests_usd": requests, "compute_usd": compute, "total_usd": _add(compute, requests),
                     "total_p95_usd": _add(compute_p95, requests)})
    return {"basis": basis, "rounds": rounds, "rows": rows, "clusters": _subtotals(rows, ("cluster", "platform")),
            "platforms": _subtotals(rows, ("platform",)), "total": _sum(rows), "currency": "USD",
            "notes": [*notes, NOTE]}


_SUMMED = ("invocations", "gb_seconds", "gb_seconds_p95", "requests_usd", "compute_usd", "total_usd",
           "total_p95_usd")


def _sum(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in _SUMMED:
        values = [r[key] for r in rows]
        out[key] = None if any(v is None for v in values) else sum(values)
    return out


def _subtotals(rows: Sequence[Mapping[str, Any]], keys: tuple[str, ...]) -> list[dict[str, Any]]:
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    return [{**dict(zip(keys, values)), **_sum(group)} for values, group in groups.items()]

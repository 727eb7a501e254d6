"""Statistics over one run's activations and rounds: failure rates, cold starts, durations, cost.

Pure functions over the rows `report_io` reads, so they are easy to check against the CSVs by hand.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from fedkeeper.activations import ActivationState
from fedkeeper.results import counts as C
from fedkeeper.results.pricing import UnitPrice, price_for

_A = ActivationState
#: the outcomes a failure rate is taken over (throttled and abandoned attempts are neither success nor failure)
FINAL_STATES = (_A.SUCCEEDED.value, _A.FAILED.value, _A.TIMED_OUT.value, _A.LOST.value)
FAILED_STATES = C.FAILURE_STATES


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (linear interpolation, numpy's default); None for no values."""
    return float(np.percentile(np.asarray(values, dtype=float), q)) if values else None


def gb_seconds(row: Mapping[str, Any]) -> float | None:
    """memory_mb / 1024 × duration_s of one activation; None when either is unknown."""
    memory, duration = row.get("memory_mb"), row.get("duration_s")
    if memory is None or duration is None:
        return None
    return float(memory) / 1024.0 * float(duration)


def activation_stats(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Counts per final state, failure rate, cold-start share and duration percentiles of some activations.

    The counts (`total`, one per state, `retries`) are those of `fedkeeper.results.counts`, the same that
    rounds.csv and summary.json hold. `activations` is the number of rows; `other_states` counts the rows
    whose state is not one of succeeded/failed/timed_out/lost (`throttled`: refused for load and retried,
    never a client failure; `abandoned`: still running when the round moved on; or a state this version does
    not know). `failure_rate` is (failed + timed_out + lost) / (succeeded + failed + timed_out + lost);
    `cold_share` is the share of cold starts among the activations whose platform said whether they were cold.
    """
    rows = list(rows)
    counts = C.count_activations(rows).as_dict()
    other: dict[str, int] = {}
    cold_known = cold = 0
    durations: list[float] = []
    for row in rows:
        state = row.get("state")
        if state not in FINAL_STATES:
            other[str(state)] = other.get(str(state), 0) + 1
        if row.get("cold") is not None:
            cold_known += 1
            cold += bool(row["cold"])
        if row.get("duration_s") is not None:
            durations.append(float(row["duration_s"]))
    final = sum(counts[s] for s in FINAL_STATES)
    failed = sum(counts[s] for s in FAILED_STATES)
    return {
        "activations": len(rows),
        **counts,
        "other_states": other,
        "failure_rate": failed / final if final else None,
        "cold_starts": cold,
        "cold_share": cold / cold_known if cold_known else None,
        "duration_p50_s": percentile(durations, 50),
        "duration_p95_s": percentile(durations, 95),
        "duration_max_s": max(durations) if durations else None,
        "duration_total_s": float(sum(durations)),
        "gb_seconds": float(sum(g for g in map(gb_seconds, rows) if g is not None)),
    }


def group_stats(rows: Iterable[Mapping[str, Any]], *keys: str) -> list[dict[str, Any]]:
    """`activation_stats` per distinct value of `keys` (e.g. cluster and platform), sorted by those values."""
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row.get(k) for k in keys), []).append(row)
    out = []
    for values in sorted(groups, key=lambda v: tuple("" if x is None else str(x) for x in v)):
        out.append({**dict(zip(keys, values)), **activation_stats(groups[values])})
    return out


def cost_estimate(rows: Iterable[Mapping[str, Any]], prices: Mapping[str, UnitPrice]) -> dict[str, Any]:
    """Estimated cost per platform: GB-seconds × unit price + invocations × request price (USD).

    Every activation in activations.csv is one billed invocation (failed ones are billed too). Activations
    without a known memory size or duration add no GB-seconds and are counted in `unpriced_activations`.
    A platform missing from the price table has `total_usd: None`.
    """
    by_platform: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_platform.setdefault(str(row.get("platform") or "unknown"), []).append(row)
    platforms = []
    total = 0.0
    complete = True
    for platform in sorted(by_platform):
        group = by_platform[platform]
        gbs = [gb_seconds(r) for r in group]
        gb_total = float(sum(g for g in gbs if g is not None))
        price = price_for(platform, prices)
        entry: dict[str, Any] = {
            "platform": platform,
            "invocations": len(group),
            "gb_seconds": gb_total,
            "unpriced_activations": sum(g is None for g in gbs),
            "gb_second_usd": price.gb_second if price else None,
            "per_million_invocations_usd": price.per_million_invocations if price else None,
            "price_source": price.source if price else None,
            "compute_usd": None, "requests_usd": None, "total_usd": None,
        }
        if price is not None:
            compute, requests = price.cost(gb_total, len(group))
            entry.update(compute_usd=compute, requests_usd=requests, total_usd=compute + requests)
            total += compute + requests
        else:
            complete = False
        platforms.append(entry)
    return {"platforms": platforms, "total_usd": total if complete else None, "currency": "USD",
            "note": "estimate from list prices (fedkeeper/pricing.py); excludes free tiers, storage, network"}


def _mean(values: list[float]) -> float | None:
    return float(sum(values) / len(values)) if values else None


def round_totals(rounds: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Totals and means over the rounds table (what a comparison of runs lines up); the count totals are
    `counts.sum_rounds`, the same summary.json's `totals` holds."""
    def values(key: str) -> list[float]:
        return [float(r[key]) for r in rounds if r.get(key) is not None]

    last = rounds[-1] if rounds else {}
    accuracies = values("accuracy")
    out: dict[str, Any] = {"rounds": len(rounds)}
    out.update(C.sum_rounds(rounds))
    out.update({
        "final_accuracy": last.get("accuracy"),
        "final_loss": last.get("loss"),
        "best_accuracy": max(accuracies) if accuracies else None,
        "round_s_mean": _mean(values("round_s")),
        "round_s_total": float(sum(values("round_s"))),
        "invoke_s_mean": _mean(values("invoke_s")),
        "slowest_client_s_mean": _mean(values("slowest_client_s")),
        "aggregate_s_mean": _mean(values("aggregate_s")),
    })
    return out


def rounds_to_reach(rounds: list[Mapping[str, Any]], accuracy: float) -> int | None:
    """The first round whose global model reached `accuracy`, or None."""
    return next((r["round"] for r in rounds if (r.get("accuracy") or 0.0) >= accuracy), None)


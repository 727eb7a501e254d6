"""Several runs (or a whole sweep) as groups: what differs between their configs, and mean ± std over seeds.

Runs are told apart by their configs as run (`Logs/<run>/config.yaml`, flattened to dotted keys): a key whose value
is not the same in every run is a *varying* key, and a run's label names its values of those keys. The seed is never
a group key: runs that differ only in the seed form one group, and each group shows the mean and the sample
standard deviation (n − 1; None for n = 1) over its runs of final accuracy, rounds to a target accuracy, wall time
and estimated cost. Runs that never reach the target are counted (`not_reached`) and left out of that mean.

Per-round curves (accuracy against round, cumulative round time and cumulative cost) are averaged per round over
the runs of a group that reached that round, for `plots.plot_groups`.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from fedkeeper.errors import ResultsFailure, UsageProblem
from fedkeeper.results.pricing import UnitPrice
from fedkeeper.results.report import platform_kind
from fedkeeper.results.run_folders import RunFolder
from fedkeeper.results.stats import cost_estimate, rounds_to_reach

SEED_KEY = "scenarios.federated_learning.seed"
TARGET_KEY = "scenarios.federated_learning.target_accuracy"
#: keys that say nothing about what was run (a sweep section, the experiment's name a sweep may set per run)
IGNORED_PREFIXES = ("sweep.",)
IGNORED_KEYS = {SEED_KEY, "experiment"}
#: the figures a group summarises (report key → name in the group table)
FIGURES = ("final_accuracy", "rounds_to_target", "wall_s", "cost_usd")
SWEEPS_DIR = "sweeps"


class SweepNotFound(UsageProblem, LookupError):
    """`--sweep NAME` names no manifest under Logs/sweeps/."""


class SweepManifestError(ResultsFailure, ValueError):
    """A sweep manifest that is not the JSON object `fedkeeper sweep` writes."""


# ------------------------------------------------------------------------------------------------ configs


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts → {dotted.key: leaf}; lists and scalars are leaves; an empty dict is a leaf too."""
    if isinstance(node, Mapping) and node:
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node} if prefix else {}


def _canonical(value: Any) -> str:
    """One text per value, so 0.1 and 0.10 (same float) compare equal and lists compare by content."""
    return json.dumps(value, sort_keys=True, default=str)


def varying_keys(configs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The dotted keys whose values are not the same in every config (a key missing in one counts as differing),
    in the order they first appear, without the seed and keys that do not describe the run."""
    flat = [flatten(c) for c in configs]
    keys: dict[str, None] = {}
    for f in flat:
        keys.update(dict.fromkeys(f))
    out = []
    for key in keys:
        if key in IGNORED_KEYS or key.startswith(IGNORED_PREFIXES):
            continue
        if len({_canonical(f.get(key, "<missing>")) for f in flat}) > 1:
            out.append(key)
    return out


def short_names(keys: Sequence[str]) -> dict[str, str]:
    """Each dotted key → its shortest tail (whole components) that no other key of `keys` ends with."""
    out = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            tail = ".".join(parts[-n:])
            if not any(other != key and (other == tail or other.endswith("." + tail)) for other in keys):
                break
        out[key] = tail
    return out


def _show(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return format(value, "g")
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


# ------------------------------------------------------------------------------------------------ sweeps


def sweep_path(logs_dir: Path, name: str) -> Path:
    return logs_dir / SWEEPS_DIR / f"{name}.json"


def load_sweep(logs_dir: Path, name: str) -> dict[str, Any]:
    """The manifest `fedkeeper sweep` writes to Logs/sweeps/<name>.json."""
    path = sweep_path(logs_dir, name)
    if not path.is_file():
        folder = logs_dir / SWEEPS_DIR
        known = sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []
        hint = f"; sweeps there: {', '.join(known)}" if known else "; it holds no sweep manifests"
        raise SweepNotFound(f"no sweep {name!r} under {folder}{hint}")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SweepManifestError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("runs"), list) or \
            not all(isinstance(r, dict) and isinstance(r.get("run_id"), str) for r in doc["runs"]):
        raise SweepManifestError(f"{path}: not a sweep manifest (needs a list `runs` of objects with a `run_id`)")
    return doc


# ------------------------------------------------------------------------------------------------ figures


@dataclass
class Spread:
    """mean ± sample std over the runs that have the figure; n of them."""

    mean: float | None
    std: float | None
    n: int

    @classmethod
    def of(cls, values: Sequence[float | None]) -> "Spread":
        got = np.asarray([float(v) for v in values if v is not None], dtype=float)
        if got.size == 0:
            return cls(None, None, 0)
        return cls(float(got.mean()), float(got.std(ddof=1)) if got.size > 1 else None, int(got.size))

    def as_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "n": self.n}


def cumulative_cost(run: RunFolder, prices: Mapping[str, UnitPrice]) -> dict[int, float | None]:
    """Estimated cost of the run up to the end of each round (every activation of rounds ≤ r, the model's
    initialisation included); None from the first round with an unpriced platform on."""
    by_round: dict[int, list[dict[str, Any]]] = {}
    for row in run.activations:
        r = row.get("round")
        by_round.setdefault(r if isinstance(r, int) else 0, []).append(row)
    total: float | None = 0.0
    out: dict[int, float | None] = {}
    rounds = sorted({r["round"] for r in run.rounds} | set(by_round))
    for r in rounds:
        rows = [{**row, "platform": platform_kind(row.get("platform"))} for row in by_round.get(r, [])]
        cost = cost_estimate(rows, prices)["total_usd"] if rows else 0.0
        total = None if total is None or cost is None else total + cost
        out[r] = total
    return out


def _run_entry(run: RunFolder, report: Mapping[str, Any], flat: Mapping[str, Any], keys: Sequence[str],
               names: Mapping[str, str], target: float | None, prices: Mapping[str, UnitPrice],
               manifest_row: Mapping[str, Any] | None) -> dict[str, Any]:
    run_target = target if target is not None else flat.get(TARGET_KEY)
    run_target = float(run_target) if isinstance(run_target, (int, float)) else None
    values = {k: flat.get(k) for k in keys}
    costs = cumulative_cost(run, prices)
    elapsed = 0.0
    curve = []
    for row in run.rounds:
        elapsed += float(row.get("round_s") or 0.0)
        curve.append({"round": row["round"], "accuracy": row.get("accuracy"), "elapsed_s": elapsed,
                      "cost_usd": costs.get(row["round"])})
    final = (report.get("final") or {}).get("accuracy")
    seed = flat.get(SEED_KEY, (manifest_row or {}).get("seed"))
    return {
        "run_id": report["run_id"],
        "label": ", ".join(f"{names[k]}={_show(v)}" for k, v in values.items()) or "all runs",
        "values": values,
        "seed": seed,
        "status": report["status"],
        "rounds": len(run.rounds),
        "final_accuracy": final,
        "target": run_target,
        "rounds_to_target": rounds_to_reach(run.rounds, run_target) if run_target is not None else None,
        "wall_s": report.get("wall_s"),
        "cost_usd": (report.get("cost") or {}).get("total_usd"),
        "overrides": (run.summary or {}).get("overrides"),
        "curve": curve,
    }


@dataclass
class Group:
    """Runs whose configs differ at most in the seed."""

    label: str
    values: dict[str, Any]
    runs: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        runs = self.runs
        targets = {r["target"] for r in runs}
        with_target = [r for r in runs if r["target"] is not None]
        out: dict[str, Any] = {
            "label": self.label, "values": self.values, "n": len(runs),
            "runs": [r["run_id"] for r in runs], "seeds": [r["seed"] for r in runs],
            "target": targets.pop() if len(targets) == 1 else sorted(t for t in targets if t is not None) or None,
            "reached": sum(r["rounds_to_target"] is not None for r in with_target),
            "not_reached": sum(r["rounds_to_target"] is None for r in with_target),
        }
        for name in FIGURES:
            out[name] = Spread.of([r[name] for r in runs]).as_dict()
        out["curve"] = mean_curve(runs)
        return out


def mean_curve(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per round, mean and sample std over the runs that reached it of accuracy, elapsed time and cost."""
    rounds = sorted({p["round"] for r in runs for p in r["curve"]})
    out = []
    for n in rounds:
        points = [p for r in runs for p in r["curve"] if p["round"] == n]
        entry: dict[str, Any] = {"round": n, "n": len(points)}
        for key in ("accuracy", "elapsed_s", "cost_usd"):
            spread = Spread.of([p[key] for p in points])
            entry[key] = spread.mean if spread.n == len(points) else None  # a gap where a run lacks the figure
            entry[f"{key}_std"] = spread.std if spread.n == len(points) else None
        out.append(entry)
    return out


def compare(runs: Sequence[RunFolder], reports: Sequence[Mapping[str, Any]], prices: Mapping[str, UnitPrice], *,
            target: float | None = None, sweep: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The grouped view of several runs: `varying` keys, one entry per run and per group (first-seen order)."""
    manifest_rows = {r["run_id"]: r for r in (sweep or {}).get("runs", [])}
    flats = []
    for run in runs:
        flat = flatten(run.config or {})
        if not run.config and run.run_id in manifest_rows:  # no config.yaml: the manifest's values stand in
            flat = {**{k: v for k, v in (manifest_rows[run.run_id].get("values") or {}).items()},
                    SEED_KEY: manifest_rows[run.run_id].get("seed")}
        flats.append(flat)
    keys = varying_keys(flats)
    names = short_names(keys)
    entries = [_run_entry(run, rep, flat, keys, names, target, prices, manifest_rows.get(rep["run_id"]))
               for run, rep, flat in zip(runs, reports, flats)]
    groups: dict[str, Group] = {}
    for entry in entries:
        key = _canonical(entry["values"])
        groups.setdefault(key, Group(entry["label"], entry["values"])).runs.append(entry)
    found = {r.run_id for r in runs}
    missing = [{"run_id": r["run_id"], "status": r.get("status"), "values": r.get("values"), "seed": r.get("seed")}
               for r in (sweep or {}).get("runs", []) if r["run_id"] not in found]
    return {
        "sweep": (sweep or {}).get("name"),
        "target": target,
        "varying": keys,
        "names": names,
        "groups": [g.as_dict() for g in groups.values()],
        "runs": entries,
        "missing": missing,
    }


# ------------------------------------------------------------------------------------------------ output


def json_document(data: Mapping[str, Any]) -> dict[str, Any]:
    """What `--json` prints for the grouped view: everything but the per-run curves (they are in each run's
    rounds.csv; the group curves stay)."""
    return {**data, "runs": [{k: v for k, v in r.items() if k != "curve"} for r in data["runs"]]}


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return format(value, ".12g") if math.isfinite(value) else ""
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return value


def write_groups_csv(data: Mapping[str, Any], stream: TextIO) -> None:
    """The group table as CSV: label, the varying keys (dotted), n, then mean/std/n per figure."""
    columns = ["label", *data["varying"], "n", "target", "reached", "not_reached"]
    for name in FIGURES:
        columns += [f"{name}_mean", f"{name}_std", f"{name}_n"]
    columns.append("runs")
    writer = csv.DictWriter(stream, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for group in data["groups"]:
        row: dict[str, Any] = {"label": group["label"], "n": group["n"], "target": _cell(group["target"]),
                               "reached": group["reached"], "not_reached": group["not_reached"],
                               "runs": " ".join(group["runs"])}
        row.update({k: _cell(group["values"].get(k)) for k in data["varying"]})
        for name in FIGURES:
            for part in ("mean", "std", "n"):
                row[f"{name}_{part}"] = _cell(group[name][part])
        writer.writerow(row)

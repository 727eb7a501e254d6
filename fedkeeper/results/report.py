"""`fedkeeper report`: one run or several read back from `Logs/` — rounds, per-platform statistics, cost.

Works from the run folders alone (no store, no config needed), so a results folder copied to another machine
can be inspected there. The output shapes:

- `build_report(run, prices)` → one JSON-ready dict per run (`rounds` are the rows of rounds.csv, `totals`
  their sums, the statistics are computed from activations.csv, `summary` is summary.json as written, or None
  while running). Every count is defined once, in `results/counts.py`, so `totals` equals summary.json's
  `totals` and `activations` its `activations`;
- `report_document(reports)` → what `--json` prints: the run's dict for one run, a list of them (in the order
  given) for several;
- `write_rounds_csv(reports, stream)` → what `--csv` prints: the rounds table(s), with a leading `run_id`
  column when there are several runs;
- `comparison(reports)` → the side-by-side view of several runs; `results.compare` groups them by what differs
  in their configs (mean ± std over seeds), `results.clients` is the per-client view.

Rendering for people lives in `render`, the plots in `plots`.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from fedkeeper.results.pricing import UnitPrice
from fedkeeper.providers import registry
from fedkeeper.results.run_folders import RunFolder, load_run, resolve_runs
from fedkeeper.results.stats import activation_stats, cost_estimate, group_stats, round_totals, rounds_to_reach
from fedkeeper.results.runlog import ROUND_COLUMNS

#: settings of the config as run that a comparison of runs lines up (key → path in config.yaml)
SETTINGS: dict[str, tuple[str, ...]] = {
    "optim": ("scenarios", "federated_learning", "model_params", "optim"),
    "lr": ("scenarios", "federated_learning", "model_params", "lr"),
    "local_epochs": ("scenarios", "federated_learning", "model_params", "local_epochs"),
    "batch_size": ("scenarios", "federated_learning", "model_params", "batch_size"),
    "mu": ("scenarios", "federated_learning", "model_params", "mu"),
    "model": ("scenarios", "federated_learning", "data_sampling", "model"),
    "partition": ("scenarios", "federated_learning", "data_sampling", "partition"),
    "total_num_clients": ("scenarios", "federated_learning", "clients_info", "total_num_clients"),
    "num_clients_per_round": ("scenarios", "federated_learning", "clients_info", "num_clients_per_round"),
    "seed": ("scenarios", "federated_learning", "seed"),
    "target_accuracy": ("scenarios", "federated_learning", "target_accuracy"),
}


def platform_kind(platform: Any) -> str:
    """activations.csv names platforms by kind (`aws`); accept the human names (`AWS Lambda`) as well."""
    text = str(platform or "unknown")
    return next((s.kind for s in registry.platforms() if s.title == text), text)


def _clusters(run: RunFolder) -> dict[str, str]:
    """cluster name → kind, from summary.json, else the config as run, else the activations."""
    if run.summary and isinstance(run.summary.get("clusters"), dict):
        return {str(k): str(v) for k, v in run.summary["clusters"].items()}
    providers = (run.config or {}).get("providers")
    if isinstance(providers, dict):
        found = {name: kind for kind, group in providers.items() if isinstance(group, dict) for name in group}
        if found:
            return found
    return {str(r["cluster"]): platform_kind(r.get("platform")) for r in run.activations if r.get("cluster")}


def _privacy(run: RunFolder, summary: Mapping[str, Any]) -> dict[str, Any] | None:
    """The run's differential-privacy figures: summary.json's `privacy` block, else (a run still going) the ε of
    its last round from rounds.csv with the config's settings; None for a run without privacy."""
    if isinstance(summary.get("privacy"), dict):
        return dict(summary["privacy"])
    section = run.setting("scenarios", "federated_learning", "privacy")
    if not isinstance(section, dict):
        return None
    last = next((r for r in reversed(run.rounds) if r.get("epsilon") is not None), {})
    return {"mode": section.get("mode", "central"), "noise_multiplier": section.get("noise_multiplier"),
            "delta": section.get("delta"), "sampling": section.get("sampling", "fixed"),
            "epsilon": last.get("epsilon") if run.rounds else 0.0, "target_epsilon": section.get("target_epsilon")}


def build_report(run: RunFolder, prices: Mapping[str, UnitPrice], *, target: float | None = None) -> dict[str, Any]:
    """The JSON-ready report of one run; `target` (`--target`) replaces the config's target_accuracy for
    `totals.rounds_to_target`."""
    status = run.status
    # a run that is going again after an interruption still has the summary.json of that interruption
    summary = (run.summary or {}) if status != "running" else {}
    activations = [{**row, "platform": platform_kind(row.get("platform"))} for row in run.activations]
    totals = round_totals(run.rounds)
    overall = {**activation_stats(activations), "redeploys": run.redeploys}
    last = run.rounds[-1] if run.rounds else {}
    final = summary.get("final") if isinstance(summary.get("final"), dict) else \
        {"accuracy": last.get("accuracy"), "loss": last.get("loss")}
    settings = {key: run.setting(*path) for key, path in SETTINGS.items()}
    target = settings.get("target_accuracy") if target is None else target
    if isinstance(target, (int, float)):
        totals["rounds_to_target"] = rounds_to_reach(run.rounds, float(target))
    return {
        "run_id": run.run_id,
        "path": str(run.path),
        "experiment": run.experiment,
        "status": status,
        "optimizer": run.optimizer,
        "settings": settings,
        "clusters": _clusters(run),
        "started": (run.summary or {}).get("started", run.started_ts),
        "finished": summary.get("finished"),
        "last_event_ts": run.last_event_ts,
        "wall_s": run.wall_s,
        "sessions": len(run.sessions),
        "rounds_completed": summary.get("rounds_completed", max((r["round"] for r in run.rounds), default=0)),
        "final": final,
        "reason": summary.get("reason") or (run.reason if status != "running" else None),
        "error": summary.get("error") or run.failure,
        "rounds": run.rounds,
        "totals": totals,
        "activations": overall,
        "by_cluster": group_stats(activations, "cluster", "platform"),
        "by_platform": group_stats(activations, "platform"),
        "by_function": group_stats(activations, "function"),
        "cost": {**cost_estimate(activations, prices), "rounds": _round_costs(activations, prices)},
        "summary": run.summary,
        **({"privacy": privacy} if (privacy := _privacy(run, summary)) is not None else {}),
    }


def _round_costs(activations: Sequence[Mapping[str, Any]], prices: Mapping[str, UnitPrice]) -> list[dict[str, Any]]:
    """Per round, the cost estimate of its activations by platform (warm-ups are billed to the round that fired
    them here; rounds.csv's `cost` bills them to the round that collected them: docs/scheduling.md)."""
    by_round: dict[int, list[Mapping[str, Any]]] = {}
    for row in activations:
        if isinstance(row.get("round"), int):
            by_round.setdefault(row["round"], []).append(row)
    return [{"round": r, **{k: v for k, v in cost_estimate(rows, prices).items() if k in ("platforms", "total_usd")}}
            for r, rows in sorted(by_round.items())]


def load_folders(logs_dir: Path, runs: Sequence[str]) -> list[RunFolder]:
    """The run folders named (ids, `latest`, or folder paths), read, in the order given."""
    return [load_run(path) for path in resolve_runs(logs_dir, list(runs))]


def load_reports(logs_dir: Path, runs: Sequence[str], prices: Mapping[str, UnitPrice], *,
                 target: float | None = None) -> list[dict[str, Any]]:
    """Reports of the runs named (ids, `latest`, or folder paths), in the order given."""
    return [build_report(run, prices, target=target) for run in load_folders(logs_dir, runs)]


def report_document(reports: list[dict[str, Any]]) -> Any:
    """What `--json` prints: one run's report, or the list of them for several runs."""
    return reports[0] if len(reports) == 1 else reports


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return format(value, ".12g")
    return value


def write_rounds_csv(reports: list[dict[str, Any]], stream: TextIO) -> None:
    """The rounds table(s) as CSV (rounds.csv's columns; a leading run_id column when several runs)."""
    several = len(reports) > 1
    columns = (["run_id"] if several else []) + ROUND_COLUMNS
    writer = csv.DictWriter(stream, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for report in reports:
        for row in report["rounds"]:
            out = {c: _csv_value(row.get(c)) for c in ROUND_COLUMNS}
            if several:
                out["run_id"] = report["run_id"]
            writer.writerow(out)


def run_label(report: Mapping[str, Any]) -> str:
    """`<run id> (<optimizer>)`: how plots and comparisons name a run."""
    optim = report.get("optimizer")
    return f"{report['run_id']} ({optim})" if optim else str(report["run_id"])


def comparison(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Several runs side by side: key figures per run, and accuracy/loss/round time per round per run."""
    runs = []
    for r in reports:
        totals, acts = r["totals"], r["activations"]
        runs.append({
            "run_id": r["run_id"], "label": run_label(r), "status": r["status"], "optimizer": r["optimizer"],
            "clients": r["settings"].get("total_num_clients"),
            "clients_per_round": r["settings"].get("num_clients_per_round"),
            "platforms": sorted(set(r["clusters"].values())),
            "rounds": totals["rounds"], "final_accuracy": totals["final_accuracy"],
            "best_accuracy": totals["best_accuracy"], "final_loss": totals["final_loss"],
            "round_s_mean": totals["round_s_mean"], "wall_s": r["wall_s"],
            "activations": acts["activations"], "failure_rate": acts["failure_rate"],
            "cold_share": acts["cold_share"], "duration_p50_s": acts["duration_p50_s"],
            "cost_usd": r["cost"]["total_usd"],
        })
    rounds = sorted({row["round"] for r in reports for row in r["rounds"]})
    per_round = []
    for n in rounds:
        entry: dict[str, Any] = {"round": n}
        for r in reports:
            row = next((x for x in r["rounds"] if x["round"] == n), {})
            entry[r["run_id"]] = {"accuracy": row.get("accuracy"), "loss": row.get("loss"),
                                  "round_s": row.get("round_s")}
        per_round.append(entry)
    return {"runs": runs, "per_round": per_round}

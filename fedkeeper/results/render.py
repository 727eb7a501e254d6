"""Rich tables for `fedkeeper report`: what a researcher reads in the terminal.

Only presentation: every figure shown comes from the report dicts of `report.py` (the same ones `--json`
prints), so the screen and the JSON never disagree.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from fedkeeper.results.report import comparison

_STATUS_STYLE = {"completed": "green", "failed": "red", "quorum_lost": "red", "running": "yellow",
                 "interrupted": "magenta", "stopped": "magenta"}


def fmt_num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def fmt_pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def fmt_usd(value: float | None) -> str:
    if value is None:
        return "unknown"
    return "$0" if value == 0 else f"${value:.6f}" if value < 0.01 else f"${value:.2f}"


def fmt_time(value: Any) -> str:
    """A unix time or an ISO string, as local `YYYY-MM-DD HH:MM:SS`."""
    if value is None or value == "":
        return "–"
    if isinstance(value, (int, float)):
        return dt.datetime.fromtimestamp(float(value)).strftime("%Y-%m-%d %H:%M:%S")
    try:
        parsed = dt.datetime.fromisoformat(str(value))
    except ValueError:
        return str(value)
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone()
    return parsed.strftime("%Y-%m-%d %H:%M:%S")


def _status(status: str) -> str:
    return f"[{_STATUS_STYLE.get(status, 'magenta')}]{status}[/]"


def _table(title: str, **kw: Any) -> Table:
    """A compact table: the rounds table fits an 80-column terminal."""
    return Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), pad_edge=False,
                 show_edge=False, **kw)


def _bad(value: Any) -> str:
    return f"[red]{value}[/]" if value else str(value if value is not None else "–")


def rounds_table(report: Mapping[str, Any]) -> Table:
    """One row per round: accuracy, loss, clients, failures and the round time split (seconds)."""
    table = _table("rounds (ok: updates used; f/t/l: failed/timed out/lost; times in s)")
    for title in ("round", "acc", "loss", "ok/sel", "f/t/l", "retry", "rej", "invoke", "slowest", "aggr",
                  "total"):
        table.add_column(title, justify="right")
    for row in report["rounds"]:
        bad = "/".join(str(row.get(k) if row.get(k) is not None else "–") for k in ("failed", "timed_out", "lost"))
        any_bad = any(row.get(k) for k in ("failed", "timed_out", "lost"))
        table.add_row(str(row["round"]), fmt_num(row.get("accuracy"), 4), fmt_num(row.get("loss"), 4),
                      f"{fmt_num(row.get('aggregated'))}/{fmt_num(row.get('selected'))}",
                      f"[red]{bad}[/]" if any_bad else bad, fmt_num(row.get("retries")), _bad(row.get("rejected")),
                      fmt_num(row.get("invoke_s"), 2), fmt_num(row.get("slowest_client_s"), 2),
                      fmt_num(row.get("aggregate_s"), 2), fmt_num(row.get("round_s"), 2))
    return table


def stats_table(rows: list[dict[str, Any]], keys: list[str], title: str) -> Table:
    """Per cluster / platform / function statistics from activations.csv (durations in seconds)."""
    table = _table(f"{title} (durations in s)")
    table.add_column(" ".join(keys))
    for col in ("n", "ok", "f/t/l", "fail", "cold", "p50", "p95", "max"):
        table.add_column(col, justify="right")
    for row in rows:
        name = str(row.get(keys[0]) or "–") + "".join(f" ({row.get(k) or '–'})" for k in keys[1:])
        bad = f"{row['failed']}/{row['timed_out']}/{row['lost']}"
        table.add_row(name, str(row["activations"]), str(row["succeeded"]),
                      f"[red]{bad}[/]" if row["failure_rate"] else bad, fmt_pct(row["failure_rate"]),
                      fmt_pct(row["cold_share"]), fmt_num(row["duration_p50_s"], 2),
                      fmt_num(row["duration_p95_s"], 2), fmt_num(row["duration_max_s"], 2))
    return table


def _price(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.10f}".rstrip("0").rstrip(".") if value else "0"


def cost_table(cost: Mapping[str, Any]) -> Table:
    table = _table("estimated cost (list prices, USD)")  # its note is printed after it, on one line
    for col, justify in (("platform", "left"), ("invocations", "right"), ("GB-s", "right"),
                         ("$/GB-s", "right"), ("$/1M inv.", "right"), ("cost", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for p in cost["platforms"]:
        table.add_row(p["platform"], str(p["invocations"]), fmt_num(p["gb_seconds"], 2),
                      _price(p["gb_second_usd"]), _price(p["per_million_invocations_usd"]), fmt_usd(p["total_usd"]))
    table.add_row("[bold]total[/]", "", "", "", "", f"[bold]{fmt_usd(cost['total_usd'])}[/]")
    return table


def headline(report: Mapping[str, Any]) -> str:
    final = report.get("final") or {}
    parts = [f"[bold]{report['run_id']}[/]", f"experiment {report.get('experiment') or '?'}",
             _status(report["status"]), f"{report['rounds_completed']} rounds",
             f"accuracy {fmt_num(final.get('accuracy'), 4)}", f"loss {fmt_num(final.get('loss'), 4)}"]
    if report.get("optimizer"):
        parts.append(f"optimizer {report['optimizer']}")
    if report.get("wall_s") is not None:
        sessions = report.get("sessions") or 1
        parts.append(f"wall {fmt_num(report['wall_s'], 1)} s" + (f" ({sessions} sessions)" if sessions > 1 else ""))
    parts.append(f"started {fmt_time(report.get('started'))}")
    line = " · ".join(parts)
    overrides = (report.get("summary") or {}).get("overrides")
    if isinstance(overrides, dict) and overrides:
        line += "\noverrides: " + ", ".join(f"{k}={_value(v)}" for k, v in overrides.items())
    if report.get("privacy"):
        line += "\n" + privacy_line(report["privacy"])
    if report.get("reason") and report.get("reason") != report.get("error"):
        line += f"\n{report['reason']}"
    if report.get("error"):
        line += f"\n[red]error:[/] {report['error']}"
    if report["status"] == "running":
        line += f"\n[yellow]no summary.json yet (running or interrupted); last event {fmt_time(report.get('last_event_ts'))}[/]"
    return line


def privacy_line(privacy: Mapping[str, Any]) -> str:
    """`privacy: central DP, z 1, fixed sampling · ε 4.2 at δ 1e-05 (target 8)` (docs/privacy.md)."""
    eps = privacy.get("epsilon")
    text = (f"privacy: {privacy.get('mode') or '?'} DP, z {fmt_num(privacy.get('noise_multiplier'))}, "
            f"{privacy.get('sampling') or '?'} sampling · ε {'∞ (no noise)' if eps is None else fmt_num(eps)}")
    if privacy.get("delta") is not None:
        text += f" at δ {float(privacy['delta']):.3g}"
    if privacy.get("target_epsilon") is not None:
        text += f" (target {fmt_num(privacy['target_epsilon'])})"
    return text


def render_run(report: Mapping[str, Any], console: Console) -> None:
    console.print(headline(report))
    if report["rounds"]:
        console.print(rounds_table(report))
    else:
        console.print("no completed rounds yet")
    if report["by_cluster"]:
        console.print(stats_table(report["by_cluster"], ["cluster", "platform"], "activations per cluster"))
        if len(report["by_platform"]) > 1:
            console.print(stats_table(report["by_platform"], ["platform"], "activations per platform"))
        console.print(stats_table(report["by_function"], ["function"], "activations per function"))
        console.print(cost_table(report["cost"]))
        if report["cost"].get("note"):
            console.print(f"[dim]{report['cost']['note']}[/]", soft_wrap=True)


def comparison_tables(reports: list[dict[str, Any]]) -> tuple[Table, Table]:
    """(key figures per run, accuracy/loss per round per run): several runs side by side."""
    data = comparison(reports)
    figures = _table("runs side by side")
    figures.add_column("")
    for run in data["runs"]:
        figures.add_column(run["label"], justify="right")
    rows = [
        ("status", lambda r: _status(r["status"])),
        ("optimizer", lambda r: r["optimizer"] or "–"),
        ("clients (per round)", lambda r: f"{fmt_num(r['clients'])} ({fmt_num(r['clients_per_round'])})"),
        ("platforms", lambda r: ", ".join(r["platforms"]) or "–"),
        ("rounds", lambda r: str(r["rounds"])),
        ("final accuracy", lambda r: fmt_num(r["final_accuracy"], 4)),
        ("best accuracy", lambda r: fmt_num(r["best_accuracy"], 4)),
        ("final loss", lambda r: fmt_num(r["final_loss"], 4)),
        ("mean round s", lambda r: fmt_num(r["round_s_mean"], 2)),
        ("wall s", lambda r: fmt_num(r["wall_s"], 1)),
        ("activations", lambda r: str(r["activations"])),
        ("failure rate", lambda r: fmt_pct(r["failure_rate"])),
        ("cold starts", lambda r: fmt_pct(r["cold_share"])),
        ("duration p50 s", lambda r: fmt_num(r["duration_p50_s"])),
        ("est. cost", lambda r: fmt_usd(r["cost_usd"])),
    ]
    for title, cell in rows:
        figures.add_row(title, *[cell(run) for run in data["runs"]])
    per_round = _table("accuracy / loss per round")
    per_round.add_column("round", justify="right")
    for run in data["runs"]:
        per_round.add_column(run["label"], justify="right")
    for entry in data["per_round"]:
        per_round.add_row(str(entry["round"]), *[
            f"{fmt_num(entry[r['run_id']]['accuracy'], 4)} / {fmt_num(entry[r['run_id']]['loss'], 4)}"
            for r in data["runs"]])
    return figures, per_round


def render_reports(reports: list[dict[str, Any]], console: Console,
                   groups: Mapping[str, Any] | None = None) -> None:
    """Each run's report; for several, the side-by-side comparison and (given `groups`) the group table."""
    for i, report in enumerate(reports):
        if i:
            console.rule()
        render_run(report, console)
    if len(reports) > 1:
        console.rule("comparison")
        for table in comparison_tables(reports):
            console.print(table)
    if groups is not None:
        console.print(groups_table(groups))
        for line in group_notes(groups):
            console.print(line, soft_wrap=True)


def _value(value: Any) -> str:
    if isinstance(value, float):
        return format(value, "g")
    return json.dumps(value, separators=(",", ":")) if isinstance(value, (list, dict)) else str(value)


def fmt_spread(spread: Mapping[str, Any], digits: int = 4, fmt: Any = None) -> str:
    """`mean ± std` (sample std), or the mean alone for one value; `–` for none."""
    show = fmt or (lambda v: fmt_num(v, digits))
    if spread["mean"] is None:
        return "–"
    return show(spread["mean"]) + (f" ± {show(spread['std'])}" if spread["std"] is not None else "")


def _to_target(group: Mapping[str, Any]) -> str:
    if group["target"] is None:
        return "–"
    reached, missed = group["reached"], group["not_reached"]
    text = fmt_spread(group["rounds_to_target"], 1) if reached else "never"
    return text + (f" ({missed} of {reached + missed} never)" if missed and reached else "")


def groups_table(data: Mapping[str, Any]) -> Table:
    """One row per group of runs that differ only in the seed: mean ± sample std over them, n runs."""
    table = _table("groups (mean ± sample std over seeds)")
    table.add_column("group")
    for col in ("n", "final accuracy", "rounds to target", "wall s", "est. cost"):
        table.add_column(col, justify="right")
    for group in data["groups"]:
        table.add_row(group["label"], str(group["n"]), fmt_spread(group["final_accuracy"]), _to_target(group),
                      fmt_spread(group["wall_s"], 1), fmt_spread(group["cost_usd"], fmt=fmt_usd))
    return table


def group_notes(data: Mapping[str, Any]) -> list[str]:
    """What the group table leaves out: keys that differ, runs of a sweep that have no folder."""
    target = data.get("target")
    notes = [f"group: runs whose configs differ only in the seed; n: its runs; rounds to target: to "
             + (f"accuracy {fmt_num(target, 4)} (--target)" if target is not None else "each run's target_accuracy")
             + ", over the runs that reached it"]
    if data["varying"]:
        notes.append("groups differ in: " + ", ".join(data["varying"]))
    else:
        notes.append("the runs' configs differ in nothing but the seed: one group")
    missing = data.get("missing") or []
    if missing:
        notes.append(f"[yellow]{len(missing)} run(s) of the sweep have no folder under the logs directory:[/] " +
                     ", ".join(f"{m['run_id']} ({m.get('status') or '?'})" for m in missing))
    return notes


def runs_table(data: Mapping[str, Any]) -> Table:
    """The runs of a sweep or grouped report, one row each, labelled by what differs."""
    table = _table("runs")
    for col, justify in (("run", "left"), ("label", "left"), ("seed", "right"), ("status", "left"),
                         ("rounds", "right"), ("final acc", "right"), ("to target", "right"), ("wall s", "right"),
                         ("est. cost", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for run in data["runs"]:
        to_target = "–" if run["target"] is None else \
            str(run["rounds_to_target"]) if run["rounds_to_target"] is not None else "never"
        table.add_row(run["run_id"], run["label"], fmt_num(run["seed"]), _status(run["status"]), str(run["rounds"]),
                      fmt_num(run["final_accuracy"], 4), to_target, fmt_num(run["wall_s"], 1),
                      fmt_usd(run["cost_usd"]))
    return table


def render_groups(data: Mapping[str, Any], console: Console) -> None:
    """The grouped view alone (`--sweep`, `--groups`): the runs, then the groups."""
    if data.get("sweep"):
        console.print(f"sweep [bold]{data['sweep']}[/]: {len(data['runs'])} runs, {len(data['groups'])} groups")
    console.print(runs_table(data))
    console.print(groups_table(data))
    for line in group_notes(data):
        console.print(line, soft_wrap=True)


def clients_table(data: Mapping[str, Any]) -> Table:
    """Per client of one run: selection, aggregation, failures, cold starts, durations, examples."""
    table = _table("clients (f/t/l: failed/timed out/lost; mean, p95: successful activations, s)")
    for col in ("client", "selected", "aggregated", "activations", "f/t/l", "cold", "mean", "p95", "examples"):
        table.add_column(col, justify="right")
    for row in data["clients"]:
        bad = f"{row['failed']}/{row['timed_out']}/{row['lost']}"
        any_bad = row["failed"] or row["timed_out"] or row["lost"]
        table.add_row(str(row["client_id"]), str(row["selected"]), str(row["aggregated"]), str(row["activations"]),
                      f"[red]{bad}[/]" if any_bad else bad, str(row["cold_starts"]),
                      fmt_num(row["duration_mean_s"], 2), fmt_num(row["duration_p95_s"], 2),
                      fmt_num(row["examples"]))
    return table


def render_clients(data: Mapping[str, Any], console: Console) -> None:
    console.print(f"[bold]{data['run_id']}[/] · {data['rounds']} rounds · {len(data['clients'])} clients")
    console.print(clients_table(data))
    console.print(f"[dim]aggregated: {data['sources']['aggregated']}; examples: {data['sources']['examples']}[/]",
                  soft_wrap=True)
    if data.get("store_note"):
        console.print(f"[yellow]{data['store_note']}[/]", soft_wrap=True)


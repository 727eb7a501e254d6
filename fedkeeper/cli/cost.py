"""`fedkeeper cost`: what an experiment would cost on its configured clusters, before anything is deployed.

Invocations come from the config (clients per round with over-selection × rounds, on the clusters the placement
gives them; the aggregator once per round and once for init); durations from a measured run (`--from RUN`: per
function, mean and p95 from its activations.csv) or from timing the model on this machine. Nothing is deployed
and no platform or store is contacted. An unknown run is a usage error (exit 2).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import click

from fedkeeper.cli.console import READ_EXIT_CODES_HELP, common_options, config_option, current_app


@click.command(epilog=READ_EXIT_CODES_HELP)
@config_option()
@click.option("--from", "from_run", metavar="RUN_ID|latest",
              help="Use the durations a run measured (Logs/<RUN>/activations.csv) instead of a calibration.")
@click.option("--rounds", type=click.IntRange(min=1, max=10**9),
              help="Override scenarios.federated_learning.rounds.")
@common_options
def cost(config_path: str, from_run: str | None, rounds: int | None) -> None:
    """Estimate the experiment's cost per cluster and platform from list prices, before deploying anything.

    Without --from, a client's and the aggregator's durations come from timing the configured model on this
    machine (stated in the output); with --from RUN, from that run's measured durations. --json prints the
    estimate with one row per cluster and function.
    """
    from fedkeeper.results import cost_estimate, pricing
    from fedkeeper.results.run_folders import load_run, resolve_runs
    from fedkeeper.scenarios import cost_plan

    app = current_app()
    config = app.load_config(config_path)
    total_rounds = rounds or config.fl.rounds
    notes: list[str] = []
    if from_run is not None:
        run = load_run(resolve_runs(app.logs_dir, [from_run])[0])
        durations = cost_estimate.measured_durations(run.activations, f"run {run.run_id}")
        basis = f"durations measured by run {run.run_id}"
        if run.experiment not in (None, config.experiment):
            notes.append(f"run {run.run_id} is of experiment {run.experiment!r}, the config's is "
                         f"{config.experiment!r}")
    else:
        app.info("timing the model on this machine (use --from RUN for a measured run's durations)")
        durations, notes = cost_plan.calibrate(config.fl)
        basis = "durations calibrated on this machine"
    if config.fl.target_accuracy is not None:
        notes.append(f"all {total_rounds} rounds are priced; target_accuracy {config.fl.target_accuracy:g} may "
                     f"end the run earlier")
    calls = cost_plan.planned_calls(config, total_rounds, app.workdir)
    result = cost_estimate.estimate(calls, durations, pricing.price_table(config.pricing), basis=basis,
                                    rounds=total_rounds, notes=notes)
    result["experiment"] = config.experiment
    if app.json:
        app.write_raw(json.dumps(result, indent=2, default=str))
    else:
        render(result, app.console)


def _usd(value: float | None) -> str:
    if value is None:
        return "—"
    return "$0" if value == 0 else f"${value:.6f}" if value < 0.01 else f"${value:.2f}"


def render(result: Mapping[str, Any], console: Any) -> None:
    """One row per cluster and function, a subtotal per cluster of several functions, the experiment total."""
    from rich import box
    from rich.table import Table

    table = Table(title=f"estimated cost of {result['experiment']}: {result['rounds']} rounds, "
                        f"{result['basis']} (USD, list prices)", title_justify="left", box=box.SIMPLE_HEAD,
                  padding=(0, 1, 0, 0), pad_edge=False, show_edge=False)
    for col in ("cluster", "platform", "function", "invocations", "MB", "mean s", "p95 s", "GB-s", "requests",
                "compute", "total", "total at p95"):
        table.add_column(col, justify="left" if col in ("cluster", "platform", "function") else "right")

    def money(row: Mapping[str, Any]) -> list[str]:
        return [f"{row['gb_seconds']:.2f}", _usd(row["requests_usd"]), _usd(row["compute_usd"]),
                _usd(row["total_usd"]), _usd(row["total_p95_usd"])]

    for cluster in result["clusters"]:
        rows = [r for r in result["rows"] if r["cluster"] == cluster["cluster"]]
        for r in rows:
            table.add_row(r["cluster"], r["platform"], r["function"], str(r["invocations"]), str(r["memory_mb"]),
                          f"{r['duration_mean_s']:.3f}", f"{r['duration_p95_s']:.3f}", *money(r))
        if len(rows) > 1:
            table.add_row(f"[dim]{cluster['cluster']}[/]", f"[dim]{cluster['platform']}[/]", "[dim]all[/]",
                          str(cluster["invocations"]), "", "", "", *money(cluster))
    total = result["total"]
    table.add_row("[bold]total[/]", "", "", str(total["invocations"]), "", "", "", *money(total))
    console.print(table)
    for note in result["notes"]:
        console.print(f"[dim]{note}[/]", soft_wrap=True, highlight=False)

"""`fedkeeper report`: rounds, per-cluster and per-platform statistics and estimated cost, from `Logs/` alone;
several runs or a whole sweep grouped by what differs in their configs (mean ± std over seeds); one run per client.

An unknown run or sweep, a plot file extension other than .png/.pdf/.svg, a missing matplotlib for --plot and
options that do not go together are usage errors (exit 2); a run file or sweep manifest that cannot be read is a
ResultsFailure (exit 1).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from fedkeeper.cli.console import READ_EXIT_CODES_HELP, App, common_options, config_option, current_app
from fedkeeper.errors import UsageProblem


@click.command(epilog=READ_EXIT_CODES_HELP)
@click.argument("runs", nargs=-1, metavar="[RUN_ID|latest ...]")
@config_option(required=False)
@click.option("--sweep", "sweep_name", metavar="NAME",
              help="Every run of the sweep NAME (Logs/sweeps/NAME.json), grouped by the values that differ.")
@click.option("--groups", "grouped", is_flag=True,
              help="Only the grouped view of the runs given: runs differing only in the seed form a group "
                   "(mean ± sample std over them); --csv/--json then print the group table.")
@click.option("--target", type=click.FloatRange(0, 1, min_open=True), metavar="ACC",
              help="The accuracy 'rounds to target' counts to (default: each run's target_accuracy).")
@click.option("--clients", "per_client", is_flag=True,
              help="Per-client statistics of one run: rounds selected and aggregated, failures, cold starts, "
                   "durations, examples contributed (from the store with -c when it answers, else Logs/).")
@click.option("--partition", "show_partition", is_flag=True,
              help="The partition of one run: per client its shard size and examples of each label "
                   "(Logs/RUN/partition.json; --csv/--json for the raw counts).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Write a plot to FILE.png, .pdf or .svg (the extension chooses the format; needs "
                   "fedkeeper[plot]): per run accuracy, loss and round time per round; grouped (--sweep, "
                   "--groups) accuracy against round, wall time and cost, one line per group.")
@click.option("--csv", "as_csv", is_flag=True,
              help="Print the rounds table(s) as CSV (with a run_id column for several runs); the group table "
                   "with --sweep/--groups; the clients table with --clients.")
@common_options
def report(runs: tuple[str, ...], config_path: str | None, sweep_name: str | None, grouped: bool,
           target: float | None, per_client: bool, show_partition: bool, plot_path: Path | None,
           as_csv: bool) -> None:
    """Rounds, per-cluster and per-platform statistics and estimated cost of runs, from Logs/ alone.

    RUN_ID may be a run id under --logs-dir, `latest`, or a path to a run folder; give several to
    compare them side by side and as groups (labelled by the config keys that differ; the seed is never a group
    key). --sweep NAME reports a whole sweep. -c FILE applies the config's `pricing:` overrides (and lets
    --clients ask its store). --json prints the run's report (a list of reports for several runs; the group
    table with --sweep/--groups; the clients with --clients).
    """
    from fedkeeper.results import pricing
    from fedkeeper.results import report as report_data

    app = current_app()
    if app.json and as_csv:
        raise UsageProblem("--json and --csv are exclusive: choose one output format")
    if sweep_name and runs:
        raise UsageProblem("--sweep reports the sweep's own runs: give either --sweep NAME or run ids")
    if per_client and (sweep_name or grouped or len(runs) > 1):
        raise UsageProblem("--clients reports one run: give one RUN_ID (or none for the latest)")
    if per_client and plot_path is not None:
        raise UsageProblem("--plot does not apply to --clients")
    if show_partition and (per_client or sweep_name or grouped or plot_path is not None or len(runs) > 1):
        raise UsageProblem("--partition reports one run: give one RUN_ID (or none for the latest), without "
                           "--clients, --sweep, --groups or --plot")
    if show_partition:
        _partition(app, runs or ("latest",), as_csv)
        return
    if plot_path is not None:
        from fedkeeper.results.plots import plot_format

        plot_format(plot_path)  # a wrong extension is a usage error before anything is read
    config = app.load_config(config_path) if config_path else None
    prices = pricing.price_table(config.pricing if config else None)
    if per_client:
        _clients(app, runs or ("latest",), config, as_csv)
        return
    if sweep_name:
        _grouped(app, prices, target, plot_path, as_csv, sweep_name=sweep_name)
        return
    if grouped:
        _grouped(app, prices, target, plot_path, as_csv, runs=runs or ("latest",))
        return
    folders = report_data.load_folders(app.logs_dir, runs or ("latest",))
    reports = [report_data.build_report(f, prices, target=target) for f in folders]
    if plot_path is not None:
        from fedkeeper.results.plots import plot_runs

        written = plot_runs(reports, plot_path)
        app.info(f"plot written to {written}")
    if app.json:
        app.write_raw(json.dumps(report_data.report_document(reports), indent=2, default=str))
    elif as_csv:
        report_data.write_rounds_csv(reports, app.console.file)
        app.console.file.flush()
    else:
        from fedkeeper.results.render import render_reports

        from fedkeeper.results.compare import compare

        groups = compare(folders, reports, prices, target=target) if len(reports) > 1 else None
        render_reports(reports, app.console, groups)


def _comparison(app: App, prices: Any, target: float | None, *, runs: tuple[str, ...] = (),
                sweep_name: str | None = None) -> dict[str, Any]:
    """The grouped view (`results.compare`) of the runs named, or of a sweep's runs that have a folder."""
    from fedkeeper.results import compare
    from fedkeeper.results import report as report_data
    from fedkeeper.results.run_folders import is_run_folder, load_run

    sweep = None
    if sweep_name:
        sweep = compare.load_sweep(app.logs_dir, sweep_name)
        folders = [load_run(app.logs_dir / r["run_id"]) for r in sweep["runs"]
                   if is_run_folder(app.logs_dir / r["run_id"])]
    else:
        folders = report_data.load_folders(app.logs_dir, runs)
    reports = [report_data.build_report(f, prices, target=target) for f in folders]
    return compare.compare(folders, reports, prices, target=target, sweep=sweep)


def _grouped(app: App, prices: Any, target: float | None, plot_path: Path | None, as_csv: bool, *,
             runs: tuple[str, ...] = (), sweep_name: str | None = None) -> None:
    from fedkeeper.results import compare

    data = _comparison(app, prices, target, runs=runs, sweep_name=sweep_name)
    if plot_path is not None:
        from fedkeeper.results.plots import plot_groups

        written = plot_groups(data, plot_path)
        app.info(f"plot written to {written}")
    if app.json:
        app.emit_json(compare.json_document(data))
    elif as_csv:
        compare.write_groups_csv(data, app.console.file)
        app.console.file.flush()
    else:
        from fedkeeper.results.render import render_groups

        render_groups(data, app.console)


def _partition(app: App, runs: tuple[str, ...], as_csv: bool) -> None:
    """`--partition`: the per-client label histogram the run recorded in round 0."""
    from fedkeeper.results import partition
    from fedkeeper.results.run_folders import resolve_runs

    folder = resolve_runs(app.logs_dir, list(runs))[0]
    data = partition.with_stats(partition.read(folder))
    if app.json:
        app.emit_json({"run_id": folder.name, **data})
    elif as_csv:
        partition.write_csv(data, app.console.file)
        app.console.file.flush()
    else:
        partition.render(folder.name, data, app.console)


def _clients(app: App, runs: tuple[str, ...], config: Any, as_csv: bool) -> None:
    """`--clients`: update documents from the config's store when -c is given and it answers, else Logs/ only."""
    from contextlib import ExitStack

    from fedkeeper.errors import StoreFailure
    from fedkeeper.results.clients import client_stats, write_clients_csv
    from fedkeeper.results.run_folders import load_run, resolve_runs

    run = load_run(resolve_runs(app.logs_dir, list(runs))[0])
    with ExitStack() as stack:
        updates, note = None, None
        if config is not None:
            from fedkeeper.store import open_store

            try:
                store = stack.enter_context(open_store(config.mongo_config, workdir=app.workdir, attempts=1))
                updates = lambda r: store.blobs.list_updates(run.run_id, r)  # noqa: E731
            except StoreFailure as exc:
                note = f"store not reachable ({exc}); examples from Logs/ only"
        data = client_stats(run, updates, store_note=note)
    if app.json:
        app.emit_json(data)
    elif as_csv:
        write_clients_csv(data, app.console.file)
        app.console.file.flush()
    else:
        from fedkeeper.results.render import render_clients

        render_clients(data, app.console)

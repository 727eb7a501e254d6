"""`fedkeeper report`: rounds, per-cluster and per-platform statistics and estimated cost, from `Logs/` alone.

An unknown run and a missing matplotlib for --plot are usage errors (RunNotFound, PlotUnavailable: exit 2);
a run file that cannot be read is RunFileError (exit 1).
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from fedkeeper.cli.console import READ_EXIT_CODES_HELP, common_options, config_option, make_app, write_raw
from fedkeeper.errors import UsageProblem


@click.command(epilog=READ_EXIT_CODES_HELP)
@click.argument("runs", nargs=-1, metavar="[RUN_ID|latest ...]")
@config_option(required=False)
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE.png",
              help="Write accuracy, loss and round time per round (runs overlaid) as a PNG "
                   "(needs fedkeeper[plot]).")
@click.option("--json", "as_json", is_flag=True,
              help="Print JSON: the run's report, or a list of reports for several runs.")
@click.option("--csv", "as_csv", is_flag=True,
              help="Print the rounds table(s) as CSV (with a run_id column for several runs).")
@common_options
@click.pass_context
def report(ctx: click.Context, runs: tuple[str, ...], config_path: str | None, plot_path: Path | None,
           as_json: bool, as_csv: bool, logs_dir: Path, verbose: bool, quiet: bool) -> None:
    """Rounds, per-cluster and per-platform statistics and estimated cost of runs, from Logs/ alone.

    RUN_ID may be a run id under --logs-dir, `latest`, or a path to a run folder; give several to
    compare them side by side. -c FILE applies the config's `pricing:` overrides.
    """
    from fedkeeper.results import pricing
    from fedkeeper.results import report as report_data

    if as_json and as_csv:
        raise UsageProblem("--json and --csv are exclusive: choose one output format")
    app = make_app(ctx, verbose, quiet or as_json or as_csv, logs_dir)
    overrides = app.load_config(config_path).pricing if config_path else None
    prices = pricing.price_table(overrides)
    reports = report_data.load_reports(app.logs_dir, runs or ("latest",), prices)
    if plot_path is not None:
        from fedkeeper.results.plots import plot_runs

        written = plot_runs(reports, plot_path)
        app.info(f"plot written to {written}")
    if as_json:
        write_raw(app, json.dumps(report_data.report_document(reports), indent=2, default=str))
    elif as_csv:
        report_data.write_rounds_csv(reports, app.console.file)
        app.console.file.flush()
    else:
        from fedkeeper.results.render import render_reports

        render_reports(reports, app.console)

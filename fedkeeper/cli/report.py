"""`fedkeeper report`: rounds, per-cluster and per-platform statistics and estimated cost, from `Logs/` alone.

An unknown run, a plot file extension other than .png/.pdf/.svg and a missing matplotlib for --plot are usage
errors (exit 2); a run file that cannot be read is RunFileError (exit 1).
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from fedkeeper.cli.console import READ_EXIT_CODES_HELP, common_options, config_option, current_app
from fedkeeper.errors import UsageProblem


@click.command(epilog=READ_EXIT_CODES_HELP)
@click.argument("runs", nargs=-1, metavar="[RUN_ID|latest ...]")
@config_option(required=False)
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Write accuracy, loss and round time per round (runs overlaid) to FILE.png, .pdf or .svg "
                   "(the extension chooses the format; needs fedkeeper[plot]).")
@click.option("--csv", "as_csv", is_flag=True,
              help="Print the rounds table(s) as CSV (with a run_id column for several runs).")
@common_options
def report(runs: tuple[str, ...], config_path: str | None, plot_path: Path | None, as_csv: bool) -> None:
    """Rounds, per-cluster and per-platform statistics and estimated cost of runs, from Logs/ alone.

    RUN_ID may be a run id under --logs-dir, `latest`, or a path to a run folder; give several to
    compare them side by side. -c FILE applies the config's `pricing:` overrides. --json prints the run's
    report (a list of reports for several runs).
    """
    from fedkeeper.results import pricing
    from fedkeeper.results import report as report_data

    app = current_app()
    if app.json and as_csv:
        raise UsageProblem("--json and --csv are exclusive: choose one output format")
    if plot_path is not None:
        from fedkeeper.results.plots import plot_format

        plot_format(plot_path)  # a wrong extension is a usage error before anything is read
    overrides = app.load_config(config_path).pricing if config_path else None
    prices = pricing.price_table(overrides)
    reports = report_data.load_reports(app.logs_dir, runs or ("latest",), prices)
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

        render_reports(reports, app.console)

"""`fedkeeper status`, `fedkeeper logs`, `fedkeeper report`: the commands that read runs back.

They are registered on the click group by `cli.py` (`register(cli, ...)`) and keep to its conventions:
the same common options, the App's redacting consoles, and exit codes 0 success; 1 a store or cluster that
cannot be reached or a run file that cannot be read; 2 usage (unknown run, bad option, matplotlib missing
for --plot); 130 interrupted. `logs` and `report` read `Logs/` only; `status` asks the store and the clusters.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from fedkeeper.errors import FedkeeperError, UsageProblem

EPILOG = "Exit codes: 0 success; 1 store, cluster or run-file failure; 2 usage (unknown run, bad option, " \
         "matplotlib missing for --plot); 130 interrupted."
STATES = ("succeeded", "failed", "timed_out", "lost", "throttled", "abandoned")


def _write(app: Any, text: str) -> None:
    """Machine-readable output (JSON, CSV) verbatim through the redacting stdout, no rich processing."""
    stream = app.console.file
    stream.write(text if text.endswith("\n") else text + "\n")
    stream.flush()


def _read_runs(call: Callable[[], Any]) -> Any:
    """Map the run-folder errors to exit codes: an unknown run is a usage error, an unreadable file a failure."""
    from fedkeeper.results.run_folders import RunFileError, RunNotFound

    try:
        return call()
    except RunNotFound as exc:
        raise UsageProblem(str(exc)) from None
    except RunFileError as exc:
        raise FedkeeperError(str(exc)) from None


def register(cli: click.Group, *, common_options: Callable[..., Any], config_option: Callable[..., Any],
             make_app: Callable[..., Any]) -> None:
    """Add the three commands to the group."""

    @cli.command(epilog=EPILOG)
    @config_option()
    @click.option("--run", "run_id", metavar="RUN_ID", help="Only this run (and its current round's activations).")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
    @common_options
    @click.pass_context
    def status(ctx: click.Context, config_path: str, run_id: str | None, as_json: bool, logs_dir: Path,
               verbose: bool, quiet: bool) -> None:
        """Deployed functions per cluster (in sync with the config or not), the experiment's runs in the
        store, and the current round of a running or interrupted run."""
        from fedkeeper.scenarios import status as status_view
        from fedkeeper.fabric import Fabric
        from fedkeeper.scenarios.deployment import store_env_for
        from fedkeeper.store import open_store

        app = make_app(ctx, verbose, quiet or as_json, logs_dir)
        config = app.load_config(config_path)
        with open_store(config.mongo_config, workdir=app.workdir) as store, Fabric(config, app.workdir) as fabric:
            data = status_view.collect_status(config, fabric, store, store_env_for(store), run_id=run_id)
        if as_json:
            _write(app, json.dumps(data, indent=2, default=str))
        else:
            status_view.render_status(data, app.console)

    @cli.command(epilog=EPILOG)
    @click.argument("run", default="latest", metavar="[RUN_ID|latest]")
    @click.option("-f", "--follow", is_flag=True, help="Keep printing events as a live run writes them "
                                                       "(until it ends, or Ctrl-C).")
    @click.option("--round", "round_number", type=int, metavar="N", help="Only events of round N.")
    @click.option("--client", "client_id", metavar="ID", help="Only events of client ID (or 'server').")
    @click.option("--state", type=click.Choice(STATES), help="Only activations that ended in this state.")
    @click.option("--event", "event_name", metavar="NAME", help="Only events of this type (activation, "
                                                               "round_finished, run_started, ...).")
    @click.option("--json", "as_json", is_flag=True, help="Print matching events as JSON lines.")
    @click.option("--poll", "poll_s", type=click.FloatRange(min=0.01), default=0.5, show_default=True,
                  hidden=True, help="Seconds between reads with --follow.")
    @common_options
    @click.pass_context
    def logs(ctx: click.Context, run: str, follow: bool, round_number: int | None, client_id: str | None,
             state: str | None, event_name: str | None, as_json: bool, poll_s: float, logs_dir: Path,
             verbose: bool, quiet: bool) -> None:
        """Print a run's events (events.jsonl), filtered, as a readable coloured stream."""
        from fedkeeper.results import logs_view
        from fedkeeper.results.run_folders import resolve_run

        app = make_app(ctx, verbose, quiet, logs_dir)
        folder = _read_runs(lambda: resolve_run(app.logs_dir, run))
        keep = logs_view.EventFilter(round=round_number, client_id=client_id, state=state, event=event_name)
        if follow and not as_json:
            app.info(f"following {folder / 'events.jsonl'} (Ctrl-C to stop)")
        for event in logs_view.select_events(folder / "events.jsonl", keep, follow=follow, poll_s=poll_s):
            if as_json:
                _write(app, logs_view.event_json(event))
            else:
                app.console.print(logs_view.format_event(event), soft_wrap=True, highlight=False, emoji=False)

    @cli.command(epilog=EPILOG)
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
        reports = _read_runs(lambda: report_data.load_reports(app.logs_dir, runs or ("latest",), prices))
        if plot_path is not None:
            from fedkeeper.results.plots import PlotUnavailable, plot_runs

            try:
                written = plot_runs(reports, plot_path)
            except PlotUnavailable as exc:
                raise UsageProblem(str(exc)) from None
            app.info(f"plot written to {written}")
        if as_json:
            _write(app, json.dumps(report_data.report_document(reports), indent=2, default=str))
        elif as_csv:
            report_data.write_rounds_csv(reports, app.console.file)
            app.console.file.flush()
        else:
            from fedkeeper.results.render import render_reports

            render_reports(reports, app.console)

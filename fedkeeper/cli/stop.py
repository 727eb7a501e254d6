"""`fedkeeper stop RUN`: ask a running experiment to end after its current round (from any terminal or host).

Exit codes: 0 the request is recorded (with --wait: the run has stopped), or the run is not running (a note says
so); 1 the store cannot be reached, or --wait ran out of --timeout; 2 unknown run.
"""

from __future__ import annotations

import click

from fedkeeper.cli.console import EXIT_CODES_HELP, common_options, config_option, current_app


@click.command(epilog=EXIT_CODES_HELP)
@click.argument("run", metavar="RUN_ID|latest")
@config_option(required=False)
@click.option("--wait", is_flag=True, help="Return once the run has stopped and released its lock.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0), metavar="SECONDS",
              help="With --wait: give up after this long (exit 1; the request stays).")
@common_options
def stop(run: str, config_path: str | None, wait: bool, timeout_s: float | None) -> None:
    """End a running experiment cleanly: it finishes its current round, writes its summary with status
    `stopped` and exits 130; `fedkeeper start --resume RUN` continues it.

    -c FILE names the store (default: the embedded store under the current directory) and the experiment
    whose `latest` run to stop.
    """
    from fedkeeper.config.models import MongoConfig
    from fedkeeper.scenarios import stop as stopping
    from fedkeeper.store import open_store

    app = current_app()
    config = app.load_config(config_path) if config_path else None
    mongo = config.mongo_config if config is not None else MongoConfig()
    with open_store(mongo, workdir=app.workdir) as store:
        doc = stopping.find_run(store, run, config.experiment if config is not None else None)
        if wait and not app.quiet and doc.get("status") == "running":
            app.info(f"waiting for run {doc['_id']} to stop after its current round")
        outcome = stopping.stop_run(store, doc, wait=wait, timeout_s=timeout_s)
    if app.json:
        app.emit_json(outcome.as_dict())
    else:
        app.console.print(outcome.message, highlight=False, markup=False, soft_wrap=True)

"""`fedkeeper status`: deployed functions per cluster, the experiment's runs in the store, the current round.

Unlike `logs` and `report`, it asks the store and the clusters, so it fails (exit 1) when they cannot be reached.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from fedkeeper.cli.console import READ_EXIT_CODES_HELP, common_options, config_option, make_app, write_raw


@click.command(epilog=READ_EXIT_CODES_HELP)
@config_option()
@click.option("--run", "run_id", metavar="RUN_ID", help="Only this run (and its current round's activations).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@common_options
@click.pass_context
def status(ctx: click.Context, config_path: str, run_id: str | None, as_json: bool, logs_dir: Path,
           verbose: bool, quiet: bool) -> None:
    """Deployed functions per cluster (in sync with the config or not), the experiment's runs in the
    store, and the current round of a running or interrupted run."""
    from fedkeeper.fabric import Fabric
    from fedkeeper.scenarios import status as status_view
    from fedkeeper.scenarios.deployment import store_env_for
    from fedkeeper.store import open_store

    app = make_app(ctx, verbose, quiet or as_json, logs_dir)
    config = app.load_config(config_path)
    with open_store(config.mongo_config, workdir=app.workdir) as store, Fabric(config, app.workdir) as fabric:
        data = status_view.collect_status(config, fabric, store, store_env_for(store), run_id=run_id)
    if as_json:
        write_raw(app, json.dumps(data, indent=2, default=str))
    else:
        status_view.render_status(data, app.console)

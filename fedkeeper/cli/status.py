"""`fedkeeper status`: deployed functions per cluster, the experiment's runs in the store, the current round.

Unlike `logs` and `report`, it asks the store and the clusters: when one cannot be reached it still prints what
it found (and valid JSON with --json, `errors` naming what failed), then exits 1.
"""

from __future__ import annotations

import click

from fedkeeper.cli.console import EXIT_CODES_HELP, common_options, config_option, current_app


@click.command(epilog=EXIT_CODES_HELP)
@config_option()
@click.option("--run", "run_id", metavar="RUN_ID", help="Only this run (and its current round's activations).")
@common_options
def status(config_path: str, run_id: str | None) -> None:
    """Deployed functions per cluster (in sync with the config or not), the experiment's runs in the
    store, and the current round of a running or interrupted run."""
    from contextlib import ExitStack

    from fedkeeper.errors import StoreFailure
    from fedkeeper.fabric import Fabric
    from fedkeeper.scenarios import status as status_view
    from fedkeeper.scenarios.deployment import store_env_for
    from fedkeeper.store import open_store

    app = current_app()
    config = app.load_config(config_path)
    with ExitStack() as stack:
        fabric = stack.enter_context(Fabric(config, app.workdir))
        try:  # an unreachable store leaves the functions to show; the command still ends with exit 1
            store = stack.enter_context(open_store(config.mongo_config, workdir=app.workdir))
            store_env, store_error = store_env_for(store), None
        except StoreFailure as exc:
            store, store_env, store_error = None, status_view.store_env_without_store(config), str(exc)
        data = status_view.collect_status(config, fabric, store, store_env, run_id=run_id, store_error=store_error)
    if app.json:
        app.emit_json(data)
    else:
        status_view.render_status(data, app.console)
    problem = status_view.incomplete(data)
    if problem is not None:
        raise problem

"""`fedkeeper smoke`: deploy `nodeinfo` on every cluster, invoke it once, report, remove it."""

from __future__ import annotations

import logging

import click

from fedkeeper.cli.console import EXIT_CODES_HELP, common_options, config_option, csv_list, current_app
from fedkeeper.errors import RunFailed, UsageProblem

log = logging.getLogger("fedkeeper.smoke")


@click.command(epilog=EXIT_CODES_HELP)
@config_option()
@click.option("--clusters", help="Comma-separated cluster names (default: all).")
@common_options
def smoke(config_path: str, clusters: str | None) -> None:
    """Deploy `nodeinfo` on every cluster, invoke it, report, remove it."""
    from fedkeeper.fabric import Fabric
    from fedkeeper.scenarios import smoke as smoke_scenario

    app = current_app()
    config = app.load_config(config_path)
    selected = csv_list(clusters) or config.scenarios.smoke.clusters
    unknown = [c for c in selected or [] if c not in config.clusters()]
    if unknown:
        raise UsageProblem(f"--clusters: unknown cluster(s) {', '.join(unknown)}; defined: "
                           f"{', '.join(config.clusters())}")
    with Fabric(config, app.workdir) as fabric:
        rows = smoke_scenario.run_smoke(fabric, selected,
                                        progress=lambda cluster, step: log.debug("smoke %s: %s", cluster, step))
    if app.json:
        app.emit_json([r.as_dict() for r in rows])
    else:
        smoke_scenario.render_smoke_table(rows, app.console)
    failed = [r for r in rows if not r.ok]
    if failed:
        raise RunFailed(f"smoke test failed on {', '.join(r.cluster for r in failed)}")

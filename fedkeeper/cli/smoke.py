"""`fedkeeper smoke`: deploy `nodeinfo` on every cluster, invoke it once, report, remove it."""

from __future__ import annotations

from pathlib import Path

import click

from fedkeeper.cli.console import EXIT_CODES_HELP, common_options, config_option, csv_list, make_app, print_json
from fedkeeper.errors import RunFailed, UsageProblem


@click.command(epilog=EXIT_CODES_HELP)
@config_option()
@click.option("--clusters", help="Comma-separated cluster names (default: all).")
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON.")
@common_options
@click.pass_context
def smoke(ctx: click.Context, config_path: str, clusters: str | None, as_json: bool, logs_dir: Path,
          verbose: bool, quiet: bool) -> None:
    """Deploy `nodeinfo` on every cluster, invoke it, report, remove it."""
    from fedkeeper.fabric import Fabric
    from fedkeeper.scenarios import smoke as smoke_scenario

    app = make_app(ctx, verbose, quiet, logs_dir)
    config = app.load_config(config_path)
    selected = csv_list(clusters) or config.scenarios.smoke.clusters
    unknown = [c for c in selected or [] if c not in config.clusters()]
    if unknown:
        raise UsageProblem(f"--clusters: unknown cluster(s) {', '.join(unknown)}; defined: "
                           f"{', '.join(config.clusters())}")
    with Fabric(config, app.workdir) as fabric:
        rows = smoke_scenario.run_smoke(fabric, selected)
    if as_json:
        print_json(app, [r.as_dict() if hasattr(r, "as_dict") else r.__dict__ for r in rows])
    else:
        smoke_scenario.render_smoke_table(rows, app.console)
    failed = [r for r in rows if getattr(r, "error", None)]
    if failed:
        raise RunFailed(f"smoke test failed on {', '.join(r.cluster for r in failed)}")

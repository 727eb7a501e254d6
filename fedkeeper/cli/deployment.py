"""`fedkeeper deploy`, `remove` and `package`: what the experiment puts on the platforms, and its zips."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from fedkeeper.cli.console import EXIT_CODES_HELP, common_options, config_option, csv_list, current_app


def _plan_command(func: Callable[..., Any]) -> Callable[..., Any]:
    """The options of `deploy` and `remove`, which plan the same selection of functions."""
    func = common_options(func)
    func = click.option("--dry-run", is_flag=True, help="Print the plan and change nothing.")(func)
    func = click.option("--scenario", type=click.Choice(["federated_learning", "smoke"]),
                        default="federated_learning", show_default=True)(func)
    func = click.option("--functions", help="Comma-separated function names (default: all the scenario needs).")(func)
    func = click.option("--clusters", help="Comma-separated cluster names (default: all).")(func)
    return config_option()(func)


@click.command(epilog=EXIT_CODES_HELP)
@_plan_command
def deploy(config_path: str, clusters: str | None, functions: str | None, scenario: str, dry_run: bool) -> None:
    """Create or update the functions the experiment needs (repeating it is safe)."""
    from fedkeeper.scenarios import deployment as deployment_scenario

    app = current_app()
    config = app.load_config(config_path)
    deployment_scenario.deploy_command(app, config, scenario=scenario, clusters=csv_list(clusters),
                                       functions=csv_list(functions), dry_run=dry_run, as_json=app.json)


@click.command(epilog=EXIT_CODES_HELP)
@_plan_command
def remove(config_path: str, clusters: str | None, functions: str | None, scenario: str, dry_run: bool) -> None:
    """Delete every function this experiment created (found by label, orphans included)."""
    from fedkeeper.scenarios import deployment as deployment_scenario

    app = current_app()
    config = app.load_config(config_path)
    deployment_scenario.remove_command(app, config, clusters=csv_list(clusters), functions=csv_list(functions),
                                       dry_run=dry_run, as_json=app.json)


@click.command(epilog=EXIT_CODES_HELP)
@config_option()
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("build/functions"),
              show_default=True, help="Where the zips are written.")
@common_options
def package(config_path: str, out_dir: Path) -> None:
    """Write the deployable zips (one per function and platform) for inspection."""
    from fedkeeper import packaging

    app = current_app()
    config = app.load_config(config_path)
    paths = packaging.write_all(config, out_dir)
    if app.json:
        app.emit_json([{"path": str(p), "bytes": p.stat().st_size,
                        "sha256": hashlib.sha256(p.read_bytes()).hexdigest()} for p in paths])
        return
    for path in paths:
        app.console.print(str(path), soft_wrap=True, markup=False)

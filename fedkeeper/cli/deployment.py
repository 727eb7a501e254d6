"""`fedkeeper deploy`, `remove` and `package`: what the experiment puts on the platforms, and its zips."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from fedkeeper.cli.console import EXIT_CODES_HELP, common_options, config_option, csv_list, make_app


def _plan_command(func: Callable[..., Any]) -> Callable[..., Any]:
    """The context and options of `deploy` and `remove`, which plan the same selection of functions."""
    func = click.pass_context(func)
    func = common_options(func)
    func = click.option("--json", "as_json", is_flag=True, help="Print results as JSON.")(func)
    func = click.option("--dry-run", is_flag=True, help="Print the plan and change nothing.")(func)
    func = click.option("--scenario", type=click.Choice(["federated_learning", "smoke"]),
                        default="federated_learning", show_default=True)(func)
    func = click.option("--functions", help="Comma-separated function names (default: all the scenario needs).")(func)
    func = click.option("--clusters", help="Comma-separated cluster names (default: all).")(func)
    return config_option()(func)


@click.command(epilog=EXIT_CODES_HELP)
@_plan_command
def deploy(ctx: click.Context, config_path: str, clusters: str | None, functions: str | None, scenario: str,
           dry_run: bool, as_json: bool, logs_dir: Path, verbose: bool, quiet: bool) -> None:
    """Create or update the functions the experiment needs (repeating it is safe)."""
    from fedkeeper.scenarios import deployment as deployment_scenario

    app = make_app(ctx, verbose, quiet, logs_dir)
    config = app.load_config(config_path)
    deployment_scenario.deploy_command(app, config, scenario=scenario, clusters=csv_list(clusters),
                                       functions=csv_list(functions), dry_run=dry_run, as_json=as_json)


@click.command(epilog=EXIT_CODES_HELP)
@_plan_command
def remove(ctx: click.Context, config_path: str, clusters: str | None, functions: str | None, scenario: str,
           dry_run: bool, as_json: bool, logs_dir: Path, verbose: bool, quiet: bool) -> None:
    """Delete every function this experiment created (found by label, orphans included)."""
    from fedkeeper.scenarios import deployment as deployment_scenario

    app = make_app(ctx, verbose, quiet, logs_dir)
    config = app.load_config(config_path)
    deployment_scenario.remove_command(app, config, clusters=csv_list(clusters), functions=csv_list(functions),
                                       dry_run=dry_run, as_json=as_json)


@click.command(epilog=EXIT_CODES_HELP)
@config_option()
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("build/functions"),
              show_default=True, help="Where the zips are written.")
@common_options
@click.pass_context
def package(ctx: click.Context, config_path: str, out_dir: Path, logs_dir: Path, verbose: bool, quiet: bool) -> None:
    """Write the deployable zips (one per function and platform) for inspection."""
    from fedkeeper import packaging

    app = make_app(ctx, verbose, quiet, logs_dir)
    config = app.load_config(config_path)
    for path in packaging.write_all(config, out_dir):
        app.console.print(str(path))

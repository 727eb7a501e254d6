"""`fedkeeper validate`: check a config file and print what it describes (touches no cluster and no store)."""

from __future__ import annotations

from pathlib import Path

import click

from fedkeeper.cli.console import EXIT_CODES_HELP, common_options, config_option, make_app, print_json


@click.command(epilog=EXIT_CODES_HELP)
@config_option()
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@common_options
@click.pass_context
def validate(ctx: click.Context, config_path: str, as_json: bool, logs_dir: Path, verbose: bool, quiet: bool) -> None:
    """Check a config file and print what it describes."""
    from fedkeeper.results import summary

    app = make_app(ctx, verbose, quiet or as_json, logs_dir)
    config = app.load_config(config_path)
    if as_json:
        print_json(app, summary.config_summary(config))
    else:
        summary.print_config_summary(config, app.console)
        app.console.print(f"[green]✓[/] {config_path} is valid")

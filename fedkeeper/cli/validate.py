"""`fedkeeper validate`: check a config file and print what it describes (touches no cluster and no store)."""

from __future__ import annotations

import click

from fedkeeper.cli.console import EXIT_CODES_HELP, common_options, config_option, current_app


@click.command(epilog=EXIT_CODES_HELP)
@config_option()
@common_options
def validate(config_path: str) -> None:
    """Check a config file and print what it describes."""
    from fedkeeper.results import summary

    app = current_app()
    config = app.load_config(config_path)
    if app.json:
        app.emit_json(summary.config_summary(config))
    else:
        summary.print_config_summary(config, app.console)
        app.console.print(f"[green]✓[/] {config_path} is valid", soft_wrap=True)

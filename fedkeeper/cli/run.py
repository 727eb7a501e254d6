"""`fedkeeper start`: run the federated-learning experiment, or resume an interrupted run."""

from __future__ import annotations

import click

from fedkeeper.cli.console import EXIT_CODES_HELP, common_options, config_option, current_app
from fedkeeper.errors import RunFailed


@click.command(epilog=EXIT_CODES_HELP)
@config_option()
@click.option("--rounds", type=click.IntRange(min=1, max=2**63 - 1),  # the runs document keeps it in 64 bits
              help="Override scenarios.federated_learning.rounds.")
@click.option("--resume", "resume", metavar="RUN_ID|latest", help="Continue an interrupted run.")
@click.option("--no-deploy", is_flag=True, help="Do not deploy missing functions first.")
@click.option("--run-id", help="Name the run (default: <experiment>-<UTC time>).")
@common_options
def start(config_path: str, rounds: int | None, resume: str | None, no_deploy: bool, run_id: str | None) -> None:
    """Run the federated-learning experiment (deploying what is missing first); --json prints the summary."""
    from fedkeeper.scenarios import federated_learning

    app = current_app()
    config = app.load_config(config_path)
    summary = federated_learning.start_command(app, config, rounds=rounds, resume=resume,
                                                deploy=not no_deploy, run_id=run_id)
    if app.json:
        app.emit_json(summary)
    if summary.get("status") != "completed":
        # the run is recorded as failed (resumable); the command still has to say so and exit 1
        raise RunFailed(f"run {summary.get('run_id')} {summary.get('status')}: {summary.get('error', '')}".rstrip(": "))

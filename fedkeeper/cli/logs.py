"""`fedkeeper logs`: a run's events (events.jsonl), filtered, as a coloured stream or JSON lines; `-f` follows.

Reads `Logs/` only: an unknown run or event type is a usage error (exit 2), an unreadable file exit 1.
"""

from __future__ import annotations

import click

from fedkeeper.activations import ActivationState
from fedkeeper.cli.console import READ_EXIT_CODES_HELP, common_options, current_app

#: the states an activation can end in (everything but `invoked`)
STATES = tuple(s.value for s in ActivationState if s is not ActivationState.INVOKED)


@click.command(epilog=READ_EXIT_CODES_HELP)
@click.argument("run", default="latest", metavar="[RUN_ID|latest]")
@click.option("-f", "--follow", is_flag=True, help="Keep printing events as a live run writes them "
                                                   "(until it ends, or Ctrl-C).")
@click.option("--round", "round_number", type=int, metavar="N", help="Only events of round N.")
@click.option("--client", "client_id", metavar="ID", help="Only events of client ID (or 'server').")
@click.option("--state", type=click.Choice(STATES), help="Only activations that ended in this state.")
@click.option("--event", "event_name", metavar="NAME", help="Only events of this type (activation, "
                                                           "round_finished, run_started, ...).")
@click.option("--poll", "poll_s", type=click.FloatRange(min=0.01), default=0.5, show_default=True,
              hidden=True, help="Seconds between reads with --follow.")
@common_options
def logs(run: str, follow: bool, round_number: int | None, client_id: str | None, state: str | None,
         event_name: str | None, poll_s: float) -> None:
    """Print a run's events (events.jsonl), filtered, as a readable coloured stream (--json: JSON lines)."""
    from fedkeeper.results import logs_view
    from fedkeeper.results.run_folders import resolve_run

    app = current_app()
    keep = logs_view.EventFilter(round=round_number, client_id=client_id, state=state,
                                 event=logs_view.check_event(event_name))
    folder = resolve_run(app.logs_dir, run)
    if follow:
        app.info(f"following {folder / 'events.jsonl'} (Ctrl-C to stop)")
    for event in logs_view.select_events(folder / "events.jsonl", keep, follow=follow, poll_s=poll_s):
        if app.json:
            app.write_raw(logs_view.event_json(event))
        else:
            app.console.print(logs_view.format_event(event), soft_wrap=True)

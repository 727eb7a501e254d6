"""`fedkeeper logs`: a run's events (events.jsonl), filtered, as a coloured stream or JSON lines; `-f` follows.

Reads `Logs/` only: an unknown run is a usage error (RunNotFound, exit 2), an unreadable file exit 1.
"""

from __future__ import annotations

from pathlib import Path

import click

from fedkeeper.activations import ActivationState
from fedkeeper.cli.console import READ_EXIT_CODES_HELP, common_options, make_app, write_raw

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
@click.option("--json", "as_json", is_flag=True, help="Print matching events as JSON lines.")
@click.option("--poll", "poll_s", type=click.FloatRange(min=0.01), default=0.5, show_default=True,
              hidden=True, help="Seconds between reads with --follow.")
@common_options
@click.pass_context
def logs(ctx: click.Context, run: str, follow: bool, round_number: int | None, client_id: str | None,
         state: str | None, event_name: str | None, as_json: bool, poll_s: float, logs_dir: Path,
         verbose: bool, quiet: bool) -> None:
    """Print a run's events (events.jsonl), filtered, as a readable coloured stream."""
    from fedkeeper.results import logs_view
    from fedkeeper.results.run_folders import resolve_run

    app = make_app(ctx, verbose, quiet, logs_dir)
    folder = resolve_run(app.logs_dir, run)
    keep = logs_view.EventFilter(round=round_number, client_id=client_id, state=state, event=event_name)
    if follow and not as_json:
        app.info(f"following {folder / 'events.jsonl'} (Ctrl-C to stop)")
    for event in logs_view.select_events(folder / "events.jsonl", keep, follow=follow, poll_s=poll_s):
        if as_json:
            write_raw(app, logs_view.event_json(event))
        else:
            app.console.print(logs_view.format_event(event), soft_wrap=True, highlight=False, emoji=False)

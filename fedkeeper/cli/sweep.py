"""`fedkeeper sweep`: a grid of config values × seeds, one run each, resumable, ending with a table."""

from __future__ import annotations

import click

from fedkeeper.cli.console import EXIT_CODES_HELP, common_options, config_option, csv_list, current_app
from fedkeeper.errors import UsageProblem


def _seed_list(_ctx: click.Context, _param: click.Parameter, value: str | None) -> list[int] | None:
    try:
        return [int(v) for v in csv_list(value) or []] or None
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected comma-separated integers like 1,2,3") from None


@click.command(epilog=EXIT_CODES_HELP)
@config_option()
@click.option("--grid", "grid", multiple=True, metavar="KEY.PATH=V1,V2",
              help="Values to try for one config key (YAML values; repeatable; adds to the config's sweep.grid).")
@click.option("--seeds", type=click.IntRange(min=1, max=1000), metavar="N",
              help="N seeds per combination: the config's seed and the N-1 after it.")
@click.option("--seed-list", callback=_seed_list, metavar="S1,S2,...", help="The seeds, listed.")
@click.option("--jobs", type=click.IntRange(min=1, max=64), metavar="N",
              help="Runs at once as `fedkeeper start` processes (local platform only; default 1, in process).")
@click.option("--name", help="The sweep's name: prefixes its run ids and names Logs/sweeps/NAME.json "
                             "(default: the experiment).")
@common_options
def sweep(config_path: str, grid: tuple[str, ...], seeds: int | None, seed_list: list[int] | None,
          jobs: int | None, name: str | None) -> None:
    """Run every combination of the grid over the seeds; again, it skips finished runs and resumes the rest.
    --json prints the manifest (also written to Logs/sweeps/NAME.json)."""
    from fedkeeper.scenarios import sweep as sweep_scenario

    if seeds is not None and seed_list is not None:
        raise UsageProblem("give --seeds N or --seed-list, not both")
    app = current_app()
    config = app.load_config(config_path)
    sweep_scenario.sweep_command(app, config_path, config, cli_grid=grid, seeds=seeds, seed_list=seed_list,
                                 jobs=jobs, name=name)

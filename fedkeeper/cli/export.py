"""`fedkeeper export RUN [--round N | --best] --out model.npz`: a global model out of the store, with its record.

Writes the weights as a plain .npz and `<out>.json` (run, round, accuracy, loss, model and data spec, config
digest, FedKeeper version, model sha256, created); `fedkeeper.export.load` reads both back. A round whose model
keep_models removed, or that never existed, is a usage error (exit 2) naming the rounds still available.
"""

from __future__ import annotations

from pathlib import Path

import click

from fedkeeper.cli.console import EXIT_CODES_HELP, common_options, config_option, current_app
from fedkeeper.cli.runs import store_for
from fedkeeper.errors import UsageProblem


@click.command(epilog=EXIT_CODES_HELP)
@click.argument("run_id", metavar="RUN_ID|latest")
@click.option("--round", "round_number", type=click.IntRange(min=0), metavar="N",
              help="The round whose global model to export (default: the last one kept).")
@click.option("--best", is_flag=True, help="The kept round with the highest test accuracy.")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True, metavar="FILE.npz",
              help="Where to write the weights; the metadata goes to FILE.npz.json.")
@config_option(required=False)
@common_options
def export(run_id: str, round_number: int | None, best: bool, out: Path, config_path: str | None) -> None:
    """Export the global model of a run's round as .npz plus a metadata record (.npz.json).

    Load it in Python with `fedkeeper.export.load("model.npz")`; `.evaluate()` gives (loss, accuracy) on the
    run's test split. Without -c the store is this workdir's embedded one.
    """
    from fedkeeper.export import export_model

    app = current_app()
    if best and round_number is not None:
        raise UsageProblem("--round and --best are exclusive: choose one")
    with store_for(app, config_path, required=True) as store:
        if run_id == "latest":
            runs = store.list_runs()
            if not runs:
                raise UsageProblem("no runs in the store")
            run = max(runs, key=lambda r: (r.get("started") or 0, str(r["_id"])))
        else:
            run = store.get_run(run_id)
            if run is None:
                raise UsageProblem(f"no run {run_id!r} in the store {store.display_url}")
        metadata = export_model(store, run, out, round=round_number, best=best)
    if app.json:
        app.emit_json({**metadata, "out": str(out), "metadata_file": f"{out}.json"})
    else:
        accuracy = metadata.get("accuracy")
        shown = f"{accuracy:.4f}" if isinstance(accuracy, (int, float)) else "unknown"
        app.console.print(f"exported run {run['_id']} round {metadata['round']} (accuracy {shown}) to {out} "
                          f"and {out}.json", soft_wrap=True, markup=False)

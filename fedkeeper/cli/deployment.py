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
    """Write the deployable zips (one per function and platform) for inspection, with a size table: each
    function on each cluster, its requirements' route and its sizes against the platform's limits."""
    from fedkeeper import packaging
    from fedkeeper.errors import PackagingFailure

    app = current_app()
    config = app.load_config(config_path)
    rows = packaging.package_all(config, out_dir)
    paths = list(dict.fromkeys(path for path, _ in rows))
    if app.json:
        sizes = {}
        for path, check in rows:
            sizes.setdefault(str(path), []).append(_size_json(check))
        app.emit_json([{"path": str(p), "bytes": p.stat().st_size,
                        "sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "clusters": sizes[str(p)]}
                       for p in paths])
    else:
        for path in paths:
            app.console.print(str(path), soft_wrap=True, markup=False)
        _print_size_table(app.console, [check for _, check in rows])
    problems = [p for _, check in rows for p in check.problems]
    if problems:
        raise PackagingFailure("; ".join(dict.fromkeys(problems)))


def _size_json(check: Any) -> dict[str, Any]:
    return {"function": check.function, "cluster": check.cluster, "platform": check.kind, "route": check.route,
            "zip_bytes": check.zip_bytes, "unzipped_bytes": check.unzipped_bytes,
            "requirements_bytes": check.requirements_bytes, "zip_limit_bytes": check.zip_limit,
            "unpacked_limit_bytes": check.unpacked_limit, "ok": check.ok, "problems": list(check.problems),
            "notes": list(check.notes)}


def _print_size_table(console: Any, checks: list[Any]) -> None:
    """Sizes in MiB; `requirements` is what the route adds beyond the zip (an estimate from this interpreter's
    installed distributions: a layer, GCF's build); the limits are the cluster's (providers/<kind>/limits.py)."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    def mib(n: int | None) -> str:
        return "—" if n is None else f"{n / 2**20:.2f}"

    table = Table(title="package sizes (MiB)", title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0),
                  pad_edge=False, show_edge=False)
    for col in ("function", "cluster", "platform", "route", "zip", "unzipped", "requirements", "zip limit",
                "unzipped limit", "fits"):
        table.add_column(col, justify="left" if col in ("function", "cluster", "platform", "route", "fits")
                         else "right")
    for c in checks:
        table.add_row(escape(c.function), escape(c.cluster), escape(c.kind), c.route, mib(c.zip_bytes),
                      mib(c.unzipped_bytes), mib(c.requirements_bytes), mib(c.zip_limit), mib(c.unpacked_limit),
                      "[green]yes[/]" if c.ok else "[red]no[/]")
    console.print(table)
    for note in dict.fromkeys(n for c in checks for n in c.notes):
        console.print(f"[dim]{escape(note)}[/]", soft_wrap=True, highlight=False)

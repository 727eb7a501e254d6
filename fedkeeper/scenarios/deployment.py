"""`fedkeeper deploy` and `fedkeeper remove`: plan, show, apply (with progress), summarise."""

from __future__ import annotations

import json
from contextlib import ExitStack
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich import box
from rich.table import Table

from fedkeeper.config.models import Config
from fedkeeper.errors import UsageProblem
from fedkeeper.fabric import Deployment, Fabric, Removal
from fedkeeper.providers.base import DeployResult


def store_env_for(store: Any) -> dict[str, str]:
    """What functions need to reach the store; handed over at deploy time, never per invocation."""
    return {"FK_MONGO_URL": store.url, "FK_MONGO_DB": store.db_name}


def needs_store(scenario: str) -> bool:
    return scenario == "federated_learning"


def progress_bar(app: Any, transient: bool = True) -> Progress:
    """Only on a terminal and never with -q (off a terminal rich would leave a blank line on stderr)."""
    terminal = bool(getattr(app.err, "is_terminal", False))
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=app.err, transient=transient, disable=app.quiet or not terminal)


def plan_table(plan: list[Deployment], title: str) -> Table:
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    for col in ("name", "cluster", "MB", "timeout", "conc."):
        table.add_column(col, no_wrap=col in ("name", "cluster"), justify="left" if col in ("name", "cluster") else "right")
    for d in plan:
        table.add_row(d.name, f"{d.cluster} ({d.kind})", str(d.memory_mb), f"{d.timeout_s:g}s", str(d.concurrency))
    return table


def deploy_plan(fabric: Fabric, app: Any, plan: list[Deployment], store_env: dict[str, str]) -> list[DeployResult]:
    """Apply a plan with a progress bar; unchanged functions are left alone by the providers."""
    with progress_bar(app) as progress:
        task = progress.add_task("deploying", total=len(plan))

        def done(item: Deployment, result: DeployResult) -> None:
            progress.advance(task)
            progress.console.log(f"{result.action:9} {item.name} on {item.cluster} ({result.seconds:.2f}s)") \
                if app.verbose else None

        return fabric.deploy(plan, store_env, on_done=done)


def deploy_command(app: Any, config: Config, *, scenario: str, clusters: list[str] | None,
                   functions: list[str] | None, dry_run: bool, as_json: bool) -> list[dict[str, Any]]:
    _check_names(config, clusters)
    with ExitStack() as stack:
        fabric = stack.enter_context(Fabric(config, app.workdir))
        plan = fabric.plan(scenario, clusters, functions)
        if dry_run:
            rows = [d.__dict__ for d in plan]
            if as_json:
                app.console.print_json(json.dumps({"dry_run": True, "plan": rows}))
            else:
                app.console.print(plan_table(plan, "deploy plan (dry run: nothing changed)"))
            return rows
        store_env: dict[str, str] = {}
        if needs_store(scenario) and any(d.function != "nodeinfo" for d in plan):
            from fedkeeper.store import open_store

            store = stack.enter_context(open_store(config.mongo_config, workdir=app.workdir))
            store_env = store_env_for(store)
        results = deploy_plan(fabric, app, plan, store_env)
        rows = [{**d.__dict__, "action": r.action, "seconds": round(r.seconds, 3), "digest": r.digest[:12]}
                for d, r in zip(plan, results)]
        if as_json:
            app.console.print_json(json.dumps({"deployed": rows}))
        else:
            table = Table(title=f"deployed ({config.experiment})", title_justify="left", box=box.SIMPLE_HEAD)
            for col in ("name", "cluster", "MB", "timeout", "action"):
                table.add_column(col, no_wrap=col in ("name", "cluster"),
                                 justify="right" if col in ("MB", "timeout") else "left")
            for d, r in zip(plan, results):
                table.add_row(d.name, f"{d.cluster} ({d.kind})", str(d.memory_mb), f"{d.timeout_s:g}s", r.action)
            app.console.print(table)
        return rows


def remove_command(app: Any, config: Config, *, clusters: list[str] | None, functions: list[str] | None,
                   dry_run: bool, as_json: bool) -> list[dict[str, Any]]:
    _check_names(config, clusters)
    with Fabric(config, app.workdir) as fabric:
        targets = fabric.removal_targets(clusters, functions)
        if dry_run:
            rows = [{"cluster": c, "name": n, "function": f} for c, n, f in targets]
            if as_json:
                app.console.print_json(json.dumps({"dry_run": True, "remove": rows}))
            else:
                table = Table(title="remove plan (dry run: nothing changed)", title_justify="left")
                for col in ("cluster", "name", "function"):
                    table.add_column(col)
                for row in rows:
                    table.add_row(row["cluster"], row["name"], str(row["function"]))
                app.console.print(table)
            return rows
        with progress_bar(app) as progress:
            task = progress.add_task("removing", total=len(targets))
            removals = fabric.remove(targets, on_done=lambda _r: progress.advance(task))
        rows = [r.__dict__ for r in removals]
        if as_json:
            app.console.print_json(json.dumps({"removed": rows}))
        else:
            _print_removals(app, removals, config.experiment)
        return rows


def _print_removals(app: Any, removals: list[Removal], experiment: str) -> None:
    if not removals:
        app.console.print(f"no functions of experiment {experiment!r} found")
        return
    table = Table(title=f"removed ({experiment})", title_justify="left")
    for col in ("cluster", "name", "function", "removed"):
        table.add_column(col)
    for r in removals:
        table.add_row(r.cluster, r.name, str(r.function), "yes" if r.removed else "already gone")
    app.console.print(table)


def _check_names(config: Config, clusters: list[str] | None) -> None:
    unknown = [c for c in clusters or [] if c not in config.clusters()]
    if unknown:
        raise UsageProblem(f"--clusters: unknown cluster(s) {', '.join(unknown)}; defined: "
                           f"{', '.join(config.clusters())}")

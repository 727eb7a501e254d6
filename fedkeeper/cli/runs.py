"""`fedkeeper runs list | show | delete | prune`: the runs in the store and in Logs/ side by side, and removing them.

`delete` and `prune` remove a run's documents and blobs from the store (every collection, GridFS files included)
and its Logs/ folder, then say what that freed. A run that a live orchestrator drives is refused (exit 1) unless
--force; on a terminal they ask first unless --yes. Without -c the store is the default embedded one of this
workdir, and only when it exists (a workdir without one lists its Logs/ alone).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from fedkeeper.cli.console import EXIT_CODES_HELP, App, common_options, config_option, current_app
from fedkeeper.errors import UsageProblem


@contextlib.contextmanager
def store_for(app: App, config_path: str | None, *, required: bool) -> Iterator[Any]:
    """The store of the config given (-c), else the default embedded store of the workdir if it exists; None
    when there is none and it is not `required` (a UsageProblem when it is)."""
    from fedkeeper.config import MongoConfig
    from fedkeeper.store import HOME, open_store

    if config_path is not None:
        mongo = app.load_config(config_path).mongo_config
    else:
        mongo = MongoConfig()
        if not (app.workdir / HOME).is_dir():
            if required:
                raise UsageProblem(f"no embedded store under {app.workdir}; give -c config.yaml to name the store")
            yield None
            return
    with open_store(mongo, workdir=app.workdir) as store:
        yield store


def human_bytes(n: int | None) -> str:
    if n is None:
        return ""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if ts else ""


def _side(side: dict[str, Any] | None, key: str) -> str:
    if side is None:
        return "—"
    value = side.get(key)
    return "" if value is None else str(value)


def _table(entries: list[Any]) -> Table:
    table = Table(title="runs (store | Logs/)", title_justify="left")
    for column in ("run", "experiment", "status", "rounds", "started (UTC)", "store", "Logs/"):
        table.add_column(column, justify="right" if column in ("rounds", "store", "Logs/") else "left")
    for e in entries:
        status = _side(e.store, "status") if e.store else _side(e.logs, "status")
        if e.store and e.logs and e.logs.get("status") != e.store.get("status"):
            status = f"{status} | {e.logs.get('status')}"
        if e.live:
            status += " (live)"
        rounds = (e.store or e.logs or {}).get("rounds")
        table.add_row(escape(e.run_id), escape(str(e.experiment or "")), escape(status or ""), str(rounds or 0),
                      _when(e.started), human_bytes(e.store["bytes"]) if e.store else "—",
                      human_bytes(e.logs["bytes"]) if e.logs else "—")
    return table


@click.group(epilog=EXIT_CODES_HELP)
@common_options
def runs() -> None:
    """The runs in the store and in Logs/ side by side, with their size; show, delete and prune them."""


@runs.command("list", epilog=EXIT_CODES_HELP)
@config_option(required=False)
@common_options
def list_runs(config_path: str | None) -> None:
    """Every run with status, rounds, start time and size in the store (documents + blobs) and in Logs/."""
    from fedkeeper.results.run_inventory import inventory

    app = current_app()
    with store_for(app, config_path, required=False) as store:
        entries = inventory(store, app.logs_dir)
    if app.json:
        app.emit_json({"store": store is not None, "runs": [e.as_dict() for e in entries]})
    elif not entries:
        app.info("no runs in the store or under " + str(app.logs_dir))
    else:
        app.console.print(_table(entries))


@runs.command("show", epilog=EXIT_CODES_HELP)
@click.argument("run_id", metavar="RUN_ID")
@config_option(required=False)
@common_options
def show_run(run_id: str, config_path: str | None) -> None:
    """One run's details: what the store and its Logs/ folder hold, its size on each side, who drives it."""
    from fedkeeper.results.run_inventory import inventory

    app = current_app()
    with store_for(app, config_path, required=False) as store:
        entries = inventory(store, app.logs_dir, only={run_id})
    if not entries:
        raise UsageProblem(f"no run {run_id!r} in the store or under {app.logs_dir}")
    entry = entries[0]
    if app.json:
        app.emit_json(entry.as_dict())
        return
    table = Table(title=f"run {escape(run_id)}", title_justify="left", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    table.add_row("experiment", escape(str(entry.experiment or "")))
    table.add_row("started (UTC)", _when(entry.started))
    table.add_row("orchestrator", escape(entry.holder.describe()) if entry.holder else "none running")
    for name, side in (("store", entry.store), ("Logs/", entry.logs)):
        if side is None:
            table.add_row(name, "—")
            continue
        for key, value in side.items():
            if value is not None:
                shown = human_bytes(value) if key.endswith("bytes") else _when(value) \
                    if key in ("started", "finished") else str(value)
                table.add_row(f"{name} {key}", escape(shown))
    app.console.print(table)


def _confirm(entries: list[Any], *, force: bool, yes: bool, action: str) -> None:
    """Refuse live runs without --force (RunLocked, exit 1); on a terminal, ask unless --yes."""
    from fedkeeper.store.locks import RunLocked

    live = [e for e in entries if e.live]
    if live and not force:
        raise RunLocked("; ".join(f"run {e.run_id} is running under {e.holder.describe()}" for e in live)
                        + ". Stop it first, or use --force")
    if entries and not yes and sys.stdin.isatty() and not click.confirm(
            f"{action} {len(entries)} run(s): {', '.join(e.run_id for e in entries)}?", err=True):
        raise click.exceptions.Abort()


def _delete(app: App, store: Any, entries: list[Any]) -> dict[str, Any]:
    """Delete each run from both sides, say what it freed, and audit the store afterwards."""
    from fedkeeper.results.run_inventory import remove_run

    removed = [remove_run(store, app.logs_dir, e.run_id) for e in entries]
    for r in removed:
        app.info(f"deleted {r.run_id}: {human_bytes(r.bytes)} freed ({r.store.documents} documents, "
                 f"{r.store.files} GridFS files, {human_bytes(r.store.bytes)} in the store; "
                 f"{human_bytes(r.logs_bytes)} in Logs/)")
    totals = {"runs": len(removed), "bytes": sum(r.bytes for r in removed),
              "documents": sum(r.store.documents for r in removed),
              "store_bytes": sum(r.store.bytes for r in removed), "logs_bytes": sum(r.logs_bytes for r in removed)}
    audit = store.audit().as_dict() if store is not None else None
    if audit is not None and not audit["clean"]:
        app.warn(f"the store audit found {len(audit['findings'])} problem(s) left by others: "
                 + "; ".join(f"{f['kind']} {f['collection']} {f['id']}" for f in audit["findings"][:5]))
    return {"deleted": [r.as_dict() for r in removed], "freed": totals, "audit": audit}


def _print_freed(app: App, result: dict[str, Any]) -> None:
    if app.json:
        app.emit_json(result)
        return
    freed = result["freed"]
    app.console.print(f"freed {human_bytes(freed['bytes'])} ({freed['runs']} run(s), {freed['documents']} "
                      f"documents; store {human_bytes(freed['store_bytes'])}, Logs/ {human_bytes(freed['logs_bytes'])})")


@runs.command("delete", epilog=EXIT_CODES_HELP)
@click.argument("run_ids", nargs=-1, required=True, metavar="RUN_ID...")
@config_option(required=False)
@click.option("--force", is_flag=True, help="Delete a run even while a live orchestrator drives it.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@common_options
def delete_runs(run_ids: tuple[str, ...], config_path: str | None, force: bool, yes: bool) -> None:
    """Remove runs: their documents and blobs from the store and their Logs/ folders; says what it freed."""
    from fedkeeper.results.run_inventory import inventory

    app = current_app()
    with store_for(app, config_path, required=False) as store:
        entries = inventory(store, app.logs_dir, only=set(run_ids))
        missing = sorted(set(run_ids) - {e.run_id for e in entries})
        if missing:
            raise UsageProblem(f"no run {', '.join(missing)} in the store or under {app.logs_dir}")
        _confirm(entries, force=force, yes=yes, action="delete")
        result = _delete(app, store, entries)
    _print_freed(app, result)


@runs.command("prune", epilog=EXIT_CODES_HELP)
@click.option("--keep", type=click.IntRange(min=0), required=True, metavar="N",
              help="Runs to keep per experiment (the newest).")
@config_option(required=False)
@click.option("--force", is_flag=True, help="Delete runs a live orchestrator drives too (otherwise they are kept).")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@common_options
def prune_runs(keep: int, config_path: str | None, force: bool, yes: bool) -> None:
    """Keep the newest N runs of each experiment; delete the rest like `runs delete`."""
    from fedkeeper.results.run_inventory import inventory, prune_plan

    app = current_app()
    with store_for(app, config_path, required=False) as store:
        plan = prune_plan(inventory(store, app.logs_dir), keep)
        skipped = [e.run_id for e in plan if e.live and not force]
        plan = [e for e in plan if force or not e.live]
        for run_id in skipped:
            app.warn(f"run {run_id} is running: kept (use --force to delete it too)")
        _confirm(plan, force=force, yes=yes, action="prune")
        result = _delete(app, store, plan)
    result["skipped_live"] = skipped
    _print_freed(app, result)

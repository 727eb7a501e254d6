"""`fedkeeper smoke`: deploy `nodeinfo` on every (selected) cluster, invoke it once, report, remove it.

The first thing to run against a new fabric: it proves credentials, packaging, deploy, invoke and remove on
each cluster, and shows where functions really run (host, Python, CPUs, memory limit, cold or warm). A failure
on one cluster is recorded in its row and the others go on; the caller turns failed rows into the exit code.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from fedkeeper.providers import registry
from fedkeeper.providers.base import ProviderError, State

FUNCTION = "nodeinfo"
#: on top of the function timeout: deploy-to-ready lag and a cold start on a cloud platform
POLL_SLACK_S = 30.0
POLL_INITIAL_S = 0.005
POLL_MAX_S = 0.5

Progress = Callable[[str, str], None]


@dataclass
class SmokeResult:
    """One row of the smoke table: one cluster."""

    cluster: str
    platform: str
    name: str | None = None
    activation_id: str | None = None
    state: str | None = None
    cold: bool | None = None
    duration_s: float | None = None
    round_trip_s: float | None = None
    hostname: str | None = None
    python: str | None = None
    cpu_count: int | None = None
    memory_limit_mb: float | None = None
    error: str | None = None
    removed: bool | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.state == State.SUCCEEDED.value

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_smoke(fabric: Any, clusters: list[str] | None = None, *,
              progress: Progress | None = None) -> list[SmokeResult]:
    """Run the smoke test on `clusters` (default: the config's smoke clusters, else all), in order."""
    known = list(fabric.clusters) if hasattr(fabric, "clusters") else list(fabric.config.clusters())
    if not clusters:
        configured = getattr(getattr(fabric.config, "scenarios", None), "smoke", None)
        clusters = list(getattr(configured, "clusters", None) or known)
    unknown = [c for c in clusters if c not in known]
    if unknown:
        raise KeyError(f"unknown cluster(s) {', '.join(unknown)}; defined: {', '.join(known)}")
    return [_smoke_one(fabric, cluster, progress or (lambda _c, _s: None)) for cluster in clusters]


def _smoke_one(fabric: Any, cluster: str, progress: Progress) -> SmokeResult:
    kind = fabric.kind(cluster) if hasattr(fabric, "kind") else fabric.config.clusters()[cluster].kind
    row = SmokeResult(cluster=cluster, platform=registry.get(kind).title)
    provider = None
    deployed = False
    try:
        progress(cluster, "packaging")
        spec = fabric.deploy_spec(FUNCTION, cluster, store_env={})
        row.name = spec.name
        provider = fabric.provider(cluster)
        progress(cluster, "deploying")
        provider.deploy(spec)
        deployed = True
        progress(cluster, "invoking")
        t0 = time.monotonic()
        inv = provider.invoke(spec.name, {})
        row.activation_id = inv.activation_id
        status = _wait(provider, inv, spec.timeout_s + POLL_SLACK_S)
        row.round_trip_s = time.monotonic() - t0
        row.state = status.state.value
        row.activation_id = status.activation_id or inv.activation_id
        row.cold = status.cold
        row.duration_s = status.duration_s
        if status.state is State.SUCCEEDED:
            info = status.result or {}
            row.hostname = info.get("hostname")
            row.python = info.get("python")
            row.cpu_count = info.get("cpu_count")
            row.memory_limit_mb = info.get("memory_limit_mb")
        else:
            row.error = status.error or f"activation {status.state.value}"
    except ProviderError as exc:
        row.error = str(exc)
    except Exception as exc:  # noqa: BLE001 - one broken cluster must not stop the others
        row.error = f"{type(exc).__name__}: {exc}"
    finally:
        if deployed and provider is not None and row.name:
            progress(cluster, "removing")
            try:
                row.removed = provider.remove(row.name)
            except Exception as exc:  # noqa: BLE001
                row.removed = False
                extra = f"remove failed: {type(exc).__name__}: {exc}"
                row.error = f"{row.error}; {extra}" if row.error else extra
    progress(cluster, "done" if row.ok else "failed")
    return row


def _wait(provider: Any, inv: Any, limit_s: float) -> Any:
    """Poll with a growing interval (5 ms doubling to 0.5 s) until done or `limit_s` passed."""
    deadline = time.monotonic() + limit_s
    delay = POLL_INITIAL_S
    while True:
        status = provider.poll(inv)
        if status.state is not State.PENDING:
            return status
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            status.state = State.TIMED_OUT
            status.error = f"no result within {limit_s:g} s (function timeout plus {POLL_SLACK_S:g} s)"
            return status
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, POLL_MAX_S)


def render_smoke_table(rows: list[SmokeResult], console: Any) -> None:
    """The rows as a rich table, one line per cluster; errors in red under the table."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="fedkeeper smoke", show_lines=False)
    for column, justify in (("cluster", "left"), ("platform", "left"), ("activation", "left"),
                            ("start", "left"), ("duration", "right"), ("host", "left"), ("python", "left"),
                            ("cpus", "right"), ("memory MB", "right"), ("result", "left")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for r in rows:
        table.add_row(
            escape(r.cluster), r.platform, (r.activation_id or "-")[:12],
            "-" if r.cold is None else ("cold" if r.cold else "warm"),
            "-" if r.duration_s is None else f"{r.duration_s * 1000:.1f} ms",
            escape(r.hostname or "-"), escape(r.python or "-"), "-" if r.cpu_count is None else str(r.cpu_count),
            "-" if r.memory_limit_mb is None else f"{r.memory_limit_mb:g}",
            "[green]ok[/green]" if r.ok else "[red]failed[/red]",
        )
    console.print(table)
    for r in rows:
        if not r.ok:
            console.print(f"[red]{escape(r.cluster)}[/red]: {escape(str(r.error or r.state))}", highlight=False)

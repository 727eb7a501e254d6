"""`fedkeeper status`: what is deployed where, whether it matches the config, and how the runs stand.

Unlike `report`, this asks the live systems: every cluster for the functions labelled with the experiment,
and the store for the runs and the activations of a run's current round.

Drift: a function is *current* when the digest the platform reports for it (`FunctionInfo.digest`, written at
deploy time) equals the digest `deploy` would give it now (`Fabric.deploy_spec`: code, limits, settings and
the store's address), and *outdated* when its code or settings changed since (the next `deploy`/`start`
updates it). Each function also carries the digest of its code and settings alone (`LABEL_CODE`), so a
function deployed before the embedded store came back on another port is not mistaken for changed code.

Nothing unreachable hides the rest: a cluster that cannot be listed is reported in its row, a store that
cannot be opened leaves the functions shown and the runs unknown, and `errors` lists both (the command then
exits 1).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

from rich.console import Console

from fedkeeper.config.models import Config
from fedkeeper.errors import FedkeeperError, StoreFailure, UsageProblem
from fedkeeper.fabric import Fabric
from fedkeeper.packaging import PackagingError
from fedkeeper.providers.base import LABEL_CODE, LABEL_DIGEST, LABEL_FUNCTION, FunctionInfo, ProviderError

#: run statuses whose current round is worth showing activation by activation
OPEN_STATUSES = ("running", "interrupted", "stopped")


@dataclass
class FunctionStatus:
    """One function on one cluster: deployed (in sync or not), missing from the platform, or an orphan."""

    cluster: str
    platform: str
    name: str
    function: str | None
    state: str  # deployed | missing | orphan | error
    memory_mb: int | None = None
    timeout_s: float | None = None
    digest: str | None = None
    expected_digest: str | None = None
    in_sync: bool | None = None  # the deployed digest equals the expected one, store address included
    limits_match: bool | None = None
    note: str | None = None
    #: the verdict: current | outdated (code or settings changed since the deploy) | unknown | missing |
    #: unreachable (the cluster could not be listed)
    sync: str | None = None


def _digest_of(info: FunctionInfo) -> str | None:
    return info.digest or info.labels.get(LABEL_DIGEST)


class _ExpectedDigests:
    """What `deploy` would label each (function, cluster) with now; built once per pair (it packages a zip).

    `store_env` None: the store's address is unknown (it could not be opened), so only the code digests compare.
    """

    def __init__(self, fabric: Fabric, store_env: dict[str, str] | None) -> None:
        self.fabric, self.store_env = fabric, store_env
        self._cache: dict[tuple[str, str], tuple[str | None, str | None, str | None]] = {}

    def get(self, function: str, cluster: str) -> tuple[str | None, str | None, str | None]:
        """(digest, code digest, why they are unknown)."""
        key = (function, cluster)
        if key not in self._cache:
            try:
                spec = self.fabric.deploy_spec(function, cluster, self.store_env or {})
                self._cache[key] = (spec.digest if self.store_env is not None else None, spec.labels.get(LABEL_CODE),
                                    None)
            except (PackagingError, OSError, ValueError) as exc:  # e.g. wheels not downloadable: say so
                self._cache[key] = (None, None, f"cannot build {function} for {cluster} to compare: "
                                                f"{type(exc).__name__}: {exc}")
        return self._cache[key]


STALE_STORE_NOTE = ("deployed with an earlier address of the embedded store (it gets a new port each time it "
                    "starts); the next start or deploy refreshes it")
OUTDATED_NOTE = "code or settings changed since the deploy; the next start or deploy updates it"
OTHER_STORE_NOTE = "deployed with another store address; the next start or deploy updates it"
UNCHECKED_STORE_NOTE = "the store's address was not compared (the store could not be reached)"


def verdict(deployed: str | None, deployed_code: str | None, expected: str | None, expected_code: str | None, *,
            fresh_store_address: bool = False) -> tuple[str, str | None]:
    """(sync, note) of one deployed function from its digests.

    `expected` None: the store's address is unknown. `deployed_code` None: deployed before functions carried
    their code digest (then only the whole digest compares). `fresh_store_address`: this command started the
    embedded store, so a function can only carry an earlier address of it.
    """
    if expected is not None and deployed == expected:
        return "current", None
    if deployed_code and expected_code:
        if deployed_code != expected_code:
            return "outdated", OUTDATED_NOTE
        if expected is None:
            return "current", UNCHECKED_STORE_NOTE
        return ("current", STALE_STORE_NOTE) if fresh_store_address else ("outdated", OTHER_STORE_NOTE)
    if expected is None or fresh_store_address:
        return "unknown", ("deployed without a code digest, and the store's address cannot be compared: "
                           "the next start or deploy labels it")
    return "outdated", "code, settings or store address changed since the deploy; the next start or deploy updates it"


def function_statuses(config: Config, fabric: Fabric, store_env: dict[str, str] | None, *,
                      fresh_store_address: bool = False) -> list[FunctionStatus]:
    """Every function of the experiment per cluster, compared with the deployment plan of the config.

    `limits_match` compares memory and timeout with the plan on their own. `store_env` is what functions get to
    reach the store (None when it could not be opened: then only code and settings are compared).
    """
    plan = fabric.plan("federated_learning") if config.scenarios.federated_learning else []
    wanted = {(d.cluster, d.name): d for d in plan}
    expected = _ExpectedDigests(fabric, store_env)
    rows: list[FunctionStatus] = []
    for cluster in fabric.clusters:
        kind = fabric.kind(cluster)
        try:
            found = fabric.provider(cluster).list(fabric.labels)
        except (ProviderError, OSError, ImportError) as exc:
            rows.append(FunctionStatus(cluster, kind, "–", None, "error", note=f"{type(exc).__name__}: {exc}",
                                       sync="unreachable"))
            continue
        seen = set()
        for info in sorted(found, key=lambda i: i.name):
            seen.add(info.name)
            function = info.labels.get(LABEL_FUNCTION)
            row = FunctionStatus(cluster, kind, info.name, function,
                                 "deployed" if (cluster, info.name) in wanted else "orphan",
                                 info.memory_mb, info.timeout_s, _digest_of(info))
            planned = wanted.get((cluster, info.name))
            if planned is not None and info.memory_mb is not None and info.timeout_s is not None:
                row.limits_match = (info.memory_mb == planned.memory_mb
                                    and abs(float(info.timeout_s) - planned.timeout_s) < 1e-6)
            if function:
                row.expected_digest, expected_code, unknown = expected.get(function, cluster)
                if unknown:
                    row.sync, row.note = "unknown", unknown
                else:
                    if row.expected_digest is not None:
                        row.in_sync = row.digest == row.expected_digest
                    row.sync, row.note = verdict(row.digest, info.labels.get(LABEL_CODE), row.expected_digest,
                                                 expected_code, fresh_store_address=fresh_store_address)
            else:
                row.sync, row.note = "unknown", "carries no function label"
            if row.state == "orphan":
                row.note = "not in the config's deployment plan (remove deletes it)"
            rows.append(row)
        for (plan_cluster, name), d in wanted.items():
            if plan_cluster == cluster and name not in seen:
                rows.append(FunctionStatus(cluster, kind, name, d.function, "missing", d.memory_mb, d.timeout_s,
                                           in_sync=False, note="not deployed (start or deploy creates it)",
                                           sync="missing"))
    return rows


def run_row(run: dict[str, Any]) -> dict[str, Any]:
    """The fields of a `runs` document that status shows."""
    return {
        "run_id": run.get("_id", run.get("run_id")),
        "status": run.get("status"),
        "rounds_done": int(run.get("last_completed_round") or 0),
        "rounds_planned": run.get("rounds"),
        "last_accuracy": run.get("last_accuracy"),
        "last_loss": run.get("last_loss"),
        "started": run.get("started"),
        "updated": run.get("updated"),
        "error": run.get("error"),
    }


def current_round(store: Any, run: dict[str, Any]) -> dict[str, Any]:
    """Activations of the round a run is in (the one after its last completed round), by state and cluster."""
    number = int(run.get("last_completed_round") or 0) + 1
    activations = store.find_activations(run.get("_id", run.get("run_id")), round=number)
    latest: dict[Any, dict[str, Any]] = {}
    for doc in activations:  # sorted by (client, attempt): the last attempt per client wins
        latest[doc.get("client_id")] = doc
    by_cluster: dict[str, Counter[str]] = {}
    for doc in activations:
        by_cluster.setdefault(str(doc.get("cluster")), Counter())[str(doc.get("state"))] += 1
    return {
        "round": number,
        "activations": len(activations),
        "by_state": dict(Counter(str(d.get("state")) for d in activations)),
        "clients_by_latest_state": dict(Counter(str(d.get("state")) for d in latest.values())),
        "by_cluster": {k: dict(v) for k, v in sorted(by_cluster.items())},
    }


def _fresh_embedded(store: Any) -> bool:
    """True when this command started the embedded store itself (no running command shares it)."""
    embedded = getattr(store, "embedded", None)
    return embedded is not None and not getattr(embedded, "reused", False)


class StatusIncomplete(FedkeeperError):
    """`status` printed what it could, but a cluster or the store could not be reached (exit 1)."""


def store_env_without_store(config: Config) -> dict[str, str] | None:
    """What functions would get to reach a configured store that could not be opened (None for the embedded
    store, whose address only a running server knows)."""
    from types import SimpleNamespace

    from fedkeeper.scenarios.deployment import store_env_for
    from fedkeeper.store import resolve

    mongo = config.mongo_config
    if mongo.embedded:
        return None
    try:  # the URL a Store opened on this config would hand out (store.url is resolve(mongo).url)
        return store_env_for(SimpleNamespace(url=resolve(mongo).url, db_name=mongo.db))
    except StoreFailure:
        return None


def collect_status(config: Config, fabric: Fabric, store: Any, store_env: dict[str, str] | None,
                   run_id: str | None = None, *, store_error: str | None = None) -> dict[str, Any]:
    """The whole status document (what `--json` prints).

    `store` None: it could not be opened (`store_error` says why); the functions are still compared (code and
    settings; the store's address too when `store_env` is known) and `runs` is None: unknown, not empty.
    `errors` lists what could not be reached; the command exits 1 when it is not empty.
    """
    errors: list[dict[str, str]] = []
    runs: list[dict[str, Any]] | None = None
    rounds: dict[str, Any] = {}
    if store is not None:
        try:
            runs = store.list_runs(config.experiment)
            if run_id is not None:
                runs = [r for r in runs if r.get("_id", r.get("run_id")) == run_id]
                if not runs:
                    raise UsageProblem(f"--run {run_id}: no run of experiment {config.experiment!r} in the store "
                                       f"({store.display_url})")
            for run in runs:
                if run_id is not None or run.get("status") in OPEN_STATUSES:
                    rounds[str(run.get("_id", run.get("run_id")))] = current_round(store, run)
        except StoreFailure as exc:  # reached, then lost
            runs, rounds, store_error = None, {}, str(exc)
    if store_error:
        errors.append({"source": "store", "message": store_error})
    functions = function_statuses(config, fabric, store_env, fresh_store_address=_fresh_embedded(store))
    for row in functions:
        if row.state == "error":
            errors.append({"source": f"cluster {row.cluster}", "message": row.note or "cannot be listed"})
    mongo = config.mongo_config
    return {
        "experiment": config.experiment,
        "store": {"url": store.display_url if store is not None else _configured_store_url(config),
                  "db": store.db_name if store is not None else mongo.db, "reachable": store is not None
                  and store_error is None},
        "functions": [asdict(f) for f in functions],
        "runs": [run_row(r) for r in runs] if runs is not None else None,
        "current_rounds": rounds,
        "errors": errors,
    }


def _configured_store_url(config: Config) -> str:
    from fedkeeper.store import display_url

    url = config.mongo_config.url
    return url if config.mongo_config.embedded else display_url(url)


def incomplete(data: dict[str, Any]) -> StatusIncomplete | None:
    """The error the command ends with when something could not be reached (after printing the rest)."""
    if not data["errors"]:
        return None
    return StatusIncomplete("status incomplete: " + "; ".join(f"{e['source']}: {e['message']}" for e in data["errors"]))


# ---------------------------------------------------------------------------------------------- rendering


def _sync(row: dict[str, Any]) -> str:
    sync = row.get("sync")
    if sync == "current":
        return "[green]✓ current[/]" + ("*" if row["note"] == STALE_STORE_NOTE else "")
    return {"outdated": "[yellow]✗ outdated[/]", "missing": "[red]missing[/]", "unreachable": "[red]unreachable[/]"
            }.get(str(sync), "[dim]?[/]")


def _short_time(value: Any) -> str:
    from fedkeeper.results.render import fmt_time

    return fmt_time(value)[5:16] if value else "–"  # MM-DD HH:MM


def render_status(data: dict[str, Any], console: Console) -> None:
    from fedkeeper.results.render import _table, fmt_num

    reach = "" if data["store"].get("reachable", True) else " [red]unreachable[/]"
    console.print(f"experiment [bold]{data['experiment']}[/] · store {data['store']['url']} "
                  f"(db {data['store']['db']}){reach}", soft_wrap=True)
    functions = _table("deployed functions")
    for col in ("cluster", "name", "MB", "timeout s", "digest", "config"):
        functions.add_column(col, justify="right" if col in ("MB", "timeout s") else "left",
                             overflow="fold" if col == "name" else "ellipsis")
    notes = []
    for f in data["functions"]:
        functions.add_row(f"{f['cluster']} ({f['platform']})", f["name"], fmt_num(f["memory_mb"]),
                          "–" if f["timeout_s"] is None else f"{f['timeout_s']:g}", (f["digest"] or "–")[:8], _sync(f))
        if f["note"] == STALE_STORE_NOTE:
            notes.append(f"* {STALE_STORE_NOTE}")
        elif f["note"] and f["state"] != "missing":
            notes.append(f"{f['cluster']}/{f['name']}: {f['note']}")
    console.print(functions if data["functions"] else "no clusters configured")
    for note in dict.fromkeys(notes):
        console.print(f"[dim]{note}[/]", soft_wrap=True)
    runs = _table("runs")
    for col in ("run", "status", "rounds", "accuracy", "started", "updated"):
        runs.add_column(col, justify="right" if col in ("rounds", "accuracy") else "left",
                        overflow="fold" if col == "run" else "ellipsis")
    style = {"completed": "green", "failed": "red", "running": "yellow", "interrupted": "magenta",
             "stopped": "magenta"}
    for r in data["runs"] or []:
        runs.add_row(str(r["run_id"]), f"[{style.get(str(r['status']), 'white')}]{r['status']}[/]",
                     f"{r['rounds_done']}/{r['rounds_planned'] if r['rounds_planned'] is not None else '?'}",
                     fmt_num(r["last_accuracy"], 4), _short_time(r["started"]), _short_time(r["updated"]))
    if data["runs"] is None:
        console.print("runs: unknown (the store could not be reached)")
    else:
        console.print(runs if data["runs"] else "no runs of this experiment in the store")
    for run_id, current in data["current_rounds"].items():
        states = ", ".join(f"{n} {s}" for s, n in sorted(current["by_state"].items())) or "no activations yet"
        console.print(f"run [bold]{run_id}[/] round {current['round']}: {states}", soft_wrap=True)
        for cluster, counts in current["by_cluster"].items():
            console.print(f"  {cluster}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))

"""What a config describes, as data (for --json) and as rich tables (for people).

Shown values are the effective ones (function settings, else the cluster's, else FedKeeper's defaults), so
that `validate` answers "what will deploy create?" without reading the precedence rules. Nothing secret is
shown: store URLs are masked here, and the CLI's consoles redact every known secret on top.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from fedkeeper import config as cfg
from fedkeeper.config.models import Config
from fedkeeper.providers import registry
from fedkeeper.secrets import url_for_display


def config_summary(config: Config) -> dict[str, Any]:
    clusters = config.clusters()
    fl = config.scenarios.federated_learning
    counts = cfg.placement(config) if fl else {}
    server = cfg.server_cluster(config) if fl else None
    functions: dict[str, list[dict[str, Any]]] = {}
    if fl:
        for function, where in cfg.SCENARIO_FUNCTIONS["federated_learning"].items():
            hosts = [n for n, c in counts.items() if c > 0] if where == "clients" else [server]
            for name in hosts:
                kind = clusters[name].kind
                memory, timeout, concurrency = cfg.function_limits(config, function, kind, cluster=name)
                functions.setdefault(function, []).append(
                    {"cluster": name, "memory_mb": memory, "timeout_s": timeout, "concurrency": concurrency})
    mongo = config.mongo_config
    return {
        "experiment": config.experiment,
        "clusters": [{"name": n, "kind": c.kind, "platform": registry.of(c).title, "endpoint": c.endpoint,
                      "clients": counts.get(n, 0), "server": n == server} for n, c in clusters.items()],
        "functions": functions,
        "store": {"url": "embedded" if mongo.embedded else _mask_url(mongo.url), "db": mongo.db},
        "federated_learning": None if fl is None else {
            "rounds": fl.rounds, "seed": fl.seed, "total_num_clients": fl.clients_info.total_num_clients,
            "num_clients_per_round": fl.clients_info.num_clients_per_round,
            "deployment": fl.clients_info.deployment,
            "clients_per_invocation": fl.clients_info.clients_per_invocation,
            "model": fl.data_sampling.model if fl.task is None else f"task {fl.task.module}",
            "optim": fl.model_params.optim, "dataset": fl.training_test_data.dataset or "files",
            "partition": fl.data_sampling.partition, "mu": fl.model_params.mu,
        },
        "warnings": [str(w) for w in config.warnings],
    }


def _mask_url(url: str) -> str:
    """mongodb://user:secret@host → mongodb://user:***@host (also for replica-set URLs urlsplit cannot parse)."""
    return url_for_display(url)  # the redactor's URL reading: a raw '/' or '@' in the password is hidden too


def print_config_summary(config: Config, console: Console) -> None:
    data = config_summary(config)
    table = Table(title=f"experiment [bold]{data['experiment']}[/]", title_justify="left")
    for col in ("cluster", "platform", "endpoint", "clients", "aggregator"):
        table.add_column(col, justify="right" if col == "clients" else "left",
                         overflow="fold" if col == "endpoint" else "ellipsis")
    for c in data["clusters"]:
        table.add_row(c["name"], c["platform"], c["endpoint"], str(c["clients"]), "✓" if c["server"] else "")
    console.print(table)
    if data["functions"]:
        ft = Table(title="functions", title_justify="left")
        for col in ("function", "cluster", "memory MB", "timeout s"):
            ft.add_column(col)
        for function, hosts in data["functions"].items():
            for h in hosts:
                ft.add_row(function, h["cluster"], str(h["memory_mb"]), f"{h['timeout_s']:g}")
        console.print(ft)
    fl = data["federated_learning"]
    if fl:
        console.print(f"federated learning: {fl['rounds']} rounds, {fl['num_clients_per_round']} of "
                      f"{fl['total_num_clients']} clients per round ({fl['deployment']}"
                      + (f", {fl['clients_per_invocation']} per invocation"
                         if fl.get("clients_per_invocation", 1) > 1 else "") + f"), model {fl['model']}, "
                      f"{fl['optim']}{' + FedProx mu=' + format(fl['mu'], 'g') if fl['mu'] else ''}, "
                      f"data {fl['dataset']} ({fl['partition']}), seed {fl['seed']}")
    console.print(f"store: {data['store']['url']} (db {data['store']['db']})")

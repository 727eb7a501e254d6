"""Helpers for in-process round-loop tests: a tiny experiment on `local` clusters, run by `start_command` itself.

No `fedkeeper start` subprocess: the test process runs the orchestrator, the local platform's worker processes run
the real functions, and both talk to the session's nx-27017 server (a fresh database per run), so a run costs
about a second. Faults are per cluster and drawn in submission order, so the tests make one cluster reliable and
another one slow or failing, and placement (ids dealt out in cluster order) says which clients live where.
"""

from __future__ import annotations

import csv
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import psutil
import pymongo
import pytest
import yaml

from fedkeeper import config as cfg
from fedkeeper.cli.main import App
from fedkeeper.scenarios.federated_learning import start_command


def experiment_yaml(mongo_url: str, *, clusters: dict[str, dict[str, Any]], placement: dict[str, int],
                    rounds: int = 2, per_round: int = 2, seed: int = 42, target_accuracy: float | None = None,
                    resilience: dict[str, Any] | None = None, client_timeout_s: float = 30,
                    db: str | None = None, clients_per_invocation: int = 1) -> str:
    """Config text for a logreg on digits, 1 local epoch; the aggregator gets its own reliable cluster."""
    providers = {name: {"concurrency": 2, **settings} for name, settings in clusters.items()}
    providers["agg"] = {"concurrency": 1}
    data = {
        "experiment": "loop",
        "providers": {"local": providers},
        "mongo_config": {"url": mongo_url, "db": db or f"t_{uuid.uuid4().hex[:12]}"},
        "functions": {"fl_client": {"local": {"memory": 512, "timeout": client_timeout_s}},
                      "fl_server_aggregator": {"local": {"memory": 1024, "timeout": 60}}},
        "scenarios": {"federated_learning": {
            "rounds": rounds, "seed": seed, "target_accuracy": target_accuracy,
            "clients_info": {"total_num_clients": sum(placement.values()), "num_clients_per_round": per_round,
                             "placement": placement,
                             **({"clients_per_invocation": clients_per_invocation}
                                if clients_per_invocation != 1 else {})},
            "server": {"cluster": "agg"},
            "data_sampling": {"model": "logreg", "input_size": 64, "output_size": 10, "partition": "iid"},
            "model_params": {"optim": "sgd", "lr": 0.05, "batch_size": 16, "local_epochs": 1},
            "training_test_data": {"dataset": "digits"},
            "resilience": {"backoff_base_s": 0.01, "backoff_max_s": 0.05, "poll_max_s": 0.05,
                           "timeout_slack_s": 2, **(resilience or {})},
        }},
    }
    return yaml.safe_dump(data, sort_keys=False)


@dataclass
class Run:
    """What one in-process `start` left behind: its summary, its Logs/ folder and its store documents."""

    summary: dict[str, Any]
    folder: Path
    db: Any

    @property
    def run_id(self) -> str:
        return str(self.summary["run_id"])

    def rounds(self) -> list[dict[str, str]]:
        return _csv(self.folder / "rounds.csv")

    def activations(self, round_number: int | None = None) -> list[dict[str, str]]:
        """Client activations from Logs/<run>/activations.csv (optionally of one round)."""
        rows = [a for a in _csv(self.folder / "activations.csv") if a["function"] == "fl_client"]
        return [a for a in rows if round_number is None or int(a["round"]) == round_number]

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        lines = (self.folder / "events.jsonl").read_text().splitlines()
        events = [json.loads(line) for line in lines if line.strip()]
        return [e for e in events if name is None or e["event"] == name]

    def store_activations(self, round_number: int) -> list[dict[str, Any]]:
        return list(self.db["activations"].find({"run_id": self.run_id, "round": round_number,
                                                 "function": "fl_client"}))

    def run_doc(self) -> dict[str, Any]:
        return self.db["runs"].find_one({"_id": self.run_id}) or {}


def _csv(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def start_in_process(workdir: Path, text: str, client: pymongo.MongoClient, *, resume: str | None = None,
                     rounds: int | None = None) -> Run:
    """`fedkeeper start -q` without the subprocess: the same entry point the CLI command calls."""
    config = cfg.load_text(text, source=str(workdir / "config.yaml"), base_dir=workdir)
    app = App(quiet=True, logs_dir=workdir / "Logs", workdir=workdir)
    summary = start_command(app, config, rounds=rounds, resume=resume)
    return Run(summary, workdir / "Logs" / summary["run_id"], client[config.mongo_config.db])


class Loop:
    """Starts in-process runs on the session's nx-27017 server; drops their databases afterwards."""

    def __init__(self, url: str, tmp: Path) -> None:
        self.url, self.tmp = url, tmp
        self.client: pymongo.MongoClient = pymongo.MongoClient(url, serverSelectionTimeoutMS=5000)
        self.dbs: list[str] = []

    def yaml(self, *, db: str | None = None, **kwargs: Any) -> tuple[str, str]:
        """(config text, database name); pass `db` to point a second config at the same run."""
        db = db or f"t_{uuid.uuid4().hex[:12]}"
        self.dbs.append(db)
        return experiment_yaml(self.url, db=db, **kwargs), db

    def start(self, text: str, *, workdir: str = "w", resume: str | None = None) -> Run:
        path = self.tmp / workdir
        path.mkdir(exist_ok=True)
        return start_in_process(path, text, self.client, resume=resume)

    def close(self) -> None:
        for db in set(self.dbs):
            self.client.drop_database(db)
        self.client.close()


@pytest.fixture
def loop(nx_server: str, tmp_path: Path) -> Iterator[Loop]:
    harness = Loop(nx_server, tmp_path)
    try:
        yield harness
    finally:
        harness.close()
    assert _workers_under(tmp_path) == [], "a local worker outlived its run"


def _workers_under(path: Path) -> list[str]:
    """Live child processes of this test process whose command line or cwd points into the test's folder."""
    left = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if str(path) in " ".join(proc.cmdline()) or str(path) in proc.cwd():
                left.append(f"{proc.pid} {' '.join(proc.cmdline())[:100]}")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return left

"""What the chaos tests share: their seed, their experiment and its undisturbed reference run.

The experiment is small and timing-free on purpose: every selected client is needed (no over-selection, no round
deadline) and attempts are plenty, so whatever the faults, the same clients train the same shards and the final
model must be bit for bit the one of an undisturbed run (`reference_sha`), which is computed once per session.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pymongo
import yaml

from chaos_audit import Audit, audit_run
from round_support import start_in_process

ROUNDS, CLIENTS, SEED = 3, 6, 11


def chaos_seed(default: int) -> int:
    """The seed of a test's random faults: FK_CHAOS_SEED if set, else the test's default; printed, so a failure
    shows how to replay it."""
    seed = int(os.environ.get("FK_CHAOS_SEED", default))
    print(f"chaos seed {seed} (replay: FK_CHAOS_SEED={seed})")
    return seed


def record(test: str, audit: Audit | None = None, **figures: Any) -> None:
    """Print what a chaos test did, and append it as one JSON line to the file FK_CHAOS_FIGURES names (how the
    figures in docs/reliability.md are summed)."""
    line = {"test": test, **(asdict(audit) if audit else {}), **figures}
    print(f"chaos figures: {line}")
    path = os.environ.get("FK_CHAOS_FIGURES")
    if path:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(line, sort_keys=True) + "\n")


def experiment(mongo: dict[str, Any], clusters: dict[str, dict[str, Any]], placement: dict[str, int], *,
               functions: dict[str, Any] | None = None, resilience: dict[str, Any] | None = None,
               rounds: int = ROUNDS) -> str:
    """Config text: a logreg on digits, 1 local epoch, seed SEED, every client selected every round; the
    aggregator on a reliable local cluster of its own. `clusters`: {kind: {name: settings}}."""
    providers: dict[str, Any] = {kind: dict(named) for kind, named in clusters.items()}
    providers.setdefault("local", {})["agg"] = {"concurrency": 1}
    data = {
        "experiment": "chaos",
        "providers": providers,
        "mongo_config": mongo,
        "functions": {"fl_client": {"local": {"memory": 512, "timeout": 30}, **(functions or {})},
                      "fl_server_aggregator": {"local": {"memory": 1024, "timeout": 60}}},
        "scenarios": {"federated_learning": {
            "rounds": rounds, "seed": SEED,
            "clients_info": {"total_num_clients": sum(placement.values()),
                             "num_clients_per_round": sum(placement.values()), "placement": placement},
            "server": {"cluster": "agg"},
            "data_sampling": {"model": "logreg", "input_size": 64, "output_size": 10, "partition": "iid"},
            "model_params": {"optim": "sgd", "lr": 0.05, "batch_size": 16, "local_epochs": 1},
            "training_test_data": {"dataset": "digits"},
            "resilience": {"max_attempts": 10, "backoff_base_s": 0.02, "backoff_max_s": 0.2, "poll_max_s": 0.1,
                           "timeout_slack_s": 2, **(resilience or {})},
        }},
    }
    return yaml.safe_dump(data, sort_keys=False)


class Databases:
    """Fresh databases on the session's nx-27017 server, dropped by `close`."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.client: pymongo.MongoClient = pymongo.MongoClient(url, serverSelectionTimeoutMS=5000)
        self.names: list[str] = []

    def mongo(self) -> dict[str, Any]:
        """A `mongo_config` naming a new database."""
        self.names.append(f"t_{uuid.uuid4().hex[:12]}")
        return {"url": self.url, "db": self.names[-1]}

    def close(self) -> None:
        for name in self.names:
            self.client.drop_database(name)
        self.client.close()


def reference_run(url: str, folder: Path, rounds: int = ROUNDS) -> str:
    """The final model_sha256 of the undisturbed experiment: every client on a reliable local cluster."""
    dbs = Databases(url)
    try:
        text = experiment(dbs.mongo(), {"local": {"lab": {"concurrency": 3}}}, {"lab": CLIENTS}, rounds=rounds)
        folder.mkdir(parents=True, exist_ok=True)
        run = start_in_process(folder, text, dbs.client)
        assert run.summary["status"] == "completed", run.summary
        audit_run(run.db, run.folder)
        return str(run.summary["model_sha256"])
    finally:
        dbs.close()

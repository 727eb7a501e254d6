"""`fedkeeper deploy / start / remove` through the command line against the Cloud Functions fake on 127.0.0.1.

The CLI runs as its own process (as a user would run it); the fake admin API and the functions-framework
runtimes it starts live in this test process's fixture and are stopped at the end. The store is the embedded
nx-27017 server, which the functions reach over 127.0.0.1 like any MongoDB.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from fake_gcf import FakeGcf
from fedkeeper.providers.base import LABEL_EXPERIMENT, LABEL_FUNCTION

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXPERIMENT = "gcfcli"
PROJECT, REGION = "fk-cli", "us-central1"


def _config(fake: FakeGcf) -> dict:
    return {
        "experiment": EXPERIMENT,
        "providers": {"google": {"gcf-test": {
            "project_id": PROJECT, "region": REGION, "credentials": "anonymous", "id_token": False,
            "api_endpoint": fake.endpoint, "max_inflight": 4,
        }}},
        "mongo_config": {"url": "embedded", "db": "fk_gcf_cli"},
        "functions": {"fl_client": {"google": {"memory": 512, "timeout": 60}},
                      "fl_server_aggregator": {"google": {"memory": 1024, "timeout": 120}}},
        "scenarios": {"federated_learning": {
            "rounds": 5, "seed": 7,
            "clients_info": {"total_num_clients": 4, "num_clients_per_round": 2, "placement": {"gcf-test": 4}},
            "server": {"cluster": "gcf-test"},
            "model_params": {"local_epochs": 1, "batch_size": 16},
        }},
    }


def fedkeeper(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from fedkeeper.cli import main; main()", *args], cwd=workdir,
                          capture_output=True, text=True, timeout=240)


def _json_out(proc: subprocess.CompletedProcess[str]) -> dict:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return json.loads(proc.stdout[proc.stdout.index("{"):])


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeGcf]:
    with FakeGcf(workdir=tmp_path / "fake") as server:
        yield server


def test_deploy_start_remove_through_the_cli(fake: FakeGcf, tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(_config(fake), sort_keys=False))
    parent = f"projects/{PROJECT}/locations/{REGION}"

    deployed = _json_out(fedkeeper(tmp_path, "deploy", "-c", "config.yaml", "--json"))["deployed"]
    assert sorted((d["function"], d["action"]) for d in deployed) == [
        ("fl_client", "created"), ("fl_server_aggregator", "created")]
    names = {fake.function_id(n) for n in fake.functions}
    assert names == {f"fk-{EXPERIMENT}-fl-client", f"fk-{EXPERIMENT}-fl-server-aggregator"}
    client = fake.get(f"{parent}/functions/fk-{EXPERIMENT}-fl-client")
    assert client["serviceConfig"]["availableMemory"] == "512Mi" and client["serviceConfig"]["timeoutSeconds"] == 60
    assert client["labels"][LABEL_EXPERIMENT] == EXPERIMENT and client["labels"][LABEL_FUNCTION] == "fl_client"

    summary = _json_out(fedkeeper(tmp_path, "start", "-c", "config.yaml", "--rounds", "2", "--json"))
    assert summary["status"] == "completed" and summary["rounds_completed"] == 2
    assert summary["clusters"] == {"gcf-test": "google"}
    assert 0.0 < summary["final"]["accuracy"] <= 1.0
    assert summary["activations"]["failed"] == 0 and summary["activations"]["lost"] == 0
    # every activation went through a function URL of the fake, and carries the platform's execution id
    run_dir = tmp_path / "Logs" / summary["run_id"]
    with open(run_dir / "activations.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    client_rows = [r for r in rows if r["function"] == "fl_client"]
    assert len(client_rows) >= 4 and {r["state"] for r in client_rows} == {"succeeded"}
    assert {r["cluster"] for r in rows} == {"gcf-test"}
    assert all(len(r["platform_activation_id"]) == 12 for r in rows)
    assert len(fake.invocations) >= len(rows)
    assert all(b"mongodb://" not in call.body for call in fake.invocations)  # the store URL is deploy-time env

    # an orphan of a crashed deploy (labelled, never recorded anywhere) is removed too; others' are kept
    fake.add_foreign(parent, f"fk-{EXPERIMENT}-fl-client-9", {LABEL_EXPERIMENT: EXPERIMENT,
                                                               LABEL_FUNCTION: "fl_client"})
    fake.add_foreign(parent, "fk-other-fl-client", {LABEL_EXPERIMENT: "other"})
    removed = _json_out(fedkeeper(tmp_path, "remove", "-c", "config.yaml", "--json"))["removed"]
    assert sorted(r["name"] for r in removed if r["removed"]) == sorted(
        [f"fk-{EXPERIMENT}-fl-client", f"fk-{EXPERIMENT}-fl-client-9", f"fk-{EXPERIMENT}-fl-server-aggregator"])
    assert {fake.function_id(n) for n in fake.functions} == {"fk-other-fl-client"}
    assert fake.runtimes == {}
    again = _json_out(fedkeeper(tmp_path, "remove", "-c", "config.yaml", "--json"))["removed"]
    assert again == []

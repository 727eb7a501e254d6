"""`fedkeeper deploy / start / smoke / remove` against the fake OpenWhisk controller, end to end.

The CLI runs as a separate process, as a user would run it, reading the key through a ${ENV} reference. The
fake controller (tests/fake_openwhisk.py) really runs the uploaded zips, so `start` trains 2 rounds with the
fl_client and fl_server_aggregator functions executing as OpenWhisk actions, talking to the embedded store on
127.0.0.1 (the fake cluster is on loopback, so the embedded store is reachable from its actions).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests

from fake_openwhisk import FakeOpenWhisk

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXPERIMENT = "owcli"


def write_config(fake: FakeOpenWhisk, folder: Path) -> Path:
    config = folder / "config.yaml"
    config.write_text(f"""\
experiment: {EXPERIMENT}
providers:
  openwhisk:
    ow-fake:
      api_host: {fake.url}
      namespace: _
      auth: ${{OW_AUTH}}
      runtime: python:3.11
      annotations: {{lab: fedkeeper-tests}}
mongo_config:
  url: embedded
functions:
  fl_client:
    openwhisk: {{memory: 512, timeout: 120000}}
scenarios:
  federated_learning:
    rounds: 2
    seed: 7
    clients_info: {{total_num_clients: 4, num_clients_per_round: 2}}
    model_params: {{local_epochs: 1}}
""")
    return config


def fedkeeper(fake: FakeOpenWhisk, folder: Path, *args: str, auth: str | None = None
              ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OW_", "FK_", "__OW_"))}
    env["OW_AUTH"] = auth or fake.auth
    env["COLUMNS"] = "200"
    return subprocess.run([sys.executable, "-c", "from fedkeeper.cli import main; main()", *args,
                           "-c", str(folder / "config.yaml"), "--logs-dir", str(folder / "Logs")],
                          capture_output=True, text=True, cwd=folder, env=env, timeout=300)


def json_out(proc: subprocess.CompletedProcess[str]) -> Any:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return json.loads(proc.stdout)


def assert_key_never_leaks(fake: FakeOpenWhisk, folder: Path, *procs: subprocess.CompletedProcess[str]) -> None:
    uuid, key = fake.auth.split(":", 1)
    for proc in procs:
        assert key not in proc.stdout and key not in proc.stderr
    for recorded in fake.requests:
        assert key not in recorded.url and uuid not in recorded.url, recorded.url
    for file in (folder / "Logs").rglob("*"):
        if file.is_file():
            assert key not in file.read_text(encoding="utf-8", errors="replace"), file


def ours(fake: FakeOpenWhisk) -> dict[str, dict[str, Any]]:
    return {name: {a["key"]: a["value"] for a in action.annotations}
            for name, action in fake.actions.items()
            if any(a["key"] == "fedkeeper-experiment" and a["value"] == EXPERIMENT for a in action.annotations)}


def test_deploy_start_smoke_remove_through_the_cli(fake_openwhisk: FakeOpenWhisk, tmp_path: Path) -> None:
    fake = fake_openwhisk
    write_config(fake, tmp_path)

    deployed = fedkeeper(fake, tmp_path, "deploy", "--json")
    rows = {r["function"]: r for r in json_out(deployed)["deployed"]}
    assert {f: r["action"] for f, r in rows.items()} == {"fl_client": "created", "fl_server_aggregator": "created"}
    live = ours(fake)
    assert set(live) == {"fk-owcli-fl-client", "fk-owcli-fl-server-aggregator"}
    client = fake.actions["fk-owcli-fl-client"]
    assert client.exec["kind"] == "python:3.11" and client.limits["memory"] == 512
    assert client.limits["timeout"] == 120000
    assert {p["key"] for p in client.parameters} == {"FK_MONGO_URL", "FK_MONGO_DB"}
    assert live["fk-owcli-fl-client"]["lab"] == "fedkeeper-tests"
    assert live["fk-owcli-fl-client"]["provide-api-key"] is False

    started = fedkeeper(fake, tmp_path, "start", "--json")
    summary = json_out(started)
    assert summary["status"] == "completed" and summary["rounds_completed"] == 2
    assert summary["activations"]["succeeded"] == summary["activations"]["total"] >= 5  # init + 2 x (2 + 1)
    assert summary["clusters"] == {"ow-fake": "openwhisk"}
    assert 0.0 < summary["final"]["accuracy"] <= 1.0
    run_dir = tmp_path / "Logs" / summary["run_id"]
    rows_csv = (run_dir / "activations.csv").read_text(encoding="utf-8").splitlines()
    header = rows_csv[0].split(",")
    platform_ids = {line.split(",")[header.index("platform_activation_id")] for line in rows_csv[1:]}
    assert platform_ids and platform_ids <= set(fake.activations), "activation ids must be OpenWhisk's own"
    records = [fake.activations[i] for i in platform_ids]
    assert all(r["response"]["status"] == "success" for r in records)
    assert {r["name"] for r in records} == {"fk-owcli-fl-client", "fk-owcli-fl-server-aggregator"}
    for request in fake.requests_to("POST"):
        assert b"mongodb://" not in request.body, "the store URL must not travel in invocation payloads"

    smoke = fedkeeper(fake, tmp_path, "smoke", "--json")
    smoke_rows = json_out(smoke)
    assert [(r["cluster"], r["name"], r["state"], r["removed"]) for r in smoke_rows] == \
        [("ow-fake", "fk-owcli-nodeinfo", "succeeded", True)]
    assert smoke_rows[0]["activation_id"] in fake.activations
    assert "fk-owcli-nodeinfo" not in fake.actions

    # An orphan of a crashed deploy (ours, unknown to the current plan) and an action that is not ours.
    base = f"{fake.url}/api/v1/namespaces/_/actions"
    auth = tuple(fake.auth.split(":", 1))
    code = {"kind": "python:3.11", "code": "def main(args):\n    return args\n"}
    for name, annotations in (("fk-owcli-fl-client-9", [{"key": "fedkeeper-experiment", "value": EXPERIMENT},
                                                        {"key": "fedkeeper-function", "value": "fl_client"}]),
                              ("somebody-elses", [{"key": "owner", "value": "other"}])):
        put = requests.put(f"{base}/{name}", json={"exec": code, "annotations": annotations}, auth=auth, timeout=10)
        assert put.status_code == 200

    removed = fedkeeper(fake, tmp_path, "remove", "--json")
    assert sorted((r["name"], r["removed"]) for r in json_out(removed)["removed"]) == [
        ("fk-owcli-fl-client", True), ("fk-owcli-fl-client-9", True), ("fk-owcli-fl-server-aggregator", True)]
    assert ours(fake) == {}
    assert sorted(fake.actions) == ["somebody-elses"]
    assert json_out(fedkeeper(fake, tmp_path, "remove", "--json"))["removed"] == []

    assert_key_never_leaks(fake, tmp_path, deployed, started, smoke, removed)


def test_wrong_key_stops_the_cli_with_a_clear_message(fake_openwhisk: FakeOpenWhisk, tmp_path: Path) -> None:
    write_config(fake_openwhisk, tmp_path)
    uuid = fake_openwhisk.auth.split(":", 1)[0]
    wrong_key = "not-the-right-key-0123456789"
    proc = fedkeeper(fake_openwhisk, tmp_path, "deploy", auth=f"{uuid}:{wrong_key}")
    assert proc.returncode != 0
    assert "401" in proc.stderr and "ow-fake" in proc.stderr
    assert wrong_key not in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert fake_openwhisk.actions == {}

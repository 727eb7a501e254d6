"""`fedkeeper deploy / smoke / remove` against an AWS Lambda cluster served by moto's HTTP server on 127.0.0.1.

The CLI runs as a separate process, as a user would run it, reading dummy keys through ${ENV} references.
moto's Docker-less Lambda does not run the uploaded code: an invoke answers with the request payload (or a
queued result), so `smoke` shows here that the function was deployed, invoked through Lambda's API with the
request id as activation id, and removed; that the packaged handler works is tested in test_aws_entry.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REGION = "eu-west-1"
EXPERIMENT = "awscli"
KEYS = {"AWS_ACCESS_KEY_ID": "AKIAFEDKEEPERTEST01", "AWS_SECRET_ACCESS_KEY": "fedkeeper-dummy-secret-key-0001"}


@pytest.fixture
def moto_server() -> Iterator[str]:
    """moto's HTTP server on a free 127.0.0.1 port, with Lambda in its Docker-less mode; stopped at the end."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    try:
        requests.post(f"{url}/moto-api/reset", timeout=10).raise_for_status()
        requests.post(f"{url}/moto-api/config", json={"lambda": {"use_docker": False}}, timeout=10).raise_for_status()
        yield url
    finally:
        try:  # moto's config is process-wide: leave it as other tests expect it
            requests.post(f"{url}/moto-api/config", json={"lambda": {"use_docker": True}}, timeout=10)
            requests.post(f"{url}/moto-api/reset", timeout=10)
        finally:
            server.stop()


def aws_client(service: str, url: str) -> Any:
    return boto3.client(service, endpoint_url=url, region_name=REGION, aws_access_key_id=KEYS["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=KEYS["AWS_SECRET_ACCESS_KEY"])


@pytest.fixture
def setup(moto_server: str, tmp_path: Path) -> dict[str, Any]:
    role_arn = aws_client("iam", moto_server).create_role(
        RoleName="fedkeeper-lambda", AssumeRolePolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                    "Principal": {"Service": "lambda.amazonaws.com"}}]}))["Role"]["Arn"]
    config = tmp_path / "config.yaml"
    config.write_text(f"""\
experiment: {EXPERIMENT}
providers:
  aws:
    lambda-moto:
      region: {REGION}
      role_arn: {role_arn}
      endpoint_url: {moto_server}
      access_key_id: ${{AWS_ACCESS_KEY_ID}}
      secret_access_key: ${{AWS_SECRET_ACCESS_KEY}}
      architecture: arm64
      vendor_wheels: false      # no network here; a layer or vendored wheels provide numpy on real Lambda
      memory: 512
      timeout: 60
mongo_config:
  url: embedded
scenarios:
  federated_learning:
    rounds: 1
    clients_info: {{total_num_clients: 2, num_clients_per_round: 2}}
""")
    return {"url": moto_server, "config": config, "role_arn": role_arn, "dir": tmp_path,
            "lambda": aws_client("lambda", moto_server)}


def fedkeeper(setup: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FK_"))}
    env.update(KEYS)
    env["AWS_CONFIG_FILE"] = str(setup["dir"] / "no-aws-config")
    env["AWS_SHARED_CREDENTIALS_FILE"] = str(setup["dir"] / "no-aws-credentials")
    env["COLUMNS"] = "200"
    return subprocess.run([sys.executable, "-c", "from fedkeeper.cli import main; main()", *args,
                           "-c", str(setup["config"]), "--logs-dir", str(setup["dir"] / "Logs")],
                          capture_output=True, text=True, cwd=setup["dir"], env=env, timeout=240)


def json_out(proc: subprocess.CompletedProcess[str]) -> Any:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return json.loads(proc.stdout)


def functions_of(lam: Any, experiment: str = EXPERIMENT) -> dict[str, dict[str, Any]]:
    out = {}
    for page in lam.get_paginator("list_functions").paginate():
        for fn in page["Functions"]:
            tags = lam.list_tags(Resource=fn["FunctionArn"])["Tags"]
            if tags.get("fedkeeper-experiment") == experiment:
                out[fn["FunctionName"]] = {**lam.get_function(FunctionName=fn["FunctionName"])["Configuration"],
                                           "Tags": tags}
    return out


def assert_no_secret(proc: subprocess.CompletedProcess[str]) -> None:
    for value in KEYS.values():
        assert value not in proc.stdout and value not in proc.stderr


def test_deploy_redeploy_and_remove_through_the_cli(setup: dict[str, Any]) -> None:
    lam = setup["lambda"]
    first = fedkeeper(setup, "deploy", "--json")
    assert_no_secret(first)
    rows = {r["function"]: r for r in json_out(first)["deployed"]}
    assert {f: r["action"] for f, r in rows.items()} == {"fl_client": "created", "fl_server_aggregator": "created"}

    live = functions_of(lam)
    assert set(live) == {"fk-awscli-fl-client", "fk-awscli-fl-server-aggregator"}
    client = live["fk-awscli-fl-client"]
    assert (client["Runtime"], client["Handler"], client["Architectures"]) == \
        ("python3.11", "lambda_function.handler", ["arm64"])
    assert (client["MemorySize"], client["Timeout"], client["Role"]) == (512, 60, setup["role_arn"])
    assert client["Tags"]["fedkeeper-function"] == "fl_client"
    assert client["Tags"]["fedkeeper-digest"].startswith(rows["fl_client"]["digest"])
    assert set(client["Environment"]["Variables"]) == {"FK_MONGO_URL", "FK_MONGO_DB"}
    assert client["Environment"]["Variables"]["FK_MONGO_URL"].startswith("mongodb://127.0.0.1:")

    # nodeinfo needs no store, so its spec is the same on every run: the second deploy must change nothing.
    smoke_rows = json_out(fedkeeper(setup, "deploy", "--scenario", "smoke", "--json"))["deployed"]
    assert [(r["name"], r["action"]) for r in smoke_rows] == [("fk-awscli-nodeinfo", "created")]
    sha = lam.get_function(FunctionName="fk-awscli-nodeinfo")["Configuration"]["CodeSha256"]
    again = json_out(fedkeeper(setup, "deploy", "--scenario", "smoke", "--json"))["deployed"]
    assert [(r["name"], r["action"]) for r in again] == [("fk-awscli-nodeinfo", "unchanged")]
    assert lam.get_function(FunctionName="fk-awscli-nodeinfo")["Configuration"]["CodeSha256"] == sha

    # An orphan (a deploy that crashed after creating it) and a function that is not ours.
    zip_bytes = (setup["dir"] / "x.zip")
    import zipfile

    with zipfile.ZipFile(zip_bytes, "w") as zf:
        zf.writestr("lambda_function.py", "def handler(e, c):\n    return e\n")
    for name, tags in (("fk-awscli-fl-client-9", {"fedkeeper-experiment": EXPERIMENT,
                                                  "fedkeeper-function": "fl_client"}),
                       ("fk-other-nodeinfo", {"fedkeeper-experiment": "other"})):
        lam.create_function(FunctionName=name, Runtime="python3.11", Role=setup["role_arn"],
                            Handler="lambda_function.handler", Code={"ZipFile": zip_bytes.read_bytes()}, Tags=tags)

    dry = json_out(fedkeeper(setup, "remove", "--dry-run", "--json"))
    assert sorted(r["name"] for r in dry["remove"]) == [
        "fk-awscli-fl-client", "fk-awscli-fl-client-9", "fk-awscli-fl-server-aggregator", "fk-awscli-nodeinfo"]
    assert len(functions_of(lam)) == 4

    removed = json_out(fedkeeper(setup, "remove", "--json"))["removed"]
    assert sorted((r["name"], r["removed"]) for r in removed) == [
        ("fk-awscli-fl-client", True), ("fk-awscli-fl-client-9", True), ("fk-awscli-fl-server-aggregator", True),
        ("fk-awscli-nodeinfo", True)]
    assert functions_of(lam) == {}
    assert [f["FunctionName"] for f in lam.list_functions()["Functions"]] == ["fk-other-nodeinfo"]
    assert json_out(fedkeeper(setup, "remove", "--json"))["removed"] == []


def test_smoke_through_the_cli(setup: dict[str, Any]) -> None:
    # What nodeinfo would return on Lambda, queued as moto's answer to the next invoke (moto runs no code).
    answer = {"hostname": "169.254.10.5", "python": "3.11.9", "cpu_count": 2, "memory_limit_mb": 256.0,
              "environment": "aws"}
    requests.post(f"{setup['url']}/moto-api/static/lambda-simple/response",
                  json={"results": [json.dumps(answer)], "region": REGION}, timeout=10).raise_for_status()
    proc = fedkeeper(setup, "smoke", "--json")
    assert_no_secret(proc)
    rows = json_out(proc)
    assert len(rows) == 1
    row = rows[0]
    assert (row["cluster"], row["platform"], row["name"]) == ("lambda-moto", "AWS Lambda", "fk-awscli-nodeinfo")
    assert (row["state"], row["error"], row["removed"]) == ("succeeded", None, True)
    assert (row["hostname"], row["python"], row["cpu_count"], row["memory_limit_mb"]) == \
        ("169.254.10.5", "3.11.9", 2, 256.0)
    # the activation id is Lambda's request id from the response (moto's are 52 characters), not our uuid
    assert row["activation_id"] and len(row["activation_id"]) == 52
    assert functions_of(setup["lambda"]) == {}  # smoke removes what it deployed

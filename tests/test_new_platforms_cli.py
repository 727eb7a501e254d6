"""Each platform added through the registry (OpenFaaS, Knative, Azure Functions, Ray) through the command line:
`validate`, `deploy`, `status`, `smoke`, `start` (2 rounds), `report`, `remove`, then `status` again, and a deploy
with credentials the platform refuses — exit codes as the README's table says, and no secret of the config in any
output or in Logs/.

The platforms are the provider contract suite's harnesses (tests/contract/platforms.py): the same fakes, the same
canary credentials. The cluster entry of the config is the harness's own cluster config, with its secret fields
(the `repr=False` ones) moved to ${ENV} references, as a user writes them. The clients run on the platform's
cluster and on a local one, the aggregator on the platform, so the report has a per-platform breakdown to show.

Where the platform lives: the OpenFaaS and Knative fakes are servers whose "containers" are processes, so the CLI
runs as a separate process, as a user runs it; the Azure fake runs the deployed app in the test process, and the
Ray harness's instance belongs to the test process (`ray.init`, joined by the provider), so the CLI runs in it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import pymongo
import pytest
import yaml
from cli_support import fedkeeper
from contract.platforms import HARNESSES, Harness, Outcome

from fedkeeper.providers import registry
from fedkeeper.results.report import platform_kind

pytestmark = pytest.mark.integration

CLUSTER = "plat"
#: the platforms whose fake runs the deployed functions in this process (or whose instance is this process's)
IN_PROCESS = {"azure", "ray"}
PLATFORMS = ["openfaas", "knative", "azure", "ray"]
#: over ~10 s on a quiet 2-core machine (a CLI process per command; Ray's start)
SLOW = {"openfaas", "knative", "ray"}


class Ran(NamedTuple):
    args: tuple[str, ...]
    code: int
    stdout: str
    stderr: str


def _secret_env(kind: str, cluster_config: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """The cluster config as YAML data, its secret fields replaced by ${ENV} references, and that environment."""
    data = cluster_config.model_dump(mode="json", exclude_unset=True)
    env: dict[str, str] = {}
    for name, field in type(cluster_config).model_fields.items():
        if field.repr is False and data.get(name):
            var = f"FK_T_{kind}_{name}".upper()
            env[var] = str(data[name])
            data[name] = f"${{{var}}}"
    return data, env


def _config(kind: str, cluster: dict[str, Any], store_url: str, db: str) -> str:
    limits = {"memory": 512, "timeout": 60}
    data = {
        "experiment": f"np{kind}",
        "providers": {kind: {CLUSTER: cluster}, "local": {"laptop": {"concurrency": 1}}},
        "mongo_config": {"url": store_url, "db": db},
        "functions": {"fl_client": {kind: limits, "local": limits},
                      "fl_server_aggregator": {kind: {"memory": 1024, "timeout": 60}}},
        "scenarios": {"federated_learning": {
            "rounds": 2, "seed": 5,
            "clients_info": {"total_num_clients": 3, "num_clients_per_round": 3,
                             "placement": {CLUSTER: 2, "laptop": 1}},
            "server": {"cluster": CLUSTER},
            "data_sampling": {"model": "logreg", "input_size": 64, "output_size": 10, "partition": "iid"},
            "model_params": {"optim": "sgd", "lr": 0.05, "batch_size": 16, "local_epochs": 1},
            "training_test_data": {"dataset": "digits"},
            "resilience": {"backoff_base_s": 0.01, "backoff_max_s": 0.05, "poll_max_s": 0.05},
        }},
    }
    return yaml.safe_dump(data, sort_keys=False)


def _runner(kind: str, folder: Path, run_cli: Any, log: list[Ran]) -> Callable[..., Ran]:
    """`fedkeeper ARGS -c config.yaml` in `folder`: in this process or as a separate one (see the docstring)."""
    def run(*args: str, env: dict[str, str]) -> Ran:
        argv = (*args, "-c", str(folder / "config.yaml"))
        if kind in IN_PROCESS:
            result = run_cli(*argv, env=env, cwd=folder)
        else:
            result = fedkeeper(folder, *argv, env=env, timeout=180)
        ran = Ran(argv, result.code, result.stdout, result.stderr)
        log.append(ran)
        return ran
    return run


def _ok(ran: Ran) -> Any:
    assert ran.code == 0, f"{ran.args}: exit {ran.code}\nstdout:\n{ran.stdout}\nstderr:\n{ran.stderr}"
    assert "Traceback" not in ran.stderr, ran.stderr
    return json.loads(ran.stdout) if "--json" in ran.args else ran.stdout


def _functions(status: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(row["cluster"], row["function"]): row for row in status["functions"]}


@pytest.mark.parametrize("kind", [pytest.param(k, marks=pytest.mark.slow) if k in SLOW else k for k in PLATFORMS])
def test_new_platform_through_the_cli(kind: str, nx_server: str, tmp_path: Path, run_cli: Any) -> None:
    if kind == "ray":
        pytest.importorskip("ray")
    assert kind in registry.kinds()
    db = f"t_{uuid.uuid4().hex[:12]}"
    log: list[Ran] = []
    harness: Harness
    with HARNESSES[kind](tmp_path / "platform") as harness:
        cluster, env = _secret_env(kind, harness.config())
        assert bool(env) == bool(harness.secrets), env  # the credentials go through ${ENV} (Ray has none)
        if kind == "ray":  # the harness's instance is this process's: `local` joins it (`auto` may span machines,
            cluster["address"] = "local"  # which the store on 127.0.0.1 would not suit)
        (tmp_path / "config.yaml").write_text(_config(kind, cluster, nx_server, db), encoding="utf-8")
        cli = _runner(kind, tmp_path, run_cli, log)
        try:
            validated = _ok(cli("validate", "--json", env=env))
            assert CLUSTER in json.dumps(validated)

            deployed = _ok(cli("deploy", "--json", env=env))["deployed"]
            assert {(r["cluster"], r["function"]) for r in deployed} >= {
                (CLUSTER, "fl_client"), (CLUSTER, "fl_server_aggregator"), ("laptop", "fl_client")}, deployed

            live = _functions(_ok(cli("status", "--json", env=env)))
            for key in ((CLUSTER, "fl_client"), (CLUSTER, "fl_server_aggregator")):
                assert live[key]["platform"] == kind and live[key]["state"] == "deployed", live[key]
                assert live[key]["sync"] == "current", live[key]

            smoke = _ok(cli("smoke", "--json", env=env))
            assert {r["cluster"]: (r["state"], r["removed"]) for r in smoke} == {
                CLUSTER: ("succeeded", True), "laptop": ("succeeded", True)}, smoke

            summary = _ok(cli("start", "--json", env=env))
            assert summary["status"] == "completed" and summary["rounds_completed"] == 2, summary
            assert summary["clusters"] == {CLUSTER: kind, "laptop": "local"}
            counts = summary["activations"]  # throttled calls are retried (an OpenFaaS replica takes one at a time)
            assert counts["succeeded"] == 1 + 2 * (3 + 1), counts  # the initial model, then 3 clients + 1 per round
            assert not any(counts[k] for k in ("failed", "timed_out", "lost", "abandoned")), counts

            report = _ok(cli("report", summary["run_id"], "--json", env=env))
            by_platform = {platform_kind(row["platform"]): row for row in report["by_platform"]}
            assert set(by_platform) == {kind, "local"}, report["by_platform"]
            assert by_platform[kind]["succeeded"] == 1 + 2 * (2 + 1), by_platform[kind]
            table = _ok(cli("report", summary["run_id"], env=env))
            breakdown = table.split("activations per platform", 1)[-1].split("activations per function", 1)[0]
            assert {line.split()[0] for line in breakdown.splitlines()[3:] if line.strip()} == {kind, "local"}, table

            removed = _ok(cli("remove", "--json", env=env))["removed"]
            assert {(r["cluster"], r["removed"]) for r in removed} == {(CLUSTER, True), ("laptop", True)}, removed
            after = _ok(cli("status", "--json", env=env))
            assert after["functions"] and {row["state"] for row in after["functions"]} == {"missing"}, after

            if Outcome.AUTH not in harness.cannot:
                with harness.rejected_credentials() as refused:
                    _, bad_env = _secret_env(kind, refused)
                denied = cli("deploy", env=bad_env)
                assert denied.code == 1, denied
                assert denied.stderr.lstrip().startswith("error:") and "Traceback" not in denied.stderr, denied
                assert CLUSTER in denied.stderr, denied.stderr
        finally:
            with pymongo.MongoClient(nx_server, serverSelectionTimeoutMS=5000) as client:
                client.drop_database(db)

        secrets = {*harness.secrets, *env.values()}
        for ran in log:
            for secret in secrets:
                assert secret not in ran.stdout + ran.stderr, (ran.args, secret)
        for file in (tmp_path / "Logs").rglob("*"):
            if file.is_file():
                text = file.read_text(encoding="utf-8", errors="replace")
                assert not [s for s in secrets if s in text], file

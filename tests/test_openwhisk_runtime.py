"""The packaged OpenWhisk zips in an action container, driven with the bodies OpenWhisk's invoker sends.

Each function is deployed through the provider to the fake controller (tests/fake_openwhisk.py), which stores
what a real one would: the zip base64 in `exec.code`, the store URL and database as bound parameters, the
`final` annotation. The container (tests/ow_action_proxy.py: the action-loop proxy and Python launcher's
protocol) is then initialised and run exactly as the invoker does (`ContainerProxy`): `/init` with the code
and the action's `__OW_*` environment, `/run` with `value` = the controller's merge of the bound parameters and
the payload, and the activation's metadata beside it. End to end against the embedded store: nodeinfo, the
aggregator's init, two clients, the aggregation, a function error; and the `final` rule that keeps a payload
from pointing a function at another database.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymongo
import pytest
import requests

from fake_openwhisk import PARAMETERS_NOT_ALLOWED, FakeOpenWhisk, merge_parameters
from fedkeeper import packaging
from fedkeeper.providers.base import LABEL_DIGEST, LABEL_EXPERIMENT, LABEL_FUNCTION, DeploySpec, InvocationFailed
from fedkeeper.providers.base import spec_digest
from fedkeeper.providers.openwhisk.config import OpenWhiskCluster
from fedkeeper.providers.openwhisk.provider import OpenWhiskProvider
from ow_action_proxy import ActionContainer
import fl_payloads as fl

EXPERIMENT = "owrt"


@pytest.fixture
def store(nx_server: str) -> Iterator[dict[str, str]]:
    db = f"owrt_{uuid.uuid4().hex[:10]}"
    yield {"FK_MONGO_URL": nx_server, "FK_MONGO_DB": db}
    client: pymongo.MongoClient = pymongo.MongoClient(nx_server, serverSelectionTimeoutMS=5000)
    client.drop_database(db)
    client.close()


@pytest.fixture
def provider(fake_openwhisk: FakeOpenWhisk, tmp_path: Path) -> Iterator[OpenWhiskProvider]:
    cluster = OpenWhiskCluster(api_host=fake_openwhisk.url, auth=fake_openwhisk.auth)
    with OpenWhiskProvider("ow", cluster, workdir=tmp_path / "orchestrator") as p:
        yield p


def deploy(provider: OpenWhiskProvider, function: str, env: dict[str, str]) -> str:
    """Deploy as the fabric does (stock limits: 256 MB, 60 s); returns the action name."""
    artifact = packaging.build(function, "openwhisk")
    digest = spec_digest(artifact.sha256, 256, 60.0, 1, env, {})
    name = f"fk-{EXPERIMENT}-{function.replace('_', '-')}"
    provider.deploy(DeploySpec(name=name, function=function, artifact=artifact.data, digest=digest, memory_mb=256,
                               timeout_s=60.0, env=env, labels={LABEL_EXPERIMENT: EXPERIMENT,
                                                                LABEL_FUNCTION: function, LABEL_DIGEST: digest}))
    return name


class Invoker:
    """What the invoker does with one action: one container, `/init` once, then `/run` per activation."""

    def __init__(self, fake: FakeOpenWhisk, name: str, workdir: Path) -> None:
        self.fake = fake
        self.action = fake.actions[name]
        self.container = ActionContainer(workdir, base_env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
        ns_path = f"/{self.action.namespace}/{self.action.name}"
        init = {"value": {"name": self.action.name, "main": self.action.exec.get("main", "main"),
                          "code": self.action.exec["code"], "binary": self.action.exec.get("binary", False),
                          "env": {"__OW_API_HOST": fake.url, "__OW_NAMESPACE": self.action.namespace,
                                  "__OW_ACTION_NAME": ns_path, "__OW_ACTION_VERSION": self.action.version}}}
        answer = requests.post(f"{self.container.url}/init", json=init, timeout=120)
        assert answer.status_code == 200 and answer.json() == {"ok": True}, (answer.text, self.container.log())
        self.path = ns_path

    def run(self, payload: dict[str, Any]) -> dict[str, Any]:
        activation_id = uuid.uuid4().hex
        body = {"value": merge_parameters(self.action, payload), "namespace": self.action.namespace,
                "action_name": self.path, "action_version": self.action.version, "activation_id": activation_id,
                "transaction_id": uuid.uuid4().hex,
                "deadline": str(int(time.time() * 1000) + self.action.limits["timeout"])}
        answer = requests.post(f"{self.container.url}/run", json=body, timeout=300)
        assert answer.status_code == 200, (answer.text, self.container.log())
        result = answer.json()
        assert isinstance(result, dict)
        return result

    def close(self) -> None:
        self.container.stop()


@pytest.mark.integration
def test_the_functions_run_in_an_action_container(fake_openwhisk: FakeOpenWhisk, provider: OpenWhiskProvider,
                                                  store: dict[str, str], nx_server: str, tmp_path: Path) -> None:
    names = {fn: deploy(provider, fn, store) for fn in ("nodeinfo", "fl_server_aggregator", "fl_client")}
    action = fake_openwhisk.actions[names["fl_client"]]
    assert action.annotation("final") is True and action.annotation("provide-api-key") is False
    assert {p["key"] for p in action.parameters} >= {"FK_MONGO_URL", "FK_MONGO_DB"}
    invokers = {fn: Invoker(fake_openwhisk, name, tmp_path / fn) for fn, name in names.items()}
    try:
        info = invokers["nodeinfo"].run({"probe": 1})
        assert info["environment"] == "openwhisk" and "FK_MONGO_URL" not in info, info
        init = invokers["fl_server_aggregator"].run(fl.init("ow"))
        assert "error" not in init, (init, invokers["fl_server_aggregator"].container.log())
        clients = []
        for client_id in (1, 2):
            sent = fl.client("ow", 1, client_id)
            ack = invokers["fl_client"].run(sent)
            assert ack.get("ok") is True, (ack, invokers["fl_client"].container.log())
            clients.append((sent, ack))
        aggregated = invokers["fl_server_aggregator"].run(fl.aggregate("ow", 1, clients))
        assert aggregated.get("num_updates") == 2, aggregated
        failed = invokers["fl_server_aggregator"].run({"mode": "train", "run_id": "ow"})
        assert failed["error"].startswith("ValueError: ") and "init or aggregate" in failed["error"], failed
        assert store["FK_MONGO_URL"] not in failed["error"]
    finally:
        for invoker in invokers.values():
            invoker.close()
    client: pymongo.MongoClient = pymongo.MongoClient(nx_server, serverSelectionTimeoutMS=5000)
    try:
        db = client[store["FK_MONGO_DB"]]
        assert {doc["_id"] for doc in db.models.find({}, {"_id": 1})} == {"ow:0", "ow:1"}
    finally:
        client.close()


@pytest.mark.integration
def test_a_second_init_and_a_bad_code_are_refused_like_the_proxy(fake_openwhisk: FakeOpenWhisk,
                                                                 provider: OpenWhiskProvider,
                                                                 store: dict[str, str], tmp_path: Path) -> None:
    invoker = Invoker(fake_openwhisk, deploy(provider, "nodeinfo", store), tmp_path / "c1")
    try:
        again = requests.post(f"{invoker.container.url}/init", json={"value": {"code": "x"}}, timeout=10)
        assert again.status_code == 403 and "more than once" in again.json()["error"]
    finally:
        invoker.close()
    with ActionContainer(tmp_path / "c2") as container:
        bad = requests.post(f"{container.url}/init", json={"value": {"code": "%%%", "binary": True}}, timeout=10)
        assert bad.status_code == 400 and "cannot decode" in bad.json()["error"]


def test_final_keeps_a_payload_from_overriding_the_bound_store(fake_openwhisk: FakeOpenWhisk,
                                                               provider: OpenWhiskProvider,
                                                               store: dict[str, str]) -> None:
    """Without `final`, OpenWhisk merges the payload over the bound parameters; FedKeeper's actions are final,
    and the controller refuses a payload that names a bound parameter (400, `Actions.scala`, `activate`)."""
    name = deploy(provider, "nodeinfo", store)
    with pytest.raises(InvocationFailed) as err:
        provider.invoke(name, {"FK_MONGO_DB": "someone-elses-db"})
    assert "400" in str(err.value) and PARAMETERS_NOT_ALLOWED in str(err.value)
    assert provider.invoke(name, {"probe": 1}).activation_id  # a payload without bound names goes through

    # the same action without `final` (as a hand-made action would be): the payload wins the merge
    action = fake_openwhisk.actions[name]
    plain = requests.put(f"{fake_openwhisk.url}/api/v1/namespaces/_/actions/plain?overwrite=true", timeout=30,
                         auth=tuple(fake_openwhisk.auth.split(":", 1)),
                         json={"exec": action.exec, "parameters": action.parameters,
                               "annotations": [{"key": LABEL_EXPERIMENT, "value": EXPERIMENT}]})
    assert plain.status_code == 200, plain.text
    merged = merge_parameters(fake_openwhisk.actions["plain"], {"FK_MONGO_DB": "someone-elses-db"})
    assert merged["FK_MONGO_DB"] == "someone-elses-db" and merged["FK_MONGO_URL"] == store["FK_MONGO_URL"]
    assert provider.invoke("plain", {"FK_MONGO_DB": "someone-elses-db"}).activation_id

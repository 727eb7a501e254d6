"""One experiment over local workers, an OpenFaaS gateway and a Knative installation (their loopback fakes, which
run the images the build recipe makes of the packaged functions), plus Ray when that platform is registered:
the sample task trains to the usual accuracy and the report breaks the activations down per platform."""

from __future__ import annotations

import uuid
from pathlib import Path

import pymongo
import pytest
import yaml
from round_support import start_in_process

from fedkeeper.providers import registry
from fedkeeper.results import pricing
from fedkeeper.results import report as report_data

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _config(nx_server: str, openfaas: object, knative: object, with_ray: bool) -> str:
    clusters = {
        "local": {"laptop": {"concurrency": 2}, "agg": {"concurrency": 1}},
        "openfaas": {"faas": {"gateway": openfaas.url, "password": openfaas.password,  # type: ignore[attr-defined]
                              "image": openfaas.image_template, "invocation": "sync"}},  # type: ignore[attr-defined]
        "knative": {"kn": {"api_server": knative.api_url, "token": knative.token,  # type: ignore[attr-defined]
                           "ingress": knative.ingress_url, "namespace": "fl",  # type: ignore[attr-defined]
                           "image": knative.image_template}},  # type: ignore[attr-defined]
    }
    placement = {"laptop": 2, "faas": 2, "kn": 2}
    functions = {"fl_client": {"local": {"memory": 512, "timeout": 60},
                               "openfaas": {"memory": 512, "timeout": 60, "concurrency": 4},
                               "knative": {"memory": 512, "timeout": 60, "concurrency": 4}},
                 "fl_server_aggregator": {"local": {"memory": 1024, "timeout": 60}}}
    if with_ray:
        clusters["ray"] = {"ray-local": {"address": "local"}}
        placement["ray-local"] = 2
        functions["fl_client"]["ray"] = {"memory": 512, "timeout": 60}
    data = {
        "experiment": "mix",
        "providers": clusters,
        "mongo_config": {"url": nx_server, "db": f"t_{uuid.uuid4().hex[:12]}"},
        "functions": functions,
        "scenarios": {"federated_learning": {
            "rounds": 5, "seed": 11,
            "clients_info": {"total_num_clients": sum(placement.values()),
                             "num_clients_per_round": sum(placement.values()), "placement": placement},
            "server": {"cluster": "agg"},
            "data_sampling": {"model": "logreg", "input_size": 64, "output_size": 10, "partition": "iid"},
            "model_params": {"optim": "adam", "lr": 0.01, "batch_size": 10, "local_epochs": 5},
            "training_test_data": {"dataset": "digits"},
            "resilience": {"backoff_base_s": 0.01, "backoff_max_s": 0.05, "poll_max_s": 0.05},
        }},
    }
    return yaml.safe_dump(data, sort_keys=False)


def test_mixed_local_openfaas_knative_run_trains_with_a_per_platform_breakdown(
        nx_server: str, tmp_path: Path) -> None:
    from fake_knative import FakeKnative
    from fake_openfaas import FakeOpenFaaS

    with_ray = "ray" in registry.kinds()
    client: pymongo.MongoClient = pymongo.MongoClient(nx_server, serverSelectionTimeoutMS=5000)
    with FakeOpenFaaS(tmp_path / "of") as openfaas, FakeKnative(tmp_path / "kn") as knative:
        text = _config(nx_server, openfaas, knative, with_ray)
        try:
            run = start_in_process(tmp_path, text, client)
        finally:
            client.drop_database(yaml.safe_load(text)["mongo_config"]["db"])
            client.close()
        cold_starts = knative.cold_starts
        of_calls = [r for r in openfaas.invocation_requests() if r.path.startswith("/function/")]
        kn_secrets = dict(knative.secrets)
        of_bodies = [r.body for r in openfaas.requests if r.path == "/system/functions"]

    summary = run.summary
    assert summary["status"] == "completed" and summary["rounds_completed"] == 5
    assert summary["final"]["accuracy"] >= 0.9, summary["final"]  # logreg on digits, the sample's optimiser
    assert len(of_calls) >= 5 * 2 and cold_starts >= 1  # the clients really ran behind each fake
    assert kn_secrets and all(b"mongodb://" not in body for body in of_bodies)  # the store URL only in secrets

    (report,) = report_data.load_reports(tmp_path / "Logs", [run.run_id], pricing.price_table(None))
    by_platform = {row["platform"]: row for row in report["by_platform"]}
    kinds = ["local", "openfaas", "knative"] + (["ray"] if with_ray else [])
    names = {report_data.platform_kind(p): p for p in by_platform}
    assert set(kinds) <= set(names), by_platform.keys()
    clients = run.activations()
    for kind, cluster in (("openfaas", "faas"), ("knative", "kn")):
        row = by_platform[names[kind]]
        ran = [a for a in clients if a["cluster"] == cluster]
        assert row["activations"] == len(ran) >= 10 and row["succeeded"] >= 10, (row, [(a["state"], a.get("error")) for a in ran])
    print({names[k]: {key: by_platform[names[k]].get(key) for key in ("activations", "succeeded", "cold_starts",
                                                                     "duration_p50_s", "duration_p95_s")}
           for k in kinds}, summary["final"])

"""Configs written for the original FedKeeper prototype (ansjin/fl_faas_fabric) still validate, with warnings
that say what each legacy key became — and no warning or message quotes a key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedkeeper import config as cfg
from fedkeeper.config import ConfigError, load, load_text

HERE = Path(__file__).parent
PROTOTYPE = HERE / "configs" / "legacy" / "prototype.yaml"
OW_KEY = "23bc46b1-71f6-4ed5-8c54-816aa4f8c502:FAKEowKEYzO3xZCLrMN6v2BKK1dXYFpXlPkccOFqm12CdAsMgRU4VrNZ9lyGVCGuMDGIwP"
PLANTED = ["FAKEowKEY", "FAKEapigwTOKEN42", "FAKEpemBODY", "FAKEpemLINE2", "FAKEprivkeyid", "FAKEmongoPASS99"]


@pytest.fixture(scope="module")
def prototype() -> cfg.Config:
    return load(PROTOTYPE, env={})


def warning_map(config: cfg.Config) -> dict[str, str]:
    return {w.path: w.message for w in config.warnings}


def test_prototype_config_validates_with_warnings(prototype: cfg.Config) -> None:
    warnings = warning_map(prototype)
    expected = {
        "version": "no longer used",
        "name": "read as experiment: test-mnist-nn-100-clients-adam",
        "providers.openwhisk.invasic_cluster.base_url": "contains an OpenWhisk key; keys do not belong in URLs",
        "providers.openwhisk.invasic_cluster.auth.ow_auth": "read as providers.openwhisk.invasic_cluster.auth",
        "providers.openwhisk.invasic_cluster.auth.ow_api_host": "read as providers.openwhisk.invasic_cluster.api_host",
        "providers.openwhisk.invasic_cluster.auth.ow_apigw_access_token": "no longer used and ignored",
        "providers.openwhisk.invasic_cluster.prometheus_config": "no longer used and ignored",
        "providers.openwhisk.invasic_cluster.configurations": "no longer used and ignored",
        "providers.openwhisk.invasic_cluster": "verify_tls",
        "providers.google.gcf_cluster.auth": "read as service_account_info",
        "providers.google.gcf_cluster.base_url": "read as region: us-central1",
        "scenarios.federated_learning.server_config.server_manager_functions": "no longer used and ignored",
        "scenarios.federated_learning.server_config.server_cluster_name": "server.cluster",
        "scenarios.federated_learning.clients_info.client_functions": "no longer used and ignored",
        "scenarios.federated_learning.clients_info.ow_clients_count":
            "read as placement: {invasic_cluster: 1, gcf_cluster: 1}",
        "scenarios.federated_learning.data_sampling.batch_size": "moved to scenarios.federated_learning.model_params",
        "scenarios.federated_learning.mongo_config": "moved to the top level",
        "scenarios.federated_learning.functions": "moved to the top-level functions section",
        "scenarios.federated_learning.training_test_data.train_images_url": "renamed to train_images",
        "mongo_config.collection": "no longer used and ignored",
        "functions.fl_client.openwhisk.func_path": "no longer used and ignored",
        "functions.fl_client.openwhisk.params_file_path": "no longer used and ignored",
        "functions.fl_client.openfaas": "the prototype's OpenFaaS function",
        "functions.fl_client.google.memory": "read as 2048 (MB)",
        "functions.fl_client.google.timeout": "read as 300 (s)",
        "functions.fl_server_init": "no longer used and ignored",
        "functions.fl_invoker_weights_update": "no longer used and ignored",
        "functions.fl_server_aggregator.openwhisk.blocking_cli": "no longer used and ignored",
        "scenarios.federated_learning.functions.fl_client.openwhisk.concurrency": "100 read as 1",
        "scenarios.test": "fedkeeper smoke",
    }
    for path, text in expected.items():
        assert path in warnings, path
        assert text in warnings[path], (path, warnings[path])


def test_no_warning_quotes_a_key(prototype: cfg.Config) -> None:
    text = "\n".join(str(w) for w in prototype.warnings)
    for canary in PLANTED:
        assert canary not in text


def test_prototype_keys_mean_what_they_meant(prototype: cfg.Config) -> None:
    ow = prototype.providers.openwhisk["invasic_cluster"]
    assert ow.api_host == "https://10.0.0.7:31001"
    assert ow.namespace == "guest"
    assert ow.auth == OW_KEY
    assert ow.verify_tls is True
    gcf = prototype.providers.google["gcf_cluster"]
    assert (gcf.project_id, gcf.region) == ("fedkeeper-proto", "us-central1")
    assert gcf.service_account_info is not None
    assert gcf.service_account_info["client_email"].startswith("fedkeeper@")
    assert gcf.service_account_info["token_uri"] == "https://oauth2.googleapis.com/token"
    assert prototype.mongo_config.url == "mongodb://fl:FAKEmongoPASS99@10.0.0.8:27017"
    assert prototype.mongo_config.db == "flweights"
    fl = prototype.fl
    assert cfg.placement(prototype) == {"invasic_cluster": 1, "gcf_cluster": 1}
    assert cfg.server_cluster(prototype) == "invasic_cluster"
    assert (fl.model_params.lr, fl.model_params.local_epochs, fl.model_params.batch_size) == (0.001, 5, 10)
    assert fl.training_test_data.train_images.endswith("train-images-idx3-ubyte.gz")
    fn = prototype.functions["fl_client"]
    # the prototype's concurrency 100 is read as 1: OpenWhisk's Python runtime runs one activation per container
    assert (fn.openwhisk.memory, fn.openwhisk.timeout, fn.openwhisk.concurrency) == (2048, 300000, 1)
    assert fn.openwhisk.docker_image == "kkyfury/tensorflow"
    assert (fn.google.memory, fn.google.timeout) == (2048, 300)
    assert cfg.function_limits(prototype, "fl_client", "openwhisk") == (2048, 300.0, 1)
    assert set(prototype.functions) == {"fl_client", "fl_server_aggregator", "nodeinfo"}


def test_moved_credentials_are_secrets_and_never_in_the_redacted_config(prototype: cfg.Config) -> None:
    secrets = "\n".join(prototype.secrets())
    for canary in PLANTED:
        assert canary in secrets, canary
    dumped = json.dumps(cfg.redacted(prototype))
    for canary in PLANTED:
        assert canary not in dumped


def test_cli_validates_the_prototype_and_prints_warnings_without_keys() -> None:
    proc = subprocess.run([sys.executable, "-m", "fedkeeper.cli", "validate", "-c", str(PROTOTYPE)],
                          capture_output=True, text=True, timeout=60, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr
    assert "is valid" in proc.stdout
    assert "warning providers.openwhisk.invasic_cluster.base_url: contains an OpenWhisk key" in proc.stderr
    for canary in PLANTED:
        assert canary not in proc.stdout + proc.stderr


def test_top_level_auth_block_applies_to_openwhisk_clusters() -> None:
    config = load_text("""
experiment: unit
auth: {ow_auth: "u-1:k-LEGACYtop1", ow_api_host: "127.0.0.1:3233"}
providers:
  openwhisk:
    ow: {}
scenarios:
  federated_learning:
    clients_info: {total_num_clients: 2, num_clients_per_round: 1}
""", env={})
    ow = config.providers.openwhisk["ow"]
    assert (ow.api_host, ow.auth) == ("https://127.0.0.1:3233", "u-1:k-LEGACYtop1")
    assert "k-LEGACYtop1" in config.secrets()


def test_unfilled_placeholders_of_the_prototype_sample_are_errors_without_echo() -> None:
    """The prototype's own config-sample.yaml holds placeholders such as <ADD OW_AUTH here>."""
    text = """
name: test
providers:
  openwhisk:
    invasic_cluster:
      base_url: "https://<ADD OW_AUTH here>@<ADD_IP_HERE>:31001/api/v1/namespaces/guest/actions/"
      auth: {ow_auth: "<ADD OW_AUTH here>", ow_api_host: "<ADD API HOST of OW>"}
scenarios:
  federated_learning:
    clients_info: {total_num_clients: 2, num_clients_per_round: 2, ow_clients_count: 2}
    mongo_config: {url: "<ADD_MONGO_IP_HERE>:27017", db: flweights}
"""
    with pytest.raises(ConfigError) as info:
        load_text(text, env={})
    issues = {i.path: i.message for i in info.value.issues}
    assert set(issues) == {"providers.openwhisk.invasic_cluster.api_host", "mongo_config.url"}
    assert "ADD OW_AUTH" not in str(info.value)


def test_legacy_example_validates_with_dummy_env() -> None:
    env = {"OW_AUTH": "uuid-1:DUMMYkey1", "OW_HOST": "10.0.0.7:31001", "MONGO_URL": "mongodb://fl:DUMMYpw@10.0.0.8:27017",
           "GCP_SA_CLIENT_EMAIL": "fk@my-project.iam.gserviceaccount.com",
           "GCP_SA_PRIVATE_KEY": "-----BEGIN PRIVATE KEY-----\nDUMMYpem\n-----END PRIVATE KEY-----\n"}
    config = load(HERE.parent / "examples" / "legacy-prototype.yaml", env=env)
    assert config.providers.openwhisk["invasic_cluster"].auth == "uuid-1:DUMMYkey1"
    assert cfg.placement(config) == {"invasic_cluster": 5, "gcf_cluster": 5}
    assert not any("DUMMY" in str(w) for w in config.warnings)

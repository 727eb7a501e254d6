"""What `validate` accepts, `start` can run: every way a run fails for a config reason is a config error first.

A property test feeds the loader configs with arbitrary numbers where `start` reads numbers, and checks that a
config it accepts passes what the run does with them: the functions' own payload checks (the real handlers, up
to their first store access), the partition of the training data (every client gets samples), the client
selection, the runs document (BSON) and Logs/ (strict JSON), and every wait (Python's timed waits overflow past
about 9.2e9 s). The other tests here cover what needs files: local data files, devices and FIFOs, and a config
written for `smoke` alone.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import threading
from pathlib import Path
from typing import Any

import bson
import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fedkeeper import config as cfg
from fedkeeper.config import ConfigError, load_text
from fedkeeper.functions.fl_client import handler as client_handler
from fedkeeper.functions.fl_server_aggregator import handler as aggregator_handler
from fedkeeper.runtime import data as rdata
from fedkeeper.scenarios.federated_learning import aggregator_payload, client_payload
from fedkeeper.tracker import select_clients

DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class _Reached(Exception):
    """Raised by the stand-in database: the handler accepted its payload and went for the store."""


class _NoStore:
    def __getitem__(self, name: str) -> Any:
        raise _Reached(name)


def _reaches_the_store(handle: Any, payload: dict[str, Any]) -> None:
    """The real handler accepts the payload: it gets as far as its first store access."""
    with pytest.raises(_Reached):
        handle(payload, db=_NoStore())


# ------------------------------------------------------------------------------------------ the property

ints = st.one_of(st.integers(-3, 3000), st.integers(-(2**70), 2**70))
floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                   st.floats(min_value=-10, max_value=1e4), st.sampled_from([0.0, 1e-300, 1e10, 1e300]))
NUMBERS = {  # key path under scenarios.federated_learning (or the top) → values to try
    ("rounds",): ints, ("seed",): ints,
    ("clients_info", "total_num_clients"): st.integers(-1, 3000),
    ("clients_info", "num_clients_per_round"): st.integers(-1, 3000),
    ("data_sampling", "partition"): st.sampled_from(["iid", "shards", "dirichlet"]),
    ("data_sampling", "shards_per_client"): st.one_of(st.integers(-1, 2000), ints),
    ("data_sampling", "alpha"): floats, ("data_sampling", "hidden_size"): ints,
    ("model_params", "lr"): floats, ("model_params", "mu"): floats, ("model_params", "l2"): floats,
    ("model_params", "batch_size"): ints, ("model_params", "local_epochs"): ints,
    ("training_test_data", "max_bytes"): ints,
    ("resilience", "backoff_base_s"): floats, ("resilience", "backoff_max_s"): floats,
    ("resilience", "round_deadline_s"): floats, ("resilience", "invocation_timeout_s"): floats,
    ("resilience", "timeout_slack_s"): floats, ("resilience", "poll_initial_s"): floats,
    ("resilience", "poll_max_s"): floats, ("resilience", "overselect"): floats,
    ("resilience", "min_fraction"): floats, ("resilience", "max_attempts"): ints,
    ("target_accuracy",): floats,
}
TOP = {("functions", "fl_client", "local", "timeout"): floats, ("functions", "fl_client", "local", "memory"): ints,
       ("mongo_config", "keep_models"): ints, ("mongo_config", "server_selection_timeout_ms"): ints,
       ("providers", "local", "laptop", "keep_warm_s"): floats, ("providers", "local", "laptop", "cold_start_ms"): floats}


def _tree(values: dict[tuple[str, ...], Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {"experiment": "prop", "providers": {"local": {"laptop": {}}},
                            "scenarios": {"federated_learning": {
                                "clients_info": {"total_num_clients": 4, "num_clients_per_round": 2}}}}
    for path, value in values.items():
        node = tree if path in TOP else tree["scenarios"]["federated_learning"]
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return tree


@st.composite
def configs(draw: Any) -> dict[str, Any]:
    keys = draw(st.sets(st.sampled_from(sorted({**NUMBERS, **TOP})), min_size=1, max_size=6))
    return _tree({k: draw({**NUMBERS, **TOP}[k]) for k in keys})


def _assert_runnable(config: Any) -> None:
    fl = config.fl
    info = fl.clients_info
    # the functions accept their payloads (their own checks, before any store access)
    _reaches_the_store(client_handler.handle, {**client_payload("run-p", 1, info.total_num_clients - 1, fl),
                                               "activation_id": "a1", "attempt": 1})  # as the tracker adds them
    _reaches_the_store(aggregator_handler.handle,
                       aggregator_payload("run-p", 0, "init", fl, config.mongo_config.keep_models))
    # every client gets training samples
    spec = rdata.DataSpec.from_params(client_payload("run-p", 1, 0, fl)["data"])
    parts = rdata.partition_indices(rdata.split_labels(spec, "train"), info.total_num_clients, scheme=spec.partition,
                                    seed=fl.seed, shards_per_client=spec.shards_per_client, alpha=spec.alpha)
    assert min(len(p) for p in parts) >= 1
    selected = math.ceil(info.num_clients_per_round * (1 + fl.resilience.overselect))
    assert select_clients(fl.seed, fl.rounds, info.total_num_clients, selected)
    # the runs document and Logs/ take the config
    redacted = cfg.redacted(config)
    bson.encode({"config": redacted, "seed": fl.seed, "rounds": fl.rounds})
    json.dumps(redacted, allow_nan=False)
    # every wait fits Python's timed waits
    res = fl.resilience
    memory, timeout, _ = cfg.function_limits(config, "fl_client", "local", cluster="laptop")
    waits = [timeout + res.timeout_slack_s, res.invocation_timeout_s or 0, res.round_deadline_s or 0,
             res.backoff_max_s, res.poll_max_s, config.mongo_config.server_selection_timeout_ms / 1000,
             config.clusters()["laptop"].keep_warm_s, config.clusters()["laptop"].cold_start_ms / 1000]
    assert all(0 <= w < threading.TIMEOUT_MAX for w in waits), waits
    assert 0 < memory


@settings(max_examples=300, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(configs())
def test_a_config_that_validates_runs(tree: dict[str, Any]) -> None:
    text = yaml.dump(tree, Dumper=DUMPER)
    try:
        config = load_text(text, env={})
    except ConfigError as exc:
        assert exc.exit_code == 2 and exc.issues and all(i.path for i in exc.issues)
        event("refused")
        return
    event("accepted")
    _assert_runnable(config)


@pytest.mark.parametrize("path, value", [
    (("seed",), -1), (("functions", "fl_client", "local", "timeout"), math.inf), (("model_params", "lr"), math.nan),
    (("clients_info", "total_num_clients"), 1438), (("rounds",), 2**63), (("resilience", "poll_max_s"), 1e10),
])
def test_the_issue_s_values_are_refused_with_their_key_path(path: tuple[str, ...], value: Any) -> None:
    tree = _tree({path: value, **({("clients_info", "num_clients_per_round"): 2})})
    with pytest.raises(ConfigError) as info:
        load_text(yaml.dump(tree, Dumper=DUMPER), env={})
    where = ".".join(path) if path in TOP else "scenarios.federated_learning." + ".".join(path)
    assert [i.path for i in info.value.issues] == [where]


def test_the_largest_digits_run_validates_and_runs() -> None:
    """1437 clients: exactly the digits' training samples, one each (the bound is tight, not cautious)."""
    config = load_text(yaml.dump(_tree({("clients_info", "total_num_clients"): 1437}), Dumper=DUMPER), env={})
    _assert_runnable(config)


# ------------------------------------------------------------------------------------------ local data files

def _npy(path: Path, array: np.ndarray) -> str:
    np.save(path, array)
    return str(path)


def _idx_gz(path: Path, array: np.ndarray) -> str:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))
    return str(path)


def _data_config(tmp_path: Path, *, n_train: int = 40, n_test: int = 10, features: int = 16, classes: int = 4,
                 input_size: int = 16, output_size: int = 4, labels_n: int | None = None, clients: int = 4) -> str:
    rng = np.random.default_rng(0)
    train_x = _idx_gz(tmp_path / "train-images.idx.gz", rng.integers(0, 255, (n_train, features)))
    np.savez(tmp_path / "train-labels.npz", y=rng.integers(0, classes, labels_n or n_train), other=np.zeros(2))
    test_x = _npy(tmp_path / "test-images.npy", rng.random((n_test, 4, features // 4), dtype=np.float32))
    test_y = _npy(tmp_path / "test-labels.npy", rng.integers(0, classes, n_test))
    return f"""
experiment: files
providers: {{local: {{laptop: {{}}}}}}
scenarios:
  federated_learning:
    clients_info: {{total_num_clients: {clients}, num_clients_per_round: 2}}
    data_sampling: {{model: logreg, input_size: {input_size}, output_size: {output_size}}}
    training_test_data:
      train_images: {train_x}
      train_labels: {tmp_path / "train-labels.npz"}#y
      test_images: {test_x}
      test_labels: {test_y}
"""


def _issues(text: str, base_dir: Path) -> dict[str, str]:
    try:
        load_text(text, env={}, base_dir=base_dir)
    except ConfigError as exc:
        return {i.path: i.message for i in exc.issues}
    return {}


FL = "scenarios.federated_learning"


def test_local_data_files_that_fit_validate_and_run(tmp_path: Path) -> None:
    text = _data_config(tmp_path)
    assert _issues(text, tmp_path) == {}
    config = load_text(text, env={}, base_dir=tmp_path)
    spec = rdata.DataSpec.from_params(client_payload("r", 1, 0, config.fl)["data"])
    train, test = rdata.load_data(spec)  # what the functions load agrees with what validate read
    assert rdata.images_shape(spec, "train") == (40, 16) and len(train) == 40
    assert rdata.images_shape(spec, "test") == (10, 4, 4) and test.x.shape == (10, 16)


@pytest.mark.parametrize("change, path, words", [
    ({"clients": 41}, f"{FL}.clients_info.total_num_clients", "41 clients, but train_labels has 40 samples"),
    ({"classes": 7}, f"{FL}.data_sampling.output_size", "labels go up to 6: output_size must be at least 7"),
    ({"input_size": 64}, f"{FL}.data_sampling.input_size", "have 16 features per sample (16), the logreg model takes 64"),
    ({"labels_n": 39}, f"{FL}.training_test_data.train_images", "holds 40 images, but train_labels holds 39 labels"),
])
def test_local_data_files_that_cannot_run_are_config_errors(tmp_path: Path, change: dict[str, int], path: str,
                                                            words: str) -> None:
    issues = _issues(_data_config(tmp_path, **change), tmp_path)
    assert path in issues and words in issues[path], issues


def test_a_pickled_labels_file_is_refused_at_its_key(tmp_path: Path) -> None:
    text = _data_config(tmp_path)
    np.save(tmp_path / "test-labels.npy", np.array([1, "x"], dtype=object), allow_pickle=True)
    issues = _issues(text, tmp_path)
    assert "pickled objects" in issues[f"{FL}.training_test_data.test_labels"]


def test_data_over_max_bytes_is_refused(tmp_path: Path) -> None:
    text = _data_config(tmp_path).replace("test_labels:", "max_bytes: 100\n      test_labels:")
    issues = _issues(text, tmp_path)
    assert any("more than" in m and "max_bytes" in m for m in issues.values()), issues


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
def test_fifos_are_refused_without_being_opened(tmp_path: Path) -> None:
    """Opening a FIFO for reading blocks until someone writes: validation must not even open it."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    text = _data_config(tmp_path).replace(str(tmp_path / "test-labels.npy"), str(fifo))
    text = text.replace("experiment: files", f"experiment: files\nmongo_config: {{url: 'mongodb://db.example.org', "
                                             f"username: fk, password_file: {fifo}}}")
    issues = _issues(text, tmp_path)
    assert f"is a named pipe (FIFO), not a regular file" in issues[f"{FL}.training_test_data.test_labels"]
    assert issues["mongo_config.password_file"] == f"password file {fifo} is a named pipe (FIFO), not a regular file"


# ------------------------------------------------------------------------------------------ a config for smoke

SMOKE_ONLY = "experiment: smoke-only\nproviders: {local: {laptop: {}}}\nscenarios: {smoke: {}}\n"


@pytest.mark.parametrize("command", [["start"], ["deploy", "--dry-run"]])
def test_a_smoke_only_config_validates_but_start_and_deploy_say_what_is_missing(run_cli, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                                command: list[str]) -> None:
    config = tmp_path / "smoke.yaml"
    config.write_text(SMOKE_ONLY)
    assert run_cli("validate", "-c", config, cwd=tmp_path).code == 0
    result = run_cli(*command, "-c", config, "--logs-dir", tmp_path / "Logs", cwd=tmp_path)
    assert result.code == 2, result.stderr
    assert "scenarios.federated_learning: missing" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "Logs").exists() and not (tmp_path / ".fedkeeper").exists()  # nothing started

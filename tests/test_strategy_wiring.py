"""Strategies and differential privacy wired through the config, the payloads, the functions and the store.

The config accepts every strategy and refuses bad parameters at their key path (exit 2 through `validate`); the
aggregator runs the configured strategy and keeps its server state next to each model, so a run interrupted
between rounds, or killed after writing a round's state but before committing its model, resumes to the same
final model as an uninterrupted run (FedAdam, and central DP with adaptive clipping, whose clip norm is state).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pymongo
import pytest
import yaml

from function_support import load_handler
from fedkeeper import config as cfg
from fedkeeper.config import ConfigError
from fedkeeper.runtime import blobstore, privacy, weights as W
from fedkeeper.scenarios.federated_learning import aggregator_payload, client_payload
from round_support import Run, experiment_yaml, start_in_process

FL = "scenarios.federated_learning"


def _load(name: str) -> Any:
    return load_handler(name, f"fk_wiring_{name}_handler")


def config_text(*, strategy: dict[str, Any] | None = None, privacy_section: dict[str, Any] | None = None,
                agg_memory: int = 1024, per_round: int = 2, total: int = 4, model_params: dict[str, Any] | None = None,
                **model: Any) -> str:
    """A valid local experiment (no store contacted by `load_text`) with the given strategy / privacy."""
    data = yaml.safe_load(experiment_yaml("mongodb://127.0.0.1:1", clusters={"lab": {}}, placement={"lab": total},
                                          per_round=per_round))
    fl = data["scenarios"]["federated_learning"]
    if strategy is not None:
        fl["strategy"] = strategy
    if privacy_section is not None:
        fl["privacy"] = privacy_section
    fl["data_sampling"].update(model)
    fl["model_params"].update(model_params or {})
    data["functions"]["fl_server_aggregator"]["local"]["memory"] = agg_memory
    return yaml.safe_dump(data, sort_keys=False)


def issues_of(text: str) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        cfg.load_text(text, env={})
    return {issue.path: issue.message for issue in info.value.issues}


# ------------------------------------------------------------------------------------------------ config


@pytest.mark.parametrize("strategy", [
    {"name": "fedavg"}, {"name": "fedadam", "server_learning_rate": 0.05, "beta_1": 0.8}, {"name": "fedyogi"},
    {"name": "fedavgm", "server_momentum": 0.5}, {"name": "fedprox", "mu": 0.1},
])
def test_the_config_accepts_a_strategy_and_its_parameters(strategy: dict[str, Any]) -> None:
    fl = cfg.load_text(config_text(strategy=strategy), env={}).fl
    assert fl.strategy_params() == strategy
    payload = aggregator_payload("r", 1, "aggregate", fl, 3, [])
    assert payload["strategy"] == strategy and payload["privacy"] is None


def test_fedavg_payloads_are_those_of_before_strategies() -> None:
    """A config that names no strategy: the clients train exactly as before (no key added to `train`)."""
    fl = cfg.load_text(config_text(), env={}).fl
    assert fl.strategy_params() == {"name": "fedavg"}
    sent = client_payload("r", 1, 0, fl)
    assert sent["train"] == fl.model_params.model_dump() and "privacy" not in sent


@pytest.mark.parametrize("strategy, path", [
    ({"name": "fedadamm"}, f"{FL}.strategy.name"),
    ({"name": "fedadam", "beta1": 0.9}, f"{FL}.strategy.beta1"),
    ({"name": "fedadam", "beta_1": 1.5}, f"{FL}.strategy.beta_1"),
    ({"name": "fedadam", "server_learning_rate": "fast"}, f"{FL}.strategy.server_learning_rate"),
    ({"name": "trimmed_mean", "beta": 0.7}, f"{FL}.strategy.beta"),
])
def test_the_config_refuses_a_bad_strategy_at_its_key(strategy: dict[str, Any], path: str) -> None:
    assert path in issues_of(config_text(strategy=strategy))


def test_fedprox_takes_mu_from_model_params_and_refuses_two_different_ones() -> None:
    fl = cfg.load_text(config_text(strategy={"name": "fedprox"}, model_params={"mu": 0.3}), env={}).fl
    assert fl.strategy_params() == {"name": "fedprox", "mu": 0.3}
    assert client_payload("r", 1, 0, fl)["train"]["mu"] == 0.3
    fl = cfg.load_text(config_text(strategy={"name": "fedprox", "mu": 0.2}), env={}).fl
    assert client_payload("r", 1, 0, fl)["train"]["mu"] == 0.2
    issues = issues_of(config_text(strategy={"name": "fedprox", "mu": 0.2}, model_params={"mu": 0.3}))
    assert f"{FL}.strategy.mu" in issues


def test_privacy_is_refused_with_a_strategy_that_does_not_average() -> None:
    issues = issues_of(config_text(strategy={"name": "fedmedian"},
                                   privacy_section={"noise_multiplier": 1.0, "clip_norm": 1.0}))
    assert "does not support differential privacy" in issues[f"{FL}.privacy"]


@pytest.mark.parametrize("section, path", [
    ({"noise_multiplier": -1, "clip_norm": 1.0}, f"{FL}.privacy.noise_multiplier"),
    ({"noise_multiplier": 1.0, "clip_norm": 0}, f"{FL}.privacy.clip_norm"),
    ({"noise_multiplier": 1.0}, f"{FL}.privacy.clip_norm"),
    ({"noise_multiplier": 1.0, "clip_norm": 1.0, "mode": "both"}, f"{FL}.privacy.mode"),
    ({"noise_multiplier": 1.0, "clip_norm": 1.0, "mode": "local", "adaptive_clipping": {}},
     f"{FL}.privacy.adaptive_clipping"),
    ({"noise_multiplier": 2.0, "clip_norm": 1.0, "adaptive_clipping": {"count_noise_multiplier": 0.5}},
     f"{FL}.privacy.adaptive_clipping.count_noise_multiplier"),
    ({"noise_multiplier": 1.0, "clip_norm": 1.0, "adaptive_clipping": {"target_quantile": 2}},
     f"{FL}.privacy.adaptive_clipping.target_quantile"),
    ({"noise_multiplier": 1.0, "clip_norm": 1.0, "delta": 1.5}, f"{FL}.privacy.delta"),
])
def test_the_config_refuses_bad_privacy_settings_at_their_key(section: dict[str, Any], path: str) -> None:
    assert path in issues_of(config_text(privacy_section=section))


def test_privacy_payloads_central_and_local() -> None:
    # σ_b defaults to per_round / 20 = 0.1: z must stay below 2·σ_b for the delta to keep a share of it
    section = {"noise_multiplier": 0.15, "clip_norm": 2.0, "adaptive_clipping": {"target_quantile": 0.6}}
    fl = cfg.load_text(config_text(privacy_section=section, per_round=2), env={}).fl
    spec = privacy.PrivacySpec.from_params(aggregator_payload("r", 1, "aggregate", fl, 3, [])["privacy"])
    assert (spec.mode, spec.noise_multiplier, spec.clip_norm, spec.adaptive, spec.target_quantile) == \
        ("central", 0.15, 2.0, True, 0.6)
    assert spec.seed == fl.seed and spec.count_noise_multiplier == pytest.approx(0.1)  # per_round / 20
    assert "privacy" not in client_payload("r", 1, 0, fl)  # central: the clients send plain updates
    assert fl.privacy.delta_for(4) == pytest.approx(4 ** -1.1)  # type: ignore[union-attr]

    local = cfg.load_text(config_text(privacy_section={"mode": "local", "noise_multiplier": 0.5, "clip_norm": 2.0,
                                                        "sampling": "poisson"}), env={}).fl
    sent = privacy.PrivacySpec.from_params(client_payload("r", 1, 0, local)["privacy"])
    assert sent.mode == "local" and sent.expected_clients == 2.0


def test_validate_refuses_krum_whose_updates_exceed_the_aggregator_memory(tmp_path: Path, run_cli: Any) -> None:
    """20 updates of a 3M-parameter mlp (12 MB each) do not fit a 128 MB aggregator: exit 2 at the key."""
    big = {"model": "mlp", "input_size": 64, "hidden_size": 40000}
    text = config_text(strategy={"name": "krum", "num_malicious": 2}, agg_memory=128, per_round=20, total=20,
                       **big)
    issues = issues_of(text)
    assert "fl_server_aggregator" in issues[f"{FL}.strategy"] and "MB" in issues[f"{FL}.strategy"]
    (tmp_path / "config.yaml").write_text(text)
    result = run_cli("validate", "-c", tmp_path / "config.yaml")
    assert result.code == 2 and f"{FL}.strategy" in result.stderr
    # the same model under FedAvg streams its updates: it fits
    cfg.load_text(config_text(agg_memory=128, per_round=20, total=20, **big), env={})


# ------------------------------------------------------------------------------------------------ the store


def test_server_state_is_stored_by_digest_named_by_the_model_and_collected_with_it(nx_db: Any) -> None:
    store = blobstore.BlobStore(nx_db)
    model = {"w": np.ones(3, np.float32)}
    for rnd in range(4):
        state = {"strategy/m": np.full(3, float(rnd)), "privacy/clip_norm": np.asarray(1.0 + rnd)}
        sha = store.write_state("r", rnd, state)["sha256"]
        assert store.write_state("r", rnd, state)["duplicate"]  # the same state twice is one document
        store.write_model("r", rnd, model, {"accuracy": 0.1, "loss": 1.0}, state_sha256=sha)
    store.write_state("r", 1, {"strategy/m": np.full(3, 9.0)})  # left by an attempt that never committed
    newest = store.get_model_doc("r", 3)
    assert store.read_state("r", 3, newest["state_sha256"])["privacy/clip_norm"] == 4.0
    store.gc_models("r", keep_last=2)
    alive = {(d["round"]) for d in nx_db[blobstore.STATES].find({"run_id": "r", "blob": {"$ne": None}})}
    assert alive == {2, 3}  # the states of the kept models; the uncommitted one of round 1 is collected
    with pytest.raises(blobstore.ModelMissing):
        store.read_state("r", 0, store.get_model_doc("r", 0)["state_sha256"])
    assert store.delete_run("r") == 4 + 5
    assert nx_db[blobstore.STATES].count_documents({}) == 0


def test_a_stateless_fedavg_round_stores_no_state(nx_db: Any) -> None:
    aggregator, client = _load("fl_server_aggregator"), _load("fl_client")
    base = {"run_id": "fa", "seed": 3, "model": {"model": "logreg", "input_size": 64, "output_size": 10},
            "data": {"dataset": "digits", "partition": "iid"}}
    aggregator.handle({**base, "mode": "init", "round": 0, "keep_models": 0}, db=nx_db)
    acks = [(cid, client.handle({**base, "round": 1, "client_id": cid, "num_clients": 2, "activation_id": f"a{cid}",
                                 "attempt": 1, "train": {"optim": "sgd", "lr": 0.05, "local_epochs": 1}}, db=nx_db))
            for cid in range(2)]
    updates = [{"client_id": cid, "activation_id": f"a{cid}", "attempt": 1, "sha256": a["sha256"]} for cid, a in acks]
    result = aggregator.handle({**base, "mode": "aggregate", "round": 1, "keep_models": 0, "num_clients": 2,
                                "updates": updates, "strategy": {"name": "fedavg"}, "privacy": None}, db=nx_db)
    assert result["num_updates"] == 2 and "clip_norm" not in result
    assert "state_sha256" not in nx_db["models"].find_one({"_id": "fa:1"})
    assert nx_db[blobstore.STATES].count_documents({}) == 0


def test_local_dp_clients_store_their_privatized_update(nx_db: Any) -> None:
    aggregator, client = _load("fl_server_aggregator"), _load("fl_client")
    base = {"run_id": "ldp", "seed": 3, "model": {"model": "logreg", "input_size": 64, "output_size": 10},
            "data": {"dataset": "digits", "partition": "iid"}}
    spec = privacy.PrivacySpec(mode="local", noise_multiplier=0.5, clip_norm=0.1, seed=3)
    aggregator.handle({**base, "mode": "init", "round": 0, "keep_models": 0}, db=nx_db)
    sent = {**base, "round": 1, "client_id": 0, "num_clients": 2, "activation_id": "a0", "attempt": 1,
            "train": {"optim": "sgd", "lr": 0.05, "local_epochs": 1}}
    plain = client.handle({**sent, "run_id": "ldp", "activation_id": "plain"}, db=nx_db)
    noised = client.handle({**sent, "privacy": spec.as_params()}, db=nx_db)
    store = blobstore.BlobStore(nx_db)
    previous, _ = store.read_model("ldp", 0)
    trained, _ = store.read_update("ldp", 1, 0, W.spec_of(previous), activation_id="plain")
    stored, _ = store.read_update("ldp", 1, 0, W.spec_of(previous), activation_id="a0")
    want = privacy.local_privatize(trained, previous, spec, 1, 0, 1)
    assert plain["sha256"] != noised["sha256"]
    assert all(np.array_equal(stored[k], want[k]) for k in want)


# ------------------------------------------------------------------------------------------------ runs


class Runs:
    """In-process runs on the session's nx-27017 server, their databases dropped afterwards."""

    def __init__(self, url: str, tmp: Path) -> None:
        self.url, self.tmp = url, tmp
        self.client: pymongo.MongoClient = pymongo.MongoClient(url, serverSelectionTimeoutMS=5000)
        self.dbs: list[str] = []

    def text(self, *, rounds: int, **fl: Any) -> str:
        db = f"t_{uuid.uuid4().hex[:12]}"
        self.dbs.append(db)
        data = yaml.safe_load(experiment_yaml(self.url, db=db, clusters={"lab": {"concurrency": 2}},
                                              placement={"lab": 4}, rounds=rounds, per_round=3))
        data["scenarios"]["federated_learning"].update(fl)
        return yaml.safe_dump(data, sort_keys=False)

    def start(self, text: str, workdir: str, *, resume: str | None = None, rounds: int | None = None) -> Run:
        path = self.tmp / workdir
        path.mkdir(exist_ok=True)
        return start_in_process(path, text, self.client, resume=resume, rounds=rounds)

    def close(self) -> None:
        for db in self.dbs:
            self.client.drop_database(db)
        self.client.close()


@pytest.fixture
def runs(nx_server: str, tmp_path: Path) -> Iterator[Runs]:
    harness = Runs(nx_server, tmp_path)
    try:
        yield harness
    finally:
        harness.close()


def crash_and_resume(runs: Runs, **fl: Any) -> tuple[Run, Run]:
    """(an uninterrupted 3-round run, a run stopped after round 2 that resumes to round 3 after a kill that
    landed between writing round 2's server state and committing its model)."""
    whole = runs.start(runs.text(rounds=3, **fl), "whole")
    text = runs.text(rounds=2, **fl)
    first = runs.start(text, "parts")
    db, run_id = first.db, first.run_id
    assert first.summary["status"] == "completed"
    # the kill: model 2 never committed (its state document stays behind), the round's updates never stored
    db["models"].delete_one({"_id": f"{run_id}:2"})
    db["updates"].delete_many({"run_id": run_id, "round": 2})
    db["runs"].update_one({"_id": run_id}, {"$set": {"last_completed_round": 1, "status": "interrupted"}})
    resumed = runs.start(text, "parts", resume=run_id, rounds=3)
    return whole, resumed


@pytest.mark.integration
@pytest.mark.slow
def test_fedadam_resumed_after_a_crash_gives_the_model_of_an_uninterrupted_run(runs: Runs) -> None:
    strategy = {"name": "fedadam", "server_learning_rate": 0.05, "tau": 0.001}
    whole, resumed = crash_and_resume(runs, strategy=strategy)
    assert whole.summary["status"] == resumed.summary["status"] == "completed"
    assert resumed.summary["rounds_completed"] == 3
    assert resumed.summary["model_sha256"] == whole.summary["model_sha256"]
    models = {d["round"]: d for d in whole.db["models"].find({"run_id": whole.run_id}, {"blob": 0})}
    assert all(isinstance(models[r].get("state_sha256"), str) for r in (1, 2, 3))
    state = blobstore.BlobStore(whole.db).read_state(whole.run_id, 3, models[3]["state_sha256"])
    assert any(k.startswith("strategy/") for k in state) and all(v.dtype == np.float64 for v in state.values())
    assert any(np.any(v != 0) for k, v in state.items() if k.startswith("strategy/"))  # the moments moved


@pytest.mark.integration
@pytest.mark.slow
def test_central_dp_resumed_after_a_crash_gives_the_model_of_an_uninterrupted_run(runs: Runs) -> None:
    section = {"noise_multiplier": 0.3, "clip_norm": 0.5, "adaptive_clipping": {"count_noise_multiplier": 1.0}}
    whole, resumed = crash_and_resume(runs, privacy=section)
    assert resumed.summary["model_sha256"] == whole.summary["model_sha256"]
    docs = sorted(whole.db["models"].find({"run_id": whole.run_id, "round": {"$gte": 1}}, {"blob": 0}),
                  key=lambda d: d["round"])
    clip = [d["metrics"]["privacy"]["clip_norm"] for d in docs]
    assert clip[0] == 0.5 and len(set(clip)) == 3  # adaptive: the clip norm moved each round, carried as state
    assert all(d["metrics"]["privacy"]["num_clients"] == 3 for d in docs)
    # the same privacy cost: ε per round in rounds.csv and the summary's final ε
    assert [r["epsilon"] for r in resumed.rounds()][-1] == [r["epsilon"] for r in whole.rounds()][-1]
    assert resumed.summary["privacy"]["epsilon"] == whole.summary["privacy"]["epsilon"] > 0


EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples" / "strategies").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_the_strategy_examples_validate(path: Path) -> None:
    fl = cfg.load(path, env={}).fl
    assert fl.clients_info.total_num_clients == 10 and fl.data_sampling.partition == "shards"


def test_the_poisoning_fault_reaches_only_its_cluster_clients(nx_db: Any) -> None:
    """`faults.poison_scale` arrives as `local_fault_poison_scale`: the client stores previous + scale × delta."""
    aggregator, client = _load("fl_server_aggregator"), _load("fl_client")
    base = {"run_id": "poison", "seed": 3, "model": {"model": "logreg", "input_size": 64, "output_size": 10},
            "data": {"dataset": "digits", "partition": "iid"}}
    aggregator.handle({**base, "mode": "init", "round": 0, "keep_models": 0}, db=nx_db)
    sent = {**base, "round": 1, "client_id": 0, "num_clients": 2, "attempt": 1,
            "train": {"optim": "sgd", "lr": 0.05, "local_epochs": 1}}
    client.handle({**sent, "activation_id": "honest"}, db=nx_db)
    client.handle({**sent, "activation_id": "evil", "local_fault_poison_scale": -3.0}, db=nx_db)
    store = blobstore.BlobStore(nx_db)
    previous, _ = store.read_model("poison", 0)
    honest, _ = store.read_update("poison", 1, 0, W.spec_of(previous), activation_id="honest")
    evil, _ = store.read_update("poison", 1, 0, W.spec_of(previous), activation_id="evil")
    for name, old in previous.items():
        delta = honest[name].astype(np.float64) - old
        np.testing.assert_allclose(evil[name] - old.astype(np.float64), -3.0 * delta, rtol=1e-5, atol=1e-6)

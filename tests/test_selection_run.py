"""Each selection policy drives a real in-process run on a local cluster with a timing profile; the profile is
on record in Logs/, and the same config and seed give the same cohorts and the same model."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymongo
import pytest
import yaml

from fedkeeper.scenarios.selection import names
from round_support import Run, experiment_yaml, start_in_process

pytestmark = pytest.mark.integration

PROFILE = {"seed": 11, "base_ms": 40, "slowdown": {"median": 1.0, "sigma": 0.3},
           "tiers": [{"share": 0.5, "slowdown": 1}, {"share": 0.5, "slowdown": 3}],
           "stragglers": {"share": 0.25, "slowdown": 4},
           "cold_start": {"delay_ms": [50, 100], "keep_warm_s": 30, "max_warm": 3}}


@pytest.fixture
def mongo(nx_server: str) -> Iterator[tuple[str, pymongo.MongoClient, list[str]]]:
    client: pymongo.MongoClient = pymongo.MongoClient(nx_server, serverSelectionTimeoutMS=5000)
    dbs: list[str] = []
    try:
        yield nx_server, client, dbs
    finally:
        for db in dbs:
            client.drop_database(db)
        client.close()


def _run(mongo: tuple[str, pymongo.MongoClient, list[str]], tmp: Path, policy: dict[str, Any]) -> Run:
    url, client, dbs = mongo
    db = f"t_{uuid.uuid4().hex[:12]}"
    dbs.append(db)
    data = yaml.safe_load(experiment_yaml(url, clusters={"lab": {"concurrency": 3, "profile": PROFILE}},
                                          placement={"lab": 6}, rounds=3, per_round=2, db=db))
    data["scenarios"]["federated_learning"]["clients_info"]["deployment"] = "per_client"
    data["scenarios"]["federated_learning"]["selection"] = policy
    tmp.mkdir(parents=True, exist_ok=True)
    return start_in_process(tmp, yaml.safe_dump(data), client)


def _cohorts(run: Run) -> list[list[int]]:
    return [e["ranked"] for e in run.events("round_started")]


@pytest.mark.slow
@pytest.mark.parametrize("policy", names())
def test_a_run_with_each_policy_records_the_profile(mongo: Any, tmp_path: Path, policy: str) -> None:
    run = _run(mongo, tmp_path, {"policy": policy})
    assert run.summary["status"] == "completed", run.summary.get("reason")
    cohorts = _cohorts(run)
    assert len(cohorts) == 3 and all(len(c) == len(set(c)) == 2 for c in cohorts)
    [event] = run.events("platform_profile")
    assert event["cluster"] == "lab" and event["profile"]["seed"] == 11
    assert event["profile"]["cold_start"]["max_warm"] == 3
    assert yaml.safe_load((run.folder / "config.yaml").read_text())["providers"]["local"]["lab"]["profile"][
        "base_ms"] == 40
    rows = [a for a in run.activations() if a["state"] == "succeeded"]
    assert {a["cold"] for a in rows} <= {"true", "false"} and any(a["cold"] == "true" for a in rows)
    for a in rows:  # the simulated handler time: base 40 ms × the profile's multiplier, as recorded
        assert "slowdown=" in a["injected"]
        multiplier = float(a["injected"].split("slowdown=")[1].split(",")[0])
        assert float(a["duration_s"]) == pytest.approx(0.040 * multiplier, rel=1e-3)
    if policy == "random":
        from fedkeeper.tracker import rank_clients

        assert cohorts == [rank_clients(42, r, 6, 2) for r in (1, 2, 3)]


@pytest.mark.slow
def test_history_selection_repeats_with_the_same_config_and_seed(mongo: Any, tmp_path: Path) -> None:
    policy = {"policy": "history", "epsilon": 0.0, "rookies_first": False, "max_wait_rounds": 2}
    first = _run(mongo, tmp_path / "a", policy)
    second = _run(mongo, tmp_path / "b", policy)
    assert _cohorts(first) == _cohorts(second)
    assert first.summary["model_sha256"] == second.summary["model_sha256"]


@pytest.mark.slow
def test_scored_selection_repeats_with_the_same_config_and_seed(mongo: Any, tmp_path: Path) -> None:
    # the warm term reads wall-clock times: with a 30 s keep-warm window every function used in this short run
    # is warm with probability 1 and every other one 0, and a given cold start leaves nothing to timing
    policy = {"policy": "scored", "epsilon": 0.0, "cold_start_s": 0.1}
    first = _run(mongo, tmp_path / "a", policy)
    second = _run(mongo, tmp_path / "b", policy)
    assert _cohorts(first) == _cohorts(second)
    assert first.summary["model_sha256"] == second.summary["model_sha256"]

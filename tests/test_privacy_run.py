"""Differential privacy in a run, in process: ε per round in rounds.csv and summary.json, and `target_epsilon`
stopping the run before the round that would exceed it, with the reason and an event."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymongo
import pytest
import yaml

from fedkeeper.privacy.accountant import Accountant
from round_support import experiment_yaml, start_in_process

pytestmark = pytest.mark.integration


@pytest.fixture
def mongo(nx_server: str) -> Iterator[tuple[str, pymongo.MongoClient]]:
    client: pymongo.MongoClient = pymongo.MongoClient(nx_server, serverSelectionTimeoutMS=5000)
    yield nx_server, client
    for name in client.list_database_names():
        if name.startswith("tdp_"):
            client.drop_database(name)
    client.close()


def _config(url: str, privacy: dict[str, Any], rounds: int) -> str:
    text = experiment_yaml(url, clusters={"lab": {"concurrency": 2}}, placement={"lab": 4}, rounds=rounds,
                           per_round=2, db=f"tdp_{uuid.uuid4().hex[:10]}")
    data = yaml.safe_load(text)
    data["scenarios"]["federated_learning"]["privacy"] = privacy
    return yaml.safe_dump(data, sort_keys=False)


def test_target_epsilon_stops_the_run_before_the_round_that_would_exceed_it(
        mongo: tuple[str, pymongo.MongoClient], tmp_path: Path) -> None:
    url, client = mongo
    accountant = Accountant("central", 2.0, 1e-3, sampling="fixed", population=4, sample_size=2)
    eps = [accountant.epsilon(t) for t in range(1, 4)]
    target = (eps[1] + eps[2]) / 2  # two rounds fit, the third would exceed it
    text = _config(url, {"mode": "central", "noise_multiplier": 2.0, "clip_norm": 1.0, "delta": 1e-3,
                         "target_epsilon": target}, rounds=5)
    run = start_in_process(tmp_path, text, client)

    assert run.summary["status"] == "completed" and run.summary["rounds_completed"] == 2
    assert run.summary["reason"] == (f"privacy budget: ε would reach {eps[2]:.4g} > target {target:g} "
                                     f"after round 3")
    rows = run.rounds()
    assert [float(r["epsilon"]) for r in rows] == pytest.approx(eps[:2], rel=1e-5)
    assert all(float(r["clip_norm"]) == 1.0 for r in rows)
    privacy = run.summary["privacy"]
    assert privacy["epsilon"] == pytest.approx(eps[1]) and privacy["target_epsilon"] == target
    assert (privacy["mode"], privacy["sampling"], privacy["delta"], privacy["noise_multiplier"]) == \
        ("central", "fixed", 1e-3, 2.0)
    [stop] = run.events("privacy_budget_reached")
    assert stop["round"] == 3 and stop["epsilon"] == pytest.approx(eps[2])
    assert max(e["round"] for e in run.events("round_started")) == 2  # nothing of round 3 ran
    # the report reads it back from Logs/ alone
    from fedkeeper.results.render import privacy_line
    from fedkeeper.results.report import build_report
    from fedkeeper.results.run_folders import load_run

    report = build_report(load_run(run.folder), {})
    assert report["privacy"]["epsilon"] == pytest.approx(eps[1])
    assert privacy_line(report["privacy"]) == (f"privacy: central DP, z 2.000, fixed sampling · ε {eps[1]:.3f} at "
                                               f"δ 0.001 (target {target:.3f})")


SEED = 1  # selects someone in each of the three rounds (an empty round is not run here: see docs/privacy.md)


def test_poisson_sampling_selects_what_the_accountant_assumes(mongo: tuple[str, pymongo.MongoClient],
                                                              tmp_path: Path) -> None:
    from fedkeeper.privacy.sampling import poisson_clients

    url, client = mongo
    text = _config(url, {"mode": "central", "noise_multiplier": 1.0, "clip_norm": 1.0, "delta": 1e-3,
                         "sampling": "poisson"}, rounds=3)
    data = yaml.safe_load(text)
    seed = data["scenarios"]["federated_learning"]["seed"] = SEED
    text = yaml.safe_dump(data, sort_keys=False)
    drawn = {r: poisson_clients(seed, r, 4, 0.5) for r in (1, 2, 3)}
    assert all(drawn.values()) and len({len(d) for d in drawn.values()}) > 1  # rounds of different sizes
    run = start_in_process(tmp_path, text, client)

    assert run.summary["status"] == "completed", run.summary.get("reason")
    assert {e["round"]: e["selected"] for e in run.events("round_started")} == drawn
    rows = run.rounds()
    assert [int(r["aggregated"]) for r in rows] == [len(drawn[r]) for r in (1, 2, 3)]
    accountant = Accountant("central", 1.0, 1e-3, sampling="poisson", population=4, sampling_probability=0.5)
    assert [float(r["epsilon"]) for r in rows] == pytest.approx([accountant.epsilon(t) for t in (1, 2, 3)],
                                                                 rel=1e-5)
    assert run.summary["privacy"]["sampling"] == "poisson"


def test_a_poisson_round_that_draws_nobody_still_releases_a_noised_step(mongo: tuple[str, pymongo.MongoClient],
                                                                        tmp_path: Path) -> None:
    """DP-FedAvg's fixed-denominator estimator: a round whose Poisson draw is empty adds noise / expected clients
    to the model, like any other round; the run goes on and accounts for it."""
    from fedkeeper.privacy.sampling import poisson_clients

    url, client = mongo
    seed = next(s for s in range(100) if not poisson_clients(s, 2, 4, 0.5) and poisson_clients(s, 1, 4, 0.5))
    text = _config(url, {"mode": "central", "noise_multiplier": 1.0, "clip_norm": 1.0, "delta": 1e-3,
                         "sampling": "poisson"}, rounds=2)
    data = yaml.safe_load(text)
    data["scenarios"]["federated_learning"]["seed"] = seed
    run = start_in_process(tmp_path, yaml.safe_dump(data, sort_keys=False), client)

    assert run.summary["status"] == "completed", run.summary.get("reason")
    rows = run.rounds()
    assert [int(r["selected"]) for r in rows][1] == 0 and int(rows[1]["aggregated"]) == 0
    first = run.db["models"].find_one({"_id": f"{run.run_id}:1"})
    second = run.db["models"].find_one({"_id": f"{run.run_id}:2"})
    assert first["sha256"] != second["sha256"]  # the noise moved the model

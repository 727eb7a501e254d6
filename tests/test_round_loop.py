"""The round loop's policies, run in process: target_accuracy, overselect, round_deadline_s, min_fraction.

Each test runs `start_command` (what `fedkeeper start` calls) on local clusters whose faults are chosen per
cluster: a reliable one, a slow one (injected latency) or a failing one (injected failures). Placement deals
client ids out in cluster order, so the test knows which clients are slow or failing. Assertions are on what
the run recorded (store documents, Logs/ files, the summary); times are only checked as loose bounds that the
policy itself implies (an injected latency is a floor; a round that abandoned its slow clients ended before it).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pymongo
import pytest

from fedkeeper.errors import EXIT_FAILURE, RunFailed
from fedkeeper.tracker import select_clients
from round_support import Run, experiment_yaml, start_in_process

pytestmark = pytest.mark.integration

SLOW_MS = 20_000  # far beyond every deadline below: a slow client can only be waited for, never arrive in time


class Loop:
    """Starts in-process runs on the session's nx-27017 server; drops their databases afterwards."""

    def __init__(self, url: str, tmp: Path) -> None:
        self.url, self.tmp = url, tmp
        self.client: pymongo.MongoClient = pymongo.MongoClient(url, serverSelectionTimeoutMS=5000)
        self.dbs: list[str] = []

    def yaml(self, *, db: str | None = None, **kwargs: Any) -> tuple[str, str]:
        """(config text, database name); pass `db` to point a second config at the same run."""
        db = db or f"t_{uuid.uuid4().hex[:12]}"
        self.dbs.append(db)
        return experiment_yaml(self.url, db=db, **kwargs), db

    def start(self, text: str, *, workdir: str = "w", resume: str | None = None) -> Run:
        path = self.tmp / workdir
        path.mkdir(exist_ok=True)
        return start_in_process(path, text, self.client, resume=resume)

    def close(self) -> None:
        for db in set(self.dbs):
            self.client.drop_database(db)
        self.client.close()


@pytest.fixture
def loop(nx_server: str, tmp_path: Path) -> Iterator[Loop]:
    harness = Loop(nx_server, tmp_path)
    try:
        yield harness
    finally:
        harness.close()
    assert _workers_under(tmp_path) == [], "a local worker outlived its run"


def _workers_under(path: Path) -> list[str]:
    """Live child processes of this test process whose command line or cwd points into the test's folder."""
    left = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if str(path) in " ".join(proc.cmdline()) or str(path) in proc.cwd():
                left.append(f"{proc.pid} {' '.join(proc.cmdline())[:100]}")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return left


def clients_by_state(rows: list[dict[str, Any]]) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {}
    for row in rows:
        out.setdefault(str(row["state"]), set()).add(int(row["client_id"]))
    return out


def model_doc(run: Run, round_number: int) -> dict[str, Any]:
    return run.db["models"].find_one({"_id": f"{run.run_id}:{round_number}"}, {"blob": 0}) or {}


# ------------------------------------------------------------------------------------------------ target_accuracy


def test_target_accuracy_stops_at_the_first_round_that_reaches_it(loop: Loop) -> None:
    # logreg on digits, 1 epoch of SGD: accuracy climbs over six rounds; 0.5 is crossed in the middle
    text, _ = loop.yaml(clusters={"lab": {"concurrency": 3}}, placement={"lab": 6}, rounds=6, per_round=3,
                        target_accuracy=0.5)
    run = loop.start(text)

    accuracies = [float(r["accuracy"]) for r in run.rounds()]
    last = len(accuracies)
    assert 2 <= last < 6, f"target 0.5 should be reached mid-run, accuracies {accuracies}"
    assert accuracies[-1] >= 0.5 and all(a < 0.5 for a in accuracies[:-1]), accuracies
    assert run.summary["status"] == "completed"
    assert run.summary["rounds_completed"] == last and run.summary["rounds_planned"] == 6
    doc = run.run_doc()
    assert doc["status"] == "completed" and doc["last_completed_round"] == last
    reached = run.events("target_reached")
    assert [(e["round"], e["target"]) for e in reached] == [(last, 0.5)]
    assert reached[0]["accuracy"] == pytest.approx(accuracies[-1])
    # nothing of a later round was started, invoked or aggregated
    assert max(e["round"] for e in run.events("round_started")) == last
    assert {int(a["round"]) for a in run.activations()} == set(range(1, last + 1))
    assert model_doc(run, last + 1) == {}


# ------------------------------------------------------------------------------------------------ overselect


def _seed_selecting(ids: set[int], total: int, count: int) -> int:
    """The first seed whose round-1 selection contains `ids` (deterministic, so the test is too)."""
    return next(s for s in range(1000) if ids <= set(select_clients(s, 1, total, count)))


def test_overselect_invokes_more_clients_and_aggregates_num_clients_per_round(loop: Loop) -> None:
    total, per_round, overselect = 8, 3, 0.5
    expected_count = min(total, math.ceil(per_round * (1 + overselect)))  # the loop's rule: ceil, capped at total
    assert expected_count == 5
    slow_ids = {6, 7}  # placement {lab: 6, slow: 2} deals ids 6 and 7 to the slow cluster
    seed = _seed_selecting(slow_ids, total, expected_count)
    kwargs: dict[str, Any] = dict(
        clusters={"lab": {"concurrency": 3}, "slow": {"faults": {"latency_ms": [SLOW_MS, SLOW_MS]}}},
        placement={"lab": 6, "slow": 2}, rounds=2, per_round=per_round, seed=seed,
        resilience={"overselect": overselect})
    first = loop.start(loop.yaml(**kwargs)[0], workdir="a")
    second = loop.start(loop.yaml(**kwargs)[0], workdir="b")

    for run in (first, second):
        assert run.summary["status"] == "completed", run.summary.get("error")
        for row in run.rounds():
            r = int(row["round"])
            selected = select_clients(seed, r, total, expected_count)
            invoked = {int(a["client_id"]) for a in run.store_activations(r)}
            assert invoked == set(selected) and len(invoked) == expected_count > per_round
            assert (int(row["selected"]), int(row["succeeded"])) == (expected_count, per_round)
            doc = model_doc(run, r)
            assert doc["num_updates"] == per_round
            assert len(doc["metrics"]["clients"]) == per_round and set(doc["metrics"]["clients"]) <= invoked
        # round 1: the two slow clients were selected; the round went on with the three fast ones, not waiting
        r1 = clients_by_state(run.store_activations(1))
        assert r1.get("abandoned") == slow_ids, r1
        assert r1.get("succeeded") == set(select_clients(seed, 1, total, expected_count)) - slow_ids
        assert model_doc(run, 1)["metrics"]["clients"] == sorted(r1["succeeded"])
        assert {a["error"] for a in run.store_activations(1) if a["state"] == "abandoned"} == \
            {"enough clients succeeded (over-selection)"}
        assert float(run.rounds()[0]["invoke_s"]) < SLOW_MS / 1000

    invoked_first = {r: {int(a["client_id"]) for a in first.store_activations(r)} for r in (1, 2)}
    invoked_second = {r: {int(a["client_id"]) for a in second.store_activations(r)} for r in (1, 2)}
    assert invoked_first == invoked_second, "same seed, different clients invoked"
    assert invoked_first[1] != invoked_first[2]  # selection really depends on the round


# ------------------------------------------------------------------------------------------------ round_deadline_s


def test_round_deadline_proceeds_with_the_updates_it_has(loop: Loop) -> None:
    deadline = 2.0
    text, _ = loop.yaml(clusters={"lab": {"concurrency": 3},
                                  "slow": {"faults": {"latency_ms": [SLOW_MS, SLOW_MS]}}},
                        placement={"lab": 3, "slow": 3}, rounds=1, per_round=6,
                        resilience={"round_deadline_s": deadline, "min_fraction": 0.5})
    run = loop.start(text)

    assert run.summary["status"] == "completed", run.summary.get("error")
    row = run.rounds()[0]
    assert (int(row["selected"]), int(row["succeeded"])) == (6, 3)
    assert (int(row["failed"]), int(row["timed_out"]), int(row["lost"])) == (0, 0, 0)  # abandoned is none of those
    states = clients_by_state(run.store_activations(1))
    assert states == {"succeeded": {0, 1, 2}, "abandoned": {3, 4, 5}}
    assert {a["error"] for a in run.store_activations(1) if a["state"] == "abandoned"} == {"round deadline reached"}
    assert clients_by_state(run.activations(1)) == states  # Logs/activations.csv says the same
    assert model_doc(run, 1)["metrics"]["clients"] == [0, 1, 2]
    # the round waited for the deadline (a floor: the slow clients were still pending), not for the slow clients
    assert deadline * 0.95 <= float(row["invoke_s"]) < SLOW_MS / 1000


def test_round_deadline_waits_past_it_until_min_fraction_succeeded(loop: Loop) -> None:
    latency_ms = 3000
    text, _ = loop.yaml(clusters={"lab": {"concurrency": 3},
                                  "slow": {"concurrency": 3, "faults": {"latency_ms": [latency_ms, latency_ms]}}},
                        placement={"lab": 3, "slow": 3}, rounds=1, per_round=6,
                        resilience={"round_deadline_s": 0.5, "min_fraction": 0.6})  # quorum ceil(3.6) = 4
    run = loop.start(text)

    assert run.summary["status"] == "completed", run.summary.get("error")
    states = clients_by_state(run.store_activations(1))
    assert {0, 1, 2} <= states["succeeded"] and len(states["succeeded"]) >= 4, states
    assert set(states) <= {"succeeded", "abandoned"}
    assert states.get("abandoned", set()) <= {3, 4, 5}
    assert float(run.rounds()[0]["invoke_s"]) >= latency_ms / 1000 * 0.95  # a slow client had to arrive


# ------------------------------------------------------------------------------------------------ min_fraction


def _failing(good: int, bad: int) -> dict[str, Any]:
    return dict(clusters={"lab": {"concurrency": 2}, "bad": {"faults": {"failure_rate": 1.0}}},
                placement={"lab": good, "bad": bad}, per_round=good + bad,
                resilience={"max_attempts": 1, "min_fraction": 0.5})


def test_min_fraction_not_met_fails_the_run_with_exit_1_and_it_resumes(loop: Loop, run_cli: Any) -> None:
    text, db = loop.yaml(rounds=2, **_failing(good=1, bad=3))  # quorum: ceil(0.5 * 4) = 2, one succeeds
    workdir = loop.tmp / "w"
    workdir.mkdir()
    (workdir / "config.yaml").write_text(text)
    result = run_cli("start", "-c", workdir / "config.yaml", "-q", cwd=workdir)

    assert result.code == EXIT_FAILURE == RunFailed("x").exit_code
    assert "round 1: only 1 of 4 selected clients stored an update; at least 2 needed (resilience.min_fraction)" \
        in result.stderr
    assert "Traceback" not in result.stderr
    run_id = next((workdir / "Logs").iterdir()).name
    assert f"--resume {run_id}" in result.stderr
    failed = Run({"run_id": run_id}, workdir / "Logs" / run_id, loop.client[db])
    doc = failed.run_doc()
    assert doc["status"] == "failed" and doc["last_completed_round"] == 0
    assert "resilience.min_fraction" in doc["error"]
    assert [e["status"] for e in failed.events("run_failed")] == ["failed"]
    assert clients_by_state(failed.store_activations(1)) == {"succeeded": {0}, "failed": {1, 2, 3}}
    assert {a["injected"] for a in failed.activations(1) if a["state"] == "failed"} == {"failure"}
    assert model_doc(failed, 1) == {}

    # the failing cluster recovers: the run resumes, keeps client 0's stored update, re-invokes only the others
    healthy = text.replace("failure_rate: 1.0", "failure_rate: 0.0")
    assert healthy != text
    resumed = loop.start(healthy, workdir="w", resume=run_id)
    assert resumed.run_id == run_id and resumed.summary["status"] == "completed"
    assert resumed.summary["rounds_completed"] == 2
    by_client: dict[int, list[tuple[int, str]]] = {}
    for a in resumed.store_activations(1):
        by_client.setdefault(int(a["client_id"]), []).append((int(a["attempt"]), a["state"]))
    assert by_client[0] == [(1, "succeeded")]  # not invoked again
    for c in (1, 2, 3):
        assert sorted(by_client[c]) == [(1, "failed"), (2, "succeeded")]
    assert [int(r["round"]) for r in resumed.rounds()] == [1, 2]
    assert model_doc(resumed, 1)["metrics"]["clients"] == [0, 1, 2, 3]


def test_min_fraction_just_met_lets_every_round_go_on(loop: Loop) -> None:
    text, _ = loop.yaml(rounds=2, **_failing(good=2, bad=2))  # quorum: ceil(0.5 * 4) = 2, exactly two succeed
    run = loop.start(text)

    assert run.summary["status"] == "completed", run.summary.get("error")
    assert run.summary["rounds_completed"] == 2
    for row in run.rounds():
        r = int(row["round"])
        assert (int(row["selected"]), int(row["succeeded"]), int(row["failed"])) == (4, 2, 2)
        assert int(row["retries"]) == 0  # max_attempts 1
        assert clients_by_state(run.store_activations(r)) == {"succeeded": {0, 1}, "failed": {2, 3}}
        assert model_doc(run, r)["metrics"]["clients"] == [0, 1]

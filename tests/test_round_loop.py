"""The round loop's policies, run in process: target_accuracy, overselect, round_deadline_s, min_fraction.

Each test runs `start_command` (what `fedkeeper start` calls) on local clusters whose faults are chosen per
cluster: a reliable one, a slow one (injected latency) or a failing one (injected failures). Placement deals
client ids out in cluster order, so the test knows which clients are slow or failing. Assertions are on what
the run recorded (store documents, Logs/ files, the summary); times are only checked as loose bounds that the
policy itself implies (an injected latency is a floor; a round that abandoned its slow clients ended before it).
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from fedkeeper.errors import EXIT_FAILURE, RunFailed
from fedkeeper.tracker import rank_clients, select_clients
from round_support import Loop, Run, loop  # noqa: F401 - loop: the fixture

pytestmark = pytest.mark.integration

SLOW_MS = 20_000  # far beyond every deadline below: a slow client can only be waited for, never arrive in time


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


def _seed_ranking_last(ids: set[int], total: int, count: int, per_round: int, rounds: int) -> int:
    """The first seed whose round-1 selection holds `ids`, ranked after the first `per_round`, and whose later
    rounds rank none of them among their first `per_round` (deterministic, so the test is too)."""
    def ok(seed: int) -> bool:
        first = rank_clients(seed, 1, total, count)
        return ids <= set(first[per_round:]) and all(
            not ids & set(rank_clients(seed, r, total, count)[:per_round]) for r in range(2, rounds + 1))
    return next(s for s in range(1000) if ok(s))


def test_rank_clients_orders_the_selection() -> None:
    for seed in range(20):
        ranked = rank_clients(seed, 3, 10, 6)
        assert sorted(ranked) == select_clients(seed, 3, 10, 6) and len(set(ranked)) == 6
    assert any(rank_clients(s, 1, 10, 6) != sorted(rank_clients(s, 1, 10, 6)) for s in range(20))


def test_overselect_invokes_more_clients_and_aggregates_num_clients_per_round(loop: Loop) -> None:
    total, per_round, overselect = 8, 3, 0.5
    expected_count = min(total, math.ceil(per_round * (1 + overselect)))  # the loop's rule: ceil, capped at total
    assert expected_count == 5
    slow_ids = {6, 7}  # placement {lab: 6, slow: 2} deals ids 6 and 7 to the slow cluster
    seed = _seed_ranking_last(slow_ids, total, expected_count, per_round, rounds=2)
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
            ranked = rank_clients(seed, r, total, expected_count)
            invoked = {int(a["client_id"]) for a in run.store_activations(r)}
            assert invoked == set(ranked) and len(invoked) == expected_count > per_round
            # aggregated: the first per_round by rank; succeeded: client activations that succeeded (a faster
            # lower-ranked client may finish before the round stops waiting); the others were abandoned
            assert (int(row["selected"]), int(row["aggregated"])) == (expected_count, per_round)
            states = [a["state"] for a in run.store_activations(r)]
            assert int(row["succeeded"]) == states.count("succeeded") >= per_round
            assert int(row["abandoned"]) == states.count("abandoned") == expected_count - int(row["succeeded"])
            doc = model_doc(run, r)
            assert doc["num_updates"] == per_round
            assert doc["metrics"]["clients"] == sorted(ranked[:per_round])
            started = next(e for e in run.events("round_started") if e["round"] == r)
            assert started["ranked"] == ranked and started["selected"] == sorted(ranked)
        # round 1: the two slow clients were selected, ranked last; the round went on without waiting for them
        r1 = clients_by_state(run.store_activations(1))
        assert r1.get("abandoned") == slow_ids, r1
        assert r1.get("succeeded") == set(select_clients(seed, 1, total, expected_count)) - slow_ids
        assert {a["error"] for a in run.store_activations(1) if a["state"] == "abandoned"} == \
            {"enough clients succeeded (over-selection)"}
        assert float(run.rounds()[0]["invoke_s"]) < SLOW_MS / 1000

    invoked_first = {r: {int(a["client_id"]) for a in first.store_activations(r)} for r in (1, 2)}
    invoked_second = {r: {int(a["client_id"]) for a in second.store_activations(r)} for r in (1, 2)}
    assert invoked_first == invoked_second, "same seed, different clients invoked"
    assert invoked_first[1] != invoked_first[2]  # selection really depends on the round
    assert first.summary["model_sha256"] == second.summary["model_sha256"]


def test_overselect_waits_for_a_higher_ranked_straggler_and_skips_a_failed_one(loop: Loop) -> None:
    """Rank decides, not speed: the slow client ranked first is waited for and aggregated although faster
    lower-ranked ones finished first; a client that gave up is replaced by the next one in rank."""
    total, per_round, overselect = 6, 2, 1.0  # 4 of 6 selected, 2 aggregated
    slow, failing = 4, 5  # placement {lab: 4, slow: 1, bad: 1}
    straggle_ms = 1500

    def ok(seed: int) -> bool:
        ranked = rank_clients(seed, 1, total, 4)
        return ranked[0] == slow and ranked[1] == failing
    seed = next(s for s in range(2000) if ok(s))
    ranked = rank_clients(seed, 1, total, 4)
    text, _ = loop.yaml(clusters={"lab": {"concurrency": 2},
                                  "slow": {"faults": {"latency_ms": [straggle_ms, straggle_ms]}},
                                  "bad": {"faults": {"failure_rate": 1.0}}},
                        placement={"lab": 4, "slow": 1, "bad": 1}, rounds=1, per_round=per_round, seed=seed,
                        resilience={"overselect": overselect, "max_attempts": 2})
    run = loop.start(text)

    assert run.summary["status"] == "completed", run.summary.get("error")
    expected = sorted([slow, ranked[2]])  # the failed client's place goes to the next in rank
    assert model_doc(run, 1)["metrics"]["clients"] == expected
    states = clients_by_state(run.store_activations(1))
    assert states["failed"] == {failing} and slow in states["succeeded"]
    assert ranked[3] not in expected  # ranked last: abandoned or finished, never aggregated
    row = run.rounds()[0]
    assert float(row["invoke_s"]) >= straggle_ms / 1000 * 0.95  # it waited for the straggler
    assert int(row["aggregated"]) == per_round


def _arrivals(run: Run, round_number: int) -> list[int]:
    """Client ids in the order their successful activations ended (what the old rule aggregated by)."""
    done = [a for a in run.store_activations(round_number) if a["state"] == "succeeded"]
    return [int(a["client_id"]) for a in sorted(done, key=lambda a: float(a["end"]))]


@pytest.mark.slow
def test_overselect_gives_the_same_model_whatever_the_arrival_order(loop: Loop) -> None:
    """Same config and seed, per-client latency drawn from different fault seeds: the clients arrive in another
    order, the aggregated sets and the model are the same."""
    total, per_round, overselect, rounds = 8, 3, 0.6, 3
    count = math.ceil(per_round * (1 + overselect))
    assert count == 5
    runs = []
    for fault_seed, workdir in ((1, "a"), (2, "b")):
        text, _ = loop.yaml(clusters={"lab": {"concurrency": 5,
                                              "faults": {"latency_ms": [0, 1200], "seed": fault_seed}}},
                            placement={"lab": total}, rounds=rounds, per_round=per_round, seed=7,
                            resilience={"overselect": overselect})
        runs.append(loop.start(text, workdir=workdir))
    first, second = runs
    for run in runs:
        assert run.summary["status"] == "completed", run.summary.get("error")
    arrivals = [[_arrivals(run, r) for r in range(1, rounds + 1)] for run in runs]
    assert arrivals[0] != arrivals[1], "the fault seeds did not change the arrival order: the test proves nothing"
    # under the old rule (the first per_round to arrive) these runs would have aggregated different clients
    assert any(set(a[:per_round]) != set(b[:per_round]) for a, b in zip(*arrivals)), arrivals
    for r in range(1, rounds + 1):
        ranked = rank_clients(7, r, total, count)
        assert model_doc(first, r)["metrics"]["clients"] == model_doc(second, r)["metrics"]["clients"] \
            == sorted(ranked[:per_round])
    assert first.summary["model_sha256"] == second.summary["model_sha256"]


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
    assert (int(row["selected"]), int(row["succeeded"]), int(row["aggregated"])) == (6, 3, 3)
    assert (int(row["failed"]), int(row["timed_out"]), int(row["lost"])) == (0, 0, 0)  # abandoned is none of those
    assert int(row["abandoned"]) == 3
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
    assert doc["status"] == "quorum_lost" and doc["last_completed_round"] == 0
    assert "resilience.min_fraction" in doc["error"] and doc["reason"] == doc["error"]
    summary = json.loads((failed.folder / "summary.json").read_text())
    assert (summary["status"], summary["reason"]) == ("quorum_lost", doc["reason"])
    assert [e["status"] for e in failed.events("run_failed")] == ["quorum_lost"]
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


def test_a_round_row_written_before_a_kill_is_not_recorded_twice(loop: Loop) -> None:
    """A session killed after writing round 2's rounds.csv row but before the store recorded round 2 as completed:
    the resume runs round 2 again and rounds.csv holds it once (the stale row is dropped, and said so)."""
    text, _ = loop.yaml(clusters={"lab": {"concurrency": 3}}, placement={"lab": 4}, rounds=2, per_round=2)
    first = loop.start(text)
    assert [int(r["round"]) for r in first.rounds()] == [1, 2]
    # what the store holds when the kill lands between `RunLog.round` and `update_run(last_completed_round=2)`
    first.db["runs"].update_one({"_id": first.run_id}, {"$set": {"last_completed_round": 1, "status": "interrupted"}})

    resumed = loop.start(text, resume=first.run_id)
    assert resumed.summary["status"] == "completed" and resumed.summary["rounds_completed"] == 2
    assert [int(r["round"]) for r in resumed.rounds()] == [1, 2]
    assert [e["rounds"] for e in resumed.events("round_rows_dropped")] == [[2]]
    assert resumed.summary["model_sha256"] == first.summary["model_sha256"]
    assert resumed.summary["totals"]["selected"] == 4

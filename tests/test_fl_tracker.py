"""The tracker's state machine and resilience policy, against a scripted in-memory platform (fast)."""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from fedkeeper.config.models import Resilience
from fedkeeper.errors import RunFailed
from fedkeeper.providers.base import (
    AuthError,
    FunctionMissing,
    Invocation,
    PlatformError,
    State,
    Status,
    Throttled,
)
from fedkeeper.results.runlog import RunLog
from fedkeeper.secrets import Redactor
from fedkeeper.store import Store
from fedkeeper.tracker import Job, Tracker, select_clients


class ScriptedProvider:
    """Outcomes scripted per client and attempt: 'ok', 'fail', 'timeout' (stays pending), 'lost',
    'throttle' (invoke raises Throttled), 'missing' (invoke raises FunctionMissing), 'auth', 'platform'."""

    def __init__(self, script: dict[int | None, list[str]]) -> None:
        self.script = script
        self.calls: dict[int | None, int] = defaultdict(int)
        self.invocations: list[tuple[str, dict[str, Any]]] = []
        self.deployed: list[str] = []
        self.outcome: dict[str, str] = {}

    def invoke(self, name: str, payload: dict[str, Any]) -> Invocation:
        client = payload.get("client_id")
        steps = self.script.get(client, ["ok"])
        step = steps[min(self.calls[client], len(steps) - 1)]
        self.calls[client] += 1
        if step == "throttle":
            raise Throttled("c1", "429 too many requests", retry_after_s=0.0)
        if step == "missing" and name not in self.deployed:
            raise FunctionMissing("c1", f"no function {name}")
        if step == "auth":
            raise AuthError("c1", "401 unauthorized")
        if step == "platform":
            raise PlatformError("c1", "503 service unavailable")
        self.invocations.append((name, payload))
        act = f"act-{len(self.invocations)}"
        self.outcome[act] = "ok" if step == "missing" else step
        return Invocation("c1", name, act, time.time())

    def poll(self, inv: Invocation) -> Status:
        step = self.outcome[inv.activation_id]
        if step == "ok":
            return Status(State.SUCCEEDED, result={"ok": True, "duration_s": 0.01}, duration_s=0.01, cold=False)
        if step == "fail":
            return Status(State.FAILED, error="ValueError: boom")
        if step == "lost":
            return Status(State.LOST, error="no record")
        return Status(State.PENDING)

    def deploy(self, name: str) -> None:
        self.deployed.append(name)


class FakeFabric:
    def __init__(self, provider: ScriptedProvider) -> None:
        self._provider = provider

    def provider(self, cluster: str) -> ScriptedProvider:
        return self._provider

    def kind(self, cluster: str) -> str:
        return "openwhisk"


@pytest.fixture
def setup(mongomock_db: Any, tmp_path: Path):  # type: ignore[no-untyped-def]
    store = Store(mongomock_db, url="mongodb://127.0.0.1:1")
    store.ensure_indexes()
    runlog = RunLog(tmp_path / "Logs", "run1", Redactor())

    def make(script: dict[int | None, list[str]], **policy: Any) -> tuple[Tracker, ScriptedProvider]:
        provider = ScriptedProvider(script)
        defaults = dict(max_attempts=3, backoff_base_s=0.0, backoff_max_s=0.0, poll_initial_s=0.001,
                        poll_max_s=0.005, timeout_slack_s=0.0)
        defaults.update(policy)
        tracker = Tracker(FakeFabric(provider), store, runlog, Resilience(**defaults),
                          redeploy=lambda cluster, fn, name: provider.deploy(name))
        return tracker, provider

    yield make, store, runlog
    runlog.close()


def jobs(clients: list[int], timeout_s: float = 5.0) -> list[Job]:
    return [Job("run1", 1, c, "c1", "fl_client", "fk-x-fl-client", {"client_id": c}, timeout_s, 256) for c in clients]


def states(store: Store, client: int) -> list[str]:
    docs = sorted(store.find_activations("run1", round=1), key=lambda d: d["attempt"])
    return [d["state"] for d in docs if d["client_id"] == client]


def test_success_is_recorded_once_per_client(setup) -> None:  # type: ignore[no-untyped-def]
    make, store, runlog = setup
    tracker, provider = make({})
    outcome = tracker.run(jobs([0, 1, 2]))
    assert [j.state for j in outcome.jobs] == ["succeeded"] * 3
    assert outcome.counts.succeeded == 3 and outcome.counts.retries == 0
    for c in (0, 1, 2):
        assert states(store, c) == ["succeeded"]
    rows = (runlog.dir / "activations.csv").read_text().splitlines()
    assert len(rows) == 4  # header + 3


def test_failures_are_retried_until_success(setup) -> None:  # type: ignore[no-untyped-def]
    make, store, _ = setup
    tracker, provider = make({0: ["fail", "lost", "ok"]})
    outcome = tracker.run(jobs([0]))
    assert outcome.jobs[0].state == "succeeded"
    assert states(store, 0) == ["failed", "lost", "succeeded"]
    assert [p["attempt"] for _, p in provider.invocations] == [1, 2, 3]
    assert outcome.counts.retries == 2 and outcome.counts.failed == 1 and outcome.counts.lost == 1


def test_gives_up_after_max_attempts(setup) -> None:  # type: ignore[no-untyped-def]
    make, store, _ = setup
    tracker, _ = make({0: ["fail"]}, max_attempts=2)
    outcome = tracker.run(jobs([0, 1]))
    assert [j.state for j in outcome.jobs] == ["gave_up", "succeeded"]
    assert states(store, 0) == ["failed", "failed"]
    assert "boom" in (outcome.jobs[0].error or "")


def test_timeout_then_retry(setup) -> None:  # type: ignore[no-untyped-def]
    make, store, _ = setup
    tracker, _ = make({0: ["timeout", "ok"]})
    outcome = tracker.run(jobs([0], timeout_s=0.05))
    assert outcome.jobs[0].state == "succeeded"
    assert states(store, 0) == ["timed_out", "succeeded"]
    assert outcome.counts.timed_out == 1


def test_throttling_is_backed_off_and_not_counted_as_an_attempt(setup) -> None:  # type: ignore[no-untyped-def]
    make, store, runlog = setup
    tracker, provider = make({0: ["throttle", "throttle", "throttle", "throttle", "ok"]}, max_attempts=1)
    outcome = tracker.run(jobs([0]))
    assert outcome.jobs[0].state == "succeeded"  # 4 throttles did not use up the single attempt
    assert outcome.counts.throttled == 4 and outcome.counts.failed == 0
    assert states(store, 0) == ["succeeded"]
    assert (runlog.dir / "events.jsonl").read_text().count('"event": "throttled"') == 4


def test_missing_function_is_redeployed_and_retried(setup) -> None:  # type: ignore[no-untyped-def]
    make, store, runlog = setup
    tracker, provider = make({0: ["missing"]})
    outcome = tracker.run(jobs([0]))
    assert outcome.jobs[0].state == "succeeded"
    assert provider.deployed == ["fk-x-fl-client"]
    assert outcome.counts.redeploys == 1
    assert '"event": "redeploy"' in (runlog.dir / "events.jsonl").read_text()


def test_auth_error_stops_the_run(setup) -> None:  # type: ignore[no-untyped-def]
    make, _, _ = setup
    tracker, _ = make({0: ["auth"]})
    with pytest.raises(RunFailed, match="credentials rejected by cluster c1"):
        tracker.run(jobs([0]))


def test_platform_error_on_invoke_counts_as_a_failed_attempt(setup) -> None:  # type: ignore[no-untyped-def]
    make, store, _ = setup
    tracker, _ = make({0: ["platform", "ok"]})
    outcome = tracker.run(jobs([0]))
    assert outcome.jobs[0].state == "succeeded"
    assert states(store, 0) == ["failed", "succeeded"]


def test_round_deadline_proceeds_with_a_quorum(setup) -> None:  # type: ignore[no-untyped-def]
    make, store, _ = setup
    tracker, _ = make({2: ["timeout"]})
    js = jobs([0, 1, 2], timeout_s=60)
    start = time.time()
    outcome = tracker.run(js, deadline=start + 0.2, enough=lambda j: sum(x.state == "succeeded" for x in j) >= 2)
    assert outcome.deadline_hit
    assert [j.state for j in outcome.jobs] == ["succeeded", "succeeded", "abandoned"]
    assert states(store, 2) == ["abandoned"]


def test_deadline_without_quorum_keeps_waiting(setup) -> None:  # type: ignore[no-untyped-def]
    make, _, _ = setup
    tracker, _ = make({1: ["fail", "fail", "ok"], 2: ["fail", "fail", "ok"]})
    js = jobs([0, 1, 2])
    outcome = tracker.run(js, deadline=time.time(), enough=lambda j: sum(x.state == "succeeded" for x in j) >= 3)
    assert not outcome.deadline_hit
    assert all(j.state == "succeeded" for j in outcome.jobs)


def test_over_selection_stops_once_satisfied(setup) -> None:  # type: ignore[no-untyped-def]
    make, store, _ = setup
    tracker, _ = make({3: ["timeout"]})
    outcome = tracker.run(jobs([0, 1, 2, 3], timeout_s=60),
                          satisfied=lambda j: sum(x.state == "succeeded" for x in j) >= 3)
    assert sorted(j.state for j in outcome.jobs) == ["abandoned", "succeeded", "succeeded", "succeeded"]


def test_adopted_in_flight_activation_is_polled_before_reinvoking(setup) -> None:  # type: ignore[no-untyped-def]
    make, store, _ = setup
    tracker, provider = make({})
    provider.outcome["platform-7"] = "ok"
    store.insert_activation({"_id": "old", "run_id": "run1", "round": 1, "client_id": 0, "cluster": "c1",
                             "function": "fl_client", "attempt": 1, "state": "invoked",
                             "platform_activation_id": "platform-7", "submitted": time.time()})
    js = jobs([0])
    outcome = tracker.run(js, adopt={(1, 0, "fl_client"): store.find_activations("run1", round=1)[0]})
    assert outcome.jobs[0].state == "succeeded"
    assert provider.invocations == []  # nothing re-invoked
    assert states(store, 0) == ["succeeded"]


def test_lost_adopted_activation_is_reinvoked_with_a_new_attempt_number(setup) -> None:  # type: ignore[no-untyped-def]
    make, store, _ = setup
    tracker, provider = make({})
    provider.outcome["gone"] = "lost"
    store.insert_activation({"_id": "old", "run_id": "run1", "round": 1, "client_id": 0, "cluster": "c1",
                             "function": "fl_client", "attempt": 2, "state": "invoked",
                             "platform_activation_id": "gone", "submitted": time.time()})
    outcome = tracker.run(jobs([0]), adopt={(1, 0, "fl_client"): store.find_activations("run1", round=1)[0]})
    assert outcome.jobs[0].state == "succeeded"
    assert [p["attempt"] for _, p in provider.invocations] == [3]
    assert states(store, 0) == ["lost", "succeeded"]


def test_client_selection_is_deterministic_and_varies_by_round() -> None:
    a = select_clients(42, 3, 20, 10)
    assert a == select_clients(42, 3, 20, 10)
    assert a != select_clients(42, 4, 20, 10)
    assert len(set(a)) == 10 and all(0 <= c < 20 for c in a) and a == sorted(a)
    assert select_clients(1, 1, 5, 10) == [0, 1, 2, 3, 4]

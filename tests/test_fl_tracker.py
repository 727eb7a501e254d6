"""The tracker's state machine and resilience policy, against a scripted in-memory platform (fast)."""

from __future__ import annotations

import ast
import csv
import re
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

import fedkeeper.tracker as tracker_module
from fedkeeper.activations import (
    ACTIVATION_TRANSITIONS,
    JOB_TRANSITIONS,
    ActivationState,
    IllegalTransition,
    JobState,
    check_activation,
    check_job,
)
from fedkeeper.config.models import Resilience
from fedkeeper.errors import RunFailed
from fedkeeper.fabric import Fabric
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
from fedkeeper.tracker import Attempt, Job, Tracker, TrackerFabric, attempt_bases, in_flight, select_clients

DOCS = Path(__file__).resolve().parents[1] / "docs" / "reliability.md"


#: the 'late_start' scripts: seconds a call waits in the platform's queue, then runs
QUEUED_S, RUNS_S = 0.25, 0.3
#: the 'held_ok' script: seconds a call is reported held in the platform's own queue (`Status.queued`)
HELD_S = 0.6


class ScriptedProvider:
    """Outcomes scripted per client and attempt: 'ok', 'fail', 'timeout' (stays pending), 'lost',
    'throttle' (invoke raises Throttled), 'missing' (invoke raises FunctionMissing), 'auth', 'platform';
    'poll_throttle' / 'poll_missing': accepted, then polling raises Throttled / FunctionMissing (as Lambda and
    GCF report them)."""

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
        if step == "poll_throttle":
            raise Throttled("c1", "429 too many requests", retry_after_s=0.0)
        if step == "poll_missing":
            raise FunctionMissing("c1", f"no function {inv.name}")
        if step == "ok":
            return Status(State.SUCCEEDED, result={"ok": True, "duration_s": 0.01}, duration_s=0.01, cold=False)
        if step == "fail":
            return Status(State.FAILED, error="ValueError: boom")
        if step == "lost":
            return Status(State.LOST, error="no record")
        if step == "held_ok":  # held in the platform's own queue (`queued`) for HELD_S, then runs RUNS_S
            elapsed = time.time() - inv.submitted
            if elapsed < HELD_S:
                return Status(State.PENDING, queued=True)
            if elapsed < HELD_S + RUNS_S:
                return Status(State.PENDING, start=inv.submitted + HELD_S)
            return Status(State.SUCCEEDED, result={"ok": True, "duration_s": RUNS_S}, duration_s=RUNS_S,
                          start=inv.submitted + HELD_S, cold=False)
        if step.startswith("late_start"):  # queued on the platform for QUEUED_S, then runs RUNS_S (or for ever)
            started = inv.submitted + QUEUED_S
            elapsed = time.time() - inv.submitted
            if elapsed < QUEUED_S:
                return Status(State.PENDING)
            if step == "late_start_ok" and elapsed >= QUEUED_S + RUNS_S:
                return Status(State.SUCCEEDED, result={"ok": True, "duration_s": RUNS_S}, duration_s=RUNS_S,
                              start=started, cold=False)
            return Status(State.PENDING, start=started)
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

    def max_inflight(self, cluster: str) -> int:
        return 1_000_000

    def poll_max_s(self, cluster: str) -> float | None:
        return None  # a remote platform: the policy's poll_max_s applies


@pytest.fixture
def setup(nx_server: str, nx_db: Any, tmp_path: Path):  # type: ignore[no-untyped-def]
    store = Store(nx_db, url=nx_server)
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
    with (runlog.dir / "activations.csv").open() as handle:  # the plain strings, as earlier versions wrote them
        assert [row["state"] for row in csv.DictReader(handle)] == ["succeeded"] * 3


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


def test_a_calls_timeout_counts_from_when_the_platform_started_it(setup) -> None:  # type: ignore[no-untyped-def]
    """Queued 0.25 s, then 0.3 s of work under a 0.4 s timeout: over the limit counted from the submission, within
    it from the start the platform reports (the local platform's calls queued behind a running one)."""
    make, store, _ = setup
    tracker, _ = make({0: ["late_start_ok"]})
    outcome = tracker.run(jobs([0], timeout_s=0.4))
    assert outcome.jobs[0].state == "succeeded"
    assert states(store, 0) == ["succeeded"] and outcome.counts.timed_out == 0


def test_a_call_the_platform_holds_unstarted_in_its_queue_is_not_timed_out(setup) -> None:  # type: ignore[no-untyped-def]
    """Held 0.6 s in the platform's queue (`Status.queued`), then 0.3 s of work under a 0.4 s timeout: its limit
    begins when it starts; a pending call the platform does not say is queued still times out from submission."""
    make, store, _ = setup
    tracker, _ = make({0: ["held_ok"], 1: ["timeout", "ok"]})
    outcome = tracker.run(jobs([0, 1], timeout_s=0.4))
    assert [j.state for j in outcome.jobs] == ["succeeded", "succeeded"]
    assert states(store, 0) == ["succeeded"] and states(store, 1) == ["timed_out", "succeeded"]
    tracker, _ = make({2: ["held_ok", "ok"]}, invocation_timeout_s=0.4)  # an explicit bound on the whole call
    outcome = tracker.run(jobs([2], timeout_s=0.4))
    assert states(store, 2) == ["timed_out", "succeeded"]


def test_a_call_that_started_late_still_times_out_from_its_start(setup) -> None:  # type: ignore[no-untyped-def]
    make, store, _ = setup
    tracker, _ = make({0: ["late_start_hang", "ok"]})
    t0 = time.time()
    outcome = tracker.run(jobs([0], timeout_s=0.4))
    assert outcome.jobs[0].state == "succeeded" and outcome.counts.timed_out == 1
    assert states(store, 0) == ["timed_out", "succeeded"]
    assert time.time() - t0 >= QUEUED_S + 0.4  # given up at start + timeout (+ slack 0), not at submission + timeout


def test_throttling_is_backed_off_and_not_counted_as_an_attempt(setup) -> None:  # type: ignore[no-untyped-def]
    make, store, runlog = setup
    tracker, provider = make({0: ["throttle", "throttle", "throttle", "throttle", "ok"]}, max_attempts=1)
    outcome = tracker.run(jobs([0]))
    assert outcome.jobs[0].state == "succeeded"  # 4 throttles did not use up the single attempt
    assert outcome.counts.throttled == 4 and outcome.counts.failed == 0
    assert states(store, 0) == ["succeeded"]
    assert (runlog.dir / "events.jsonl").read_text().count('"event": "throttled"') == 4


def test_throttling_seen_when_polling_does_not_use_up_attempts(setup) -> None:  # type: ignore[no-untyped-def]
    """Throttling is the platform's load, never the client's failure, whenever it is reported."""
    make, store, _ = setup
    tracker, _ = make({0: ["poll_throttle", "poll_throttle", "fail", "ok"]}, max_attempts=2)
    outcome = tracker.run(jobs([0]))
    assert outcome.jobs[0].state == "succeeded"  # two throttles, one failure, and the second counted attempt
    assert states(store, 0) == ["throttled", "throttled", "failed", "succeeded"]
    assert [r["attempt"] for r in store.find_activations("run1", round=1)] == [1, 2, 3, 4]
    assert outcome.counts.throttled == 2 and outcome.counts.failed == 1


def test_a_function_missing_when_polled_counts_one_attempt(setup) -> None:  # type: ignore[no-untyped-def]
    """Without redeploy, a missing function is one failed attempt, not two."""
    make, store, _ = setup
    tracker, _ = make({0: ["poll_missing", "ok"]}, max_attempts=2, redeploy_missing=False)
    outcome = tracker.run(jobs([0]))
    assert outcome.jobs[0].state == "succeeded"
    assert [r["attempt"] for r in store.find_activations("run1", round=1)] == [1, 2]


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
    outcome = tracker.run(js)  # the tracker finds the record itself
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
    outcome = tracker.run(jobs([0]))
    assert outcome.jobs[0].state == "succeeded"
    assert [p["attempt"] for _, p in provider.invocations] == [3]
    assert states(store, 0) == ["lost", "succeeded"]


# ---------------------------------------------------------------------------------------------- resume


def record(store: Store, attempt: int, state: str, *, client: int | None = 0, round_number: int = 1,
           function: str = "fl_client") -> str:
    """An activation record as an interrupted orchestrator (of this or an earlier version) left it."""
    platform_id = f"p-{round_number}-{client}-{attempt}"
    store.insert_activation({"_id": f"old-{platform_id}", "run_id": "run1", "round": round_number,
                             "client_id": client, "cluster": "c1", "function": function, "name": "fk-x-fl-client",
                             "attempt": attempt, "state": state, "platform_activation_id": platform_id,
                             "submitted": time.time()})
    return platform_id


def test_attempt_numbers_continue_after_a_resume(setup) -> None:  # type: ignore[no-untyped-def]
    make, store, _ = setup
    tracker, provider = make({0: ["fail", "ok"]})
    record(store, 1, "failed")
    record(store, 2, "timed_out")
    record(store, 1, "failed", client=None, function="fl_server_aggregator")
    record(store, 7, "failed", client=1, round_number=2)  # another round's records change nothing here
    aggregator = Job("run1", 1, None, "c1", "fl_server_aggregator", "fk-x-agg", {"client_id": None}, 5.0, 256)
    outcome = tracker.run(jobs([0, 1]) + [aggregator])
    assert all(j.state is JobState.SUCCEEDED for j in outcome.jobs)
    numbers = [(p["client_id"], p["attempt"]) for _, p in provider.invocations]
    assert sorted(numbers, key=str) == sorted([(0, 3), (0, 4), (1, 1), (None, 2)], key=str)
    assert states(store, 0) == ["failed", "timed_out", "failed", "succeeded"]
    assert outcome.jobs[0].attempts == 2  # the budget is this orchestrator's: numbering only continues


def test_a_crashed_runs_in_flight_call_is_adopted_and_not_reinvoked(setup) -> None:  # type: ignore[no-untyped-def]
    make, store, runlog = setup
    tracker, provider = make({})
    provider.outcome[record(store, 1, "invoked")] = "ok"  # client 0: its answer was never read
    record(store, 1, "failed", client=1)
    record(store, 2, "invoked", client=2)
    record(store, 3, "failed", client=2)  # client 2's latest attempt is over: nothing to adopt
    seen: list[tuple[int | None, str]] = []
    tracker.listeners.append(lambda job, attempt, what: seen.append((job.client_id, what)))
    outcome = tracker.run(jobs([0, 1, 2]))
    assert [j.state for j in outcome.jobs] == [JobState.SUCCEEDED] * 3
    assert (0, "adopted") in seen and (0, "invoked") not in seen
    assert sorted(p["client_id"] for _, p in provider.invocations) == [1, 2]
    assert {p["client_id"]: p["attempt"] for _, p in provider.invocations} == {1: 2, 2: 4}
    assert states(store, 0) == ["succeeded"]  # the adopted record was finished in place
    assert states(store, 2) == ["invoked", "failed", "succeeded"]  # an older `invoked` stays as it was
    with (runlog.dir / "activations.csv").open() as handle:
        adopted = [row for row in csv.DictReader(handle) if row["client_id"] == "0"]
    assert [(row["activation_id"], row["attempt"], row["state"]) for row in adopted] == [
        ("old-p-1-0-1", "1", "succeeded")]


def test_resume_reads_the_latest_attempt_of_each_job_whatever_the_record_order() -> None:
    def rec(client: int | None, attempt: int, state: str, function: str = "fl_client") -> dict[str, Any]:
        return {"_id": f"{client}-{attempt}", "round": 1, "client_id": client, "function": function,
                "attempt": attempt, "state": state}

    records = [rec(0, 1, "invoked"), rec(0, 2, "failed"), rec(1, 1, "throttled"), rec(1, 2, "invoked"),
               rec(None, 3, "invoked", "fl_server_aggregator"), rec(2, 1, "abandoned")]
    for order in (records, records[::-1]):
        assert attempt_bases(order) == {0: 2, 1: 2, None: 3, 2: 1}
        assert {k: r["_id"] for k, r in in_flight(order).items()} == {
            (1, 1, "fl_client"): "1-2", (1, None, "fl_server_aggregator"): "None-3"}
    assert attempt_bases([]) == {} and in_flight([]) == {}


# ---------------------------------------------------------------------------------------------- states


def test_record_states_are_the_strings_earlier_versions_stored() -> None:
    assert [s.value for s in ActivationState] == [
        "invoked", "succeeded", "failed", "timed_out", "lost", "throttled", "abandoned"]
    assert ActivationState("timed_out") is ActivationState.TIMED_OUT
    assert ActivationState.INVOKED == "invoked" and str(ActivationState.LOST) == "lost"
    assert f"{ActivationState.ABANDONED}" == "abandoned"
    for outcome in (State.SUCCEEDED, State.FAILED, State.TIMED_OUT, State.LOST):
        assert ActivationState.of(outcome).value == outcome.value
    with pytest.raises(IllegalTransition, match="pending outcome is not a final activation state"):
        ActivationState.of(State.PENDING)


def test_activation_transitions() -> None:
    A = ActivationState
    assert set(ACTIVATION_TRANSITIONS) == set(A) | {None}
    assert ACTIVATION_TRANSITIONS[None] == {A.INVOKED, A.FAILED}
    assert ACTIVATION_TRANSITIONS[A.INVOKED] == set(A) - {A.INVOKED}
    assert [s for s in A if not s.final] == [A.INVOKED]
    for current in A:
        for new in A:
            if new in ACTIVATION_TRANSITIONS[current]:
                check_activation(current, new)
            else:
                with pytest.raises(IllegalTransition):
                    check_activation(current, new)
    with pytest.raises(IllegalTransition, match=r"'succeeded' cannot become 'failed' \(allowed: none, it is final\)"):
        check_activation(A.SUCCEEDED, A.FAILED)
    with pytest.raises(IllegalTransition, match=r"a new record cannot become 'succeeded' \(allowed: failed, invoked\)"):
        check_activation(None, A.SUCCEEDED)


def test_job_transitions() -> None:
    J = JobState
    assert set(JOB_TRANSITIONS) == set(J)
    assert {s for s in J if s.done} == {J.SUCCEEDED, J.GAVE_UP, J.ABANDONED}
    assert [s for s in J if J.SUCCEEDED in JOB_TRANSITIONS[s]] == [J.RUNNING]  # only an answered attempt succeeds
    assert all(J.ABANDONED in JOB_TRANSITIONS[s] for s in J if not s.done)
    with pytest.raises(IllegalTransition, match="job: 'waiting' cannot become 'succeeded'"):
        check_job(J.WAITING, J.SUCCEEDED)
    with pytest.raises(IllegalTransition, match="'running' cannot become 'running'"):
        check_job(J.RUNNING, J.RUNNING)


def test_the_tracker_refuses_an_illegal_transition(setup) -> None:  # type: ignore[no-untyped-def]
    make, store, _ = setup
    tracker, provider = make({})
    finished: list[Attempt] = []
    tracker.listeners.append(lambda job, attempt, what: finished.append(attempt) if what == "succeeded" else None)
    outcome = tracker.run(jobs([0]))
    attempt = finished[0]
    assert attempt.state is ActivationState.SUCCEEDED
    with pytest.raises(IllegalTransition, match=rf"activation {attempt.id} \(attempt 1\): 'succeeded' cannot "
                                                r"become 'abandoned'"):
        attempt.move(ActivationState.ABANDONED)
    assert attempt.state is ActivationState.SUCCEEDED
    # a finished job handed back with a record that says it is in flight: refused, nothing invoked or written
    record(store, 2, "invoked")
    with pytest.raises(IllegalTransition, match="job fl_client round 1 client 0: 'succeeded' cannot become 'running'"):
        tracker.run(outcome.jobs)
    assert len(provider.invocations) == 1
    assert states(store, 0) == ["succeeded", "invoked"]


def _doc_table(heading: str) -> dict[str, set[str]]:
    """state → next states, from a table of docs/reliability.md (first cell: the state, last: the next states)."""
    section = DOCS.read_text().split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        if line.startswith("| `") or line.startswith("| (new record)"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows[cells[0].strip("`")] = set(re.findall(r"`([a-z_]+)`", cells[-1]))
    return rows


def test_every_state_and_transition_is_documented() -> None:
    assert _doc_table("Activation record states") == {
        "(new record)" if state is None else state.value: {s.value for s in nexts}
        for state, nexts in ACTIVATION_TRANSITIONS.items()}
    assert _doc_table("Job states") == {state.value: {s.value for s in nexts}
                                        for state, nexts in JOB_TRANSITIONS.items()}


def test_the_tracker_knows_no_platform_and_no_test_fabric() -> None:
    from fedkeeper.providers import registry

    assert issubclass(Fabric, TrackerFabric)
    assert isinstance(FakeFabric(ScriptedProvider({})), TrackerFabric)
    tree = ast.parse(Path(tracker_module.__file__).read_text())
    imported = {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert {m for m in imported if m == "fedkeeper.fabric" or m.startswith("fedkeeper.providers.")} == {
        "fedkeeper.providers.base"}
    called = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert "hasattr" not in called  # no probing for what kind of fabric it got
    used = {n.attr for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Attribute) and n.value.attr == "fabric"}
    assert used == {"provider", "kind", "max_inflight", "poll_max_s"}  # the TrackerFabric protocol, nothing else
    words = set(registry.kinds()) | {alias for spec in registry.platforms() for alias in spec.legacy_aliases}
    literals = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    assert words and not literals & words


def test_client_selection_is_deterministic_and_varies_by_round() -> None:
    a = select_clients(42, 3, 20, 10)
    assert a == select_clients(42, 3, 20, 10)
    assert a != select_clients(42, 4, 20, 10)
    assert len(set(a)) == 10 and all(0 <= c < 20 for c in a) and a == sorted(a)
    assert select_clients(1, 1, 5, 10) == [0, 1, 2, 3, 4]


# ---------------------------------------------------------------------------------------------- round mirrors


def same_records(mine: list[dict[str, Any]] | None, read: list[dict[str, Any]]) -> bool:
    """Equal records, floats to 12 significant digits: the embedded store's `$set` keeps 15 (1796329951.5771954
    comes back as 1796329951.5772), a real MongoDB all of them."""
    def plain(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: float(f"{v:.12g}") if isinstance(v, float) else v for k, v in r.items()} for r in records]

    return mine is not None and plain(mine) == plain(read)


def test_a_mirrored_round_is_what_the_store_holds(setup) -> None:  # type: ignore[no-untyped-def]
    """The records a round's tracker keeps (`Tracker.mirror`) equal a store read after retries, throttles, an
    adopted call of an interrupted session and a settled one, and another round's writes stay out of it."""
    make, store, _ = setup
    tracker, provider = make({0: ["fail", "lost", "ok"], 1: ["poll_throttle", "ok"], 2: ["throttle", "ok"],
                              3: ["timeout", "ok"]})
    provider.outcome[record(store, 1, "invoked", client=4)] = "ok"  # an interrupted session's call: adopted
    record(store, 1, "invoked", client=5)  # its update is in the store: settled, not invoked again
    record(store, 1, "failed", client=None, function="fl_server_aggregator")
    start = store.find_activations("run1", round=1)
    tracker.mirror("run1", 1, start)
    tracker.settle_stored("run1", 1, [{"activation_id": "old-p-1-5-1", "created": time.time()}])
    tracker.run(jobs([0, 1, 2, 3, 4], timeout_s=0.05), records=start)
    tracker.run([Job("run1", 2, 0, "c1", "fl_client", "fk-x-fl-client", {"client_id": 0}, 5.0, 256)])
    mirrored = tracker.mirrored("run1", 1)
    assert same_records(mirrored, store.find_activations("run1", round=1))
    assert {r["state"] for r in mirrored if r["client_id"] == 5} == {"succeeded"}
    mirrored[0]["state"] = "changed"  # a copy: the caller's changes stay out of the tracker's records
    assert same_records(tracker.mirrored("run1", 1), store.find_activations("run1", round=1))
    tracker.unmirror("run1", 1)
    assert tracker.mirrored("run1", 1) is None and tracker.mirrored("run1", 2) is None


def test_a_failed_write_drops_the_mirrors(setup) -> None:  # type: ignore[no-untyped-def]
    """A batch the store refused may be partly written: the store alone knows the round then."""
    make, store, _ = setup
    tracker, _ = make({})
    tracker.mirror("run1", 1, [])
    tracker.run(jobs([0]))

    def refuse(*_: Any, **__: Any) -> None:
        raise RuntimeError("store down")

    store.record_activations = refuse  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        tracker.run(jobs([1]))
    assert tracker.mirrored("run1", 1) is None

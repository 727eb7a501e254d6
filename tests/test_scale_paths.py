"""The per-client paths issue 18 made cheaper: the tracker's passes over a capped cluster, the store server's
insert handling, and the per-process profiles bench/bench_scale.py --profile prints (fast, in-process except the
one worker and one store server the profile tests start)."""

from __future__ import annotations

import logging
import pstats
import time
from pathlib import Path
from typing import Any

import pymongo
import pytest

from fedkeeper.activations import JobState
from fedkeeper.config.models import Resilience
from fedkeeper.providers.base import Invocation, State, Status
from fedkeeper.results.runlog import RunLog
from fedkeeper.secrets import Redactor
from fedkeeper.store.embedded import NxServer
from fedkeeper.tracker import Job, Tracker
from local_support import deploy, make_provider, wait_until


class CappedProvider:
    """Each call settles after `polls_to_settle` polls; client ids in `fail_once` fail their first attempt."""

    def __init__(self, fail_once: set[int], polls_to_settle: int = 2) -> None:
        self.fail_once = set(fail_once)
        self.polls_to_settle = polls_to_settle
        self.submitted: list[tuple[int, int]] = []  # (client, attempt) in submission order
        self.polls: dict[str, int] = {}
        self.who: dict[str, tuple[int, int]] = {}
        self.running = 0
        self.most_running = 0

    def invoke(self, name: str, payload: dict[str, Any]) -> Invocation:
        key = (int(payload["client_id"]), int(payload["attempt"]))
        self.submitted.append(key)
        act = f"act-{len(self.submitted)}"
        self.who[act], self.polls[act] = key, 0
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        return Invocation("c1", name, act, time.time())

    def poll(self, inv: Invocation) -> Status:
        self.polls[inv.activation_id] += 1
        if self.polls[inv.activation_id] < self.polls_to_settle:
            return Status(State.PENDING)
        self.running -= 1
        client, attempt = self.who[inv.activation_id]
        if client in self.fail_once and attempt == 1:
            return Status(State.FAILED, error="ValueError: first attempt fails")
        return Status(State.SUCCEEDED, result={"ok": True}, duration_s=0.001)


class CappedFabric:
    def __init__(self, provider: CappedProvider, cap: int) -> None:
        self._provider, self.cap = provider, cap

    def provider(self, cluster: str) -> CappedProvider:
        return self._provider

    def kind(self, cluster: str) -> str:
        return "local"

    def max_inflight(self, cluster: str) -> int:
        return self.cap

    def poll_max_s(self, cluster: str) -> float | None:
        return 0.001


class MemoryRecords:
    """The store's activation records in memory; `fail_after` writes, every write raises (a store gone away)."""

    def __init__(self, fail_after: int | None = None, delay_s: float = 0.0) -> None:
        self.docs: dict[str, dict[str, Any]] = {}
        self.writes = 0
        self.fail_after = fail_after
        self.delay_s = delay_s

    def find_activations(self, run_id: str, round: int | None = None, state: Any = None) -> list[dict[str, Any]]:
        return [dict(d) for d in self.docs.values() if d["run_id"] == run_id and (round is None or d["round"] == round)
                and (state is None or d["state"] == state)]

    def record_activations(self, inserts: Any = (), updates: Any = ()) -> None:
        if self.fail_after is not None and self.writes >= self.fail_after:
            raise RuntimeError("store unreachable")
        time.sleep(self.delay_s)
        self.writes += 1
        for doc in inserts:
            self.docs.setdefault(doc["_id"], dict(doc))
        for activation_id, fields in updates:
            if activation_id in self.docs:
                self.docs[activation_id].update(fields)


def _tracker(tmp_path: Path, provider: CappedProvider, records: MemoryRecords, cap: int) -> tuple[Tracker, RunLog]:
    runlog = RunLog(tmp_path / "Logs", "run1", Redactor())
    policy = Resilience(max_attempts=3, backoff_base_s=0.0, backoff_max_s=0.0, poll_initial_s=0.001,
                        poll_max_s=0.002, timeout_slack_s=0.0)
    return Tracker(CappedFabric(provider, cap), records, runlog, policy), runlog


def _jobs(n: int) -> list[Job]:
    return [Job("run1", 1, c, "c1", "fl_client", "fk-x-fl-client", {"client_id": c}, 5.0, 256) for c in range(n)]


def test_a_capped_cluster_gets_the_jobs_in_order_and_a_retry_keeps_its_place(tmp_path: Path) -> None:
    provider, records = CappedProvider(fail_once={1, 4}), MemoryRecords(delay_s=0.002)
    tracker, runlog = _tracker(tmp_path, provider, records, cap=3)
    try:
        outcome = tracker.run(jobs := _jobs(12))
    finally:
        tracker.close()
        runlog.close()
    assert all(j.state is JobState.SUCCEEDED for j in jobs) and outcome.counts.succeeded == 12
    assert outcome.counts.retries == 2
    assert provider.most_running <= 3  # never more in flight than the cluster's cap
    firsts = [c for c, attempt in provider.submitted if attempt == 1]
    assert firsts == list(range(12))  # first attempts in the jobs' order
    # a failed client goes back to its place in the queue, not to its end: client 1's retry goes out before the
    # clients still queued behind it when it failed (the last ones), as a scan of every job in order sent it
    assert provider.submitted.index((1, 2)) < provider.submitted.index((11, 1))
    assert provider.submitted.index((1, 2)) < provider.submitted.index((4, 2))
    # every record is in the store, final, when `run` returns
    assert len(records.docs) == 14 and all(d["state"] in ("succeeded", "failed") for d in records.docs.values())


def test_a_record_write_that_fails_stops_the_run(tmp_path: Path) -> None:
    provider, records = CappedProvider(fail_once=set(), polls_to_settle=50), MemoryRecords(fail_after=0)
    tracker, runlog = _tracker(tmp_path, provider, records, cap=2)
    try:
        with pytest.raises(RuntimeError, match="store unreachable"):
            tracker.run(_jobs(6))
        assert records.writes == 0 and provider.submitted  # it stopped on the first batch's failure
    finally:
        try:  # what gathered since the refused batch is refused as well: close says so, the run stopped already
            tracker.close()
        except RuntimeError as exc:
            assert "store unreachable" in str(exc)
        runlog.close()


def test_the_local_worker_writes_its_profile_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "profiles"
    out.mkdir()
    monkeypatch.setenv("FK_PROFILE_DIR", str(out))
    provider = make_provider(tmp_path / "work", concurrency=1, keep_warm_s=60)
    try:
        name = deploy(provider, "echo")
        status = provider.wait(provider.invoke(name, {"x": 1}), 30)
        assert status.state is State.SUCCEEDED
    finally:
        provider.close()  # the worker's stdin closes: it writes its profile and exits
    files = list(out.glob(f"worker-{name}-*.prof"))
    assert len(files) == 1
    names = {fn for (_file, _line, fn) in pstats.Stats(str(files[0])).stats}
    assert "handle" in names  # the handler's call is in it


def _profiled(path: Path, function: str) -> bool:
    try:
        return any(fn == function for (_file, _line, fn) in pstats.Stats(str(path)).stats)
    except (OSError, EOFError, ValueError, TypeError):
        return False


def test_the_store_server_writes_a_profile_per_connection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "profiles"
    monkeypatch.setenv("FK_PROFILE_DIR", str(out))
    server = NxServer.in_dir(tmp_path / "nx")
    url = server.start()
    try:
        client: pymongo.MongoClient = pymongo.MongoClient(url, serverSelectionTimeoutMS=5000)
        client["t"]["c"].insert_one({"_id": 1})
        open_client: pymongo.MongoClient = pymongo.MongoClient(url, serverSelectionTimeoutMS=5000)
        open_client["t"]["c"].find_one({"_id": 1})  # still connected when the server stops
        client.close()
        # the closed connection's thread writes its profile as it ends: let it, before the server is stopped
        assert wait_until(lambda: any(_profiled(f, "handle_insert") for f in out.glob("store-*.prof")), 20.0)
    finally:
        server.stop()
        open_client.close()
    files = list(out.glob("store-*.prof"))
    stats = pstats.Stats(*map(str, files))
    called = {fn for (_file, _line, fn) in stats.stats}
    assert {"handle_insert", "handle_command"} <= called


def test_the_store_server_does_not_format_an_insert_s_documents(monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    from nx_27017.handler import NeoSQLiteHandler

    from fedkeeper.store import nxserve

    monkeypatch.setattr(NeoSQLiteHandler, "handle_insert", NeoSQLiteHandler.handle_insert)  # restored afterwards
    nxserve.quiet_insert_sections()
    nxserve.quiet_insert_sections()  # idempotent: wrapped once
    handler = NeoSQLiteHandler(":memory:")
    blob = b"\x01" * 10_000
    msg = {"request_id": 7, "sections": [("body", {"insert": "updates", "$db": "t"}),
                                         ("payload_docs", [{"_id": "a", "blob": blob}, {"_id": "b", "blob": blob}])]}
    with caplog.at_level(logging.DEBUG, logger="nx_27017"):
        request_id, reply = handler.handle_insert(msg)
    assert request_id == 7 and reply["ok"] == 1 and reply["n"] == 2
    logged = [r.getMessage() for r in caplog.records if "handle_insert sections" in r.getMessage()]
    assert logged == ["handle_insert sections: <2 sections>"]
    found = handler.handle_command({"request_id": 8, "sections": [("body", {"find": "updates", "$db": "t",
                                                                           "filter": {"_id": "b"}})]})[1]
    assert found["cursor"]["firstBatch"][0]["blob"] == blob  # stored as it came

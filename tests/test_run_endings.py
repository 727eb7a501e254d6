"""Every way a run ends leaves summary.json, the end event and the store's runs document with the same status
and reason: completed (all rounds, or the target accuracy), quorum_lost (tests/test_round_loop.py), failed (a
store or platform error mid-run, or a bug), interrupted (tests/test_run_counts.py in process, tests/test_sigterm.py
through SIGTERM). `--resume` of a complete run runs nothing and exits 0.

Runs are in process (`start_command`, as in tests/test_round_loop.py) on the session's nx-27017 server.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymongo
import pytest

from fedkeeper.results.runlog import RunLog
from fedkeeper.runtime.blobstore import BlobStore
from fedkeeper.scenarios import federated_learning as fl_module
from fedkeeper.store.errors import StoreUnavailable
from fedkeeper.store.repository import Store
from round_support import Run, experiment_yaml, start_in_process

pytestmark = pytest.mark.integration


class Harness:
    def __init__(self, url: str, tmp: Path) -> None:
        self.url, self.tmp = url, tmp
        self.client: pymongo.MongoClient = pymongo.MongoClient(url, serverSelectionTimeoutMS=5000)
        self.db = f"t_{uuid.uuid4().hex[:12]}"

    def config(self, **kwargs: Any) -> str:
        kwargs.setdefault("clusters", {"lab": {"concurrency": 3}})
        kwargs.setdefault("placement", {"lab": 4})
        return experiment_yaml(self.url, db=self.db, **kwargs)

    def write(self, text: str) -> Path:
        path = self.tmp / "config.yaml"
        path.write_text(text)
        return path

    def run_doc(self, run_id: str) -> dict[str, Any]:
        return self.client[self.db]["runs"].find_one({"_id": run_id}) or {}

    def only_run(self) -> tuple[str, Path]:
        folder = next((self.tmp / "Logs").iterdir())
        return folder.name, folder


@pytest.fixture
def harness(nx_server: str, tmp_path: Path) -> Iterator[Harness]:
    h = Harness(nx_server, tmp_path)
    try:
        yield h
    finally:
        h.client.drop_database(h.db)
        h.client.close()


def _end_event(folder: Path) -> dict[str, Any]:
    events = [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]
    return [e for e in events if e["event"] in ("run_finished", "run_failed", "run_interrupted")][-1]


def _agree(harness: Harness, folder: Path, status: str) -> dict[str, Any]:
    """summary.json, the end event and the runs document say the same status and reason; returns the summary."""
    summary = json.loads((folder / "summary.json").read_text())
    doc = harness.run_doc(summary["run_id"])
    event = _end_event(folder)
    assert summary["status"] == event["status"] == doc["status"] == status
    assert summary["reason"] == event["reason"] == doc["reason"] and summary["reason"]
    return summary


def test_target_reached_says_so_and_resuming_the_complete_run_runs_nothing(harness: Harness, run_cli: Any) -> None:
    text = harness.config(rounds=8, per_round=3, target_accuracy=0.5)
    run = start_in_process(harness.tmp, text, harness.client)
    summary = _agree(harness, run.folder, "completed")
    last = summary["rounds_completed"]
    assert last < 8
    assert re.fullmatch(rf"target accuracy 0\.5 reached in round {last} \(accuracy 0\.\d{{4}}\)", summary["reason"])
    events_before = (run.folder / "events.jsonl").read_text()
    activations_before = harness.client[harness.db]["activations"].count_documents({})

    again = start_in_process(harness.tmp, text, harness.client, resume=run.run_id)
    assert again.summary["already_complete"] is True
    assert (again.summary["status"], again.summary["reason"]) == ("completed", summary["reason"])
    assert (run.folder / "events.jsonl").read_text() == events_before  # not even a run_resumed event
    assert harness.client[harness.db]["activations"].count_documents({}) == activations_before
    assert harness.run_doc(run.run_id)["last_completed_round"] == last

    config = harness.write(text)
    result = run_cli("start", "-c", config, "--resume", run.run_id, cwd=harness.tmp)
    assert result.code == 0, result.stderr
    assert f"run {run.run_id} is already complete (target accuracy 0.5 reached in round {last}" in result.stderr
    assert harness.client[harness.db]["activations"].count_documents({}) == activations_before


def test_all_rounds_done_is_the_reason_and_the_console_ends_with_it(harness: Harness, run_cli: Any) -> None:
    config = harness.write(harness.config(rounds=2))
    result = run_cli("start", "-c", config, cwd=harness.tmp)
    assert result.code == 0, result.stderr
    run_id, folder = harness.only_run()
    summary = _agree(harness, folder, "completed")
    assert summary["reason"] == "all 2 rounds completed"
    assert result.stdout.strip().splitlines()[-1] == f"run {run_id} completed: all 2 rounds completed"
    # more rounds asked of a run that completed its rounds continue it; the same number is complete
    assert run_cli("start", "-c", config, "--resume", run_id, cwd=harness.tmp).code == 0
    assert harness.run_doc(run_id)["last_completed_round"] == 2
    more = run_cli("start", "-c", config, "--resume", run_id, "--rounds", "3", cwd=harness.tmp)
    assert more.code == 0, more.stderr
    summary = _agree(harness, folder, "completed")
    assert (summary["rounds_completed"], summary["reason"], summary["sessions"]) == (3, "all 3 rounds completed", 2)


def _store_fails_from_round(monkeypatch: pytest.MonkeyPatch, round_number: int, *, at_the_end_too: bool) -> None:
    """The store stops answering once `round_number` starts (list_updates first; with `at_the_end_too`, every
    call the end of the run makes as well)."""
    down = {"now": False}
    original_event = RunLog.event

    def event(self: RunLog, name: str, **fields: Any) -> None:
        if name == "round_started" and fields.get("round") == round_number:
            down["now"] = True
        original_event(self, name, **fields)

    def failing(original: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            if down["now"]:
                raise StoreUnavailable("cannot reach MongoDB at 127.0.0.1:9 (connection refused)")
            return original(*args, **kwargs)
        return call

    monkeypatch.setattr(RunLog, "event", event)
    monkeypatch.setattr(BlobStore, "list_updates", failing(BlobStore.list_updates))
    if at_the_end_too:
        for name in ("update_run", "find_activations", "get_model_doc", "record_activations"):
            monkeypatch.setattr(Store, name, failing(getattr(Store, name)))


def test_a_store_error_mid_run_fails_the_run_and_says_so_everywhere(harness: Harness, run_cli: Any,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    _store_fails_from_round(monkeypatch, 2, at_the_end_too=False)
    config = harness.write(harness.config(rounds=3))
    result = run_cli("start", "-c", config, cwd=harness.tmp)
    assert result.code == 1
    run_id, folder = harness.only_run()
    summary = _agree(harness, folder, "failed")
    assert summary["reason"] == "cannot reach MongoDB at 127.0.0.1:9 (connection refused)" == summary["error"]
    assert summary["rounds_completed"] == 1
    assert result.stderr.strip().splitlines()[-1] == \
        f"error: run {run_id} failed: cannot reach MongoDB at 127.0.0.1:9 (connection refused)"
    assert "Traceback" not in result.stderr


def test_the_store_gone_for_good_still_leaves_a_summary_counted_from_the_logs(
        harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    _store_fails_from_round(monkeypatch, 2, at_the_end_too=True)
    run = start_in_process(harness.tmp, harness.config(rounds=3), harness.client)
    summary = json.loads((run.folder / "summary.json").read_text())
    assert run.summary == summary
    assert (summary["status"], summary["rounds_completed"]) == ("failed", 1)
    assert summary["reason"].startswith("cannot reach MongoDB")
    assert summary["store_error"].startswith("StoreUnavailable")
    assert _end_event(run.folder)["status"] == "failed"
    assert harness.run_doc(run.run_id)["status"] == "running"  # the store could not be told: that is recorded
    # counted from activations.csv instead: init, round 1's clients and its aggregation
    assert summary["activations"]["succeeded"] == 1 + 2 + 1
    assert summary["final"]["accuracy"] is not None  # the last round's model, as the run saw it


def test_a_bug_mid_run_is_recorded_as_failed_and_still_raised(harness: Harness,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from fedkeeper.scenarios.selection import random_policy

    original = random_policy.rank_clients

    def select(seed: int, round_number: int, total: int, count: int) -> list[int]:
        if round_number == 2:
            raise ZeroDivisionError("a bug")
        return original(seed, round_number, total, count)

    monkeypatch.setattr(random_policy, "rank_clients", select)  # the default selection policy's draw
    with pytest.raises(ZeroDivisionError):
        start_in_process(harness.tmp, harness.config(rounds=3), harness.client)
    _, folder = harness.only_run()
    summary = _agree(harness, folder, "failed")
    assert summary["reason"] == "unexpected ZeroDivisionError: a bug" and summary["rounds_completed"] == 1


def test_resuming_a_failed_run_completes_it(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as patch:
        _store_fails_from_round(patch, 2, at_the_end_too=False)
        failed = start_in_process(harness.tmp, harness.config(rounds=3), harness.client)
    assert failed.summary["status"] == "failed"
    done = start_in_process(harness.tmp, harness.config(rounds=3), harness.client, resume=failed.run_id)
    summary = _agree(harness, done.folder, "completed")
    assert (summary["rounds_completed"], summary["sessions"]) == (3, 2)
    assert "error" not in summary and harness.run_doc(done.run_id)["error"] is None
    assert isinstance(done, Run)

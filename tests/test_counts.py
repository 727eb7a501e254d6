"""The definitions of fedkeeper/results/counts.py, one case each, and older Logs/ folders read back with them."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from fedkeeper.results import counts as C
from fedkeeper.results.report import build_report
from fedkeeper.results.run_folders import load_run
from fedkeeper.results.runlog import ROUND_COLUMNS, RunLog
from fedkeeper.secrets import Redactor


def rec(round_: int, client: object, attempt: int, state: str, function: str = "fl_client",
        aid: str | None = None) -> dict[str, object]:
    return {"round": round_, "client_id": client, "attempt": attempt, "state": state, "function": function,
            "activation_id": aid or f"{round_}-{client}-{function}-{attempt}"}


def test_each_state_counts_once_and_invoked_records_in_no_count() -> None:
    rows = [rec(1, 0, 1, "failed"), rec(1, 0, 2, "timed_out"), rec(1, 0, 3, "succeeded"),
            rec(1, 1, 1, "throttled"), rec(1, 1, 2, "abandoned"), rec(1, 2, 1, "lost"), rec(1, 3, 1, "invoked"),
            rec(1, None, 1, "succeeded", "fl_server_aggregator")]
    counts = C.count_activations(rows).as_dict()
    assert counts == {"total": 7, "succeeded": 2, "failed": 1, "timed_out": 1, "lost": 1, "throttled": 1,
                      "abandoned": 1, "retries": 2}
    assert list(counts) == list(C.ACTIVATION_COUNTS)


def test_retries_follow_failures_only_and_span_sessions_and_sources() -> None:
    rows = [
        rec(1, 0, 1, "failed"), rec(1, 0, 2, "succeeded"),          # a retry
        rec(1, 1, 1, "throttled"), rec(1, 1, 2, "succeeded"),       # a throttled attempt is not a failure
        rec(1, 2, 1, "lost"), rec(1, 2, 3, "lost"), rec(1, 2, 4, "abandoned"),  # numbers may have gaps: 2 retries
        rec(2, 0, 1, "failed"),                                      # nothing followed it
        rec(1, "server", 1, "failed", "fl_server_aggregator"), rec(1, None, 2, "succeeded", "fl_server_aggregator"),
    ]
    assert C.count_retries(rows) == 1 + 2 + 1  # the aggregator's, whether its client id is None or "server"


def test_a_record_repeated_counts_once_the_last_wins() -> None:
    rows = [rec(1, 0, 1, "failed", aid="a"), rec(1, 0, 1, "lost", aid="a"), {"_id": "b", "round": 1,
            "client_id": 1, "attempt": 1, "state": "succeeded", "function": "fl_client"}]
    assert C.count_activations(rows).as_dict() == {**dict.fromkeys(C.ACTIVATION_COUNTS, 0), "total": 2,
                                                  "lost": 1, "succeeded": 1}


def test_round_counts_take_the_clients_records_only() -> None:
    rows = [rec(1, 0, 1, "succeeded"), rec(1, 1, 1, "failed"), rec(1, 1, 2, "succeeded"),
            rec(1, None, 1, "failed", "fl_server_aggregator"), rec(1, None, 2, "succeeded", "fl_server_aggregator")]
    assert C.round_counts(rows, selected=3, aggregated=1, rejected=1) == {
        "selected": 3, "aggregated": 1, "rejected": 1, "succeeded": 2, "failed": 1, "timed_out": 0, "lost": 0,
        "throttled": 0, "abandoned": 0, "retries": 1}


def test_wall_time_adds_sessions_and_skips_the_pause_between_them() -> None:
    events = [
        {"ts": 100.0, "event": "run_started"}, {"ts": 130.0, "event": "activation"},
        {"ts": 140.0, "event": "run_interrupted"},
        {"ts": 1000.0, "event": "run_resumed"}, {"ts": 1010.0, "event": "activation"},  # killed: no end event
        {"ts": 5000.0, "event": "run_resumed"}, {"ts": 5020.5, "event": "run_finished"},
    ]
    assert C.sessions(events) == [(100.0, 140.0, "run_interrupted"), (1000.0, 1010.0, None),
                                  (5000.0, 5020.5, "run_finished")]
    assert C.wall_s(events) == 40.0 + 10.0 + 20.5
    assert C.wall_s(events[:5], end=1030.0) == 40.0 + 30.0  # the session writing its summary ends now
    assert C.wall_s([{"ts": 1.0, "event": "activation"}]) is None


def test_totals_sum_the_rounds_and_say_unknown_for_a_column_older_files_lack() -> None:
    rounds = [{"selected": 4, "aggregated": 3, "rejected": 1, "succeeded": 4, "failed": 1, "retries": 1},
              {"selected": 4, "aggregated": 4, "rejected": 0, "succeeded": 4, "failed": 0, "retries": 0}]
    totals = C.sum_rounds(rounds)
    assert (totals["selected"], totals["aggregated"], totals["rejected"], totals["failed"]) == (8, 7, 1, 1)
    assert totals["abandoned"] is None and totals["throttled"] is None
    assert C.sum_rounds([])["selected"] == 0
    # before `aggregated` existed, `succeeded` was the updates handed to the aggregator, rejected ones included
    assert C.aggregated_of({"succeeded": 5, "rejected": 2}) == 3
    assert C.aggregated_of({"succeeded": 5, "rejected": 2, "aggregated": 4}) == 4


OLD_ROUND_COLUMNS = ROUND_COLUMNS[:14]  # rounds.csv as FedKeeper wrote it before aggregated/throttled/abandoned


def test_a_resumed_run_of_an_older_version_keeps_its_rounds_csv_readable(tmp_path: Path) -> None:
    folder = tmp_path / "old-run"
    folder.mkdir()
    with open(folder / "rounds.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(OLD_ROUND_COLUMNS)
        writer.writerow([1, 4, 4, 1, 0, 0, 1, 1, 0.5, 1.2, 1.0, 0.5, 0.2, 1.3])
    with open(folder / "events.jsonl", "w", encoding="utf-8") as handle:
        handle.write('{"ts": 10.0, "run_id": "old-run", "event": "run_started"}\n'
                     '{"ts": 70.0, "run_id": "old-run", "event": "run_interrupted", "status": "interrupted"}\n')
    with RunLog(tmp_path, "old-run", Redactor()) as log:  # this version resumes it
        log.event("run_resumed", ts=100.0)
        log.round({"round": 2, "selected": 4, "succeeded": 4, "failed": 0, "timed_out": 0, "lost": 0,
                   "retries": 0, "rejected": 0, "accuracy": 0.6, "loss": 1.0, "invoke_s": 1.0,
                   "slowest_client_s": 0.5, "aggregate_s": 0.2, "round_s": 1.3, "aggregated": 4, "throttled": 0,
                   "abandoned": 0})
        log.event("run_finished", ts=130.0, status="completed", reason="all 2 rounds completed")
    with open(folder / "rounds.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == OLD_ROUND_COLUMNS and all(len(r) == len(OLD_ROUND_COLUMNS) for r in rows)
    report = build_report(load_run(folder), {})
    assert [r["aggregated"] for r in report["rounds"]] == [3, 4]  # 4 handed, 1 rejected; then 4
    assert report["totals"]["aggregated"] == 7 and report["totals"]["rejected"] == 1
    assert report["totals"]["abandoned"] is None  # the older file does not say
    assert (report["status"], report["reason"], report["sessions"]) == ("completed", "all 2 rounds completed", 2)
    assert report["wall_s"] == pytest.approx(60.0 + 30.0)  # no summary.json: added up from the events

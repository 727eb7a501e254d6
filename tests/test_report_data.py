"""report.py / report_io.py / report_stats.py / pricing.py on synthetic run folders written through RunLog."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import pytest

from fedkeeper.results import pricing
from fedkeeper.results.report import build_report, comparison, load_reports, report_document, write_rounds_csv
from fedkeeper.results.run_folders import RunNotFound, load_run, resolve_run, resolve_runs
from fedkeeper.results.stats import activation_stats, percentile

PRICES = pricing.price_table()


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _close(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and abs(a - b) <= 1e-9 * max(1.0, abs(b))


def test_rounds_in_the_report_are_the_rows_of_rounds_csv(tmp_path: Path, make_run_folder) -> None:
    run = make_run_folder(tmp_path, "r-adam", rounds=3)
    report = build_report(load_run(run["dir"]), PRICES)
    raw = _csv_rows(run["dir"] / "rounds.csv")
    assert [r["round"] for r in report["rounds"]] == [int(r["round"]) for r in raw] == [1, 2, 3]
    for got, row in zip(report["rounds"], raw):
        for key, text in row.items():
            if text == "":  # a column this run has no value for (epsilon, clip_norm without privacy)
                assert got[key] is None, key
                continue
            assert got[key] == pytest.approx(float(text)), key
    assert report["status"] == "completed"
    assert report["optimizer"] == "adam"
    assert report["rounds_completed"] == 3
    assert report["final"] == {"accuracy": float(raw[-1]["accuracy"]), "loss": float(raw[-1]["loss"])}
    assert report["totals"]["failed"] == sum(int(r["failed"]) for r in raw)
    assert report["totals"]["round_s_mean"] == pytest.approx(sum(float(r["round_s"]) for r in raw) / 3)


def test_cluster_and_platform_statistics_follow_activations_csv(tmp_path: Path, make_run_folder) -> None:
    run = make_run_folder(tmp_path, "r1", rounds=3, clients=4, clusters={"laptop": "local", "lambda-eu": "aws"})
    report = build_report(load_run(run["dir"]), PRICES)
    raw = _csv_rows(run["dir"] / "activations.csv")
    assert report["activations"]["activations"] == len(raw) == len(run["activations"])
    for entry in report["by_cluster"]:
        mine = [r for r in raw if r["cluster"] == entry["cluster"]]
        assert entry["activations"] == len(mine)
        for state in ("succeeded", "failed", "timed_out", "lost"):
            assert entry[state] == sum(r["state"] == state for r in mine), (entry["cluster"], state)
        bad = sum(r["state"] in ("failed", "timed_out", "lost") for r in mine)
        assert entry["failure_rate"] == pytest.approx(bad / len(mine))
        assert entry["cold_share"] == pytest.approx(sum(r["cold"] == "true" for r in mine) / len(mine))
        durations = sorted(float(r["duration_s"]) for r in mine)
        assert entry["duration_max_s"] == pytest.approx(durations[-1])
        middle = len(durations) // 2
        median = durations[middle] if len(durations) % 2 else (durations[middle - 1] + durations[middle]) / 2
        assert entry["duration_p50_s"] == pytest.approx(median)
        assert durations[0] <= entry["duration_p95_s"] <= durations[-1]
    # lambda-eu hosts clients 1 and 3; client 1 fails once per round
    aws = next(e for e in report["by_platform"] if e["platform"] == "aws")
    assert aws["failed"] == 3 and aws["timed_out"] == 0
    local = next(e for e in report["by_platform"] if e["platform"] == "local")
    assert local["timed_out"] == 1  # client 2 in round 2
    functions = {e["function"]: e["activations"] for e in report["by_function"]}
    assert functions["fl_server_aggregator"] == 3


def test_cost_is_gb_seconds_times_unit_price_plus_requests(tmp_path: Path, make_run_folder) -> None:
    run = make_run_folder(tmp_path, "r1", clusters={"laptop": "local", "lambda-eu": "aws"})
    report = build_report(load_run(run["dir"]), PRICES)
    aws_rows = [r for r in run["activations"] if r["platform"] == "aws"]
    gb_s = sum(r["memory_mb"] / 1024 * r["duration_s"] for r in aws_rows)
    aws = next(p for p in report["cost"]["platforms"] if p["platform"] == "aws")
    assert aws["invocations"] == len(aws_rows)
    assert aws["gb_seconds"] == pytest.approx(gb_s, rel=1e-5)
    expected = gb_s * 0.0000166667 + len(aws_rows) / 1e6 * 0.20
    assert aws["total_usd"] == pytest.approx(expected, rel=1e-5)
    local = next(p for p in report["cost"]["platforms"] if p["platform"] == "local")
    assert local["total_usd"] == 0.0 and local["gb_seconds"] > 0
    assert report["cost"]["total_usd"] == pytest.approx(expected, rel=1e-5)


def test_config_pricing_overrides_the_default_table(tmp_path: Path, make_run_folder) -> None:
    from fedkeeper.config.models import PlatformPrice

    run = make_run_folder(tmp_path, "r1", clusters={"laptop": "local"})
    prices = pricing.price_table({"local": PlatformPrice(gb_second=0.001, per_million_invocations=1000.0)})
    report = build_report(load_run(run["dir"]), prices)
    local = report["cost"]["platforms"][0]
    gb_s = sum(r["memory_mb"] / 1024 * r["duration_s"] for r in run["activations"])
    assert local["total_usd"] == pytest.approx(gb_s * 0.001 + len(run["activations"]) / 1e6 * 1000.0, rel=1e-5)
    assert local["price_source"] == "config pricing override"
    assert pricing.price_table()["local"].gb_second == 0.0  # the defaults are untouched


def test_default_price_table_documents_every_provider_kind() -> None:
    from fedkeeper.providers import registry

    prices = pricing.default_prices()
    assert set(prices) == set(registry.kinds())
    assert prices["aws"].gb_second == 0.0000166667
    assert prices["aws"].per_million_invocations == 0.20
    assert prices["google"].per_million_invocations == 0.40
    assert prices["google"].gb_second == pytest.approx(0.0000025 + 0.583 * 0.000024)
    assert prices["openwhisk"] == pricing.UnitPrice(0.000017, 0.0, prices["openwhisk"].source)


def test_unknown_platform_has_unknown_cost(tmp_path: Path, make_run_folder) -> None:
    run = make_run_folder(tmp_path, "r1", clusters={"edge": "riscv-faas"})
    report = build_report(load_run(run["dir"]), PRICES)
    assert report["cost"]["platforms"][0]["total_usd"] is None
    assert report["cost"]["total_usd"] is None


def test_percentile_is_linear_interpolation() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    assert percentile([1.0, 2.0, 3.0, 4.0], 95) == pytest.approx(3.85)
    assert percentile([], 50) is None


def test_other_states_do_not_count_as_failures() -> None:
    rows = [{"state": "succeeded", "cold": True, "duration_s": 1.0, "memory_mb": 1024},
            {"state": "throttled", "cold": None, "duration_s": None, "memory_mb": 1024},
            {"state": "failed", "cold": False, "duration_s": 3.0, "memory_mb": 1024}]
    stats = activation_stats(rows)
    assert stats["other_states"] == {"throttled": 1}
    assert stats["failure_rate"] == pytest.approx(0.5)
    assert stats["cold_share"] == pytest.approx(0.5)  # of the two whose coldness is known
    assert stats["gb_seconds"] == pytest.approx(4.0)


def test_latest_is_the_run_with_the_newest_files(tmp_path: Path, make_run_folder) -> None:
    make_run_folder(tmp_path, "b-old")
    make_run_folder(tmp_path, "a-new")
    make_run_folder(tmp_path, "c-mid")
    for name, mtime in (("b-old", 1_000_000), ("c-mid", 2_000_000), ("a-new", 3_000_000)):
        for file in ("events.jsonl", "summary.json"):
            os.utime(tmp_path / name / file, (mtime, mtime))
    assert resolve_run(tmp_path, "latest").name == "a-new"
    assert [p.name for p in resolve_runs(tmp_path, ["latest", "b-old", "a-new"])] == ["a-new", "b-old"]
    with pytest.raises(RunNotFound, match="no run 'zzz'.*a-new"):
        resolve_run(tmp_path, "zzz")
    with pytest.raises(RunNotFound, match="holds no runs"):
        resolve_run(tmp_path / "empty", "latest")


def test_a_run_folder_path_works_from_anywhere(tmp_path: Path, make_run_folder) -> None:
    run = make_run_folder(tmp_path / "copied-results", "r-x")
    reports = load_reports(tmp_path / "elsewhere", [str(run["dir"])], PRICES)
    assert reports[0]["run_id"] == "r-x"


def test_a_run_in_progress_has_no_summary_and_status_running(tmp_path: Path, make_run_folder) -> None:
    run = make_run_folder(tmp_path, "live", rounds=2, finished=False)
    with open(run["dir"] / "events.jsonl", "a", encoding="utf-8") as handle:
        handle.write('{"ts": 1, "run_id": "live", "event": "activ')  # a half-written line
    with open(run["dir"] / "rounds.csv", "a", encoding="utf-8") as handle:
        handle.write("3,4,")  # a half-written row of round 3
    report = build_report(load_run(run["dir"]), PRICES)
    assert report["status"] == "running"
    assert report["summary"] is None
    assert report["rounds_completed"] == 2  # the partial row of round 3 is not a round
    assert report["final"]["accuracy"] == run["rounds"][-1]["accuracy"]


def test_a_resumed_run_counts_each_round_once_and_is_running_again(tmp_path: Path, make_run_folder) -> None:
    from fedkeeper.results.runlog import RunLog
    from fedkeeper.secrets import Redactor

    run = make_run_folder(tmp_path, "res", rounds=2)
    with RunLog(tmp_path, "res", Redactor()) as log:  # interrupted, then resumed: round 2 recorded again
        log.event("run_interrupted", status="interrupted")
        log.event("run_resumed", experiment="synth", rounds=3, from_round=2)
        log.round({**run["rounds"][-1], "accuracy": 0.99})
    report = build_report(load_run(run["dir"]), PRICES)
    assert [r["round"] for r in report["rounds"]] == [1, 2]
    assert report["rounds"][-1]["accuracy"] == 0.99  # the later record wins
    assert report["status"] == "running"  # despite the old summary.json...
    assert report["final"]["accuracy"] == 0.99  # ...whose figures are stale
    assert report["wall_s"] is None and report["summary"]["status"] == "completed"


def test_failed_run_without_summary(tmp_path: Path, make_run_folder) -> None:
    from fedkeeper.results.runlog import RunLog
    from fedkeeper.secrets import Redactor

    run = make_run_folder(tmp_path, "bad", rounds=1, finished=False)
    with RunLog(tmp_path, "bad", Redactor()) as log:
        log.event("run_failed", status="failed", error="round 2: quorum lost")
    report = build_report(load_run(run["dir"]), PRICES)
    assert report["status"] == "failed"
    assert report["error"] == "round 2: quorum lost"


def test_json_document_and_csv_for_several_runs(tmp_path: Path, make_run_folder) -> None:
    make_run_folder(tmp_path, "r-adam", optim="adam")
    make_run_folder(tmp_path, "r-sgd", optim="sgd")
    reports = load_reports(tmp_path, ["r-adam", "r-sgd"], PRICES)
    doc = json.loads(json.dumps(report_document(reports), default=str))
    assert [d["run_id"] for d in doc] == ["r-adam", "r-sgd"]
    assert json.loads(json.dumps(report_document(reports[:1]), default=str))["run_id"] == "r-adam"

    out = io.StringIO()
    write_rounds_csv(reports, out)
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert list(rows[0])[0] == "run_id"
    for run_id in ("r-adam", "r-sgd"):
        mine = [{k: v for k, v in r.items() if k != "run_id"} for r in rows if r["run_id"] == run_id]
        original = _csv_rows(tmp_path / run_id / "rounds.csv")
        assert len(mine) == len(original)
        for a, b in zip(mine, original):
            assert {k: float(v) for k, v in a.items() if v != ""} == \
                {k: pytest.approx(float(v)) for k, v in b.items() if v != ""}

    single = io.StringIO()
    write_rounds_csv(reports[:1], single)
    assert single.getvalue().splitlines()[0].startswith("round,")


def test_comparison_lines_runs_up_round_by_round(tmp_path: Path, make_run_folder) -> None:
    make_run_folder(tmp_path, "r-adam", optim="adam", rounds=3)
    make_run_folder(tmp_path, "r-sgd", optim="sgd", rounds=2)
    data = comparison(load_reports(tmp_path, ["r-adam", "r-sgd"], PRICES))
    assert [r["label"] for r in data["runs"]] == ["r-adam (adam)", "r-sgd (sgd)"]
    assert [e["round"] for e in data["per_round"]] == [1, 2, 3]
    assert data["per_round"][2]["r-sgd"]["accuracy"] is None
    assert data["per_round"][0]["r-adam"]["accuracy"] > data["per_round"][0]["r-sgd"]["accuracy"]
    assert all(_close(r["final_accuracy"], r["best_accuracy"]) for r in data["runs"])

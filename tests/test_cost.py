"""`fedkeeper cost`: the estimate priced by hand, the plan's invocation counts, the calibration path, and the
estimate from a measured run equal to the cost `fedkeeper report` computes for that run."""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path

import pytest
import yaml

from fedkeeper.cli.cost import render
from fedkeeper.results.cost_estimate import Duration, PlannedCalls, estimate, measured_durations
from fedkeeper.results.pricing import UnitPrice

from test_fl_e2e import small_config

#: a price for the local platform, so that the costs compared are not all zero
LOCAL_PRICE = {"gb_second": 0.0000166667, "per_million_invocations": 0.2}


def test_estimate_prices_each_row_by_hand() -> None:
    calls = [PlannedCalls("a", "aws", "fl_client", 512, 40), PlannedCalls("a", "aws", "fl_server_aggregator", 1024, 11)]
    durations = {(None, "fl_client"): Duration(2.0, 3.0, 9, "test"),
                 ("a", "fl_server_aggregator"): Duration(1.5, 1.5, 3, "test")}
    price = UnitPrice(0.00002, 0.4, "test")
    out = estimate(calls, durations, {"aws": price}, basis="test", rounds=10)
    client, agg = out["rows"]
    assert client["gb_seconds"] == pytest.approx(40 * 0.5 * 2.0)
    assert client["gb_seconds_p95"] == pytest.approx(40 * 0.5 * 3.0)
    assert client["compute_usd"] == pytest.approx(40.0 * 0.00002)
    assert client["requests_usd"] == pytest.approx(40 / 1e6 * 0.4)
    assert agg["gb_seconds"] == pytest.approx(11 * 1.0 * 1.5)
    cluster, = out["clusters"]
    assert cluster["invocations"] == 51 and out["total"]["invocations"] == 51
    assert out["total"]["total_usd"] == pytest.approx(client["total_usd"] + agg["total_usd"])
    assert out["total"]["total_p95_usd"] > out["total"]["total_usd"]


def test_a_platform_without_a_price_shows_gb_seconds_and_no_cost() -> None:
    import io

    from rich.console import Console

    calls = [PlannedCalls("edge", "selfhosted", "fl_client", 1024, 4)]
    out = estimate(calls, {(None, "fl_client"): Duration(1.0, 1.0, 1, "t")}, {}, basis="t", rounds=2)
    row = out["rows"][0]
    assert row["gb_seconds"] == pytest.approx(4.0)
    assert (row["compute_usd"], row["requests_usd"], row["total_usd"], out["total"]["total_usd"]) == (None,) * 4
    buffer = io.StringIO()
    render({**out, "experiment": "x"}, Console(file=buffer, width=200))
    line = next(line for line in buffer.getvalue().splitlines() if line.startswith("edge"))
    assert "4.00" in line and line.count("—") == 4  # requests, compute, total, total at p95


def test_measured_durations_are_per_cluster_and_per_function() -> None:
    rows = [{"cluster": "a", "function": "f", "duration_s": 1.0}, {"cluster": "a", "function": "f", "duration_s": 3.0},
            {"cluster": "b", "function": "f", "duration_s": 5.0}, {"cluster": "b", "function": "f", "duration_s": None}]
    found = measured_durations(rows, "run r")
    assert found[("a", "f")].mean_s == 2.0 and found[("a", "f")].samples == 2
    assert found[(None, "f")].mean_s == 3.0 and found[(None, "f")].p95_s == pytest.approx(4.8)


def test_the_plan_counts_clients_with_overselection_and_the_aggregator(tmp_path: Path) -> None:
    from fedkeeper import config as cfg
    from fedkeeper.scenarios.cost_plan import planned_calls

    path = small_config(tmp_path, rounds=5, clients=6, per_round=3, resilience={"overselect": 0.5})
    calls = planned_calls(cfg.load(str(path)), 7, tmp_path)
    by_function = {c.function: c for c in calls}
    assert by_function["fl_client"].invocations == 7 * math.ceil(3 * 1.5)  # rounds × selected, not the config's 5
    assert by_function["fl_server_aggregator"].invocations == 7 + 1  # one per round and the init
    assert by_function["fl_client"].memory_mb == 512


def test_cost_calibrates_without_a_run_and_says_so(tmp_path: Path, run_cli) -> None:  # type: ignore[no-untyped-def]
    config = small_config(tmp_path, rounds=2, clients=4, per_round=2)
    result = run_cli("cost", "-c", config, "--json", cwd=tmp_path)
    assert result.code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["basis"] == "durations calibrated on this machine" and out["rounds"] == 2
    assert out["notes"][0].startswith("durations: calibrated here")
    assert out["total"]["invocations"] == 2 * 2 + 3
    assert all(r["duration_mean_s"] > 0 for r in out["rows"])
    assert not (tmp_path / ".fedkeeper").exists()  # nothing deployed, no store started
    table = run_cli("cost", "-c", config, "--rounds", "3", cwd=tmp_path)
    assert table.code == 0 and "3 rounds" in table.stdout and "total" in table.stdout


def test_cost_from_an_unknown_run_is_a_usage_error(tmp_path: Path, run_cli) -> None:  # type: ignore[no-untyped-def]
    config = small_config(tmp_path)
    result = run_cli("cost", "-c", config, "--from", "nope", cwd=tmp_path)
    assert result.code == 2 and "nope" in result.stderr and "Traceback" not in result.stderr


def test_the_estimate_from_a_run_equals_the_cost_report_computes_for_it(tmp_path: Path, nx_server: str,
                                                                         run_cli) -> None:  # type: ignore[no-untyped-def]
    path = small_config(tmp_path, rounds=2, clients=4, per_round=2)
    data = yaml.safe_load(path.read_text())
    data["mongo_config"] = {"url": nx_server, "db": f"t_{uuid.uuid4().hex[:12]}"}
    data["pricing"] = {"local": LOCAL_PRICE}
    path.write_text(yaml.safe_dump(data))
    started = run_cli("start", "-c", path, "--json", "-q", cwd=tmp_path)
    assert started.code == 0, started.stderr
    run_id = json.loads(started.stdout)["run_id"]
    assert json.loads(started.stdout)["activations"]["retries"] == 0  # the plan has no retries either

    est = json.loads(run_cli("cost", "-c", path, "--from", run_id, "--json", cwd=tmp_path).stdout)
    rep = json.loads(run_cli("report", run_id, "-c", path, "--json", cwd=tmp_path).stdout)
    assert est["basis"] == f"durations measured by run {run_id}"
    assert {p["platform"]: p["invocations"] for p in est["platforms"]} == \
        {p["platform"]: p["invocations"] for p in rep["cost"]["platforms"]}
    for mine, theirs in zip(est["platforms"], rep["cost"]["platforms"]):
        assert mine["gb_seconds"] == pytest.approx(theirs["gb_seconds"], rel=1e-9)
        assert mine["compute_usd"] == pytest.approx(theirs["compute_usd"], rel=1e-9)
        assert mine["requests_usd"] == pytest.approx(theirs["requests_usd"], rel=1e-9)
    assert est["total"]["total_usd"] == pytest.approx(rep["cost"]["total_usd"], rel=1e-9) and est["total"]["total_usd"] > 0
    client = next(r for r in est["rows"] if r["function"] == "fl_client")
    acts = next(a for a in rep["by_function"] if a["function"] == "fl_client")
    assert client["duration_p95_s"] == pytest.approx(acts["duration_p95_s"])

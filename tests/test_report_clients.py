"""`report RUN --clients`: per-client statistics from Logs/ alone, and from the store's update documents."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest

from fedkeeper.results.clients import client_stats
from fedkeeper.results.run_folders import load_run
from report_sweep_support import write_run


def _by_client(data: dict[str, Any]) -> dict[Any, dict[str, Any]]:
    return {row["client_id"]: row for row in data["clients"]}


def test_old_run_without_updates_aggregated_is_reconstructed(tmp_path: Path, make_run_folder) -> None:
    run = make_run_folder(tmp_path, "r1", rounds=3, clients=4)
    data = client_stats(load_run(run["dir"]))
    rows = _by_client(data)
    assert list(rows) == [0, 1, 2, 3]
    assert all(r["selected"] == 3 for r in rows.values())
    # client 2 timed out in round 2 (and got no retry); the others succeeded every round (client 1 on attempt 2)
    assert [rows[c]["aggregated"] for c in range(4)] == [3, 3, 2, 3]
    assert (rows[1]["failed"], rows[1]["activations"], rows[2]["timed_out"]) == (3, 6, 1)
    assert all(r["cold_starts"] == (2 if c == 1 else 1) for c, r in rows.items())  # round 1 is cold
    ok = [a["duration_s"] for a in run["activations"] if a["client_id"] == 3 and a["state"] == "succeeded"]
    assert rows[3]["duration_mean_s"] == pytest.approx(sum(ok) / len(ok))
    assert rows[3]["examples"] is None and "unknown" in data["sources"]["examples"]
    assert data["sources"]["aggregated"].startswith("reconstructed")


def test_updates_aggregated_events_give_rounds_and_examples(tmp_path: Path) -> None:
    folder = write_run(tmp_path, "r2", lr=0.1, seed=1, accuracies=[0.5, 0.6, 0.7])
    data = client_stats(load_run(folder))
    rows = _by_client(data)
    assert [rows[c]["aggregated"] for c in (0, 1)] == [3, 3]
    assert [rows[c]["examples"] for c in (0, 1)] == [300, 303]
    assert data["sources"]["examples"].startswith("events.jsonl")


def test_store_update_documents_win(tmp_path: Path) -> None:
    folder = write_run(tmp_path, "r3", lr=0.1, seed=1, accuracies=[0.5, 0.6])
    asked = []

    def updates(r: int) -> list[dict[str, Any]]:
        asked.append(r)
        return [{"client_id": c, "activation_id": f"r3-{r}-{c}", "attempt": 1, "num_examples": 10 * (c + 1)}
                for c in (0, 1)] + [{"client_id": 0, "activation_id": "someone-else", "attempt": 9,
                                     "num_examples": 999}]

    data = client_stats(load_run(folder), updates)
    assert asked == [1, 2]
    assert [r["examples"] for r in data["clients"]] == [20, 40]  # the aggregated activation's doc, not the other
    assert data["sources"]["examples"] == "store (update documents)"


def test_clients_cli_table_csv_json(tmp_path: Path, run_cli: Any, make_run_folder) -> None:
    make_run_folder(tmp_path, "r1", rounds=3, clients=4)
    code, out, err = run_cli("report", "r1", "--clients", "--logs-dir", str(tmp_path))
    assert code == 0, err
    row = next(line.split() for line in out.splitlines() if line.strip().startswith("2 "))
    assert row[:5] == ["2", "3", "2", "3", "0/1/0"]
    assert "examples: unknown" in out
    code, out, _ = run_cli("report", "r1", "--clients", "--csv", "--logs-dir", str(tmp_path))
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["client_id"] for r in rows] == ["0", "1", "2", "3"] and rows[1]["failed"] == "3"
    code, out, _ = run_cli("report", "r1", "--clients", "--json", "--logs-dir", str(tmp_path))
    assert json.loads(out)["clients"][2]["aggregated"] == 2


def test_clients_takes_one_run(tmp_path: Path, run_cli: Any, make_run_folder) -> None:
    make_run_folder(tmp_path, "a")
    make_run_folder(tmp_path, "b")
    code, _, err = run_cli("report", "a", "b", "--clients", "--logs-dir", str(tmp_path))
    assert code == 2 and "one run" in err


def test_an_unreachable_store_falls_back_to_logs(tmp_path: Path, run_cli: Any) -> None:
    write_run(tmp_path / "Logs", "r4", lr=0.1, seed=1, accuracies=[0.5])
    config = tmp_path / "c.yaml"
    config.write_text("""
experiment: x
providers: {local: {laptop: {}}}
mongo_config: {url: "mongodb://127.0.0.1:9/", connect_timeout_ms: 200, server_selection_timeout_ms: 200}
scenarios:
  federated_learning:
    rounds: 1
    clients_info: {total_num_clients: 2, num_clients_per_round: 2}
""")
    code, out, err = run_cli("report", "r4", "--clients", "-c", str(config), "--json",
                             "--logs-dir", str(tmp_path / "Logs"))
    assert code == 0, err
    data = json.loads(out)
    assert data["store_note"].startswith("store not reachable")
    assert data["sources"]["examples"].startswith("events.jsonl") and data["clients"][0]["examples"] == 100

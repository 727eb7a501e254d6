"""status / logs / report on real runs of the `local` platform: two short runs, adam vs sgd, same experiment.

One module-scoped fixture produces both runs with `fedkeeper start` (a subprocess, as a user would run it) and
reads the store once afterwards; every test then checks a command's output against the store and the CSVs.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml


pytestmark = pytest.mark.slow

EXPERIMENT = "fk-inspect"
ROUNDS = 3


def _config(optim: str) -> dict[str, Any]:
    return {
        "experiment": EXPERIMENT,
        "providers": {"local": {"laptop": {"concurrency": 2, "keep_warm_s": 30}}},
        "mongo_config": {"url": "embedded", "db": "fedkeeper"},
        "scenarios": {"federated_learning": {
            "rounds": ROUNDS, "seed": 7,
            "clients_info": {"total_num_clients": 5, "num_clients_per_round": 4, "placement": {"laptop": 5}},
            "model_params": {"optim": optim, "lr": 0.01, "local_epochs": 1, "batch_size": 16},
        }},
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two completed runs in one workdir, plus what the store says about them."""
    from fedkeeper import config as cfg
    from fedkeeper.store import open_store

    work = tmp_path_factory.mktemp("realrun")
    for optim in ("adam", "sgd"):
        path = work / f"{optim}.yaml"
        path.write_text(yaml.safe_dump(_config(optim)))
        proc = subprocess.run(
            [sys.executable, "-c", "from fedkeeper.cli import main; main()", "start", "-c", str(path),
             "--run-id", f"run-{optim}", "-q"],
            cwd=work, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
    config = cfg.load(work / "adam.yaml")
    with open_store(config.mongo_config, workdir=work) as store:
        store_runs = store.list_runs(EXPERIMENT)
        models = {r["_id"]: store.list_model_docs(r["_id"]) for r in store_runs}
        activations = {r["_id"]: store.find_activations(r["_id"]) for r in store_runs}
    return {"work": work, "logs": work / "Logs", "store_runs": store_runs, "models": models,
            "activations": activations}


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_report_json_matches_the_csvs_and_the_store(runs: dict[str, Any],
                                                    run_cli: Any) -> None:
    code, out, err = run_cli("report", "run-adam", "run-sgd", "--json", "--logs-dir", str(runs["logs"]))
    assert code == 0, err
    docs = {d["run_id"]: d for d in json.loads(out)}
    assert {d["optimizer"] for d in docs.values()} == {"adam", "sgd"}
    for run in runs["store_runs"]:
        doc = docs[run["_id"]]
        folder = runs["logs"] / run["_id"]
        # rounds.csv, row by row
        rounds_csv = _csv(folder / "rounds.csv")
        assert len(doc["rounds"]) == len(rounds_csv) == ROUNDS
        for got, row in zip(doc["rounds"], rounds_csv):
            # an empty cell (a column this run has no value for, such as epsilon without privacy) reads as None
            assert {k: got[k] for k in row} == {k: pytest.approx(float(v)) if v != "" else None
                                                for k, v in row.items()}
        # activations.csv: counts per state and per function
        acts_csv = _csv(folder / "activations.csv")
        states = Counter(r["state"] for r in acts_csv)
        assert doc["activations"]["activations"] == len(acts_csv)
        for state in ("succeeded", "failed", "timed_out", "lost"):
            assert doc["activations"][state] == states.get(state, 0)
        assert {f["function"]: f["activations"] for f in doc["by_function"]} == \
            dict(Counter(r["function"] for r in acts_csv))
        assert doc["by_cluster"][0]["cluster"] == "laptop" and doc["by_cluster"][0]["platform"] == "local"
        gb_s = sum(int(r["memory_mb"]) / 1024 * float(r["duration_s"]) for r in acts_csv)
        assert doc["cost"]["platforms"][0]["gb_seconds"] == pytest.approx(gb_s, rel=1e-4)
        assert doc["cost"]["total_usd"] == 0.0  # the local platform is free
        # the store
        assert doc["status"] == run["status"] == "completed"
        assert doc["rounds_completed"] == run["last_completed_round"] == ROUNDS
        assert doc["final"]["accuracy"] == pytest.approx(run["last_accuracy"])
        assert doc["summary"]["model_sha256"] == run["model_sha256"]
        by_round = {m["round"]: m for m in runs["models"][run["_id"]]}
        for row in doc["rounds"]:
            if row["round"] in by_round:  # older global models are collected (keep_models)
                assert row["accuracy"] == pytest.approx(by_round[row["round"]]["metrics"]["accuracy"], rel=1e-5)
        stored = [a for a in runs["activations"][run["_id"]] if a.get("state") != "invoked"]
        assert len(stored) == len(acts_csv)
        assert {a["_id"] for a in stored} == {r["activation_id"] for r in acts_csv}


def test_status_json_matches_the_store(runs: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
                                       run_cli: Any) -> None:
    monkeypatch.chdir(runs["work"])
    code, out, err = run_cli("status", "-c", "adam.yaml", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["experiment"] == EXPERIMENT
    assert [(r["run_id"], r["status"], r["rounds_done"], r["last_accuracy"]) for r in data["runs"]] == [
        (r["_id"], r["status"], r["last_completed_round"], r["last_accuracy"]) for r in runs["store_runs"]]
    assert [r["started"] for r in data["runs"]] == [r["started"] for r in runs["store_runs"]]
    assert data["current_rounds"] == {}  # nothing is running
    functions = {f["function"]: f for f in data["functions"]}
    assert set(functions) == {"fl_client", "fl_server_aggregator"}
    for f in functions.values():
        assert f["state"] == "deployed" and f["cluster"] == "laptop" and f["limits_match"] is True
        assert f["digest"] is not None
        # status started the embedded store anew on the port it had before (kept per working directory), so the
        # functions' store URL is still right; only if that port was taken meanwhile would they be out of sync
        assert f["in_sync"] is True or "embedded store" in f["note"]


def test_logs_json_is_events_jsonl(runs: dict[str, Any], run_cli: Any) -> None:
    code, out, _ = run_cli("logs", "run-sgd", "--json", "--logs-dir", str(runs["logs"]))
    assert code == 0
    raw = (runs["logs"] / "run-sgd" / "events.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in out.splitlines()] == [json.loads(line) for line in raw]
    code, out, _ = run_cli("logs", "run-sgd", "--event", "round_finished", "--logs-dir", str(runs["logs"]))
    assert [line.split()[1] for line in out.splitlines()] == [f"r{n}" for n in range(1, ROUNDS + 1)]


def test_two_optimizers_side_by_side_and_in_one_plot(runs: dict[str, Any], tmp_path: Path,
                                                     run_cli: Any) -> None:
    from test_report_cli import colour_share, png_pixels

    png = tmp_path / "adam-vs-sgd.png"
    code, out, err = run_cli("report", "run-adam", "run-sgd", "--plot", str(png), "--logs-dir",
                             str(runs["logs"]))
    assert code == 0, err
    side = out[out.index("runs side by side"):]
    assert "run-adam (adam)" in side and "run-sgd (sgd)" in side
    assert png.stat().st_size > 10_000
    pixels = png_pixels(png)
    for colour in ("#1f77b4", "#ff7f0e"):  # both runs drawn
        assert colour_share(pixels, colour) > 0.001


def test_a_copied_results_folder_reports_the_same(runs: dict[str, Any], tmp_path: Path,
                                                  run_cli: Any) -> None:
    copy = tmp_path / "results" / "run-adam"
    shutil.copytree(runs["logs"] / "run-adam", copy)
    code, here, _ = run_cli("report", "run-adam", "--json", "--logs-dir", str(runs["logs"]))
    code2, there, _ = run_cli("report", str(copy), "--json")
    assert code == code2 == 0
    a, b = json.loads(here), json.loads(there)
    a.pop("path"), b.pop("path")
    assert a == b


def test_groups_label_real_runs_by_their_one_differing_key(runs: dict[str, Any], run_cli: Any) -> None:
    code, out, err = run_cli("report", "run-adam", "run-sgd", "--groups", "--json", "--logs-dir", str(runs["logs"]))
    assert code == 0, err
    doc = json.loads(out)
    assert doc["varying"] == ["scenarios.federated_learning.model_params.optim"]
    assert [g["label"] for g in doc["groups"]] == ["optim=adam", "optim=sgd"]


def test_clients_from_the_store_and_from_logs_agree(runs: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
                                                    run_cli: Any) -> None:
    monkeypatch.chdir(runs["work"])
    code, out, err = run_cli("report", "run-adam", "--clients", "-c", "adam.yaml", "--json")
    assert code == 0, err
    store_view = json.loads(out)
    code, out, err = run_cli("report", "run-adam", "--clients", "--json")
    assert code == 0, err
    logs_view = json.loads(out)
    assert store_view["sources"]["examples"] == "store (update documents)"
    assert logs_view["sources"]["examples"].startswith("events.jsonl")
    assert store_view["clients"] == logs_view["clients"]
    rows = _csv(runs["logs"] / "run-adam" / "rounds.csv")
    assert sum(c["aggregated"] for c in logs_view["clients"]) == sum(int(r["aggregated"]) for r in rows)
    assert sum(c["selected"] for c in logs_view["clients"]) == sum(int(r["selected"]) for r in rows)
    assert all(c["examples"] > 0 for c in logs_view["clients"] if c["aggregated"])

"""`fedkeeper sweep`: the plan (names, grid, seeds) and, end to end, a 2 × 2 grid over 2 seeds interrupted and
restarted on the local platform."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from cli_support import tiny_config
from fedkeeper import config as cfg
from fedkeeper.errors import UsageProblem
from fedkeeper.scenarios import sweep

LR = "scenarios.federated_learning.model_params.lr"
BATCH = "scenarios.federated_learning.model_params.batch_size"


def _config(tmp_path: Path, extra: str = "") -> tuple[Path, Any]:
    path = tmp_path / "c.yaml"
    path.write_text(tiny_config("tiny") + extra)
    return path, cfg.load(path)


def test_plan_names_each_run_by_the_values_that_differ(tmp_path: Path) -> None:
    path, config = _config(tmp_path, "sweep: {grid: {fl.model_params.lr: [0.05, 0.1]}, seeds: [1, 2]}\n")
    grid = sweep.grid_of(config, ["fl.model_params.batch_size=8,16", "fl.model_params.optim=sgd"])
    assert grid == {LR: [0.05, 0.1], BATCH: [8, 16], "scenarios.federated_learning.model_params.optim": ["sgd"]}
    seeds = sweep.seeds_of(config, None, None)
    the_plan = sweep.plan("s", str(path), grid, seeds, 1)
    ids = [r.run_id for r in the_plan.runs]
    assert len(ids) == 8 == len(set(ids))
    assert ids[0] == "s--lr=0.05--batch_size=8--seed=1" and ids[-1] == "s--lr=0.1--batch_size=16--seed=2"
    run = the_plan.runs[-1]
    assert run.values == {LR: 0.1, BATCH: 16, "scenarios.federated_learning.model_params.optim": "sgd"}
    assert {o.key: o.value for o in run.overrides}["scenarios.federated_learning.seed"] == 2
    # the CLI's grid replaces the config's for the same key; --seeds N counts up from the config's seed
    assert sweep.grid_of(config, ["fl.model_params.lr=[0.3]"])[LR] == [[0.3]]
    assert sweep.seeds_of(config, 3, None) == [42, 43, 44] and sweep.seeds_of(config, None, [7, 5]) == [7, 5]
    single = sweep.plan("only", str(path), {LR: [0.2]}, [3], 1)
    assert [r.run_id for r in single.runs] == ["only"]


def test_labels_grow_until_they_are_unambiguous_and_ids_stay_safe() -> None:
    assert sweep.key_labels(["a.x.lr", "b.y.lr", "c.mu"]) == {"a.x.lr": "x.lr", "b.y.lr": "y.lr", "c.mu": "mu"}
    assert sweep.sanitise("lr=a b/../c") == "lr=a_b_.._c"
    with pytest.raises(UsageProblem, match="same run id"):
        sweep.plan("s", "c.yaml", {"a.b": ["x/y", "x y"]}, [1], 1)


@pytest.mark.parametrize("bad", ["fl.model_params.lr", "fl.model_params.lr=", "fl.seed=1,2", "a..b=1", "x=[1"])
def test_bad_grid_is_a_usage_error(tmp_path: Path, bad: str) -> None:
    _, config = _config(tmp_path)
    with pytest.raises(UsageProblem, match="--grid"):
        sweep.grid_of(config, [bad])


def test_jobs_need_the_local_platform_and_scenario_keys(tmp_path: Path) -> None:
    path, config = _config(tmp_path)
    sweep.check_jobs(config, sweep.plan("s", str(path), {LR: [0.1, 0.2]}, [1], 2))
    with pytest.raises(UsageProblem, match="share the deployed functions"):
        sweep.check_jobs(config, sweep.plan("s", str(path), {"functions.fl_client.local.memory": [256, 512]}, [1], 2))


# ---------------------------------------------------------------------------------------------- end to end


def _fedkeeper(cwd: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "fedkeeper.cli", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "160"})


def _manifest(cwd: Path) -> dict[str, Any] | None:
    try:
        return json.loads((cwd / "Logs" / "sweeps" / "grid.json").read_text())
    except (OSError, ValueError):
        return None


@pytest.mark.slow
@pytest.mark.integration
def test_a_2x2_grid_over_2_seeds_interrupted_and_restarted_finishes_each_run_once(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(tiny_config("tiny"))
    args = ("sweep", "-c", "c.yaml", "--grid", "fl.model_params.lr=0.05,0.2", "--grid",
            "fl.model_params.batch_size=8,16", "--seed-list", "1,2", "--set", "fl.rounds=2", "--name", "grid")
    first = _fedkeeper(tmp_path, *args)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and first.poll() is None:
            manifest = _manifest(tmp_path)
            if manifest and sum(r["status"] == "completed" for r in manifest["runs"]) >= 3:
                break
            time.sleep(0.05)
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    assert first.returncode == 130, err
    assert "Traceback" not in err and "run the same sweep command again" in err
    interrupted = _manifest(tmp_path)
    assert interrupted is not None
    done_before = {r["run_id"] for r in interrupted["runs"] if r["status"] == "completed"}
    assert 3 <= len(done_before) < 8

    second = _fedkeeper(tmp_path, *args, "--json")
    out, err = second.communicate(timeout=300)
    assert second.returncode == 0, err
    assert f"{len(done_before)} of 8 runs completed earlier; skipped" in err
    manifest = json.loads(out)
    assert manifest == {**_manifest(tmp_path), "updated": manifest["updated"]}
    assert manifest["grid"] == {LR: [0.05, 0.2], BATCH: [8, 16]} and manifest["seeds"] == [1, 2]
    ids = [r["run_id"] for r in manifest["runs"]]
    assert len(set(ids)) == 8 and "grid--lr=0.2--batch_size=16--seed=2" in ids
    assert all(r["status"] == "completed" and r["final_accuracy"] is not None for r in manifest["runs"])

    # Logs/: exactly these 8 runs, each started once and finished once (a resumed one: one interruption)
    folders = {p.name for p in (tmp_path / "Logs").iterdir() if p.is_dir() and p.name != "sweeps"}
    assert folders == set(ids)
    for run_id in ids:
        events = Counter(e["event"] for e in map(json.loads, (tmp_path / "Logs" / run_id / "events.jsonl")
                                                 .read_text().splitlines()))
        assert events["run_started"] == 1 and events["run_finished"] == 1, (run_id, events)
        if run_id in done_before:
            assert events["run_resumed"] == 0, (run_id, events)
        summary = json.loads((tmp_path / "Logs" / run_id / "summary.json").read_text())
        row = next(r for r in manifest["runs"] if r["run_id"] == run_id)
        assert summary["status"] == "completed" and summary["rounds_completed"] == 2
        assert summary["overrides"] == {"scenarios.federated_learning.rounds": 2, **row["values"],
                                        "scenarios.federated_learning.seed": row["seed"]}
        assert summary["final"]["accuracy"] == row["final_accuracy"]
    # the store: the same 8 runs, each completed
    from fedkeeper.store import open_store

    with open_store(cfg.load(path).mongo_config, workdir=tmp_path) as store:
        runs = store.list_runs("tiny")
    assert sorted(r["_id"] for r in runs) == sorted(ids)
    assert all(r["status"] == "completed" for r in runs)

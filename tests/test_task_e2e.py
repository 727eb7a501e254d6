"""The scikit-learn example task through `fedkeeper start` on the local platform: the same seed gives the same
final model, and a run killed (SIGKILL) mid-round and resumed with --resume ends on that same model."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import yaml

from test_fl_e2e import _reap_launched, fedkeeper, finish, launch, read_csv, summary_of, wait_gone  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tasks" / "sklearn_logreg" / "config.yaml"


def _config(folder: Path) -> Path:
    """The example, scaled down; latency makes rounds long enough for a kill to land inside one."""
    data = yaml.safe_load(EXAMPLE.read_text())
    fl = data["scenarios"]["federated_learning"]
    fl.update(rounds=4, seed=5)
    fl["clients_info"].update(total_num_clients=4, num_clients_per_round=2, placement={"laptop": 4})
    fl["task"]["path"] = str(EXAMPLE.parent.parent)
    fl["data_sampling"] = {"partition": "quantity", "quantity_sigma": 1.0}
    data["providers"]["local"]["laptop"]["faults"] = {"latency_ms": [60, 120], "seed": 3}
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _events(folder: Path) -> list[dict]:
    out: list[dict] = []
    for path in (folder / "Logs").glob("*/events.jsonl"):
        out = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return out


@pytest.mark.timeout(600)
def test_sklearn_task_same_model_after_sigkill_and_resume(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    reference = fedkeeper(a, "start", "-c", str(_config(a)), "-q")
    assert reference.returncode == 0, reference.stderr
    whole = summary_of(a)
    assert whole["status"] == "completed" and whole["rounds_completed"] == 4
    assert whole["final"]["accuracy"] > 0.7
    partition = json.loads((a / "Logs" / whole["run_id"] / "partition.json").read_text())
    assert partition["scheme"] == "quantity" and sum(c["size"] for c in partition["clients"]) == 1437
    shown = fedkeeper(a, "report", "latest", "--partition", "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["num_clients"] == 4

    config_b = _config(b)
    proc = launch(b, "start", "-c", str(config_b), "-q")
    killed_in = None
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        events = _events(b)
        started = [e["round"] for e in events if e["event"] == "round_started"]
        if started and started[-1] >= 2 and any(e["event"] == "activation" and e.get("round") == started[-1]
                                                 for e in events):
            proc.send_signal(signal.SIGKILL)
            killed_in = started[-1]
            break
        time.sleep(0.02)
    finish(proc, timeout=30)
    assert killed_in is not None, "the run finished before it could be killed mid-round"
    assert proc.returncode == -signal.SIGKILL
    run_id = next((b / "Logs").iterdir()).name
    resumed = fedkeeper(b, "start", "-c", str(config_b), "--resume", "latest", "-q")
    assert resumed.returncode == 0, resumed.stderr
    after = summary_of(b, run_id)
    assert after["status"] == "completed" and after["rounds_completed"] == 4
    assert after["model_sha256"] == whole["model_sha256"], "a killed and resumed run must end on the same model"
    assert [int(r["round"]) for r in read_csv(b / "Logs" / run_id / "rounds.csv")] == [1, 2, 3, 4]
    assert json.loads((b / "Logs" / run_id / "partition.json").read_text()) == partition
    assert wait_gone(a) == [] and wait_gone(b) == []

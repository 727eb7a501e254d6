"""The PyTorch example task (examples/tasks/torch_cnn): the task contract, determinism, accuracy against the
built-in numpy cnn, and `fedkeeper start` end to end on the local platform with a kill and `--resume`.

torch==2.13.0 (the CPU build) is in the test extra; these tests are skipped where it is not installed.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

# background `fedkeeper` processes; test_fl_e2e's autouse fixture stops them when a test fails half-way
from test_fl_e2e import _reap_launched  # noqa: F401
from test_fl_e2e import launch as _launch

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]
TASKS = ROOT / "examples" / "tasks"
EXAMPLE = ROOT / "examples" / "torch-cnn.yaml"
DATA = {"dataset": "digits", "partition": "iid"}
HYPER = {"optim": "adam", "lr": 0.001, "batch_size": 16, "local_epochs": 1, "mu": 0.0, "l2": 0.0}


@pytest.fixture(scope="module")
def torch_task() -> Any:
    sys.path.insert(0, str(TASKS))
    try:
        from fedkeeper.runtime.tasks import load_task

        yield load_task({"module": "torch_cnn", "params": {}})
    finally:
        sys.path.remove(str(TASKS))


def test_params_are_checked_without_torch_and_name_the_key() -> None:
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import torch_cnn\n"
            "torch_cnn.make_task({'hidden': 64})\n"
            "try:\n    torch_cnn.make_task({'channels': [8]})\nexcept ValueError as e:\n    print(e)\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(TASKS)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["params.channels must be two positive integers, e.g. [32, 64]; got [8]",
                                       "False"]


def test_weights_cross_as_named_numpy_arrays_and_training_is_deterministic(torch_task: Any) -> None:
    from fedkeeper.runtime.tasks import check_weights

    w0 = torch_task.init(np.random.SeedSequence(7))
    assert list(w0) == ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "fc1.weight", "fc1.bias",
                        "fc2.weight", "fc2.bias"]
    assert all(isinstance(a, np.ndarray) and a.dtype == np.float32 for a in w0.values())
    assert all(np.array_equal(a, b) for a, b in zip(w0.values(), torch_task.init(np.random.SeedSequence(7)).values()))
    spec = torch_task.weights_spec()
    frozen = {k: v.copy() for k, v in w0.items()}
    for v in w0.values():
        v.flags.writeable = False  # the functions hand in read-only views of the stored model
    train, test = torch_task.load_dataset(DATA)
    shard = type(train)(train.x[:96], train.y[:96])
    runs = [torch_task.train(w0, shard, HYPER, np.random.SeedSequence(3)) for _ in range(2)]
    for r in runs:
        check_weights(r.weights, spec, "trained")
        assert r.num_examples == 96 and r.metrics["steps"] == 6
    assert all(np.array_equal(runs[0].weights[k], runs[1].weights[k]) for k in w0)  # same seed, same bits
    other = torch_task.train(w0, shard, HYPER, np.random.SeedSequence(4))
    assert not np.array_equal(other.weights["fc1.weight"], runs[0].weights["fc1.weight"])  # the order is the seed's
    assert all(np.array_equal(frozen[k], w0[k]) for k in w0)
    prox = torch_task.train(w0, shard, {**HYPER, "mu": 10.0}, np.random.SeedSequence(3))
    moved = lambda w: sum(float(np.sum((w[k] - w0[k]) ** 2)) for k in w0)  # noqa: E731
    assert moved(prox.weights) < moved(runs[0].weights)  # FedProx pulls towards the global weights
    loss, accuracy, _ = torch_task.evaluate(runs[0].weights, test)
    assert np.isfinite(loss) and 0.0 <= accuracy <= 1.0
    with pytest.raises(ValueError, match="params.train.optim"):
        torch_task.check_hyper({"optim": "lbfgs"}, "params.train")


def _fedavg(task: Any, key: str, rounds: int, clients: int, per_round: int, seed: int) -> list[float]:
    """FedAvg as the aggregator does it (weighted by examples), in-process: accuracy after every round."""
    from fedkeeper.runtime.tasks import as_evaluation
    from fedkeeper.runtime.tasks.partition import client_shard

    weights = task.init(np.random.SeedSequence(seed))
    _, test = task.load_dataset(DATA)
    rng = np.random.default_rng(seed)
    out = []
    for rnd in range(1, rounds + 1):
        updates = []
        for client in sorted(rng.choice(clients, per_round, replace=False)):
            shard = client_shard(task, key, DATA, clients, int(client), seed)
            result = task.train(weights, shard, HYPER, np.random.SeedSequence([seed, rnd, int(client)]))
            updates.append((result.weights, result.num_examples))
        total = sum(n for _, n in updates)
        weights = {k: (sum(w[k].astype(np.float64) * n for w, n in updates) / total).astype(np.float32)
                   for k in weights}
        out.append(as_evaluation(task.evaluate(weights, test)).accuracy)
    return out


@pytest.mark.slow
def test_the_torch_cnn_reaches_the_builtin_numpy_cnns_accuracy(torch_task: Any) -> None:
    """Same data, partition, clients, rounds and hyper-parameters; the numpy cnn has the same layers."""
    from fedkeeper.runtime.tasks import numpy_models

    numpy_cnn = numpy_models.make_task({"model": "cnn", "input_shape_x": 8, "input_shape_y": 8, "output_size": 10})
    numpy_acc = _fedavg(numpy_cnn, "numpy-cnn", rounds=5, clients=10, per_round=5, seed=42)
    torch_acc = _fedavg(torch_task, "torch-cnn", rounds=5, clients=10, per_round=5, seed=42)
    print(f"accuracy per round: numpy cnn {numpy_acc}, torch cnn {torch_acc}")
    assert torch_acc[-1] >= numpy_acc[-1] and torch_acc[-1] > 0.85


# ------------------------------------------------------------------------------------------ end to end

def _finish(proc: subprocess.Popen[str], timeout: float = 400) -> tuple[int, str]:
    _out, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def _events(folder: Path) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = []
    for path in folder.glob("Logs/*/events.jsonl"):
        for line in path.read_text().splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError:  # the line being written
                pass
    return lines


def _config(folder: Path) -> Path:
    """The example, scaled down: 4 clients, 2 per round, 2 rounds; latency so that a kill lands inside round 2."""
    data = yaml.safe_load(EXAMPLE.read_text())
    data["experiment"] = "torch-e2e"
    data["providers"]["local"]["laptop"].update(concurrency=2, faults={"latency_ms": [300, 600], "seed": 5})
    fl = data["scenarios"]["federated_learning"]
    fl["rounds"] = 2
    fl["clients_info"].update(total_num_clients=4, num_clients_per_round=2, placement={"laptop": 4})
    fl["task"]["path"] = str(TASKS)
    fl["resilience"] = {"backoff_base_s": 0.05, "backoff_max_s": 0.5}
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.slow
@pytest.mark.integration
def test_start_with_the_torch_task_and_a_killed_run_resumed_give_the_same_model(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    cfg_a, cfg_b = _config(a), _config(b)
    whole = _launch(a, "start", "-c", str(cfg_a), "-q")
    killed = _launch(b, "start", "-c", str(cfg_b), "-q")
    deadline = time.time() + 300
    killed_in_round = None
    while time.time() < deadline and killed.poll() is None:
        events = _events(b)
        started = [e["round"] for e in events if e["event"] == "round_started"]
        if started and started[-1] == 2 and any(e["event"] == "activation" and e.get("round") == 2 for e in events):
            killed.send_signal(signal.SIGKILL)
            killed_in_round = 2
            break
        time.sleep(0.05)
    killed.wait(timeout=30)
    assert killed_in_round == 2, "the run finished before it could be killed inside round 2"
    run_id = next((b / "Logs").iterdir()).name
    assert not (b / "Logs" / run_id / "summary.json").exists()

    resumed = _launch(b, "start", "-c", str(cfg_b), "--resume", "latest", "-q")
    code, err = _finish(whole)
    assert code == 0, err
    code, err = _finish(resumed)
    assert code == 0, err
    assert "Traceback" not in err
    reference = json.loads(next((a / "Logs").glob("*/summary.json")).read_text())
    summary = json.loads((b / "Logs" / run_id / "summary.json").read_text())
    assert reference["status"] == summary["status"] == "completed" and summary["rounds_completed"] == 2
    assert len(reference["model_sha256"]) == 64
    assert summary["model_sha256"] == reference["model_sha256"], "a resumed torch run must end on the same model"

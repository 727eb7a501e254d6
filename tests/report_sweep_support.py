"""Synthetic runs of a small sweep for the grouped-report tests: exact accuracies, round times and memory per run,
written through RunLog (the real formats), and the sweep manifest `fedkeeper sweep` writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedkeeper.results.runlog import RunLog
from fedkeeper.secrets import Redactor


def write_run(logs: Path, run_id: str, *, lr: float, seed: int, accuracies: list[float], round_s: float = 2.0,
              optim: str = "sgd", target: float | None = 0.7, duration_s: float = 1.0, memory_mb: int = 1024,
              overrides: dict[str, Any] | None = None, t0: float = 1_700_000_000.0) -> Path:
    """One finished run on AWS (so it has a cost): 2 clients per round, both succeed, both aggregated."""
    fl: dict[str, Any] = {"rounds": len(accuracies), "seed": seed,
                          "clients_info": {"total_num_clients": 2, "num_clients_per_round": 2},
                          "model_params": {"optim": optim, "lr": lr}}
    if target is not None:
        fl["target_accuracy"] = target
    config = {"experiment": "grid", "providers": {"aws": {"lambda-eu": {}}}, "scenarios": {"federated_learning": fl}}
    with RunLog(logs, run_id, Redactor()) as log:
        log.write_config(config)
        log.event("run_started", experiment="grid", rounds=len(accuracies), from_round=1)
        for r, acc in enumerate(accuracies, start=1):
            log.event("round_started", round=r, selected=[0, 1], ranked=[1, 0])
            for c in (0, 1):
                log.activation({"round": r, "client_id": c, "cluster": "lambda-eu", "platform": "aws",
                                "function": "fl_client", "activation_id": f"{run_id}-{r}-{c}", "attempt": 1,
                                "state": "succeeded", "cold": r == 1, "start": t0 + r, "end": t0 + r + duration_s,
                                "duration_s": duration_s, "memory_mb": memory_mb})
            log.event("updates_aggregated", round=r, clients=[
                {"client_id": c, "activation_id": f"{run_id}-{r}-{c}", "num_examples": 100 + c} for c in (0, 1)])
            log.round({"round": r, "selected": 2, "succeeded": 2, "failed": 0, "timed_out": 0, "lost": 0,
                       "retries": 0, "rejected": 0, "accuracy": acc, "loss": 1 - acc, "invoke_s": round_s - 0.5,
                       "slowest_client_s": duration_s, "aggregate_s": 0.5, "round_s": round_s, "aggregated": 2,
                       "throttled": 0, "abandoned": 0})
        summary = {"run_id": run_id, "experiment": "grid", "status": "completed",
                   "rounds_completed": len(accuracies), "rounds_planned": len(accuracies),
                   "final": {"accuracy": accuracies[-1], "loss": 1 - accuracies[-1]},
                   "wall_s": round_s * len(accuracies) + 1.0, "sessions": 1, "started": t0, "finished": t0 + 99,
                   "clusters": {"lambda-eu": "aws"}}
        if overrides is not None:
            summary["overrides"] = overrides
        log.write_json("summary.json", summary)
        log.event("run_finished", **{k: v for k, v in summary.items() if k != "run_id"})
    return logs / run_id


#: lr → seed → accuracies per round (lr 0.1 reaches 0.7 at round 2 or 3; lr 0.01 never with seed 2)
GRID: dict[float, dict[int, list[float]]] = {
    0.1: {1: [0.5, 0.7, 0.8], 2: [0.4, 0.6, 0.9]},
    0.01: {1: [0.3, 0.5, 0.7], 2: [0.2, 0.4, 0.6]},
}


def write_sweep(logs: Path, name: str = "lr-grid", *, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The 2 × 2 sweep of GRID (lr × seed) and its manifest; runs named in `skip` get no folder."""
    runs = []
    for lr, seeds in GRID.items():
        for seed, accs in seeds.items():
            run_id = f"{name}-lr{lr:g}-s{seed}"
            if run_id not in skip:
                write_run(logs, run_id, lr=lr, seed=seed, accuracies=accs, round_s=2.0 if lr == 0.1 else 3.0)
            runs.append({"run_id": run_id, "values": {"scenarios.federated_learning.model_params.lr": lr},
                         "seed": seed, "status": "completed", "final_accuracy": accs[-1]})
    manifest = {"name": name, "config": "grid.yaml",
                "grid": {"scenarios.federated_learning.model_params.lr": list(GRID)}, "seeds": [1, 2], "runs": runs}
    (logs / "sweeps").mkdir(parents=True, exist_ok=True)
    (logs / "sweeps" / f"{name}.json").write_text(json.dumps(manifest))
    return manifest

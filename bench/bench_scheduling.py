"""Serverless-aware scheduling on the local platform (issue 20): time to a target accuracy and estimated cost of
sync+random, sync+history, sync+warm_first, deadline and buffered, and of the `scored` policy in each mode, side
by side, in one run.

100 clients on one local cluster with a seeded heterogeneous profile (docs/scheduling.md): three speed tiers
(50 % ×1, 30 % ×2, 20 % ×4), 10 % stragglers (×10), cold starts of 1–3 s with a keep-warm window; every time is
multiplied by `--scale` (default 0.25) so that the whole bench takes a few minutes. Costs use Lambda's list
price (x86, USD 0.0000166667 per GB-s, 0.20 per million requests) for the local cluster, over the *simulated*
handler times the profile reports, so they stand for what the same schedule would bill on a fabric with that
timing. Each setting runs in process (`start_command`) against the embedded store; the figures are read back
from Logs/<run>/ (rounds.csv, activations.csv, summary.json).

    python bench/bench_scheduling.py [--scale 0.25] [--target 0.85] [--rounds 25] [--seed 3] [--only NAME ...]
                                     [--json out.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
LAMBDA = {"gb_second": 0.0000166667, "per_million_invocations": 0.2}

#: history: rookies are measured through the exploration share rather than all first, and known clients slower
#: than 1.5 × the median are left to exploration and the waiting bound (which still brings everyone in)
HISTORY = {"policy": "history", "rookies_first": False, "max_slowdown": 1.5}
#: scored: value (reliability × diversity) per second of expected round time, cold starts included
#: (docs/scheduling.md). No random exploration places: a random client is a cold start that would make a warm
#: round as long as a cold one, and the diversity term already brings new clients in (whole rounds of them).
#: `cold_start_s` is set by `config` to the profile's mean cold start, as a user sets their platform's.
SCORED = {"policy": "scored", "epsilon": 0.0}
SETTINGS: dict[str, dict[str, Any]] = {
    "sync+random": {"selection": {"policy": "random"}, "mode": "sync"},
    "sync+history": {"selection": HISTORY, "mode": "sync"},
    "sync+warm_first": {"selection": {"policy": "warm_first"}, "mode": "sync"},
    "sync+warm_first+prewarm": {"selection": {"policy": "warm_first"}, "mode": "sync", "prewarm": True},
    "deadline(discard)": {"selection": {"policy": "random"}, "mode": {"name": "deadline", "late": "discard"}},
    "deadline(carry)": {"selection": {"policy": "random"}, "mode": {"name": "deadline", "late": "carry"}},
    "deadline(discard)+history": {"selection": HISTORY, "mode": {"name": "deadline", "late": "discard"}},
    "buffered": {"selection": {"policy": "random"}, "mode": {"name": "buffered"}},
    "sync+scored": {"selection": SCORED, "mode": "sync"},
    "deadline(discard)+scored": {"selection": SCORED, "mode": {"name": "deadline", "late": "discard"}},
    "buffered+scored": {"selection": SCORED, "mode": {"name": "buffered"}},
}


def config(scale: float, rounds: int, target: float, setting: dict[str, Any], per_round: int,
           seed: int = 3) -> dict[str, Any]:
    base_ms = 400 * scale
    profile = {"seed": 20, "base_ms": base_ms,
               "slowdown": {"median": 1.0, "sigma": 0.1},
               "tiers": [{"share": 0.5, "slowdown": 1}, {"share": 0.3, "slowdown": 2}, {"share": 0.2, "slowdown": 4}],
               "stragglers": {"share": 0.1, "slowdown": 10},
               "cold_start": {"delay_ms": [1000 * scale, 3000 * scale], "keep_warm_s": 20 * scale}}
    fl: dict[str, Any] = {
        "rounds": rounds, "seed": seed, "target_accuracy": target,
        "clients_info": {"total_num_clients": 100, "num_clients_per_round": per_round,
                         "placement": {"fleet": 100, "agg": 0}, "deployment": "per_client"},
        "server": {"cluster": "agg"},
        "data_sampling": {"model": "logreg", "input_size": 64, "output_size": 10, "partition": "iid"},
        "model_params": {"optim": "adam", "lr": 0.01, "batch_size": 10, "local_epochs": 5},
        "training_test_data": {"dataset": "digits"},
        "resilience": {"backoff_base_s": 0.01, "backoff_max_s": 0.05, "poll_max_s": 0.02, "timeout_slack_s": 5},
        "selection": setting["selection"], "prewarm": bool(setting.get("prewarm")),
    }
    if fl["selection"]["policy"] == "scored" and "cold_start_s" not in fl["selection"]:
        lo, hi = profile["cold_start"]["delay_ms"]
        fl["selection"] = {**fl["selection"], "cold_start_s": (lo + hi) / 2 / 1000}
    mode = setting["mode"]
    if isinstance(mode, dict) and mode.get("name") == "deadline":
        # the deadline lets the two fast tiers (×1, ×2 with noise) in: 2.5 × the nominal handler time
        # grace: the largest simulated cold start plus 0.25 s, so the platform's clock alone decides (determinism)
        mode = {**mode, "deadline_s": 2.5 * base_ms / 1000, "grace_s": 3 * scale + 0.25}
    if isinstance(mode, dict) and mode.get("name") == "buffered":
        mode = {**mode, "concurrency": 2 * per_round, "buffer_size": per_round}
    fl["mode"] = mode
    return {
        "experiment": "sched",
        "providers": {"local": {"fleet": {"concurrency": 8, "profile": profile}, "agg": {"concurrency": 1}}},
        "mongo_config": {"url": "embedded", "db": "bench_sched"},
        "functions": {"fl_client": {"local": {"memory": 512, "timeout": 60}},
                      "fl_server_aggregator": {"local": {"memory": 1024, "timeout": 120}}},
        "pricing": {"local": LAMBDA},
        "scenarios": {"federated_learning": fl},
    }


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def measure(name: str, data: dict[str, Any], workdir: Path, target: float) -> dict[str, Any]:
    from fedkeeper import config as cfg
    from fedkeeper.cli.main import App
    from fedkeeper.scenarios.federated_learning import start_command

    workdir.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(data, sort_keys=False)
    conf = cfg.load_text(text, source=str(workdir / "config.yaml"), base_dir=workdir)
    app = App(quiet=True, logs_dir=workdir / "Logs", workdir=workdir)
    t0 = time.perf_counter()
    summary = start_command(app, conf, print_result=False)
    wall = time.perf_counter() - t0
    folder = workdir / "Logs" / summary["run_id"]
    rounds = read_csv(folder / "rounds.csv")
    acts = read_csv(folder / "activations.csv")
    clients = [a for a in acts if a["function"] == "fl_client"]
    elapsed, reached_at, cost = 0.0, None, 0.0
    for row in rounds:
        elapsed += float(row["round_s"] or 0)
        cost += float(row.get("cost") or 0)
        if reached_at is None and float(row["accuracy"]) >= target:
            reached_at = (int(row["round"]), elapsed, cost)
    billed = sum(512 / 1024 * float(a["duration_s"] or 0) for a in acts if a["function"].startswith("fl_client"))
    # the run's cost from every billed activation (activations.csv), as `fedkeeper report` computes it: rows of
    # the stale modes do not hold the calls still running when they were written, nor those abandoned at the end
    from fedkeeper.results.pricing import price_table
    from fedkeeper.results.stats import cost_estimate

    priced = [{**a, "memory_mb": a.get("memory_mb") or None} for a in acts]
    run_cost = cost_estimate(priced, price_table(data["pricing"]))["total_usd"]
    return {"setting": name, "status": summary["status"], "rounds": len(rounds),
            "final_accuracy": summary["final"]["accuracy"], "wall_s": round(wall, 2),
            "rounds_s": round(elapsed, 2),
            "target_round": reached_at[0] if reached_at else None,
            "time_to_target_s": round(reached_at[1], 2) if reached_at else None,
            "cost_to_target_usd": reached_at[2] if reached_at else None,
            "rows_cost_usd": cost, "cost_usd": run_cost, "client_gb_s": round(billed, 2),
            "client_calls": len(clients), "cold_starts": sum(str(a["cold"]).lower() in ("true", "1") for a in clients),
            "warmups": sum(a["function"] == "fl_client:warmup" for a in acts)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=0.25)
    parser.add_argument("--target", type=float, default=0.85)
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--per-round", type=int, default=10)
    parser.add_argument("--seed", type=int, default=3, help="the experiment's seed (selection, data, training); "
                        "the timing profile keeps its own")
    parser.add_argument("--only", nargs="*", default=None, help="settings to run (default: all)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--keep", type=Path, default=None, help="write the runs' Logs/ here instead of a temp dir")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="fk-bench-sched-") as tmp:
        if args.keep:
            tmp = str(args.keep)
        for name, setting in SETTINGS.items():
            if args.only and name not in args.only:
                continue
            data = config(args.scale, args.rounds, args.target, setting, args.per_round, args.seed)
            data["mongo_config"]["db"] = "bench_sched_" + "".join(ch if ch.isalnum() else "_" for ch in name)
            result = measure(name, data, Path(tmp) / "".join(ch if ch.isalnum() else "_" for ch in name), args.target)
            results.append(result)
            print(json.dumps(result), file=sys.stderr, flush=True)
    head = ["setting", "status", "target_round", "time_to_target_s", "cost_usd", "rounds_s", "rows_cost_usd",
            "client_calls", "cold_starts", "warmups", "final_accuracy"]
    print(" | ".join(head))
    for r in results:
        print(" | ".join("–" if r[k] is None else f"{r[k]:.6f}" if isinstance(r[k], float) and "usd" in k
                         else str(r[k]) for k in head))
    base = next((r for r in results if r["setting"] == "sync+random"), None)
    if base and base["time_to_target_s"]:
        for r in results:
            if r["time_to_target_s"]:
                print(f"{r['setting']}: {r['time_to_target_s'] / base['time_to_target_s']:.2f}× the time of "
                      f"sync+random, {r['cost_usd'] / base['cost_usd']:.2f}× its cost")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

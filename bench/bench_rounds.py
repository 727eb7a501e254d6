"""Per-round orchestration overhead of `fedkeeper start` on the local platform (issue 6).

Runs the sample task (digits, MLP 64-32-10, adam, 5 local epochs) through the real CLI at 20 and 100 clients
per round, then reads Logs/<run>/ back and prints, per setting:

- overhead per invocation as the issue defines it: (round time − slowest client's handler time) / invocations;
- the same with the platform's capacity taken out: (round time − Σ handler time / workers) / invocations, because
  on a 2-core machine 100 clients cannot all run at once and their queueing is not orchestration;
- round time, invocations per second.

Warm rounds (2..N) are reported separately from round 1, which pays the cold starts.

With `--flower PYTHON` (a Python that has `flwr[simulation]`), the same task (same numpy model, data partitions,
clients, epochs, rounds; bench/flower_task.py) also runs in Flower's simulation engine with the same 2 CPUs, and
the wall times are printed side by side: total, and per round (the difference between an N-round and a 1-round
run, which takes start-up out of both). Run:
    python bench/bench_rounds.py [--rounds 4] [--flower /path/to/venv/bin/python]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKERS = 2


def make_config(folder: Path, per_round: int, total: int, rounds: int) -> Path:
    data = yaml.safe_load((ROOT / "config-sample.yaml").read_text())
    data["experiment"] = f"bench{per_round}"
    data["providers"]["local"] = {"laptop": {"concurrency": WORKERS}, "server": {"concurrency": 1}}
    fl = data["scenarios"]["federated_learning"]
    fl["rounds"] = rounds
    fl["server"] = {"cluster": "server"}
    fl["clients_info"].update(total_num_clients=total, num_clients_per_round=per_round, placement={"laptop": total})
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def flower(python: str, per_round: int, total: int, rounds: int) -> dict[str, float]:
    result = subprocess.run([python, str(ROOT / "bench" / "flower_task.py"), "--total", str(total),
                             "--per-round", str(per_round), "--rounds", str(rounds), "--cpus", str(WORKERS)],
                            capture_output=True, text=True, env={**os.environ, "RAY_DEDUP_LOGS": "0"})
    lines = [ln for ln in result.stdout.splitlines() if ln.startswith("{")]
    if result.returncode != 0 or not lines:
        raise SystemExit(f"flower run failed ({result.returncode}):\n{result.stderr[-2000:]}")
    return json.loads(lines[-1])


def run(per_round: int, total: int, rounds: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="fk-bench-") as tmp:
        folder = Path(tmp)
        config = make_config(folder, per_round, total, rounds)
        t0 = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "fedkeeper.cli", "start", "-c", str(config), "-q"],
                                cwd=folder, capture_output=True, text=True, env=dict(os.environ))
        wall = time.perf_counter() - t0
        if result.returncode != 0:
            raise SystemExit(f"run failed ({result.returncode}):\n{result.stderr[-2000:]}")
        run_dir = next((folder / "Logs").iterdir())
        summary = json.loads((run_dir / "summary.json").read_text())
        rows = read_csv(run_dir / "rounds.csv")
        acts = read_csv(run_dir / "activations.csv")
    per_round_stats = []
    for row in rows:
        r = row["round"]
        round_acts = [a for a in acts if a["round"] == r]
        handler = [float(a["duration_s"] or 0) for a in round_acts if a["function"] == "fl_client"]
        n = len(round_acts)
        round_s = float(row["round_s"])
        per_round_stats.append({
            "round": int(r), "round_s": round_s, "n": n,
            "issue_overhead_ms": 1000 * (round_s - float(row["slowest_client_s"])) / n,
            "capacity_overhead_ms": 1000 * (round_s - sum(handler) / WORKERS - float(row["aggregate_s"])) / n,
            "mean_handler_ms": 1000 * statistics.mean(handler) if handler else 0.0,
        })
    warm = [s for s in per_round_stats if s["round"] > 1] or per_round_stats
    return {
        "per_round": per_round, "rounds": len(rows), "wall_s": wall, "accuracy": summary["final"]["accuracy"],
        "round1_s": per_round_stats[0]["round_s"],
        "warm_round_s": statistics.median(s["round_s"] for s in warm),
        "issue_overhead_ms": statistics.median(s["issue_overhead_ms"] for s in warm),
        "capacity_overhead_ms": statistics.median(s["capacity_overhead_ms"] for s in warm),
        "mean_handler_ms": statistics.median(s["mean_handler_ms"] for s in warm),
        "invocations_per_s": statistics.median(s["n"] / s["round_s"] for s in warm),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--flower", metavar="PYTHON", default=os.environ.get("FLWR_PYTHON"),
                        help="a Python with flwr[simulation] installed, for the side-by-side comparison")
    args = parser.parse_args()
    results = [run(20, 100, args.rounds), run(100, 100, args.rounds)]
    ours_one = {k: run(k, 100, 1)["wall_s"] for k in (20, 100)} if args.flower else {}
    print(f"local platform, {WORKERS} client workers, embedded store, {os.cpu_count()} cores; median of warm rounds\n")
    head = (f"{'clients/round':>13} {'round 1 s':>9} {'warm round s':>12} {'handler ms':>10} "
            f"{'overhead ms/inv (issue)':>23} {'overhead ms/inv (capacity)':>26} {'inv/s':>7} {'accuracy':>8}")
    print(head)
    print("-" * len(head))
    for r in results:
        print(f"{r['per_round']:>13} {r['round1_s']:>9.2f} {r['warm_round_s']:>12.3f} {r['mean_handler_ms']:>10.1f} "
              f"{r['issue_overhead_ms']:>23.2f} {r['capacity_overhead_ms']:>26.2f} {r['invocations_per_s']:>7.0f} "
              f"{r['accuracy']:>8.4f}")
    ratio = results[1]["warm_round_s"] / results[0]["warm_round_s"]
    print(f"\n100 vs 20 clients per round: round time x{ratio:.2f} for x5 the invocations")
    print("target: <= 10 ms overhead per invocation at 100 clients per round (issue definition)")
    if not args.flower:
        print("\n(Flower comparison skipped: pass --flower PYTHON or set FLWR_PYTHON)")
        return
    print(f"\nside by side with Flower's simulation engine ({WORKERS} CPUs, same task, {args.rounds} rounds)")
    head = (f"{'clients/round':>13} {'fedkeeper wall s':>16} {'flower wall s':>13} {'ratio':>6} "
            f"{'fedkeeper s/round':>17} {'flower s/round':>14} {'ratio':>6} {'acc fk':>7} {'acc flwr':>8}")
    print(head)
    print("-" * len(head))
    for r in results:
        k = r["per_round"]
        fl_n, fl_1 = flower(args.flower, k, 100, args.rounds), flower(args.flower, k, 100, 1)
        ours_round = (r["wall_s"] - ours_one[k]) / max(1, args.rounds - 1)
        their_round = (fl_n["wall_s"] - fl_1["wall_s"]) / max(1, args.rounds - 1)
        print(f"{k:>13} {r['wall_s']:>16.2f} {fl_n['wall_s']:>13.2f} {fl_n['wall_s'] / r['wall_s']:>6.2f} "
              f"{ours_round:>17.3f} {their_round:>14.3f} {their_round / ours_round:>6.2f} "
              f"{r['accuracy']:>7.4f} {fl_n['accuracy']:>8.4f}")
    print("ratio = flower / fedkeeper (> 1: fedkeeper is faster). FedKeeper's figures include real worker\n"
          "processes, the embedded MongoDB-compatible store, every activation tracked and logged.")


if __name__ == "__main__":
    main()

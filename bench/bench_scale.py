"""Where a client's time goes at 100, 300 and 1000 clients per round (issue 18): a profile kept as bench output.

Runs `fedkeeper start` in this process (tiny MLP 64-32-10 on digits, one local epoch, two local workers, the
embedded nx-27017 store), once per setting with `--rounds` rounds (default 2), and reports the last (warm) round:

- the round's breakdown: select (ranking, stored-update lookup, payloads), invoke (hand-off of each call to a
  worker), wait (the tracker until every client answered: polls, activation records, sleeps, its own loop),
  aggregate (the aggregator function, which reads every update from the store), record (counts, rounds.csv,
  the runs document);
- CPU seconds per client in each process: the orchestrator, the workers (clients and aggregator) and the store
  server, which tells the hand-off, the store round trips and the bookkeeping apart on a 2-core machine;
- the marginal cost per client, (round at 1000 − round at 100) / 900;
- the clients' training compute alone (`model.train_local` on the same partitions, timed here), divided by
  the workers, and the round time as a ratio to it.

With `--profile` (the largest setting) each process's hot functions are printed too, in ms per client call:
the orchestrator, the client workers, the aggregator's workers and the store server (cProfile in each: the local
platform's worker entry and the embedded server's entry write one when `FK_PROFILE_DIR` is set). With
`--flower PYTHON` (a Python with `flwr[simulation]`, never a dependency of this project) the same task runs in
Flower's simulation engine (bench/flower_task.py: same model, data partitions, epochs and clients, 2 CPUs) and
the per-round wall times are printed side by side: Flower's is its 2-round run minus its 1-round run.
With ``--rounds 20`` or more it also prints the mean round time of rounds 2-10 and of the last 9 (does a round get
slower as the run's documents pile up in the store?).
Each setting runs once per `--pack` value (`clients_info.clients_per_invocation`, default 1 and 50: client packing,
docs/aggregation.md#client-packing), back to back, and a last table sets the packed round times beside the
unpacked ones.
Run:  python bench/bench_scale.py [--clients 100 300 1000] [--pack 1 50] [--rounds 2] [--profile]
                                  [--hash xxh3_128] [--flower /path/to/venv/bin/python]
Figures are measured in this run; the machine is shared, so compare the ratios printed side by side.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import csv
import functools
import io
import json
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import psutil  # noqa: E402
import yaml  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORKERS = 2
MODEL = {"model": "mlp", "input_size": 64, "hidden_size": 32, "output_size": 10}
TRAIN = {"optim": "adam", "lr": 0.01, "batch_size": 10, "local_epochs": 1, "mu": 0.0, "l2": 0.0}
SEED = 42


def make_config(folder: Path, clients: int, rounds: int, hash_alg: str | None = None, pack: int = 1) -> Path:
    cfg = yaml.safe_load((ROOT / "config-sample.yaml").read_text())
    cfg["experiment"] = f"scale{clients}"
    cfg["providers"]["local"] = {"laptop": {"concurrency": WORKERS}, "laptop-server": {"concurrency": 1}}
    fl = cfg["scenarios"]["federated_learning"]
    if hash_alg:
        fl["hash_alg"] = hash_alg
    fl["rounds"] = rounds
    fl["model_params"].update(local_epochs=TRAIN["local_epochs"])
    fl["clients_info"].update(total_num_clients=clients, num_clients_per_round=clients, placement={"laptop": clients},
                              clients_per_invocation=pack)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


# ---------------------------------------------------------------------------------------------- instrumentation


class Probe:
    """Wall-clock marks and per-label time sums, collected by wrapping the orchestrator's methods (bench only)."""

    def __init__(self) -> None:
        self.rounds: list[dict[str, float]] = []
        self.current: dict[str, float] = defaultdict(float)
        self.cpu_mark: dict[str, float] = {}
        self.nx_pid: int | None = None
        self.workdir: Path | None = None

    def timed(self, label: str, fn: Callable[..., Any], when: Callable[..., bool] | None = None) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kw: Any) -> Any:
            if when is not None and not when(*args, **kw):
                return fn(*args, **kw)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                self.current[label] += time.perf_counter() - t0
                self.current[f"{label}#"] += 1
        return wrapper

    def mark(self, label: str) -> None:
        self.current[label] = time.perf_counter()

    # CPU seconds of the processes involved: this one, its worker processes, the embedded store server
    def _cpu(self) -> dict[str, float]:
        me = psutil.Process()
        t = me.cpu_times()
        out = {"orchestrator": t.user + t.system, "workers": 0.0, "aggregator": 0.0, "store": 0.0}
        nx = self._nx_pid()
        for child in me.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                c = child.cpu_times()
                kind = "store" if child.pid == nx else "aggregator" if "aggregator" in child.cwd() else "workers"
                out[kind] += c.user + c.system
        if nx is not None and not any(c.pid == nx for c in me.children(recursive=True)):
            with contextlib.suppress(psutil.Error):
                c = psutil.Process(nx).cpu_times()
                out["store"] += c.user + c.system
        return out

    def _nx_pid(self) -> int | None:
        if self.nx_pid is None and self.workdir is not None:
            with contextlib.suppress(OSError, ValueError, KeyError):
                self.nx_pid = int(json.loads((self.workdir / ".fedkeeper" / "store.json").read_text())["pid"])
        return self.nx_pid

    def round_begin(self) -> None:
        self.current = defaultdict(float)
        self.cpu_mark = self._cpu()
        self.mark("round_begin")

    def round_end(self) -> None:
        self.mark("round_end")
        cpu = self._cpu()
        for k, v in cpu.items():
            self.current[f"cpu_{k}"] = v - self.cpu_mark.get(k, 0.0)
        self.rounds.append(dict(self.current))


@contextlib.contextmanager
def instrumented(probe: Probe) -> Iterator[None]:
    """Wrap the methods whose time the breakdown needs; restore them afterwards."""
    from fedkeeper.scenarios import federated_learning as fl_mod
    from fedkeeper.scenarios import stop as stop_mod
    from fedkeeper.store import repository
    from fedkeeper.tracker import Tracker

    def clients(self: Any, jobs: Any, *a: Any, **k: Any) -> bool:
        return bool(jobs) and jobs[0].client_id is not None

    saved: list[tuple[Any, str, Any]] = []

    def patch(owner: Any, name: str, new: Any) -> None:
        saved.append((owner, name, getattr(owner, name)))
        setattr(owner, name, new)

    orig_check, orig_run, orig_agg = stop_mod.check, Tracker.run, fl_mod.Experiment._aggregate
    orig_update_run = repository.Store.update_run

    def check(*a: Any, **k: Any) -> Any:
        probe.round_begin()
        return orig_check(*a, **k)

    def run(self: Any, jobs: Any, *a: Any, **k: Any) -> Any:
        is_clients = clients(self, jobs)
        if is_clients:
            probe.mark("wait_begin")
        try:
            return orig_run(self, jobs, *a, **k)
        finally:
            if is_clients:
                probe.mark("wait_end")

    def aggregate(self: Any, round_number: int, mode: str, *a: Any, **k: Any) -> Any:
        if mode == "aggregate":
            t = time.perf_counter()
            cpu0 = probe._cpu()  # CPU of each process over the aggregate phase: a figure the shared machine's
            probe.current["probe_s"] += time.perf_counter() - t  # other load does not inflate the way it
            probe.mark("agg_begin")  # inflates wall time; the readings' own time is taken out of the round's
        try:
            return orig_agg(self, round_number, mode, *a, **k)
        finally:
            if mode == "aggregate":
                probe.mark("agg_end")
                t = time.perf_counter()
                for key, value in probe._cpu().items():
                    probe.current[f"aggcpu_{key}"] = value - cpu0.get(key, 0.0)
                probe.current["probe_after_agg_s"] = time.perf_counter() - t
                probe.current["probe_s"] += probe.current["probe_after_agg_s"]

    def update_run(self: Any, run_id: str, **fields: Any) -> Any:
        result = orig_update_run(self, run_id, **fields)
        if "last_completed_round" in fields:
            probe.round_end()
        return result

    patch(stop_mod, "check", check)
    patch(Tracker, "run", run)
    patch(fl_mod.Experiment, "_aggregate", aggregate)
    patch(repository.Store, "update_run", update_run)
    for name, label in (("_submit", "invoke"), ("_poll_due", "poll"), ("flush", "records"), ("_sleep", "sleep"),
                        ("resume", "resume")):
        patch(Tracker, name, probe.timed(label, getattr(Tracker, name)))
    try:
        yield
    finally:
        for owner, name, old in reversed(saved):
            setattr(owner, name, old)


def run_setting(clients: int, rounds: int, profile: bool, hash_alg: str | None, pack: int = 1) -> dict[str, Any]:
    from fedkeeper.cli.main import cli

    probe = Probe()
    prof = cProfile.Profile() if profile else None
    here = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="fk-bench-scale-") as tmp:
        folder = Path(tmp)
        profile_dir = folder / "profiles"
        if profile:  # the workers' entry and the store server write their own cProfile there (FK_PROFILE_DIR)
            profile_dir.mkdir()
            os.environ["FK_PROFILE_DIR"] = str(profile_dir)
        probe.workdir = folder
        config = make_config(folder, clients, rounds, hash_alg, pack)
        os.chdir(folder)
        try:
            with instrumented(probe):
                t0 = time.perf_counter()
                if prof is not None:
                    prof.enable()
                try:
                    with contextlib.redirect_stdout(io.StringIO()):  # the run's summary table: not this report
                        cli.main(["-q", "start", "-c", str(config)], prog_name="fedkeeper", standalone_mode=False)
                finally:
                    if prof is not None:
                        prof.disable()
                wall = time.perf_counter() - t0
        finally:
            os.chdir(here)
            os.environ.pop("FK_PROFILE_DIR", None)
        process_profiles = _process_profiles(profile_dir, prof, clients * rounds) if profile else None
        if profile and os.environ.get("BENCH_SCALE_KEEP"):  # the raw .prof files, for pstats by hand
            import shutil

            if prof is not None:
                prof.dump_stats(str(profile_dir / "orchestrator.prof"))
            shutil.copytree(profile_dir, Path(os.environ["BENCH_SCALE_KEEP"]) / str(clients), dirs_exist_ok=True)
        run_dir = next((folder / "Logs").iterdir())
        with open(run_dir / "rounds.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        with open(run_dir / "activations.csv", newline="") as handle:
            acts = list(csv.DictReader(handle))
    last = probe.rounds[-1]
    r = len(rows)
    handler = [float(a["duration_s"] or 0) for a in acts if a["function"] == "fl_client" and int(a["round"]) == r]
    # the aggregator function's own time (its handler, as the worker timed it): the aggregate phase less hand-off
    agg_handler = sum(float(a["duration_s"] or 0) for a in acts
                      if a["function"] == "fl_server_aggregator" and int(a["round"]) == r and a["state"] == "succeeded")
    begin = last["round_begin"]
    out = {
        # the round as rounds.csv times it, less this probe's CPU readings inside it (psutil over the worker
        # processes, about 2.5 ms each, two around the aggregation): the orchestrator's time, not the bench's
        "clients": clients, "pack": pack, "wall_s": wall, "rows": rows,
        "round_s": float(rows[-1]["round_s"]) - last.get("probe_s", 0.0), "probe_s": last.get("probe_s", 0.0),
        "select": last["wait_begin"] - begin,
        "invoke": last.get("invoke", 0.0),
        "wait": last["wait_end"] - last["wait_begin"] - last.get("invoke", 0.0),
        "poll": last.get("poll", 0.0), "records": last.get("records", 0.0), "sleep": last.get("sleep", 0.0),
        "resume": last.get("resume", 0.0), "passes": last.get("poll#", 0),
        "aggregate": last["agg_end"] - last["agg_begin"], "agg_handler": agg_handler,
        "record": last["round_end"] - last["agg_end"] - last.get("probe_after_agg_s", 0.0),
        "measured_round": last["round_end"] - begin,
        "handler_sum": sum(handler), "handler_mean": statistics.mean(handler) if handler else 0.0,
        "cpu": {k[4:]: v for k, v in last.items() if k.startswith("cpu_")},
        "agg_cpu": {k[7:]: v for k, v in last.items() if k.startswith("aggcpu_")},
        "accuracy": float(rows[-1]["accuracy"]),
    }
    if process_profiles is not None:
        out["profile"] = process_profiles
    return out


#: builtins in which a process waits for others (cProfile counts their wall time): left out of the busy figures;
#: sends and writes stay in (they may wait for the interpreter lock after the system call too)
_WAITS = frozenset({"<method 'acquire' of '_thread.lock' objects>", "<method 'acquire' of '_thread.RLock' objects>",
                    "<method 'recv' of '_socket.socket' objects>", "<method 'recv_into' of '_socket.socket' objects>",
                    "<method 'poll' of 'select.epoll' objects>", "<method 'poll' of 'select.poll' objects>",
                    "<built-in method time.sleep>", "<method 'readline' of '_io.BufferedReader' objects>",
                    "<method 'readinto' of '_io.BufferedReader' objects>", "<method 'wait' of '_thread.lock' objects>",
                    "_serve"})  # the worker entry's loop: its own time is the wait for the next call line


def _process_profiles(folder: Path, orchestrator: cProfile.Profile | None, calls: int) -> str:
    """Each process group's hot functions (cProfile, own time), in ms per client call over the whole run: the
    orchestrator (this process), the client workers, the aggregator's workers and the store server. The store
    server's connection threads block in recv between requests, which its profile counts as time: read its
    figures as where it spends its CPU besides waiting."""
    groups: dict[str, list[Any]] = {"orchestrator": [orchestrator] if orchestrator is not None else [],
                                    "client workers": [], "aggregator workers": [], "store server": []}
    deadline = time.monotonic() + 5.0  # the store server writes its files as it stops
    while time.monotonic() < deadline and not list(folder.glob("store-*.prof")):
        time.sleep(0.1)
    for path in sorted(folder.glob("[sw]*.prof")):
        group = ("store server" if path.name.startswith("store-") else
                 "aggregator workers" if "aggregator" in path.name else "client workers")
        groups[group].append(str(path))
    parts = []
    for group, sources in groups.items():
        if not sources:
            parts.append(f"{group}: no profile written")
            continue
        stats = pstats.Stats(stream=io.StringIO())
        for source in sources:
            try:
                stats.add(source)
            except (EOFError, ValueError, OSError):  # a process killed while it wrote its profile: left out
                parts.append(f"{group}: an unreadable profile left out ({source})")
        busy = {k: v for k, v in stats.stats.items() if k[2] not in _WAITS}
        rows = sorted(busy.items(), key=lambda kv: kv[1][2], reverse=True)  # by own time
        total = sum(v[2] for v in busy.values())
        waited = sum(v[2] for k, v in stats.stats.items() if k[2] in _WAITS)
        lines = [f"{group} ({len(sources)} profile(s)): {1000 * total / calls:.3f} ms per client call busy, "
                 f"{1000 * waited / calls:.3f} ms blocked (lock, recv, select, sleep, pipe reads: not listed)",
                 f"{'ms/call':>9} {'calls/call':>10}  function"]
        for (file, line, name), (_cc, nc, tt, _ct, _callers) in rows[:14]:
            where = f"{Path(file).name}:{line}({name})" if line else name
            lines.append(f"{1000 * tt / calls:>9.3f} {nc / calls:>10.2f}  {where}")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def training_compute(clients: int, round_number: int) -> float:
    """Seconds `train_local` takes for every client of a round, in this process, no store, no hand-off."""
    from fedkeeper.runtime import data, model

    mdl = model.build_model(MODEL)
    spec = data.DataSpec.from_params({"dataset": "digits", "partition": "iid"}, "data")
    weights = mdl.init(SEED)
    splits = [data.client_split(spec, clients, c, SEED) for c in range(clients)]
    kw = {k: v for k, v in TRAIN.items()}
    model.train_local(mdl, weights, splits[0].x, splits[0].y, seed=1, **kw)  # warm-up
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for c, local in enumerate(splits):
            model.train_local(mdl, weights, local.x, local.y, seed=model.derive_seed(SEED, round_number, c), **kw)
        best = min(best, time.perf_counter() - t0)
    return best


def flower_round(python: str, clients: int, timeout_s: float) -> tuple[float, float] | str:
    """(wall of a 2-round run, seconds per round = 2 rounds minus 1 round) of Flower's simulation on the same task,
    or why there is none."""
    import subprocess

    walls = []
    for rounds in (1, 2):
        cmd = [python, str(ROOT / "bench" / "flower_task.py"), "--total", str(clients), "--per-round", str(clients),
               "--rounds", str(rounds), "--cpus", str(WORKERS), "--epochs", str(TRAIN["local_epochs"])]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                                  env={**os.environ, "RAY_DEDUP_LOGS": "0"})
        except subprocess.TimeoutExpired:
            return f"over {timeout_s:.0f} s"
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
        if done.returncode != 0 or not lines:
            return f"failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:] or ''}"
        walls.append(float(json.loads(lines[-1])["wall_s"]))
    return walls[1], walls[1] - walls[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[100, 300, 1000])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--pack", type=int, nargs="+", default=[1, 50],
                        help="clients_info.clients_per_invocation settings to run (1: one client per invocation)")
    parser.add_argument("--profile", action="store_true", help="cProfile of the orchestrator, largest setting")
    parser.add_argument("--hash", default=None, help="scenarios.federated_learning.hash_alg for the runs")
    parser.add_argument("--flower", metavar="PYTHON", default=os.environ.get("FLWR_PYTHON"),
                        help="a Python with flwr[simulation], for the side-by-side comparison")
    parser.add_argument("--flower-timeout", type=float, default=900.0)
    args = parser.parse_args()
    results: dict[int, list[dict[str, Any]]] = {pack: [] for pack in args.pack}
    for clients in args.clients:
        train_s = training_compute(clients, args.rounds)
        flower = flower_round(args.flower, clients, args.flower_timeout) if args.flower else None
        for pack in args.pack:  # the settings of one client count one after the other, under the same load
            result = run_setting(clients, args.rounds, args.profile and clients == max(args.clients), args.hash,
                                 pack)
            result["train_s"] = train_s
            if flower is not None:
                result["flower"] = flower
            results[pack].append(result)

    cores = os.cpu_count()
    print(f"fedkeeper start, local platform, {WORKERS} client workers, embedded nx-27017 store, {cores} cores, "
          f"Python {sys.version.split()[0]}; MLP 64-32-10 on digits, 1 local epoch; round {args.rounds} of "
          f"{args.rounds} (warm)")
    for pack in args.pack:
        _report(results[pack], args, pack)
    if len(args.pack) > 1:
        print(f"\nclient packing side by side: round time per setting, and its ratio to clients_per_invocation "
              f"{args.pack[0]} (same run)")
        print(f"{'clients':>7} " + " ".join(f"{'k=' + str(p) + ' s':>10}" for p in args.pack)
              + "".join(f" {'k=' + str(p) + ' ratio':>12}" for p in args.pack[1:]))
        for i, clients in enumerate(args.clients):
            times = [results[p][i]["round_s"] for p in args.pack]
            print(f"{clients:>7} " + " ".join(f"{t:>10.3f}" for t in times)
                  + "".join(f" {t / times[0]:>11.3f}x" for t in times[1:]))


def _report(results: list[dict[str, Any]], args: argparse.Namespace, pack: int) -> None:
    """The tables and goal lines of one clients_per_invocation setting."""
    what = f" (client packing: one invocation and one stored partial sum per {pack} clients)" if pack > 1 else ""
    print(f"\n=== clients_per_invocation {pack}{what} ===\n")
    head = (f"{'clients':>7} {'round s':>8} {'select':>7} {'invoke':>7} {'wait':>7} {'aggregate':>9} {'record':>7} "
            f"{'| poll':>7} {'records':>7} {'sleep':>6} {'passes':>6} {'| train/W s':>11} {'ratio':>6} "
            f"{'handler ms':>10} {'acc':>6}")
    print(head)
    print("-" * len(head))
    for r in results:
        bound = r["train_s"] / WORKERS
        print(f"{r['clients']:>7} {r['round_s']:>8.3f} {r['select']:>7.3f} {r['invoke']:>7.3f} {r['wait']:>7.3f} "
              f"{r['aggregate']:>9.3f} {r['record']:>7.3f} {r['poll']:>7.3f} {r['records']:>7.3f} "
              f"{r['sleep']:>6.3f} {r['passes']:>6.0f} {bound:>11.3f} {r['round_s'] / bound:>6.1f} "
              f"{1000 * r['handler_mean']:>10.2f} {r['accuracy']:>6.3f}")
    print("\nCPU per client (ms) in each process during the round, and the round's wall time per client:")
    print(f"{'clients':>7} {'orchestrator':>12} {'workers':>8} {'aggregator':>10} {'store':>6} {'sum':>6} "
          f"{'wall/client':>11} {'aggregate/update':>16}")
    for r in results:
        n = r["clients"]
        cpu = {k: 1000 * v / n for k, v in r["cpu"].items()}
        print(f"{n:>7} {cpu['orchestrator']:>12.2f} {cpu['workers']:>8.2f} {cpu['aggregator']:>10.2f} "
              f"{cpu['store']:>6.2f} "
              f"{sum(cpu.values()):>6.2f} {1000 * r['round_s'] / n:>11.2f} {1000 * r['aggregate'] / n:>16.3f}")
    print("\nAggregation per update (ms): wall time of the round's aggregate phase as the orchestrator sees it "
          "(hand-off to the worker included) and of the aggregator function alone, then the CPU each process "
          "spent during that phase (not inflated by the shared machine's other load). Pruning the round's blobs "
          "is not in it: the orchestrator prunes after the round is recorded, while the next round trains.")
    print(f"{'clients':>7} {'aggregate':>9} {'function':>9} {'| CPU: aggregator':>17} {'store':>6} "
          f"{'orchestrator':>12} {'sum':>6}")
    for r in results:
        n, cpu = r["clients"], r["agg_cpu"]
        print(f"{n:>7} {1000 * r['aggregate'] / n:>9.3f} {1000 * r['agg_handler'] / n:>9.3f} "
              f"{1000 * cpu.get('aggregator', 0.0) / n:>17.3f} {1000 * cpu.get('store', 0.0) / n:>6.3f} "
              f"{1000 * cpu.get('orchestrator', 0.0) / n:>12.3f} {1000 * sum(cpu.values()) / n:>6.3f}")
    by = {r["clients"]: r for r in results}
    lo, hi = min(by), max(by)
    if hi > lo:
        marginal = (by[hi]["round_s"] - by[lo]["round_s"]) / (hi - lo)
        print(f"\nmarginal cost per client ({lo} -> {hi} clients per round): {1000 * marginal:.2f} ms "
              f"(goal <= 2 ms: {'met' if marginal <= 0.002 else 'MISSED'})")
        ratio = by[hi]["round_s"] / (by[hi]["train_s"] / WORKERS)
        print(f"round at {hi} clients / (training compute / {WORKERS} workers): {ratio:.1f}x "
              f"(goal <= 2x: {'met' if ratio <= 2 else 'MISSED'})")
        per_update = by[hi]["aggregate"] / hi
        print(f"aggregation per update at {hi} clients: {1000 * per_update:.3f} ms "
              f"(goal <= 0.5 ms: {'met' if per_update <= 0.0005 else 'MISSED'})")
    if args.rounds >= 20:
        print(f"\nround time early and late in the run ({args.rounds} rounds; the store holds every earlier round's "
              "update and activation documents, pruned of their blobs, so a query that scans them grows with the run)")
        print(f"{'clients':>7} {'rounds 2-10 s':>13} {'last 9 s':>9} {'late/early':>10}")
        for r in results:
            times = [float(row["round_s"]) for row in r["rows"]]
            early, late = statistics.mean(times[1:10]), statistics.mean(times[-9:])
            print(f"{r['clients']:>7} {early:>13.3f} {late:>9.3f} {late / early:>9.2f}x")
    if args.flower:
        print(f"\nside by side with Flower's simulation engine (same task, {WORKERS} CPUs, {args.rounds} rounds): wall "
              "time of the whole run (start-up included), and per round (Flower: its 2-round run minus its 1-round "
              "run, which start-up noise can swamp at small counts)")
        print(f"{'clients':>7} {'fedkeeper wall':>14} {'flower wall':>11} {'ratio':>6} {'fedkeeper/round':>15} "
              f"{'flower/round':>12} {'ratio':>6}")
        for r in results:
            fl = r["flower"]
            if isinstance(fl, tuple):
                print(f"{r['clients']:>7} {r['wall_s']:>14.2f} {fl[0]:>11.2f} {fl[0] / r['wall_s']:>5.2f}x "
                      f"{r['round_s']:>15.3f} {fl[1]:>12.3f} {fl[1] / r['round_s']:>5.2f}x")
            else:
                print(f"{r['clients']:>7} {r['wall_s']:>14.2f} {fl}")
        print("ratio = flower / fedkeeper (> 1: fedkeeper is faster)")
    for r in results:
        if "profile" in r:
            print(f"\nprofile per process at {r['clients']} clients per round (all {args.rounds} rounds, by own "
                  "time; cProfile's overhead included):")
            print(r["profile"])


if __name__ == "__main__":
    main()

"""`fedkeeper start` end to end on the local platform with the embedded store, through the real CLI.

Each test runs in its own working directory (its own embedded store and Logs/), as a user would.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

pytestmark = pytest.mark.integration

SAMPLE = Path(__file__).resolve().parents[1] / "config-sample.yaml"


def small_config(tmp: Path, *, rounds: int = 3, clients: int = 6, per_round: int = 3, faults: dict | None = None,
                 client_timeout: float = 60, resilience: dict | None = None, epochs: int = 1,
                 concurrency: int | None = None, name: str = "config.yaml") -> Path:
    """The sample, scaled down. With faults, the aggregator runs on a second, reliable local cluster."""
    data = yaml.safe_load(SAMPLE.read_text())
    data["experiment"] = "e2e"
    data["providers"]["local"]["laptop"].update(concurrency=3, faults=faults or {})
    if faults:
        data["providers"]["local"]["laptop"]["concurrency"] = 2
        data["providers"]["local"]["reliable"] = {"concurrency": 1}
        data["scenarios"]["federated_learning"]["server"]["cluster"] = "reliable"
    if concurrency is not None:
        data["providers"]["local"]["laptop"]["concurrency"] = concurrency
    data["functions"]["fl_client"]["local"] = {"memory": 512, "timeout": client_timeout}
    fl = data["scenarios"]["federated_learning"]
    fl["rounds"] = rounds
    fl["clients_info"].update(total_num_clients=clients, num_clients_per_round=per_round, placement={"laptop": clients})
    fl["model_params"]["local_epochs"] = epochs
    fl["resilience"] = {**fl.get("resilience", {}), "backoff_base_s": 0.05, "backoff_max_s": 0.5, **(resilience or {})}
    path = tmp / name
    path.write_text(yaml.safe_dump(data))
    return path


def fedkeeper(cwd: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fedkeeper.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "COLUMNS": "120"})


_launched: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def _reap_launched() -> Iterator[None]:
    """A test that fails while a background run goes on still stops it."""
    yield
    while _launched:
        proc = _launched.pop()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def launch(cwd: Path, *args: str) -> subprocess.Popen[str]:
    """`fedkeeper` in the background, for runs that overlap; collect it with `finish`."""
    proc = subprocess.Popen([sys.executable, "-m", "fedkeeper.cli", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "120"})
    _launched.append(proc)
    return proc


def finish(proc: subprocess.Popen[str], timeout: float = 240) -> subprocess.CompletedProcess[str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def summary_of(cwd: Path, run_id: str | None = None) -> dict[str, Any]:
    runs = sorted((cwd / "Logs").iterdir(), key=lambda p: p.stat().st_mtime)
    folder = cwd / "Logs" / run_id if run_id else runs[-1]
    return json.loads((folder / "summary.json").read_text())


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def no_leftover_processes(cwd: Path) -> list[str]:
    """Processes whose command line or working directory points into this test's folder."""
    left = []
    for proc in psutil.process_iter(["pid", "cmdline", "cwd"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [])
            if str(cwd) in cmd or str(cwd) in (proc.info["cwd"] or ""):
                left.append(f"{proc.pid} {cmd[:120]}")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return left


def wait_gone(cwd: Path, seconds: float = 10) -> list[str]:
    deadline = time.time() + seconds
    while time.time() < deadline:
        left = no_leftover_processes(cwd)
        if not left:
            return []
        time.sleep(0.2)
    return no_leftover_processes(cwd)


def test_start_writes_logs_and_leaves_no_process(tmp_path: Path) -> None:
    config = small_config(tmp_path)
    result = fedkeeper(tmp_path, "start", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    summary = summary_of(tmp_path)
    assert summary["status"] == "completed" and summary["rounds_completed"] == 3
    assert len(summary["model_sha256"]) == 64
    assert summary["activations"]["succeeded"] == 3 * 3 + 3 + 1  # clients + aggregations + init
    folder = tmp_path / "Logs" / summary["run_id"]
    rounds = read_csv(folder / "rounds.csv")
    assert [r["round"] for r in rounds] == ["1", "2", "3"]
    for r in rounds:
        assert float(r["round_s"]) >= float(r["invoke_s"]) > 0 and float(r["slowest_client_s"]) > 0
    acts = read_csv(folder / "activations.csv")
    assert {a["state"] for a in acts} == {"succeeded"}
    assert any(a["cold"] == "true" for a in acts) and any(a["cold"] == "false" for a in acts)
    events = [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]
    assert events[0]["event"] == "run_started" and events[-1]["event"] == "run_finished"
    assert (folder / "fedkeeper.log").read_text().strip()
    assert (folder / "config.yaml").exists()
    assert wait_gone(tmp_path) == []


def test_same_seed_gives_the_same_model_and_resume_after_sigkill_too(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    # latency makes rounds long enough for the kill to land inside one; it changes no result
    faults = {"latency_ms": [40, 80], "seed": 3}
    cfg_a = small_config(a, rounds=4, faults=faults)
    cfg_b = small_config(b, rounds=4, faults=faults)

    # the two folders are independent (own store, own workers): a's runs go on while b is killed and resumed
    first = launch(a, "start", "-c", str(cfg_a), "-q")
    proc = launch(b, "start", "-c", str(cfg_b), "-q")
    try:
        deadline = time.time() + 120
        killed_in_round = None
        while time.time() < deadline and proc.poll() is None:
            events = b / "Logs"
            lines = []
            for folder in events.glob("*/events.jsonl"):
                lines = [json.loads(x) for x in folder.read_text().splitlines() if x.strip()]
            started = [e["round"] for e in lines if e["event"] == "round_started"]
            acts_in_round = [e for e in lines if e["event"] == "activation" and started and e["round"] == started[-1]]
            if started and started[-1] >= 2 and acts_in_round:
                proc.send_signal(signal.SIGKILL)
                killed_in_round = started[-1]
                break
            time.sleep(0.02)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.communicate()
    assert killed_in_round is not None, "the run finished before it could be killed mid-round"
    assert proc.returncode == -signal.SIGKILL
    run_id = next((b / "Logs").iterdir()).name
    assert not (b / "Logs" / run_id / "summary.json").exists()

    resumed = launch(b, "start", "-c", str(cfg_b), "--resume", "latest", "-q")
    first_out = finish(first)
    assert first_out.returncode == 0, first_out.stderr
    second = fedkeeper(a, "start", "-c", str(cfg_a), "-q")
    assert second.returncode == 0, second.stderr
    runs = sorted((a / "Logs").iterdir())
    shas = {json.loads((r / "summary.json").read_text())["model_sha256"] for r in runs}
    assert len(runs) == 2 and len(shas) == 1, "same config and seed must give the same final weights"
    reference = shas.pop()

    resumed_out = finish(resumed)
    assert resumed_out.returncode == 0, resumed_out.stderr
    summary = summary_of(b, run_id)
    assert summary["status"] == "completed" and summary["rounds_completed"] == 4
    assert summary["model_sha256"] == reference
    rounds = read_csv(b / "Logs" / run_id / "rounds.csv")
    assert [int(r["round"]) for r in rounds] == list(range(1, 5))  # no round recorded twice
    assert wait_gone(b) == [] and wait_gone(a) == []


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_faults_every_round_completes_and_nothing_is_lost_or_counted_twice(tmp_path: Path) -> None:
    clean_dir, faulty_dir = tmp_path / "clean", tmp_path / "faulty"
    clean_dir.mkdir(), faulty_dir.mkdir()
    # An injected timeout holds a worker until the function's timeout kills it, and its retry pays a cold start:
    # timeouts set the pace. 1 s is still ten times the slowest client call (5 epochs on ~90 digits), three
    # workers let the other calls go on meanwhile, and six rounds with seed 7 give ~110 activations, a failure
    # in every round and half a dozen timeouts.
    rounds, common = 6, dict(clients=20, per_round=10, epochs=5, client_timeout=1.0, concurrency=3)
    clean_cfg = small_config(clean_dir, rounds=rounds, **common)
    faulty_cfg = small_config(faulty_dir, rounds=rounds, faults={"failure_rate": 0.3, "timeout_rate": 0.05, "seed": 7},
                              resilience={"max_attempts": 4}, **common)
    # side by side (separate folders, stores and workers): the clean run computes while the faulty one waits out
    # its injected timeouts
    faulty_proc = launch(faulty_dir, "start", "-c", str(faulty_cfg), "-q")
    try:
        clean = fedkeeper(clean_dir, "start", "-c", str(clean_cfg), "-q", timeout=400)
    finally:
        faulty = finish(faulty_proc, timeout=400)
    assert clean.returncode == 0, clean.stderr
    assert faulty.returncode == 0, faulty.stderr
    s_clean, s_faulty = summary_of(clean_dir), summary_of(faulty_dir)
    assert s_faulty["status"] == "completed" and s_faulty["rounds_completed"] == rounds
    assert s_faulty["activations"]["failed"] > 0 and s_faulty["activations"]["timed_out"] > 0
    assert abs(s_faulty["final"]["accuracy"] - s_clean["final"]["accuracy"]) <= 0.02

    folder = faulty_dir / "Logs" / s_faulty["run_id"]
    acts = read_csv(folder / "activations.csv")
    injected = Counter(a["injected"] for a in acts if a["function"] == "fl_client")
    assert injected["failure"] > 0 and injected["timeout"] > 0
    succeeded = Counter((int(a["round"]), int(a["client_id"])) for a in acts
                        if a["function"] == "fl_client" and a["state"] == "succeeded")
    assert max(succeeded.values()) == 1, "a client succeeded twice in one round"

    # the store against activations.csv: one update per (round, client) that succeeded, nothing else
    store_updates = _updates_from_store(faulty_dir, s_faulty["run_id"])
    assert Counter(store_updates).most_common(1)[0][1] == 1
    assert set(store_updates) == set(succeeded), "updates in the store differ from succeeded activations"
    rounds_rows = read_csv(folder / "rounds.csv")
    assert all(int(r["succeeded"]) >= 5 for r in rounds_rows)
    assert sum(int(r["retries"]) for r in rounds_rows) == s_faulty["activations"]["retries"] - _server_retries(acts)
    assert wait_gone(faulty_dir) == []


def _server_retries(acts: list[dict[str, str]]) -> int:
    server = Counter(int(a["round"]) for a in acts if a["function"] != "fl_client")
    return sum(n - 1 for n in server.values())


def _updates_from_store(workdir: Path, run_id: str) -> list[tuple[int, int]]:
    """Read the updates collection through the embedded server, started by the store module itself."""
    from fedkeeper.config.models import MongoConfig
    from fedkeeper.store import open_store

    with open_store(MongoConfig(), workdir=workdir) as store:
        docs = store.db["updates"].find({"run_id": run_id}, {"round": 1, "client_id": 1})
        return [(int(d["round"]), int(d["client_id"])) for d in docs]


def test_ctrl_c_stops_cleanly_with_exit_130_and_the_run_resumes(tmp_path: Path) -> None:
    config = small_config(tmp_path, rounds=4, faults={"latency_ms": [40, 80], "seed": 1})
    proc = subprocess.Popen([sys.executable, "-m", "fedkeeper.cli", "start", "-c", str(config)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            events = list((tmp_path / "Logs").glob("*/events.jsonl"))
            if events and '"event": "round_started", "round": 2' in events[0].read_text():
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "--resume" in err
    summary = summary_of(tmp_path)
    assert summary["status"] == "interrupted" and summary["rounds_completed"] < 4
    assert wait_gone(tmp_path) == []
    resumed = fedkeeper(tmp_path, "start", "-c", str(config), "--resume", summary["run_id"], "-q")
    assert resumed.returncode == 0, resumed.stderr
    done = summary_of(tmp_path, summary["run_id"])
    assert done["status"] == "completed" and done["rounds_completed"] == 4
    assert wait_gone(tmp_path) == []

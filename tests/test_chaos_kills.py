"""Kills at random points, through real `fedkeeper` processes on the local platform with the embedded store:

- SIGKILL, SIGTERM and SIGINT at random moments of `deploy`, then `deploy` again;
- the same three signals at random points of one run's `start` sessions (after a random number of new lines in
  its events.jsonl), each followed by `start --resume`;
- the same three at random moments of `remove`, then `remove` again;
- beside it, in a second working directory, the embedded store's nx-27017 server killed in the middle of a round
  (SIGKILL, found through .fedkeeper/store.json): the run fails cleanly (exit 1, summary.json with the store's
  error), and `start --resume` restarts the store and completes it.

Then both runs are audited (tests/chaos_audit.py: store against Logs/, no update lost or counted twice, counts
equal a recount) and must end with the model of an undisturbed run of the same config and seed. Signals and
kill points are drawn from a seeded generator; the seed is printed (`FK_CHAOS_SEED=<n>` replays the draws, the
exact moments still depend on the machine).
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from chaos_audit import Audit, audit_run
from chaos_support import CLIENTS, chaos_seed, experiment, record
from test_fl_e2e import _reap_launched, fedkeeper, finish, launch, summary_of, wait_gone  # noqa: F401 - the
# autouse fixture that kills what `launch` started when a test fails half-way
from test_sigterm import _staging

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SIGNALS = (signal.SIGKILL, signal.SIGTERM, signal.SIGINT)
FUNCTIONS = ("lab/fk-chaos-fl-client", "agg/fk-chaos-fl-server-aggregator")


def write_config(work: Path, seed: int, **mongo: Any) -> Path:
    """The chaos experiment on the embedded store; latency on every call (it changes no result) makes rounds
    long enough for a kill to land inside one."""
    work.mkdir(parents=True, exist_ok=True)
    lab = {"concurrency": 3, "faults": {"latency_ms": [60, 160], "seed": seed}}
    path = work / "config.yaml"
    path.write_text(experiment({"url": "embedded", "db": "fedkeeper", **mongo}, {"local": {"lab": lab}},
                               {"lab": CLIENTS}))
    return path


def event_lines(work: Path) -> int:
    return sum(len(p.read_text().splitlines()) for p in (work / "Logs").glob("*/events.jsonl"))


def hit(proc: subprocess.Popen[str], sig: signal.Signals, ready: Callable[[], bool],
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Send `sig` once `ready()` holds (unless the command ended first) and collect the command."""
    deadline = time.time() + timeout
    while proc.poll() is None and not ready() and time.time() < deadline:
        time.sleep(0.01)
    if proc.poll() is None:
        proc.send_signal(sig)
    return finish(proc, timeout=timeout)


def after(seconds: float) -> Callable[[], bool]:
    at = time.time() + seconds
    return lambda: time.time() >= at


def check_exit(done: subprocess.CompletedProcess[str], sig: signal.Signals, *, started: bool) -> str:
    """The exits a signal may cause; returns which one happened, for the record.

    SIGKILL kills (-9). SIGTERM and SIGINT stop a running command cleanly: "error: ..." as the last line, exit
    130. A signal that lands before the CLI installs its handlers (the interpreter still importing) or after it
    removed them (the command done, the interpreter exiting) meets Python's defaults: SIGTERM kills (-15), SIGINT
    raises KeyboardInterrupt and the interpreter ends by SIGINT (-2, what a shell shows as 130). CPython also ends
    by SIGINT after a clean stop when the Ctrl-C landed in code run by `exec()` (dataclasses and namedtuple build
    their methods that way, at import): then "error: interrupted" is printed and the exit is -2. `started`: the
    command was seen running (events written), so only the clean stop may happen. A command done first exits 0."""
    err = done.stderr
    last = err.strip().splitlines()[-1] if err.strip() else ""
    clean = last.startswith("error: ") and ("interrupted" in last or "stopped by" in last)
    if done.returncode == 0:
        return "finished first"
    if sig is signal.SIGKILL:
        assert done.returncode == -signal.SIGKILL, (done.returncode, err[-2000:])
        return "killed"
    if done.returncode == 130 or (sig is signal.SIGINT and done.returncode == -signal.SIGINT and clean):
        assert clean and "Traceback" not in err, err[-2000:]
        return "stopped cleanly"
    assert not started, f"{sig.name} while the command ran: exit {done.returncode}\n{err[-2000:]}"
    assert done.returncode == -sig, (done.returncode, err[-2000:])
    assert not err or err.rstrip().endswith("KeyboardInterrupt"), err[-2000:]
    return "outside the CLI's handlers"


def audit_workdir(work: Path, run_id: str, **mongo: Any) -> Audit:
    """Audit through the embedded store of that working directory (started by the store module itself)."""
    from fedkeeper.config.models import MongoConfig
    from fedkeeper.store import open_store

    with open_store(MongoConfig(url="embedded", db="fedkeeper", **mongo), workdir=work) as store:
        return audit_run(store.db, work / "Logs" / run_id)


#: what a command says when a killed command left an nx-27017 server behind that store.json does not record
ORPHAN_SERVER = "is not recorded in store.json: stop it first"


def orphan_servers(work: Path) -> list[int]:
    """nx-27017 servers whose command line names this working directory's data directory."""
    data = str((work / ".fedkeeper" / "store").resolve())
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info.get("cmdline") or []
        if any("fedkeeper.store.nxserve" in part for part in cmd) and data in cmd:
            found.append(proc.pid)
    return found


def again(work: Path, *args: str, outcomes: list[str]) -> subprocess.CompletedProcess[str]:
    """Run the command a user runs after a kill. A server the killed command started but had not recorded yet
    makes it refuse (see test_a_server_left_by_a_killed_command_does_not_block_the_next_one); the user waits
    for that server to stop by itself (its lease watchdog) and runs the command once more."""
    done = fedkeeper(work, *args)
    if done.returncode == 1 and ORPHAN_SERVER in done.stderr:
        outcomes.append(f"{args[0]} refused: a server left by the killed command")
        deadline = time.time() + 20
        while orphan_servers(work) and time.time() < deadline:
            time.sleep(0.2)
        done = fedkeeper(work, *args)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def store_pid(work: Path) -> int | None:
    """The pid of the working directory's nx-27017 server, if one runs."""
    try:
        pid = int(json.loads((work / ".fedkeeper" / "store.json").read_text())["pid"])
        cmd = " ".join(psutil.Process(pid).cmdline())
    except (OSError, ValueError, KeyError, psutil.Error):
        return None
    return pid if "fedkeeper.store.nxserve" in cmd else None


def test_kills_at_random_points_of_deploy_start_and_remove_then_resume(tmp_path: Path,
                                                                      chaos_reference_sha: str) -> None:
    seed = chaos_seed(1604)
    rng = random.Random(seed)
    work, cut = tmp_path / "signals", tmp_path / "store-killed"
    config = write_config(work, seed)
    # short store timeouts: a dead store is reported in seconds, not after the default waits
    fast = {"server_selection_timeout_ms": 300, "connect_timeout_ms": 300}
    cut_config = write_config(cut, seed, **fast)
    outcomes: list[str] = []

    # the store killed mid-round, in its own folder; it fails and exits while the signals go on below
    cut_first = launch(cut, "start", "-c", str(cut_config), "-q")
    lines = rng.randint(6, 16)
    deadline = time.time() + 120
    while cut_first.poll() is None and event_lines(cut) < lines and time.time() < deadline:
        time.sleep(0.01)
    pid = store_pid(cut)
    assert pid is not None and cut_first.poll() is None, "the run ended before its store could be killed"
    psutil.Process(pid).kill()
    outcomes.append(f"store killed after {event_lines(cut)} event lines")

    # deploy: each signal at a random moment, then deploy again
    for sig in rng.sample(SIGNALS, len(SIGNALS)):
        done = hit(launch(work, "deploy", "-c", str(config), "-q"), sig, after(rng.uniform(0.2, 2.5)))
        outcomes.append(f"deploy {sig.name}: {check_exit(done, sig, started=False)}")
    again(work, "deploy", "-c", str(config), "-q", outcomes=outcomes)
    assert _staging(work) == []
    assert all((work / ".fedkeeper" / "local" / f).is_dir() for f in FUNCTIONS)

    # start: each signal after a random number of new event lines, then resume
    run_id: str | None = None
    for sig in rng.sample(SIGNALS, len(SIGNALS)):
        args = ["--resume", run_id] if run_id else []
        before = event_lines(work)
        lines = rng.randint(2, 9)
        done = hit(launch(work, "start", "-c", str(config), "-q", *args), sig,
                   lambda: event_lines(work) >= before + lines)
        outcomes.append(f"start {sig.name} after {lines} lines: {check_exit(done, sig, started=True)}")
        run_id = run_id or next((work / "Logs").iterdir()).name
        if done.returncode == 130:
            assert summary_of(work, run_id)["status"] == "interrupted"
    last = fedkeeper(work, "start", "-c", str(config), "-q", "--resume", run_id)
    assert last.returncode == 0, last.stderr
    summary = summary_of(work, run_id)
    assert summary["status"] == "completed" and summary["model_sha256"] == chaos_reference_sha, summary
    audit = audit_workdir(work, run_id)

    # remove: each signal at a random moment, then remove again
    for sig in rng.sample(SIGNALS, len(SIGNALS)):
        done = hit(launch(work, "remove", "-c", str(config), "-q"), sig, after(rng.uniform(0.1, 0.8)))
        outcomes.append(f"remove {sig.name}: {check_exit(done, sig, started=False)}")
    again(work, "remove", "-c", str(config), "-q", outcomes=outcomes)
    assert _staging(work) == [] and not any((work / ".fedkeeper" / "local" / f).exists() for f in FUNCTIONS)

    # the store-killed run: a clean failure, recorded; the resume restarts the store and completes it
    failed = finish(cut_first)
    assert failed.returncode == 1, failed.stderr[-2000:]
    assert "Traceback" not in failed.stderr
    cut_run = next((cut / "Logs").iterdir()).name
    first = summary_of(cut, cut_run)
    assert first["status"] == "failed" and first.get("store_error"), first
    resumed = fedkeeper(cut, "start", "-c", str(cut_config), "-q", "--resume", cut_run)
    assert resumed.returncode == 0, resumed.stderr
    cut_summary = summary_of(cut, cut_run)
    assert cut_summary["status"] == "completed" and cut_summary["model_sha256"] == chaos_reference_sha
    cut_audit = audit_workdir(cut, cut_run, **fast)

    print("\n".join(outcomes))
    record("kills", audit, signals=9, sessions=summary["sessions"], outcomes=outcomes)
    record("store_killed", cut_audit, faults=1, sessions=cut_summary["sessions"])
    assert wait_gone(work, 20) == [] and wait_gone(cut, 20) == []


#: runs the real CLI after making the embedded store's start pause once the server answers and before the
#: command records it in .fedkeeper/store.json; argv: flag file, CLI args
PAUSED_STORE_START = r"""
import pathlib, sys, time
from fedkeeper.store import embedded

flag = pathlib.Path(sys.argv[1])
ready = embedded.NxServer._wait_ready
def wait_ready(self, *args, **kwargs):
    answered = ready(self, *args, **kwargs)
    flag.write_text(str(self.proc.pid))
    time.sleep(60)
    return answered
embedded.NxServer._wait_ready = wait_ready
from fedkeeper.cli.main import main
main(sys.argv[2:])
"""


def test_a_server_left_by_a_killed_command_does_not_block_the_next_one(tmp_path: Path) -> None:
    config = write_config(tmp_path, 1)
    flag = tmp_path / "server-up"
    proc = subprocess.Popen([sys.executable, "-c", PAUSED_STORE_START, str(flag), "deploy", "-c", str(config), "-q"],
                            cwd=tmp_path, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        while not flag.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert flag.exists(), proc.communicate(timeout=10)[1] if proc.poll() is not None else "no server started"
        proc.kill()  # the server answers, store.json does not name it yet
        proc.communicate(timeout=30)
        assert orphan_servers(tmp_path) == [int(flag.read_text())]
        deployed = fedkeeper(tmp_path, "deploy", "-c", str(config), "-q")
        assert deployed.returncode == 0, deployed.stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        for pid in orphan_servers(tmp_path):  # any server still up (the orphan is stopped by the next command)
            psutil.Process(pid).terminate()
        assert wait_gone(tmp_path, 20) == []

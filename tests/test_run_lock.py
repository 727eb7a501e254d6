"""One orchestrator per run (`fedkeeper.store.locks`): a lease in the store, renewed by a heartbeat.

In process first (`RunLock` on the session's nx-27017 server): refusal naming the holder, renewal, release,
takeover of a lapsed lease or of a holder gone from this host, and a holder that lost its lock stopping. Then
end to end, through real `fedkeeper start` processes on one working directory: two resumes at once, a holder
killed with SIGKILL (on this host: taken over at once; on another host: after its lease), and a holder frozen
(SIGSTOP) past its lease, which stops without touching the run when it wakes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymongo
import pytest
import yaml

from fedkeeper.store import Holder, RunLock, RunLocked, Store, open_store
from fedkeeper.store import locks as L

from store_support import settings

pytestmark = pytest.mark.integration

SAMPLE = Path(__file__).resolve().parents[1] / "config-sample.yaml"


@pytest.fixture
def store(nx_db: pymongo.database.Database) -> Store:
    s = Store(nx_db, url="mongodb://127.0.0.1")
    s.ensure_indexes()
    return s


def dead_pid() -> int:
    """The pid of a process that has exited (and was reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ------------------------------------------------------------------------------------------------ in process


def test_a_second_orchestrator_is_refused_naming_the_holder_and_the_expiry(store: Store) -> None:
    first = RunLock(store, "r1", heartbeat=5).acquire()
    try:
        with pytest.raises(RunLocked) as info:
            RunLock(store, "r1", heartbeat=5).acquire()
        text = info.value.describe()
        assert f"pid {os.getpid()} on {socket.gethostname()}" in text
        assert "is being run by another orchestrator" in text and "lease expires at" in text and "UTC" in text
        assert info.value.exit_code == 1
        assert RunLock(store, "r2", heartbeat=5).acquire().took_over is None  # another run: its own lock
    finally:
        first.release()
    assert store.get_lock("r1") is None
    again = RunLock(store, "r1", heartbeat=5).acquire()  # released: free for the next one
    again.release()


def test_the_heartbeat_renews_the_lease_and_check_passes(store: Store) -> None:
    lock = RunLock(store, "r1", heartbeat=0.1).acquire()
    try:
        assert lock.lease_s == pytest.approx(0.3)
        first = store.get_lock("r1")["expires"]
        time.sleep(0.6)  # two lease lengths: without renewals it would have lapsed
        assert store.get_lock("r1")["expires"] > first
        lock.check()
        with pytest.raises(RunLocked):
            RunLock(store, "r1", heartbeat=0.1).acquire()
    finally:
        lock.release()


def test_a_holder_whose_lock_was_taken_stops_at_its_next_check(store: Store) -> None:
    lock = RunLock(store, "r1", heartbeat=0.1).acquire()
    try:
        # what a contender does once the lease lapsed (a frozen holder): take it from that token
        store.acquire_lock("r1", Holder("elsewhere", 1, 1.0, "theirs").as_doc(), 30, take_from=lock.holder.token)
        deadline = time.time() + 5
        while time.time() < deadline:
            try:
                lock.check()
            except RunLocked as exc:
                assert "another orchestrator took it over" in str(exc)
                break
            time.sleep(0.05)
        else:
            pytest.fail("the holder never noticed it lost its lock")
    finally:
        lock.release()
    assert store.get_lock("r1")["token"] == "theirs"  # releasing a lost lock leaves the new holder's alone


def test_a_holder_frozen_past_its_lease_goes_on_if_nobody_took_it(store: Store) -> None:
    lock = RunLock(store, "r1", heartbeat=30).acquire()  # no heartbeat during the test
    try:
        lock._renewed -= 100  # as if this process had been frozen for 100 s
        lock.check()  # the lease lapsed, nobody took it: renewed, the run goes on
        assert store.get_lock("r1")["expires"] > time.time() + 60
    finally:
        lock.release()


def test_a_store_that_does_not_answer_ends_the_run_as_a_store_failure(store: Store) -> None:
    from fedkeeper.store import StoreUnavailable

    class Silent:
        def __getattr__(self, name: str) -> Any:
            return getattr(store, name)

        def renew_lock(self, *args: Any, **kwargs: Any) -> Any:
            raise StoreUnavailable("lost MongoDB at 127.0.0.1:1")

    lock = RunLock(Silent(), "r1", heartbeat=30).acquire()  # type: ignore[arg-type]
    try:
        lock.check()  # fresh: no store call
        lock._renewed -= 100
        with pytest.raises(StoreUnavailable):  # not RunLocked: nobody is known to hold the run
            lock.check()
    finally:
        lock.release()


def test_a_dead_holder_on_this_host_is_taken_over_at_once(store: Store) -> None:
    gone = Holder(L.this_host(), dead_pid(), time.time() - 5, "dead")
    store.acquire_lock("r1", gone.as_doc(), 3600)  # a lease an hour long: only its death frees it
    lock = RunLock(store, "r1", heartbeat=5).acquire()
    try:
        assert lock.took_over == gone and lock.took_over_because == "it no longer runs"
        assert store.get_lock("r1")["token"] == lock.holder.token
    finally:
        lock.release()


def test_a_live_holder_here_or_one_elsewhere_is_waited_for_until_its_lease_lapses(store: Store) -> None:
    me = Holder.this_process()
    alive_here = Holder(me.host, me.pid, me.process_start, "alive")  # alive (this very process)
    store.acquire_lock("r1", alive_here.as_doc(), 3600)
    with pytest.raises(RunLocked):
        RunLock(store, "r1", heartbeat=5).acquire()
    store.release_lock("r1", "alive")

    elsewhere = Holder("another-host", dead_pid(), 1.0, "remote")  # its pid means nothing here
    store.acquire_lock("r1", elsewhere.as_doc(), 0.5)
    with pytest.raises(RunLocked) as info:
        RunLock(store, "r1", heartbeat=5).acquire()
    assert "on another-host" in str(info.value)
    time.sleep(0.6)
    lock = RunLock(store, "r1", heartbeat=5).acquire()
    try:
        assert lock.took_over == elsewhere and lock.took_over_because == "its lease lapsed"
    finally:
        lock.release()


def test_heartbeat_and_host_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(L.HEARTBEAT_ENV, raising=False)
    assert L.heartbeat_s() == L.DEFAULT_HEARTBEAT_S == 5.0
    for raw, expected in (("0.5", 0.5), ("nonsense", 5.0), ("-1", 5.0), ("0", 5.0)):
        monkeypatch.setenv(L.HEARTBEAT_ENV, raw)
        assert L.heartbeat_s() == expected
    monkeypatch.setenv(L.HEARTBEAT_ENV, "2")
    assert RunLock(None, "r").lease_s == 6.0  # type: ignore[arg-type]
    monkeypatch.setenv(L.HOST_ENV, "box-7")
    assert Holder.this_process().host == "box-7"


# ------------------------------------------------------------------------------------------------ end to end


def config(tmp: Path, *, rounds: int = 4, latency_ms: int = 250) -> Path:
    """The sample, scaled down: `rounds` rounds of 3 of 6 clients, each call held `latency_ms` so a run lasts a
    while."""
    data = yaml.safe_load(SAMPLE.read_text())
    data["experiment"] = "locks"
    data["providers"]["local"]["laptop"].update(concurrency=3, faults={"latency_ms": [latency_ms, latency_ms]})
    data["functions"]["fl_client"]["local"] = {"memory": 512, "timeout": 60}
    fl = data["scenarios"]["federated_learning"]
    fl["rounds"] = rounds
    fl["clients_info"].update(total_num_clients=6, num_clients_per_round=3, placement={"laptop": 6})
    fl["model_params"]["local_epochs"] = 1
    fl["resilience"] = {**fl.get("resilience", {}), "backoff_base_s": 0.05, "backoff_max_s": 0.5}
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


_launched: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def _reap() -> Iterator[None]:
    """Every `fedkeeper` this test started is stopped (a frozen one is woken first)."""
    yield
    while _launched:
        proc = _launched.pop()
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
        proc.communicate()


def launch(cwd: Path, *args: str, **env: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-m", "fedkeeper.cli", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200", **env})
    _launched.append(proc)
    return proc


def finish(proc: subprocess.Popen[str], timeout: float = 240) -> subprocess.CompletedProcess[str]:
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def fedkeeper(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return finish(launch(cwd, *args, **env))


def events(cwd: Path, run_id: str) -> list[dict[str, Any]]:
    path = cwd / "Logs" / run_id / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for_round(cwd: Path, run_id: str, round_number: int, proc: subprocess.Popen[str], within_s: float = 120) -> None:
    deadline = time.time() + within_s
    while time.time() < deadline:
        if any(e["event"] == "round_started" and e["round"] >= round_number for e in events(cwd, run_id)):
            return
        assert proc.poll() is None, f"the run ended before round {round_number}: {proc.communicate()[1][-2000:]}"
        time.sleep(0.05)
    pytest.fail(f"round {round_number} never started")


def run_state(cwd: Path, run_id: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(the runs document, the run's lock document) from the working directory's embedded store."""
    with open_store(settings(), workdir=cwd) as store:
        return store.get_run(run_id) or {}, store.get_lock(run_id)


def rounds_of(cwd: Path, run_id: str) -> list[int]:
    lines = (cwd / "Logs" / run_id / "rounds.csv").read_text().splitlines()[1:]
    return [int(line.split(",")[0]) for line in lines if line.strip()]


def test_two_resumes_at_once_one_runs_the_other_exits_1_naming_it(tmp_path: Path) -> None:
    cfg = str(config(tmp_path))
    first = fedkeeper(tmp_path, "start", "-c", cfg, "-q", "--run-id", "twice", "--rounds", "1")
    assert first.returncode == 0, first.stderr

    a = launch(tmp_path, "start", "-c", cfg, "-q", "--resume", "twice", "--rounds", "4")
    b = launch(tmp_path, "start", "-c", cfg, "-q", "--resume", "twice", "--rounds", "4")
    results = {a.pid: finish(a), b.pid: finish(b)}
    assert sorted(r.returncode for r in results.values()) == [0, 1], {p: r.stderr for p, r in results.items()}
    winner = next(pid for pid, r in results.items() if r.returncode == 0)
    loser = next(r for r in results.values() if r.returncode == 1)
    assert f"run twice is being run by another orchestrator: pid {winner} on {socket.gethostname()}" in loser.stderr
    assert "lease expires at" in loser.stderr
    for r in results.values():
        assert "ActivationConflict" not in r.stderr and "Traceback" not in r.stderr

    summary = json.loads((tmp_path / "Logs" / "twice" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds_completed"] == 4
    assert rounds_of(tmp_path, "twice") == [1, 2, 3, 4]
    assert [e["event"] for e in events(tmp_path, "twice") if e["event"] in ("run_started", "run_resumed")] == \
        ["run_started", "run_resumed"]  # the refused one wrote nothing
    run, lock = run_state(tmp_path, "twice")
    assert run["status"] == "completed" and lock is None  # released at the end


@pytest.mark.slow
def test_a_holder_killed_on_this_host_is_taken_over_at_once(tmp_path: Path) -> None:
    cfg = str(config(tmp_path))
    holder = launch(tmp_path, "start", "-c", cfg, "--run-id", "killed")
    wait_for_round(tmp_path, "killed", 2, holder)
    holder.send_signal(signal.SIGKILL)
    holder.wait(30)
    # the default lease is 15 s; the holder's pid is gone from this host, so nothing waits for it
    t0 = time.time()
    resumed = fedkeeper(tmp_path, "start", "-c", cfg, "--resume", "killed")
    assert resumed.returncode == 0, resumed.stderr
    assert f"took over the lock of pid {holder.pid} on {socket.gethostname()}" in resumed.stderr
    assert "it no longer runs" in resumed.stderr
    started = [e for e in events(tmp_path, "killed") if e["event"] == "run_resumed"]
    assert started and started[-1]["ts"] - t0 < 15  # before the lease could have lapsed
    assert f"pid {holder.pid}" in started[-1]["lock_taken_from"]
    assert rounds_of(tmp_path, "killed") == [1, 2, 3, 4]


@pytest.mark.slow
def test_a_holder_killed_on_another_host_is_taken_over_once_its_lease_lapses(tmp_path: Path) -> None:
    cfg = str(config(tmp_path))
    # the holder says it runs elsewhere: its pid means nothing here, only its lease (3 heartbeats of 3 s) counts
    holder = launch(tmp_path, "start", "-c", cfg, "-q", "--run-id", "remote",
                    **{L.HEARTBEAT_ENV: "3", L.HOST_ENV: "lab-node-7"})
    wait_for_round(tmp_path, "remote", 2, holder)
    holder.send_signal(signal.SIGKILL)
    holder.wait(30)
    killed = time.time()

    refused = fedkeeper(tmp_path, "start", "-c", cfg, "-q", "--resume", "remote")
    if time.time() - killed < 6:  # surely within the lease: it ends 6-9 s after the kill (~2.5 s here)
        assert refused.returncode == 1, refused.stderr
        assert f"is being run by another orchestrator: pid {holder.pid} on lab-node-7" in refused.stderr
        assert "lease expires at" in refused.stderr
    _, lock = run_state(tmp_path, "remote")
    assert lock is not None and lock["host"] == "lab-node-7" and lock["pid"] == holder.pid
    time.sleep(max(0.0, lock["expires"] - time.time()) + 0.2)

    resumed = fedkeeper(tmp_path, "start", "-c", cfg, "--resume", "remote")
    assert resumed.returncode == 0, resumed.stderr
    assert f"took over the lock of pid {holder.pid} on lab-node-7" in resumed.stderr
    assert "its lease lapsed" in resumed.stderr
    assert rounds_of(tmp_path, "remote") == [1, 2, 3, 4]
    run, lock = run_state(tmp_path, "remote")
    assert run["status"] == "completed" and lock is None


@pytest.mark.slow
def test_a_frozen_holder_loses_the_run_and_stops_without_touching_it_when_it_wakes(tmp_path: Path) -> None:
    cfg = str(config(tmp_path, rounds=5, latency_ms=400))
    env = {L.HEARTBEAT_ENV: "0.5"}  # a 1.5 s lease
    holder = launch(tmp_path, "start", "-c", cfg, "-q", "--run-id", "frozen", **env)
    wait_for_round(tmp_path, "frozen", 2, holder)
    os.kill(holder.pid, signal.SIGSTOP)  # alive (its pid runs) but silent: only the lease can free the run
    time.sleep(2.0)

    successor = launch(tmp_path, "start", "-c", cfg, "-q", "--resume", "frozen", **env)
    deadline = time.time() + 120
    while not any(e["event"] == "run_resumed" for e in events(tmp_path, "frozen")):
        assert successor.poll() is None, successor.communicate()[1][-2000:]
        assert time.time() < deadline, "the successor never resumed"
        time.sleep(0.05)
    os.kill(holder.pid, signal.SIGCONT)  # it wakes in the middle of a round it no longer holds

    woken = finish(holder)
    assert woken.returncode == 1, woken.stderr
    assert "run frozen: this orchestrator stopped" in woken.stderr and "Traceback" not in woken.stderr
    done = finish(successor)
    assert done.returncode == 0, done.stderr
    assert "ActivationConflict" not in woken.stderr + done.stderr
    summary = json.loads((tmp_path / "Logs" / "frozen" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds_completed"] == 5
    assert rounds_of(tmp_path, "frozen") == [1, 2, 3, 4, 5]  # no round twice
    ends = [e for e in events(tmp_path, "frozen") if e["event"] in ("run_finished", "run_failed", "run_interrupted")]
    assert [e["event"] for e in ends] == ["run_finished"]  # the woken holder recorded no end over the run
    run, lock = run_state(tmp_path, "frozen")
    assert run["status"] == "completed" and lock is None

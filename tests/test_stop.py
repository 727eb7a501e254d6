"""`fedkeeper stop`: the request on the run document and what `stop` says for each kind of run (in process, on
the session's store), and end to end: `stop` from a second process ends an in-flight `start` with status
`stopped` and exit 130, and `--resume` completes the run with the model of an uninterrupted run."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from fedkeeper.scenarios import stop as stopping
from fedkeeper.store import Store
from fedkeeper.store.locks import RunLock

from test_fl_e2e import small_config, summary_of, wait_gone


@pytest.fixture
def store(nx_db) -> Store:  # type: ignore[no-untyped-def]
    return Store(nx_db, url="test")


def _run(store: Store, status: str = "running") -> str:
    run_id = f"r-{uuid.uuid4().hex[:8]}"
    store.create_run({"_id": run_id, "experiment": "e", "status": status, "last_completed_round": 2})
    return run_id


def test_a_run_held_by_an_orchestrator_gets_a_request_that_the_round_loop_sees(store: Store) -> None:
    run_id = _run(store)
    lock = RunLock(store, run_id, heartbeat=30).acquire()
    try:
        stopping.check(store, run_id)  # no request: nothing happens
        outcome = stopping.stop_run(store, store.get_run(run_id) or {})
        assert outcome.requested and "it stops after its current round" in outcome.message
        request = (store.get_run(run_id) or {})[stopping.STOP_FIELD]
        assert set(request) == {"host", "pid", "at"}
        with pytest.raises(stopping.StopRequested) as caught:
            stopping.check(store, run_id)
        assert caught.value.reason.startswith(f"stopped by `fedkeeper stop` from {request['host']}/{request['pid']} at ")
        assert caught.value.exit_code == 130
    finally:
        lock.release()


def test_stop_on_a_run_that_is_not_running_records_nothing(store: Store) -> None:
    finished = _run(store, "completed")
    outcome = stopping.stop_run(store, store.get_run(finished) or {})
    assert (outcome.requested, outcome.status) == (False, "completed")
    assert outcome.message == f"run {finished} is not running (status completed); nothing to stop"
    orphan = _run(store)  # says running, but nobody holds its lock (killed with SIGKILL)
    outcome = stopping.stop_run(store, store.get_run(orphan) or {})
    assert not outcome.requested and "no orchestrator holds it" in outcome.message
    assert stopping.STOP_FIELD not in (store.get_run(orphan) or {})
    with pytest.raises(stopping.UsageProblem):
        stopping.find_run(store, "nope", None)


#: the real CLI, with the orchestrator's stop check before round 2 waiting (bounded) until `fedkeeper stop` has
#: recorded its request: the request lands while round 1 is the one in flight, whatever the machine's speed
WRAPPER = r"""
import sys, time
from fedkeeper.scenarios import stop as stopping
check, calls = stopping.check, []
def waiting_check(store, run_id):
    calls.append(run_id)
    if len(calls) == 2:
        deadline = time.time() + 90
        while time.time() < deadline and not (store.get_run(run_id) or {}).get(stopping.STOP_FIELD):
            time.sleep(0.05)
    check(store, run_id)
stopping.check = waiting_check
from fedkeeper.cli.main import main
main(sys.argv[1:])
"""


def _fedkeeper(cwd: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fedkeeper.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
@pytest.mark.integration
def test_stop_from_another_process_ends_the_run_stopped_and_resume_completes_it(
        tmp_path: Path, nx_server: str, run_cli, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """`start` and `stop` are real processes; the checks before and after them run in process (faster)."""
    config = small_config(tmp_path, rounds=3)
    data = yaml.safe_load(config.read_text())
    data["scenarios"]["federated_learning"]["seed"] = 7
    data["mongo_config"] = {"url": nx_server, "db": f"t_{uuid.uuid4().hex[:12]}"}  # no embedded server per process
    config.write_text(yaml.safe_dump(data))
    assert run_cli("stop", "nope", "-c", config, cwd=tmp_path).code == 2  # unknown run

    proc = subprocess.Popen([sys.executable, "-c", WRAPPER, "start", "-c", str(config), "--run-id", "stopme"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        events = tmp_path / "Logs" / "stopme" / "events.jsonl"
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if events.exists() and '"event": "round_started", "round": 1' in events.read_text():
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        stopped = _fedkeeper(tmp_path, "stop", "stopme", "-c", str(config), "--wait", "--timeout", "120", "--json")
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert stopped.returncode == 0, stopped.stderr
    outcome = json.loads(stopped.stdout)
    assert (outcome["requested"], outcome["status"]) == (True, "stopped")
    assert proc.returncode == 130, err
    summary = summary_of(tmp_path, "stopme")
    assert summary["status"] == "stopped" and summary["rounds_completed"] == 1  # the round in flight finished
    request = outcome["request"]
    assert summary["reason"].startswith(f"stopped by `fedkeeper stop` from {request['host']}/{request['pid']} at ")
    assert err.strip().splitlines()[-1].startswith("error: run stopme stopped by `fedkeeper stop`")
    assert "Traceback" not in err
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    assert lines[-1]["event"] == "run_stopped" and lines[-1]["status"] == "stopped"
    again = run_cli("stop", "stopme", "-c", config, cwd=tmp_path)
    assert again.code == 0 and "is not running (status stopped)" in again.stdout
    assert json.loads(run_cli("report", "stopme", "--json", cwd=tmp_path).stdout)["status"] == "stopped"

    resumed = run_cli("start", "-c", config, "--resume", "stopme", "-q", cwd=tmp_path)
    assert resumed.code == 0, resumed.stderr  # the lock was released, the request cleared
    done = summary_of(tmp_path, "stopme")
    assert (done["status"], done["rounds_completed"], done["sessions"]) == ("completed", 3, 2)

    straight = run_cli("start", "-c", config, "--run-id", "straight", "-q", cwd=tmp_path)
    assert straight.code == 0, straight.stderr
    assert done["model_sha256"] == summary_of(tmp_path, "straight")["model_sha256"]
    monkeypatch.chdir(Path(__file__).parent)  # run_cli worked in tmp_path: this process is not a leftover
    assert wait_gone(tmp_path) == []

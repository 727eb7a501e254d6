"""No worker process outlives the orchestrator: normal exit, Ctrl-C, SIGKILL (checked in the process table)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from local_support import running, wait_until

pytestmark = pytest.mark.integration

TESTS_DIR = Path(__file__).resolve().parent

ORCHESTRATOR = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from local_support import deploy, make_provider, running

    mode = sys.argv[2]
    p = make_provider(Path(sys.argv[1]), concurrency=3)
    echo = deploy(p, "echo")
    sleeper = deploy(p, "sleep")
    assert p.wait(p.invoke(echo, {{}}), 30).state.value == "succeeded"
    busy = p.invoke(sleeper, {{"seconds": 60}})
    while p.poll(busy).start is None:  # the call is running inside its worker
        time.sleep(0.01)
    pids = p.worker_pids()
    try:
        print(json.dumps({{"pids": pids}}), flush=True)
        if mode == "exit":
            sys.stdin.readline()  # the test has looked at the workers
            sys.exit(0)  # no close(): the atexit safety net must stop the workers
        while True:
            time.sleep(0.05)
    except KeyboardInterrupt:
        alive = [running(pid) for pid in pids]  # Ctrl-C reached us, not the workers
        p.close()
        print(json.dumps({{"alive_at_interrupt": alive, "busy": p.poll(busy).state.value}}), flush=True)
""")


@pytest.fixture
def orchestrator(tmp_path: Path) -> Iterator[object]:
    started: list[subprocess.Popen[str]] = []
    workers: list[int] = []

    def start(mode: str) -> tuple[subprocess.Popen[str], list[int]]:
        script = tmp_path / "orchestrator.py"
        script.write_text(ORCHESTRATOR.format(tests=str(TESTS_DIR)))
        proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "work"), mode], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        started.append(proc)
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        pids = json.loads(line)["pids"]
        workers.extend(pids)
        return proc, pids

    try:
        yield start
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                try:
                    pipe.close()
                except OSError:
                    pass
        for pid in workers:  # if the code under test failed, do not leave its workers behind either
            if running(pid):
                os.kill(pid, signal.SIGKILL)


def test_workers_stop_when_the_orchestrator_exits_without_close(orchestrator) -> None:
    proc, pids = orchestrator("exit")
    assert len(pids) == 2 and all(running(pid) for pid in pids)
    proc.stdin.write("exit now\n")
    proc.stdin.flush()
    assert proc.wait(30) == 0
    assert not any(running(pid) for pid in pids)


def test_ctrl_c_reaches_the_orchestrator_which_stops_its_workers(orchestrator) -> None:
    proc, pids = orchestrator("wait")
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal does on Ctrl-C: the whole foreground process group
    out, err = proc.communicate(timeout=30)
    report = json.loads(out.strip().splitlines()[-1])
    assert report["alive_at_interrupt"] == [True, True], err  # workers were not interrupted mid-protocol
    assert report["busy"] == "lost"  # the interrupted activation is reported, not silently dropped
    assert not any(running(pid) for pid in pids)


def test_sigkilled_orchestrator_takes_its_workers_along(orchestrator) -> None:
    proc, pids = orchestrator("wait")
    proc.kill()  # SIGKILL: no atexit, no finally — only PR_SET_PDEATHSIG can stop the workers
    proc.wait(30)
    assert wait_until(lambda: not any(running(pid) for pid in pids), timeout_s=10)

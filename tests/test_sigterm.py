"""SIGTERM stops a command the way Ctrl-C does, through real `fedkeeper` processes: exit 130, one line saying
so, no staging folder left behind, and a run recorded as interrupted that resumes.

`deploy` and `remove` are slowed at the moment a staging folder exists (a wrapper patches the local platform
before running the real entry point), so the signal lands exactly there: while a deployment is unpacked into
its staging folder, and while a removed function's folder is being deleted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from test_fl_e2e import small_config, summary_of, wait_gone

pytestmark = pytest.mark.integration

SAMPLE = Path(__file__).resolve().parents[1] / "config-sample.yaml"

#: runs the real CLI after making one step of the local platform slow; argv: flag file, mode, CLI args
WRAPPER = r"""
import pathlib, shutil, sys, time
from fedkeeper.providers.local import provider as local

flag, mode = pathlib.Path(sys.argv[1]), sys.argv[2]
if mode == "slow-unpack":  # the deployment sits in its staging folder for a minute
    unpack = local.LocalProvider._unpack
    def slow_unpack(self, spec, dest):
        unpack(self, spec, dest)
        flag.write_text(str(dest))
        time.sleep(60)
    local.LocalProvider._unpack = slow_unpack
elif mode == "slow-rmtree":  # deleting a removed function's folder takes two seconds
    rmtree = shutil.rmtree
    def slow_rmtree(path, *args, **kwargs):
        if ".removed-" in str(path) and not flag.exists():
            flag.write_text(str(path))
            time.sleep(2)
        return rmtree(path, *args, **kwargs)
    shutil.rmtree = slow_rmtree
from fedkeeper.cli.main import main
main(sys.argv[3:])
"""


def _launch(cwd: Path, flag: Path, mode: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", WRAPPER, str(flag), mode, *args], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "COLUMNS": "120"})


def _wait_for(path: Path, proc: subprocess.Popen[str], seconds: float = 60) -> None:
    deadline = time.time() + seconds
    while not path.exists():
        if proc.poll() is not None or time.time() > deadline:
            out, err = proc.communicate(timeout=10) if proc.poll() is None else proc.communicate()
            pytest.fail(f"the command never reached the slow step (exit {proc.returncode}): {err[-1500:]}")
        time.sleep(0.05)


def _terminate(proc: subprocess.Popen[str]) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, err


def _staging(workdir: Path) -> list[str]:
    """Staging and trash folders of the local platform (`.code-*`, `.old-*`, `.removed-*`)."""
    root = workdir / ".fedkeeper" / "local"
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*") if p.is_dir()) if root.exists() else []


@pytest.fixture
def smoke_config(tmp_path: Path) -> Path:
    """The sample config; the smoke scenario deploys `nodeinfo` only and needs no store."""
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(yaml.safe_load(SAMPLE.read_text())))
    return path


def test_sigterm_during_deploy_exits_130_and_leaves_no_staging_folder(tmp_path: Path, smoke_config: Path) -> None:
    flag = tmp_path / "reached"
    proc = _launch(tmp_path, flag, "slow-unpack", "deploy", "-c", str(smoke_config), "--scenario", "smoke")
    _wait_for(flag, proc)
    staging = Path(flag.read_text())
    assert staging.is_dir() and staging.name.startswith(".code-")  # the signal lands while it exists
    code, err = _terminate(proc)
    assert code == 130, err
    assert err.strip().splitlines()[-1] == "error: stopped by SIGTERM"
    assert "Traceback" not in err
    assert not staging.exists() and _staging(tmp_path) == []
    assert wait_gone(tmp_path) == []


def test_sigterm_during_remove_finishes_the_removal_then_exits_130(tmp_path: Path, smoke_config: Path) -> None:
    deployed = subprocess.run([sys.executable, "-m", "fedkeeper.cli", "deploy", "-c", str(smoke_config),
                               "--scenario", "smoke", "-q"], cwd=tmp_path, capture_output=True, text=True,
                              timeout=120)
    assert deployed.returncode == 0, deployed.stderr
    functions = [p for p in (tmp_path / ".fedkeeper" / "local").glob("*/*") if p.is_dir()]
    assert functions
    flag = tmp_path / "reached"
    proc = _launch(tmp_path, flag, "slow-rmtree", "remove", "-c", str(smoke_config))
    _wait_for(flag, proc)
    trash = Path(flag.read_text())
    code, err = _terminate(proc)  # lands in the two seconds the folder is being deleted
    assert code == 130, err
    assert err.strip().splitlines()[-1] == "error: stopped by SIGTERM"
    assert not trash.exists() and _staging(tmp_path) == []  # the deletion was finished, not cut in half
    assert wait_gone(tmp_path) == []


def test_sigterm_during_a_run_records_it_interrupted_and_it_resumes(tmp_path: Path) -> None:
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
    finally:
        code, err = _terminate(proc)
    assert code == 130, err
    summary = summary_of(tmp_path)
    run_id = summary["run_id"]
    assert summary["status"] == "interrupted"
    assert summary["reason"] == f"stopped by SIGTERM in round 2; resume with --resume {run_id}"
    assert err.strip().splitlines()[-1] == (f"error: run {run_id} stopped by SIGTERM in round 2; resume with: "
                                            f"fedkeeper start -c {config} --resume {run_id}")
    assert "Traceback" not in err
    assert "ETA" not in err and "rounds · elapsed" not in err  # stderr is a pipe: no progress display
    assert wait_gone(tmp_path) == []

    resumed = subprocess.run([sys.executable, "-m", "fedkeeper.cli", "start", "-c", str(config), "--resume",
                              run_id, "-q"], cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr
    done = summary_of(tmp_path, run_id)
    assert (done["status"], done["reason"], done["rounds_completed"], done["sessions"]) == \
        ("completed", "all 4 rounds completed", 4, 2)
    events = [json.loads(line) for line in (tmp_path / "Logs" / run_id / "events.jsonl").read_text().splitlines()]
    second = [e["ts"] for e in events if e["event"] in ("run_resumed", "run_finished")]
    assert done["wall_s"] > second[1] - second[0]  # both sessions count
    assert wait_gone(tmp_path) == []

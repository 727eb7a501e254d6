"""`fedkeeper validate`: exit codes, the summary it prints, warnings on stderr, --json."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
SAMPLE = ROOT / "config-sample.yaml"
PROTOTYPE = ROOT / "tests" / "configs" / "legacy" / "prototype.yaml"


def test_sample_validates_as_a_real_command(tmp_path: Path) -> None:
    exe = shutil.which("fedkeeper")
    command = [exe] if exe else [sys.executable, "-m", "fedkeeper.cli"]
    proc = subprocess.run([*command, "validate", "-c", str(SAMPLE)], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "config-sample.yaml is valid" in proc.stdout
    assert "laptop" in proc.stdout and "fl_server_aggregator" in proc.stdout
    assert proc.stderr == ""
    assert not (tmp_path / "Logs").exists()  # validate writes nothing


def test_json_summary(run_cli) -> None:  # type: ignore[no-untyped-def]
    result = run_cli("validate", "--json", "-c", SAMPLE)
    assert result.code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["experiment"] == "digits-fedavg"
    assert data["clusters"] == [
        {"name": "laptop", "kind": "local", "platform": "local", "endpoint": "this machine", "clients": 20,
         "server": False},
        {"name": "laptop-server", "kind": "local", "platform": "local", "endpoint": "this machine", "clients": 0,
         "server": True}]
    assert data["functions"]["fl_client"] == [{"cluster": "laptop", "memory_mb": 512, "timeout_s": 120.0,
                                               "concurrency": 1}]
    assert data["store"] == {"url": "embedded", "db": "fedkeeper"}
    assert data["federated_learning"]["num_clients_per_round"] == 10
    assert data["warnings"] == []


def test_legacy_config_prints_warnings_on_stderr_and_hides_keys(run_cli) -> None:  # type: ignore[no-untyped-def]
    result = run_cli("validate", "-c", PROTOTYPE)
    assert result.code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning ")]
    assert len(warnings) >= 20
    assert "store: mongodb://fl:***@10.0.0.8:27017" in result.stdout
    assert "FAKE" not in result.stdout + result.stderr

    quiet = run_cli("validate", "-q", "-c", PROTOTYPE)
    assert quiet.code == 0 and "warning" not in quiet.stderr

    as_json = run_cli("validate", "--json", "-c", PROTOTYPE)
    data = json.loads(as_json.stdout)
    assert len(data["warnings"]) == len(warnings)
    assert "FAKE" not in as_json.stdout


@pytest.mark.parametrize("args", [["validate"], ["validate", "-c"], ["validate", "-c", "x.yaml", "--nope"]])
def test_usage_errors_exit_2(run_cli, args: list[str]) -> None:  # type: ignore[no-untyped-def]
    result = run_cli(*args)
    assert result.code == 2
    assert "Traceback" not in result.stderr


def test_a_directory_is_not_a_config(run_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result = run_cli("validate", "-c", tmp_path)
    assert result.code == 2
    assert "Traceback" not in result.stderr

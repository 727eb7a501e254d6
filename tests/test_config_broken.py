"""Every broken config in tests/configs/broken/ makes `fedkeeper validate` exit 2 with the key path in the
message and no traceback.

Each file starts with `# expect: <text>` lines (each must appear in stderr) and may set environment variables
with `# env: NAME=value` lines. Most files run in-process through `fedkeeper.cli.main` (the console script's
entry, which maps exceptions to exit codes); a few run as real subprocesses, as a user would."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BROKEN = Path(__file__).parent / "configs" / "broken"
FILES = sorted(BROKEN.glob("*.yaml"))
SUBPROCESS = {"01-yaml-syntax.yaml", "26-missing-env-var.yaml", "47-several-errors.yaml"}


def expectations(path: Path) -> tuple[list[str], dict[str, str]]:
    text = path.read_text(encoding="utf-8")
    expects = re.findall(r"^# expect: (.+)$", text, re.M)
    env = dict(re.findall(r"^# env: (\w+)=(.*)$", text, re.M))
    return expects, env


def test_there_are_enough_broken_configs_and_each_states_its_expectation() -> None:
    assert len(FILES) >= 25
    for path in FILES:
        assert re.match(r"\d\d-[a-z0-9-]+\.yaml$", path.name), path.name
        assert path.read_text(encoding="utf-8").startswith("# expect: "), f"{path.name}: first line must be # expect:"


@pytest.mark.parametrize("path", [p for p in FILES if p.name not in SUBPROCESS], ids=lambda p: p.stem)
def test_broken_config_in_process(path: Path, run_cli) -> None:  # type: ignore[no-untyped-def]
    expects, env = expectations(path)
    result = run_cli("validate", "-c", path, env=env)
    assert result.code == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert "invalid config" in result.stderr
    for expected in expects:
        assert expected in result.stderr, f"{path.name}: {expected!r} not in:\n{result.stderr}"
    assert "is valid" not in result.stdout


@pytest.mark.parametrize("name", sorted(SUBPROCESS))
def test_broken_config_as_a_subprocess(name: str) -> None:
    path = BROKEN / name
    expects, env = expectations(path)
    proc = subprocess.run([sys.executable, "-m", "fedkeeper.cli", "validate", "-c", str(path)],
                          capture_output=True, text=True, timeout=60, env={**os.environ, **env})
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    for expected in expects:
        assert expected in proc.stderr


def test_several_errors_in_one_file_are_all_reported(run_cli) -> None:  # type: ignore[no-untyped-def]
    path = BROKEN / "47-several-errors.yaml"
    expects, _ = expectations(path)
    assert len(expects) >= 5
    result = run_cli("validate", "-c", path)
    assert result.code == 2
    assert f"({len(expects)} problems)" in result.stderr
    problems = [line for line in result.stderr.splitlines() if line.strip().startswith("- ")]
    assert len(problems) == len(expects)


def test_the_categories_of_the_issue_are_all_covered() -> None:
    """bad YAML, wrong types, missing keys, unknown keys, inconsistent counts, unknown cluster, bad limits,
    missing env var: at least one file for each."""
    text = {p.name: p.read_text(encoding="utf-8") for p in FILES}
    messages = "\n".join(text.values())
    for needle in ["YAML", "must be a whole number", "required key is missing", "unknown key",
                   "client counts add up to", "unknown cluster", "AWS Lambda memory must be",
                   "Cloud Functions (2nd gen, HTTP) timeout", "environment variable", "must be <= total_num_clients",
                   "'embedded' runs on this machine"]:
        assert needle in messages, needle


def test_missing_config_file_exits_2_without_traceback(run_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result = run_cli("validate", "-c", tmp_path / "nope.yaml")
    assert result.code == 2
    assert "config file not found" in result.stderr
    assert "Traceback" not in result.stderr


def test_verbose_still_prints_no_traceback_for_a_config_error(run_cli) -> None:  # type: ignore[no-untyped-def]
    result = run_cli("-v", "validate", "-c", BROKEN / "13-per-round-above-total.yaml")
    assert result.code == 2
    assert "num_clients_per_round" in result.stderr

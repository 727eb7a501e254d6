"""The console layer's promises, each checked directly (fast; the full command × mode × situation matrix is
tests/test_cli_matrix.py): a reader that stops early, no width limit off a terminal, NO_COLOR/--no-color,
-q/-v in one place for every command, --json everywhere, `logs --event` and `report --plot` checked up front.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest

from cli_support import cli_env, fedkeeper, strip_ansi
from fedkeeper.cli.console import EXIT_OUTPUT_CLOSED
from fedkeeper.cli.main import cli
from fedkeeper.results.logs_view import KNOWN_EVENTS

ROOT = Path(__file__).resolve().parents[1]
LONG = "laptop-with-a-cluster-name-far-longer-than-any-terminal-column-would-allow"
_COLOUR = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture
def big_run(tmp_path: Path, make_run_folder: Any) -> Path:
    """A run whose `logs` and `report` output is far bigger than a pipe's buffer (so a write really fails)."""
    logs = tmp_path / "Logs"
    make_run_folder(logs, "big", rounds=300, clients=6, clusters={LONG: "local", "lambda-eu": "aws"})
    return logs


@pytest.fixture
def small_run(tmp_path: Path, make_run_folder: Any) -> Path:
    """Three rounds on a cluster with a very long name."""
    logs = tmp_path / "Logs"
    make_run_folder(logs, "small", rounds=3, clusters={LONG: "local", "lambda-eu": "aws"})
    return logs


# ---------------------------------------------------------------------------------------------- | head


@pytest.mark.parametrize("args", [("logs", "big"), ("logs", "big", "--json"), ("report", "big"),
                                  ("report", "big", "--csv")],
                         ids=lambda a: " ".join(a))
@pytest.mark.parametrize("stderr_too", [False, True], ids=["stdout", "stdout+stderr"])
def test_a_reader_that_stops_early_ends_the_command_quietly(big_run: Path, args: tuple[str, ...],
                                                            stderr_too: bool) -> None:
    """`fedkeeper logs | head -1` (and `2>&1 | head -1`): no traceback, no "Exception ignored", exit 141."""
    proc = subprocess.Popen([sys.executable, "-m", "fedkeeper.cli", *args, "--logs-dir", str(big_run)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT if stderr_too else subprocess.PIPE,
                            stdin=subprocess.DEVNULL, env=cli_env())
    assert proc.stdout is not None
    first = proc.stdout.readline()
    proc.stdout.close()  # the reader goes away, as head does
    err = proc.stderr.read().decode() if proc.stderr else ""
    code = proc.wait(timeout=60)
    assert first.strip()
    assert err == ""
    assert code == EXIT_OUTPUT_CLOSED


def test_help_into_a_closed_pipe_is_quiet_too() -> None:
    out = subprocess.run(f"{sys.executable} -m fedkeeper.cli report --help | head -c 1 >/dev/null; "
                         f"echo ${{PIPESTATUS[0]}}", shell=True, executable="/bin/bash", capture_output=True,
                         text=True, env=cli_env(), timeout=60)
    assert out.stderr == ""
    assert out.stdout.strip() in ("0", str(EXIT_OUTPUT_CLOSED))  # help may fit the pipe before head closes it


# ---------------------------------------------------------------------------------------------- width


def test_piped_tables_are_never_cut_whatever_columns_says(small_run: Path, run_cli: Any) -> None:
    code, out, _ = run_cli("report", "small", "--logs-dir", str(small_run), env={"COLUMNS": "40"})
    assert code == 0
    assert "…" not in out
    row = next(line for line in out.splitlines() if line.startswith(LONG))
    assert len(row.split()) == 10  # cluster (platform) n ok f/t/l fail cold p50 p95 max: no column dropped
    assert max(len(line) for line in out.splitlines()) > 120


def test_validate_shows_long_names_whole_when_piped(tmp_path: Path, run_cli: Any) -> None:
    config = tmp_path / "c.yaml"
    name = "laptop-in-the-basement-lab-room-7"  # 33 characters; with "-server" 40, the longest allowed
    config.write_text((ROOT / "config-sample.yaml").read_text().replace("laptop", name))
    code, out, err = run_cli("validate", "-c", config, env={"COLUMNS": "60"})
    assert code == 0, err
    assert "…" not in out and f"│ {name}-server │" in out


def test_a_terminal_gets_tables_that_fit_it(small_run: Path) -> None:
    result = fedkeeper(small_run.parent, "report", "small", terminal=True)
    assert result.code == 0, result.stderr
    widths = [len(line) for line in strip_ansi(result.stdout).splitlines()]
    assert max(widths) <= 120


# ---------------------------------------------------------------------------------------------- colour


@pytest.mark.parametrize(("flag", "env", "coloured"), [((), {}, True), (("--no-color",), {}, False),
                                                      ((), {"NO_COLOR": "1"}, False),
                                                      ((), {"NO_COLOR": ""}, True)],
                         ids=["default", "--no-color", "NO_COLOR=1", "NO_COLOR-empty"])
def test_no_color_on_a_terminal(tmp_path: Path, flag: tuple[str, ...], env: dict[str, str], coloured: bool) -> None:
    (tmp_path / "c.yaml").write_text((ROOT / "config-sample.yaml").read_text())
    (tmp_path / "bad.yaml").write_text("experiment: x\n")
    ok = fedkeeper(tmp_path, "validate", "-c", "c.yaml", *flag, terminal=True, env=env)
    bad = fedkeeper(tmp_path, "validate", "-c", "bad.yaml", *flag, terminal=True, env=env)
    assert ok.code == 0 and bad.code == 2
    assert bool(_COLOUR.search(ok.stdout)) is coloured
    assert bool(_COLOUR.search(bad.stderr)) is coloured
    assert "is valid" in strip_ansi(ok.stdout) and strip_ansi(bad.stderr).startswith("error: invalid config")


def test_no_color_is_a_group_option_too(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text((ROOT / "config-sample.yaml").read_text())
    result = fedkeeper(tmp_path, "--no-color", "validate", "-c", "c.yaml", terminal=True)
    assert result.code == 0 and not _COLOUR.search(result.stdout)


# ---------------------------------------------------------------------------------------------- -q / -v


def test_every_command_takes_the_common_options() -> None:
    for name, command in cli.commands.items():
        options = {opt for param in command.params if isinstance(param, click.Option) for opt in param.opts}
        assert {"-q", "-v", "--no-color", "--json", "--logs-dir"} <= options, name
    group = {opt for param in cli.params if isinstance(param, click.Option) for opt in param.opts}
    assert {"-q", "-v", "--no-color"} <= group


LEGACY_WARNING = "providers.openwhisk.ow.auth"


@pytest.fixture
def warned_config(tmp_path: Path) -> Path:
    """A valid config that loads with a warning (a key written into the file)."""
    text = (ROOT / "config-sample.yaml").read_text().replace(
        "  # openwhisk:\n  #   ow-edge:", "  openwhisk:\n    ow:\n      api_host: http://127.0.0.1:9\n"
                                        "      auth: abcd-uuid:key-in-the-file\n  #   ow-edge:")
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("where", ["after", "before"])
def test_quiet_keeps_the_result_and_drops_everything_else(warned_config: Path, run_cli: Any, where: str) -> None:
    loud = run_cli("validate", "-c", warned_config)
    args = ["validate", "-c", str(warned_config), "-q"] if where == "after" else \
        ["-q", "validate", "-c", str(warned_config)]
    quiet = run_cli(*args)
    assert loud.code == quiet.code == 0
    assert LEGACY_WARNING in loud.stderr and "key-in-the-file" not in loud.stderr
    assert quiet.stderr == ""
    assert quiet.stdout == loud.stdout


@pytest.mark.parametrize("args", [["-v", "validate", "-c", "missing.yaml"], ["validate", "-c", "missing.yaml", "-v"],
                                  ["-v", "logs", "nosuch"], ["report", "nosuch", "-v"],
                                  ["report", "--json", "--csv", "-v"]])
def test_verbose_shows_the_traceback_wherever_the_flag_is(tmp_path: Path, run_cli: Any, args: list[str]) -> None:
    code, _, err = run_cli(*args, cwd=tmp_path)  # Logs/ of an empty directory: no run anywhere
    assert code == 2
    assert err.startswith("Traceback (most recent call last):"), err
    assert "\nerror: " in err


def test_usage_errors_start_with_error_too(run_cli: Any) -> None:
    code, _, err = run_cli("logs", "--no-such-option")
    assert code == 2
    first, *rest = err.splitlines()
    assert first.startswith("error: ") and "--no-such-option" in first
    assert any(line.startswith("Usage: fedkeeper logs") for line in rest)


# ---------------------------------------------------------------------------------------------- --json


def test_package_json_lists_every_zip(tmp_path: Path, run_cli: Any) -> None:
    code, out, _ = run_cli("package", "-c", ROOT / "config-sample.yaml", "--out", tmp_path / "zips", "--json")
    assert code == 0
    listed = json.loads(out)
    assert sorted(Path(z["path"]).name for z in listed) == sorted(p.name for p in (tmp_path / "zips").iterdir())
    assert all(z["bytes"] == Path(z["path"]).stat().st_size and len(z["sha256"]) == 64 for z in listed)


def test_deploy_dry_run_json_is_plain_json(run_cli: Any) -> None:
    code, out, _ = run_cli("deploy", "-c", ROOT / "config-sample.yaml", "--dry-run", "--json")
    assert code == 0
    plan = json.loads(out)
    assert plan["dry_run"] is True and {d["function"] for d in plan["plan"]} == {"fl_client", "fl_server_aggregator"}


# ---------------------------------------------------------------------------------------------- logs --event


def test_unknown_event_exits_2_naming_the_known_ones(small_run: Path, run_cli: Any) -> None:
    code, out, err = run_cli("logs", "small", "--event", "nonsense", "--logs-dir", small_run)
    assert code == 2 and out == ""
    assert err.startswith("error: --event: unknown event 'nonsense'")
    assert all(name in err for name in KNOWN_EVENTS)


def test_a_known_event_filters(small_run: Path, run_cli: Any) -> None:
    code, out, _ = run_cli("logs", "small", "--event", "round_finished", "--json", "--logs-dir", small_run)
    assert code == 0
    assert {json.loads(line)["event"] for line in out.splitlines()} == {"round_finished"}


def _written_event_names() -> set[str]:
    """Every event name the orchestrator passes to `RunLog.event(...)` or to the line builder batched rows use,
    `RunLog._event_line(...)` (literals, and both arms of `a if c else b`), the `"event"` literal of a record built
    as a dict (`RunLog._activation_row`), and the names of the end-of-run events."""
    names: set[str] = set()
    for path in (ROOT / "fedkeeper").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("event", "_event_line") \
                    and node.args:
                first = node.args[0]
                options = [first.body, first.orelse] if isinstance(first, ast.IfExp) else [first]
                names |= {o.value for o in options if isinstance(o, ast.Constant) and isinstance(o.value, str)}
            elif isinstance(node, ast.Dict):  # a row built in one pass: {"ts": ..., "event": "activation", ...}
                names |= {v.value for k, v in zip(node.keys, node.values)
                          if isinstance(k, ast.Constant) and k.value == "event"
                          and isinstance(v, ast.Constant) and isinstance(v.value, str)}
    from fedkeeper.results.run_folders import LIFECYCLE_EVENTS

    return names | set(LIFECYCLE_EVENTS)


def test_known_events_are_the_ones_runs_write() -> None:
    written = _written_event_names()
    assert {"activation", "round_finished", "run_started"} <= written  # the scan sees the writers
    assert written - set(KNOWN_EVENTS) == set(), "add new event types to logs_view.KNOWN_EVENTS"


# ---------------------------------------------------------------------------------------------- report --plot


@pytest.mark.parametrize(("name", "magic"), [("run.png", b"\x89PNG\r\n\x1a\n"), ("run.pdf", b"%PDF-"),
                                             ("run.svg", b"<?xml"), ("RUN.SVG", b"<?xml")])
def test_plot_format_follows_the_extension(small_run: Path, tmp_path: Path, run_cli: Any, name: str,
                                           magic: bytes) -> None:
    target = tmp_path / "plots" / name
    code, _, err = run_cli("report", "small", "--plot", target, "--logs-dir", small_run, "-q")
    assert code == 0, err
    data = target.read_bytes()
    assert data.startswith(magic)
    if name.lower().endswith(".svg"):
        assert b"<svg" in data[:2000]


@pytest.mark.parametrize("name", ["run.jpg", "run", "run.png.txt"])
def test_other_plot_extensions_exit_2_before_anything_is_read(tmp_path: Path, run_cli: Any, name: str) -> None:
    target = tmp_path / name
    code, out, err = run_cli("report", "no-such-run", "--plot", target, "--logs-dir", tmp_path)
    assert code == 2 and out == ""
    assert err.startswith(f"error: --plot {target}:") and ".png, .pdf, .svg" in err
    assert not target.exists()

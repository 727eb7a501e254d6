"""The command line as an API: every command × output mode × situation, through real subprocesses.

Modes: `terminal` (stdout and stderr each on a pty, 120 columns), `pipe`, `--json`, `-q`, `-v` (the last three on
pipes). Situations: `ok` (a tiny config on the local platform and the embedded store), `config` (an invalid
config; for `logs`, an unknown run), `platform` (an OpenWhisk cluster at a closed 127.0.0.1 port), `store`
(MongoDB at a closed 127.0.0.1 port, password from the environment). Every row checks:

- the exit code against README's exit-code table (`EXPECTED` below: 0 success, 1 a cluster or the store cannot
  be reached, 2 invalid config or usage); a command that does not need the platform or the store succeeds
  without it;
- where stdout is JSON (`--json`), that it parses (one document, or one per line for `logs`);
- the first line of stderr: nothing with -q on success, `error: ...` naming the cause on failure (with -v the
  traceback comes first and `error: ...` after it), never a traceback otherwise;
- that no secret of the config appears anywhere, and that nothing piped was cut (`…`).

All rows share one prepared working directory with one finished run (`tiny-run`, 2 rounds), so `logs` and
`report` read a real run. 180 rows, one subprocess each: marked slow (6.5–8 minutes on the shared 2-core test
machine, about 3.5 CPU-minutes; an unreachable OpenWhisk costs its client's retries, about 1.4 s per call).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli_support import BAD_CONFIG, SECRETS, Result, closed_port, fedkeeper, strip_ansi, tiny_config

pytestmark = [pytest.mark.slow, pytest.mark.integration]

RUN_ID = "tiny-run"
MODES = ("terminal", "pipe", "json", "quiet", "verbose")
SITUATIONS = ("ok", "config", "platform", "store")
_MODE_FLAGS = {"terminal": (), "pipe": (), "json": ("--json",), "quiet": ("-q",), "verbose": ("-v",)}
_CONFIG_FILE = {"ok": "ok.yaml", "config": "bad.yaml", "platform": "platform.yaml", "store": "store.yaml"}

#: command → its arguments (CONFIG stands for the situation's config file)
COMMANDS: dict[str, tuple[str, ...]] = {
    "validate": ("validate", "-c", "CONFIG"),
    "deploy --dry-run": ("deploy", "-c", "CONFIG", "--dry-run"),
    "deploy": ("deploy", "-c", "CONFIG"),
    "remove": ("remove", "-c", "CONFIG"),
    "package": ("package", "-c", "CONFIG", "--out", "build/zips"),
    "start": ("start", "-c", "CONFIG", "--rounds", "1"),
    "sweep": ("sweep", "-c", "CONFIG", "--grid", "fl.model_params.lr=0.05", "--set", "fl.rounds=1"),
    "status": ("status", "-c", "CONFIG"),
    "smoke": ("smoke", "-c", "CONFIG"),
    "logs": ("logs", RUN_ID),
    "report": ("report", RUN_ID),
    "cost": ("cost", "-c", "CONFIG", "--rounds", "1"),
    "stop": ("stop", RUN_ID, "-c", "CONFIG"),
    "export": ("export", RUN_ID, "--out", "build/model.npz", "-c", "CONFIG"),
    "runs list": ("runs", "list", "-c", "CONFIG"),
    "runs show": ("runs", "show", RUN_ID, "-c", "CONFIG"),
}
#: README's exit-code table, per command and situation (None: the situation does not apply)
EXPECTED: dict[str, dict[str, int | None]] = {
    #                     ok  config platform store
    "validate":         dict(ok=0, config=2, platform=0, store=0),     # touches no cluster and no store
    "deploy --dry-run": dict(ok=0, config=2, platform=0, store=0),     # plans only
    "deploy":           dict(ok=0, config=2, platform=1, store=1),
    "remove":           dict(ok=0, config=2, platform=1, store=0),     # needs no store
    "package":          dict(ok=0, config=2, platform=0, store=0),     # builds zips locally
    "start":            dict(ok=0, config=2, platform=1, store=1),
    "sweep":            dict(ok=0, config=2, platform=1, store=1),
    "status":           dict(ok=0, config=2, platform=1, store=1),
    "smoke":            dict(ok=0, config=2, platform=1, store=0),     # needs no store
    "logs":             dict(ok=0, config=2, platform=None, store=None),   # reads Logs/ only
    "report":           dict(ok=0, config=2, platform=None, store=None),   # reads Logs/ only (+ -c pricing)
    "cost":             dict(ok=0, config=2, platform=0, store=0),     # deploys nothing, contacts nothing
    "stop":             dict(ok=0, config=2, platform=0, store=1),     # a finished run: a note; needs the store only
    "export":           dict(ok=0, config=2, platform=0, store=1),     # reads the store only
    "runs list":        dict(ok=0, config=2, platform=0, store=1),     # the store and Logs/
    "runs show":        dict(ok=0, config=2, platform=0, store=1),
}
#: the first line of stderr on failure (after the traceback with -v)
FAILURE_LINE = {
    "config": r"^error: invalid config ",
    "platform": r"^error: .*ow-down",
    "store": r"^error: .*(MongoDB|store).*127\.0\.0\.1",
}
_PROGRESS = re.compile(r"[━╸╺]|^\s*[⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏]")


def _args(command: str, situation: str) -> list[str]:
    args = [_CONFIG_FILE[situation] if a == "CONFIG" else a for a in COMMANDS[command]]
    if command == "logs" and situation == "config":
        args = ["logs", "nosuch-run"]  # logs reads no config: its bad input is an unknown run
    if command == "report" and situation == "config":
        args += ["-c", "bad.yaml"]  # -c applies the config's pricing
    return args


def _rows() -> Iterator[object]:
    for command, expected in EXPECTED.items():
        for situation in SITUATIONS:
            if expected[situation] is None:
                continue
            for mode in MODES:
                yield pytest.param(command, situation, mode, id=f"{command}-{situation}-{mode}".replace(" ", ""))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One working directory for every row: the four configs and one finished run `tiny-run`."""
    work = tmp_path_factory.mktemp("cli-matrix")
    (work / "ok.yaml").write_text(tiny_config("tiny"))
    (work / "bad.yaml").write_text(BAD_CONFIG)
    (work / "platform.yaml").write_text(tiny_config("tiny-ow", openwhisk_port=closed_port()))
    (work / "store.yaml").write_text(tiny_config("tiny-store", mongo_port=closed_port()))
    started = fedkeeper(work, "start", "-c", "ok.yaml", "--run-id", RUN_ID, "-q")
    assert started.code == 0, started.stderr
    assert (work / "Logs" / RUN_ID / "summary.json").exists()
    return work


def _stderr_lines(result: Result, mode: str) -> list[str]:
    """stderr's lines without colour codes; on a terminal, without blank lines and the frames of transient
    progress bars (they are drawn, then erased with cursor movements)."""
    text = strip_ansi(result.stderr)
    if mode != "terminal":
        return text.splitlines()
    lines = [line for part in text.split("\n") for line in part.split("\r")]
    return [line for line in lines if line.strip() and not _PROGRESS.search(line)]


@pytest.mark.parametrize(("command", "situation", "mode"), list(_rows()))
def test_row(workdir: Path, command: str, situation: str, mode: str) -> None:
    expected = EXPECTED[command][situation]
    result = fedkeeper(workdir, *_args(command, situation), *_MODE_FLAGS[mode], terminal=mode == "terminal")
    where = f"{command} [{situation}, {mode}] exit {result.code}\n--- stdout\n{result.stdout}\n--- stderr\n" \
            f"{result.stderr}"
    assert result.code == expected, where

    for secret in SECRETS:
        assert secret not in result.stdout and secret not in result.stderr, where
    if mode != "terminal":
        assert "…" not in result.stdout, f"piped output was cut: {where}"
        assert "\x1b[" not in result.stdout + result.stderr, f"escape codes on a pipe: {where}"
    if mode == "json" and result.stdout.strip():
        if command == "logs":
            assert [json.loads(line) for line in result.stdout.splitlines()], where
        else:
            json.loads(result.stdout)
    if mode == "json" and expected == 0:
        assert result.stdout.strip(), f"--json printed nothing: {where}"

    lines = _stderr_lines(result, mode)
    if expected == 0:
        assert result.stdout.strip(), f"a successful command prints its result: {where}"
        assert not any(line.startswith(("error:", "Traceback")) for line in lines), where
        if mode == "quiet":
            assert result.stderr == "", f"-q leaves only errors on stderr: {where}"
        return

    assert lines, f"a failure says why on stderr: {where}"
    if mode == "verbose":
        assert "Traceback (most recent call last):" in result.stderr, f"-v shows the traceback: {where}"
        errors = [line for line in lines if line.startswith("error: ")]
        assert errors, where
        first = errors[0]
        assert lines.index("Traceback (most recent call last):") < lines.index(first), where
    else:
        assert "Traceback" not in result.stderr, where
        first = lines[0]
    pattern = FAILURE_LINE.get(situation, r"^error: ")
    if command == "logs":
        pattern = r"^error: .*nosuch-run"
    assert re.search(pattern, first), f"first line of stderr {first!r} !~ {pattern}: {where}"

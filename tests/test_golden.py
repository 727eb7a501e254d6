"""Golden output: each command's text and JSON forms on fixed inputs, compared with the files in tests/golden/.

Inputs: `tests/golden/config.yaml` (two local clusters and an OpenWhisk one; nothing is contacted) for
`validate` and `deploy --dry-run`; a synthetic run folder from the `make_run_folder` fixture (fixed times) for
`logs` and `report`. Output is taken as a script sees it (stdout not a terminal: no width limit, no colour),
with the clock in UTC; the temporary directory is replaced by `<tmp>` and the config's secret must not appear.

An intended change of output: refresh the files, then review their diff like code::

    FK_UPDATE_GOLDEN=1 .venv-test/bin/python -m pytest -q -p no:cacheprovider tests/test_golden.py
    git diff tests/golden/
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("FK_UPDATE_GOLDEN", "") not in ("", "0")
OW_AUTH = "g0lden-uuid:g0lden-key-never-shown"
RUN = "golden-run"

#: name → (command line, whether the output is JSON); CONFIG and LOGS are filled in per test
CASES: dict[str, tuple[tuple[str, ...], bool]] = {
    "validate.txt": (("validate", "-c", "CONFIG"), False),
    "validate.json": (("validate", "-c", "CONFIG", "--json"), True),
    "deploy-dry-run.txt": (("deploy", "-c", "CONFIG", "--dry-run"), False),
    "deploy-dry-run.json": (("deploy", "-c", "CONFIG", "--dry-run", "--json"), True),
    "logs.txt": (("logs", RUN, "--logs-dir", "LOGS"), False),
    "logs-failed.txt": (("logs", RUN, "--state", "failed", "--logs-dir", "LOGS"), False),
    "logs.jsonl": (("logs", RUN, "--round", "2", "--json", "--logs-dir", "LOGS"), True),
    "report.txt": (("report", RUN, "--logs-dir", "LOGS"), False),
    "report.json": (("report", RUN, "--json", "--logs-dir", "LOGS"), True),
    "report.csv": (("report", RUN, "--csv", "--logs-dir", "LOGS"), False),
    "report-two-runs.txt": (("report", RUN, f"{RUN}-sgd", "--logs-dir", "LOGS"), False),
    "report-sweep.txt": (("report", "--sweep", "lr-grid", "--logs-dir", "LOGS"), False),
    "report-sweep.csv": (("report", "--sweep", "lr-grid", "--csv", "--logs-dir", "LOGS"), False),
    "report-clients.txt": (("report", RUN, "--clients", "--logs-dir", "LOGS"), False),
}


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Local time is UTC while the test runs (reports print local times)."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
def inputs(tmp_path: Path, make_run_folder: Any, utc: None) -> dict[str, Path]:
    logs = tmp_path / "Logs"
    make_run_folder(logs, RUN, rounds=3, clients=4)
    make_run_folder(logs, f"{RUN}-sgd", optim="sgd", rounds=3, clients=4, t0=1_700_000_900.0)
    from report_sweep_support import write_sweep

    write_sweep(logs, "lr-grid", skip=("lr-grid-lr0.01-s2",))  # 2 × 2 over lr and seed, one run missing
    config = tmp_path / "config.yaml"
    config.write_text((GOLDEN / "config.yaml").read_text())
    return {"CONFIG": config, "LOGS": logs, "tmp": tmp_path}


#: events carry the wall-clock time they were written at (the fixture writes them now)
_CLOCK = re.compile(r"\b\d\d:\d\d:\d\d\.\d{3}\b")
_TS = re.compile(r'("(?:ts|last_event_ts)":\s*)[0-9.e+]+')


def normalise(text: str, tmp: Path) -> str:
    """The parts that differ from one run of the test to the next: the temporary directory and the times at
    which the synthetic events were written (as clock times in text, as `ts` numbers in JSON)."""
    text = text.replace(str(tmp), "<tmp>")
    text = _CLOCK.sub("HH:MM:SS.mmm", text)
    return _TS.sub(r"\g<1>0", text)


@pytest.mark.parametrize("name", list(CASES))
def test_golden(name: str, inputs: dict[str, Path], run_cli: Any) -> None:
    args, is_json = CASES[name]
    argv = [str(inputs[a]) if a in inputs else a for a in args]
    code, out, err = run_cli(*argv, env={"OW_AUTH": OW_AUTH}, cwd=inputs["tmp"])
    assert code == 0, err
    assert "g0lden-key" not in out + err
    if is_json:
        import json

        for doc in (out.splitlines() if name.endswith(".jsonl") else [out]):
            json.loads(doc)
    got = normalise(out, inputs["tmp"])
    path = GOLDEN / name
    if UPDATE:
        path.write_text(got)
    assert path.exists(), f"no golden file {path}: run with FK_UPDATE_GOLDEN=1 to create it"
    assert got == path.read_text(), f"{name} changed; if intended: FK_UPDATE_GOLDEN=1 pytest {__file__}"

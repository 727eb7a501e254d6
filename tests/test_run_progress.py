"""The whole-run progress line beside the per-round bar: rounds done, elapsed time of the run, ETA.

Shown only on a terminal (checked with a real pseudo-terminal as stderr), never with -q; on a pipe nothing of
it appears (tests/test_sigterm.py and tests/test_fl_e2e.py read a piped stderr).
"""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from rich.progress import Progress

from fedkeeper.scenarios.federated_learning import RunClock, _clock, _Detail
from test_fl_e2e import small_config, wait_gone


def test_eta_is_the_mean_round_time_times_the_rounds_left(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(time, "time", lambda: now[0])
    clock = RunClock(prior_s=30.0, prior_round_s=[], planned=10, done=2)
    assert clock.eta() is None  # nothing to estimate from yet
    clock.round_s += [4.0, 6.0]
    now[0] += 12.0
    assert clock.elapsed() == pytest.approx(42.0)  # earlier sessions included
    assert clock.eta() == pytest.approx(5.0 * 8)
    clock.round_start = now[0] - 3.0  # three seconds into the current round
    assert clock.eta() == pytest.approx(5.0 * 8 - 3.0)
    clock.done = 10
    assert clock.eta() == 0.0
    assert (_clock(None), _clock(75), _clock(3725)) == ("–:––", "1:15", "1:02:05")


def test_the_run_line_and_the_round_line_render_their_own_fields() -> None:
    clock = RunClock(prior_s=61.0, prior_round_s=[2.0], planned=5, done=3)
    progress = Progress()
    run = progress.add_task("run", total=5, completed=3, clock=clock)
    rnd = progress.add_task("round 4/5", total=6, completed=4, failed=1, retrying=2)
    tasks = {t.id: t for t in progress.tasks}
    assert re.fullmatch(r"3/5 rounds · elapsed 1:0[12] · ETA 0:04", _Detail().render(tasks[run]).plain)
    assert _Detail().render(tasks[rnd]).plain.startswith("4/6 ok · 1 failed · 2 retried · ")


def _run_on_a_terminal(cwd: Path, *args: str) -> tuple[int, str]:
    """`fedkeeper` with stderr on a pseudo-terminal (stdout a pipe); returns (exit code, what the terminal got)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "fedkeeper.cli", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=slave, text=True, env={**os.environ, "COLUMNS": "160", "TERM": "xterm"})
    os.close(slave)
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        reader.join(timeout=10)
        os.close(master)
    return proc.returncode, b"".join(chunks).decode("utf-8", "replace")


@pytest.mark.integration
def test_a_terminal_shows_the_run_line_and_quiet_hides_it(tmp_path: Path) -> None:
    config = small_config(tmp_path, rounds=3, faults={"latency_ms": [300, 400], "seed": 1})
    code, screen = _run_on_a_terminal(tmp_path, "start", "-c", str(config))
    assert code == 0, screen[-2000:]
    assert re.search(r"run .*\d/3 rounds · elapsed \d+:\d\d · ETA (\d+:\d\d|–:––)", screen), screen[-2000:]
    assert re.search(r"round [123]/3 .*ok · \d+ failed · \d+ retried", screen)
    assert re.search(r"ETA \d+:\d\d", screen)  # an estimate once a round has finished

    code, screen = _run_on_a_terminal(tmp_path, "start", "-c", str(config), "-q")
    assert code == 0, screen[-2000:]
    assert "ETA" not in screen and "rounds · elapsed" not in screen
    assert wait_gone(tmp_path) == []

"""examples/fault-injection.yaml is for trying: it runs as documented, quickly, and really shows faults.

Two rounds of it through the real CLI (embedded store, local platform): they must finish well inside the
minute the whole example is meant to take, with injected failures retried and nothing waiting on a hung
client — the aggregator has its own cluster, so a hung client cannot hold it up.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from test_fl_e2e import wait_gone

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "fault-injection.yaml"


def test_the_example_is_quick_and_shows_faults(tmp_path: Path) -> None:
    spec = yaml.safe_load(EXAMPLE.read_text())
    fl = spec["scenarios"]["federated_learning"]
    assert fl["resilience"]["round_deadline_s"] and fl["server"]["cluster"] == "steady"
    assert not spec["providers"]["local"]["steady"].get("faults")

    t0 = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "fedkeeper.cli", "start", "-c", str(EXAMPLE), "--rounds", "2",
                             "-q"], cwd=tmp_path, capture_output=True, text=True, timeout=180,
                            env={**os.environ, "COLUMNS": "120"})
    seconds = time.monotonic() - t0
    assert result.returncode == 0, result.stderr
    assert seconds < 45, f"two rounds of the example took {seconds:.0f} s"

    folder = next((tmp_path / "Logs").iterdir())
    summary = json.loads((folder / "summary.json").read_text())
    assert (summary["status"], summary["reason"]) == ("completed", "all 2 rounds completed")
    with open(folder / "activations.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    injected = Counter(r["injected"] for r in rows if r["function"] == "fl_client")
    assert injected["failure"] + injected["timeout"] + injected["crash"] > 0, injected
    assert summary["activations"]["retries"] > 0
    aggregations = [r for r in rows if r["function"] == "fl_server_aggregator"]
    assert {r["cluster"] for r in aggregations} == {"steady"} and {r["state"] for r in aggregations} == {"succeeded"}
    assert max(float(r["duration_s"]) for r in aggregations) < 10
    assert wait_gone(tmp_path) == []

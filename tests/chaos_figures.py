"""Count what a test session did to runs: the figures of docs/reliability.md ("Chaos tests and figures").

    .venv-test/bin/python -m pytest -p no:cacheprovider --basetemp=DIR \
        --hypothesis-show-statistics tests/test_chaos_*.py ...        # with FK_CHAOS_FIGURES=DIR/chaos.jsonl
    .venv-test/bin/python tests/chaos_figures.py DIR

Every run a test made — in process or through the CLI — left its Logs/<run>/ folder under the session's base
temporary directory (pytest keeps it; `...current` links are not followed, so nothing counts twice). From those
folders: runs, sessions (`run_started` + `run_resumed` events), runs resumed, activations (final records, one per
activation id), faults the local platform injected (the `injected` column), failures, throttling, and updates
rejected or ignored (`update_rejected`, `update_ignored` events). Faults injected at the HTTP fakes, signals, store
kills and the audits come from the chaos tests' own lines (`chaos_support.record`, FK_CHAOS_FIGURES).
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

FINAL = ("succeeded", "failed", "timed_out", "lost", "throttled", "abandoned")


def run_folders(root: Path) -> list[Path]:
    """Logs/<run> folders under root, symbolic links not followed."""
    found = []
    for here, dirs, files in os.walk(root, followlinks=False):
        if "events.jsonl" in files and Path(here).parent.name == "Logs":
            found.append(Path(here))
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(here, d))]
    return sorted(found)


def count_logs(root: Path) -> Counter[str]:
    out: Counter[str] = Counter()
    for folder in run_folders(root):
        events = []
        for line in (folder / "events.jsonl").read_text(errors="replace").splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                continue  # a line a killed process left half-written
        names = Counter(e.get("event") for e in events)
        sessions = names["run_started"] + names["run_resumed"]
        if not sessions:
            continue  # a synthetic folder, not a run
        out["runs"] += 1
        out["sessions"] += sessions
        out["runs resumed"] += sessions > 1
        out["runs completed"] += (folder / "summary.json").exists() and \
            json.loads((folder / "summary.json").read_text()).get("status") == "completed"
        out["updates rejected"] += names["update_rejected"]
        out["updates ignored"] += names["update_ignored"]
        last: dict[str, dict[str, str]] = {}
        if (folder / "activations.csv").exists():
            with open(folder / "activations.csv", newline="") as handle:
                for row in csv.DictReader(handle):
                    if row.get("state") in FINAL:
                        last[row["activation_id"]] = row
        out["activations"] += len(last)
        for row in last.values():
            out[f"state {row['state']}"] += 1
            if row.get("injected") in ("failure", "timeout", "crash"):
                out["local faults injected"] += 1
    return out


def count_chaos(path: Path) -> dict[str, int]:
    """Sums over the chaos tests' lines: each line is one run that passed the audit (a failed audit fails the
    test before it records anything)."""
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []
    out: Counter[str] = Counter()
    for line in lines:
        out["runs audited (store against Logs/)"] += 1
        out["audited activations"] += line.get("activations", 0)
        if line["test"] in ("platform_errors", "function_faults"):
            out[f"faults injected ({line['test']})"] += line.get("faults", 0)
        out["signals sent"] += line.get("signals", 0)
        out["store servers killed"] += line["test"] == "store_killed"
        out["orphan updates (never aggregated)"] += line.get("orphans", 0)
    return dict(out)


def main() -> None:
    root = Path(sys.argv[1])
    chaos = Path(sys.argv[2]) if len(sys.argv) > 2 else root / "chaos.jsonl"
    for key, value in sorted(count_logs(root).items()):
        print(f"{key:40} {value}")
    for key, value in sorted(count_chaos(chaos).items()):
        print(f"{key:40} {value}")


if __name__ == "__main__":
    main()

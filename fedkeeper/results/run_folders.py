"""Reading `Logs/<run_id>/` back, without the store (docs/contracts.md, "Logs/<run_id>/").

A results folder can be copied elsewhere and inspected there, so everything `report` and `logs` show comes
from these files. A run in progress has no `summary.json` yet and may end in a half-written line; a resumed
run appends to the same files, so a round or an activation can appear twice (the last record wins).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fedkeeper.errors import ResultsFailure, UsageProblem
from fedkeeper.results import counts
from fedkeeper.results.runlog import ACTIVATION_COLUMNS, ROUND_COLUMNS

RUN_FILES = ("events.jsonl", "rounds.csv", "activations.csv", "summary.json")
LATEST = "latest"
START_EVENTS = ("run_started", "run_resumed")
#: the status an end event implies when summary.json is missing (run_failed also ends a run whose quorum was lost:
#: its event and summary.json say status "quorum_lost")
END_STATUS = {"run_finished": "completed", "run_failed": "failed", "run_interrupted": "interrupted",
              "run_stopped": "stopped"}
LIFECYCLE_EVENTS = (*START_EVENTS, *END_STATUS)

#: columns of rounds.csv / activations.csv that are whole numbers (the others numeric ones are floats)
_INT_COLUMNS = {"round", "selected", "succeeded", "failed", "timed_out", "lost", "retries", "rejected",
                "aggregated", "throttled", "abandoned", "attempt", "memory_mb", "client_id", "level", "part"}
_FLOAT_COLUMNS = {"accuracy", "loss", "invoke_s", "slowest_client_s", "aggregate_s", "round_s",
                  "start", "end", "duration_s", "epsilon", "clip_norm", "cost"}


class RunNotFound(UsageProblem, LookupError):
    """A run id (or `latest`) that names no run folder under the logs directory."""

    def __init__(self, run: str, logs_dir: Path, known: list[str]) -> None:
        hint = f"; runs there: {', '.join(known[-5:])}" if known else "; it holds no runs"
        super().__init__(f"no run {run!r} under {logs_dir}{hint}")
        self.run, self.logs_dir = run, logs_dir


class RunFileError(ResultsFailure, ValueError):
    """A run file that cannot be read as its format says (names the file and the line)."""


def parse_cell(column: str, text: str | None) -> Any:
    """One CSV cell back to a Python value: '' → None, numbers → int/float, cold → bool."""
    if text is None or text == "":
        return None
    if column == "cold":
        return {"true": True, "false": False}.get(text.lower())
    if column in _INT_COLUMNS:
        try:
            return int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                return text  # a client id that is not a number: keep it as written
            return int(value) if value.is_integer() else value
    if column in _FLOAT_COLUMNS:
        try:
            value = float(text)
        except ValueError:
            return None
        return value if math.isfinite(value) else None
    return text


def read_csv(path: Path, columns: list[str]) -> list[dict[str, Any]]:
    """Rows of a run CSV as dicts of parsed values; missing file → []."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]  # a live run is writing the last row: leave it for the next read
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if reader.fieldnames is None:
        return []
    if "round" not in reader.fieldnames:
        raise RunFileError(f"{path}: header lacks the column 'round' (is this a FedKeeper run file?)")
    return [{c: parse_cell(c, row.get(c)) for c in columns} for row in reader if row.get("round") not in (None, "")]


def read_events(path: Path) -> Iterator[dict[str, Any]]:
    """Events of events.jsonl in order; a half-written or garbled line is skipped, not fatal."""
    if not path.exists():
        return
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(event, dict):
                yield event


@dataclass
class RunFolder:
    """Everything one run folder holds, parsed."""

    run_id: str
    path: Path
    rounds: list[dict[str, Any]] = field(default_factory=list)
    activations: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] | None = None
    config: dict[str, Any] | None = None
    started_ts: float | None = None
    last_event_ts: float | None = None
    lifecycle: str | None = None
    failure: str | None = None
    reason: str | None = None
    run_started: dict[str, Any] = field(default_factory=dict)
    #: (start, end, end event) per orchestrator session (`counts.sessions`)
    sessions: list[tuple[float, float, str | None]] = field(default_factory=list)
    redeploys: int = 0

    @property
    def wall_s(self) -> float | None:
        """Wall time of all sessions (`counts.wall_s`); None while running. summary.json's own figure when it
        says it counts every session (`sessions`) or the run had one session: older summaries count only the
        last one, so a resumed run of an older version is added up from its events instead."""
        if self.status == "running":
            return None
        summary = self.summary or {}
        if summary.get("wall_s") is not None and ("sessions" in summary or len(self.sessions) <= 1):
            return float(summary["wall_s"])
        if not self.sessions:
            return None
        return round(sum(end - start for start, end, _ in self.sessions), 3)

    @property
    def status(self) -> str:
        """running while the last lifecycle event is a (re)start — a resumed run still has the summary.json of
        its interruption; otherwise summary.json's status (completed / failed / interrupted / stopped), else the one the
        last lifecycle event implies. A run killed without a trace also shows as running until resumed."""
        if self.lifecycle in START_EVENTS:
            return "running"
        if self.summary and self.summary.get("status"):
            return str(self.summary["status"])
        return END_STATUS.get(self.lifecycle or "", "running")

    @property
    def experiment(self) -> str | None:
        return (self.summary or {}).get("experiment") or self.run_started.get("experiment") or \
            (self.config or {}).get("experiment")

    @property
    def optimizer(self) -> str | None:
        """scenarios.federated_learning.model_params.optim of the config as run."""
        return _dig(self.config, "scenarios", "federated_learning", "model_params", "optim")

    def setting(self, *keys: str) -> Any:
        return _dig(self.config, *keys)


def _dig(node: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def is_run_folder(path: Path) -> bool:
    return path.is_dir() and any((path / name).exists() for name in RUN_FILES)


def list_runs(logs_dir: Path) -> list[Path]:
    """Run folders under the logs directory, oldest first (by `run_activity`)."""
    if not logs_dir.is_dir():
        return []
    return sorted((p for p in logs_dir.iterdir() if is_run_folder(p)), key=run_activity)


def run_activity(path: Path) -> tuple[float, float, str]:
    """Sort key for `latest`: newest summary/events mtime, then the run_started time, then the name."""
    mtimes = [(path / n).stat().st_mtime for n in ("summary.json", "events.jsonl") if (path / n).exists()]
    started = 0.0
    for event in read_events(path / "events.jsonl"):  # run_started is the first event of a run
        if event.get("event") == "run_started":
            started = float(event.get("ts") or 0.0)
        break
    return (max(mtimes) if mtimes else 0.0, started, path.name)


def resolve_run(logs_dir: Path, run: str) -> Path:
    """A run id, `latest`, or a path to a run folder → the folder."""
    if run == LATEST:
        runs = list_runs(logs_dir)
        if not runs:
            raise RunNotFound(run, logs_dir, [])
        return runs[-1]
    candidate = logs_dir / run
    if is_run_folder(candidate):
        return candidate
    direct = Path(run)
    if is_run_folder(direct):
        return direct
    raise RunNotFound(run, logs_dir, [p.name for p in list_runs(logs_dir)])


def resolve_runs(logs_dir: Path, runs: list[str] | tuple[str, ...]) -> list[Path]:
    """Several run arguments, in the order given, each folder once."""
    out: list[Path] = []
    for run in runs or (LATEST,):
        path = resolve_run(logs_dir, run)
        if path.resolve() not in {p.resolve() for p in out}:
            out.append(path)
    return out


def _last_per_key(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Keep the last row per key (a resumed run may repeat one), in first-seen order; rows without the key stay."""
    index: dict[Any, int] = {}
    out: list[dict[str, Any]] = []
    for row in rows:
        k = row.get(key)
        if k is None:
            out.append(row)
        elif k in index:
            out[index[k]] = row
        else:
            index[k] = len(out)
            out.append(row)
    return out


def read_rounds(path: Path) -> list[dict[str, Any]]:
    """rounds.csv of a run folder: one row per round (the last record of a round wins), in round order."""
    rows = [r for r in read_csv(path / "rounds.csv", ROUND_COLUMNS) if isinstance(r["round"], int)]
    rounds = sorted(_last_per_key(rows, "round"), key=lambda r: r["round"])
    for row in rounds:  # rows of older versions have no `aggregated` column: it follows from the ones they have
        row["aggregated"] = counts.aggregated_of(row)
    return rounds


def read_activations(path: Path) -> list[dict[str, Any]]:
    """activations.csv of a run folder: one row per activation (the last record of one wins)."""
    return _last_per_key(read_csv(path / "activations.csv", ACTIVATION_COLUMNS), "activation_id")


def load_run(path: Path) -> RunFolder:
    """Read one run folder (any file may be missing: a run that just started has only a few)."""
    rounds = read_rounds(path)
    activations = read_activations(path)
    summary = None
    if (path / "summary.json").exists():
        try:
            summary = json.loads((path / "summary.json").read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise RunFileError(f"{path / 'summary.json'}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    config = None
    if (path / "config.yaml").exists():
        try:
            loaded = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise RunFileError(f"{path / 'config.yaml'}: not valid YAML ({exc})") from None
        config = loaded if isinstance(loaded, dict) else None
    run = RunFolder(run_id=(summary or {}).get("run_id") or path.name, path=path, rounds=rounds,
                    activations=activations, summary=summary, config=config)
    events = list(read_events(path / "events.jsonl"))
    run.sessions = counts.sessions(events)
    run.redeploys = counts.count_redeploys(events)
    for event in events:
        kind = event.get("event")
        ts = event.get("ts")
        if isinstance(ts, (int, float)):
            run.last_event_ts = float(ts)
        if kind == "run_started":
            run.run_started = event
            if run.started_ts is None and isinstance(ts, (int, float)):
                run.started_ts = float(ts)
        if kind in LIFECYCLE_EVENTS:
            run.lifecycle = kind
            run.failure = (str(event.get("error") or "") or None) if kind == "run_failed" else None
            run.reason = (str(event.get("reason") or "") or None) if kind in END_STATUS else None
    return run

"""The runs a workdir holds, in the store and in ``Logs/`` side by side, and removing them from both.

A run may be in only one of the two: ``Logs/`` copied from elsewhere, a folder deleted by hand, a store shared by
several workdirs. Each entry says what each side knows (status, rounds, started, bytes); ``prune_plan`` picks the
runs beyond the newest N of each experiment.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedkeeper.results.run_folders import is_run_folder, list_runs, load_run
from fedkeeper.store.locks import Holder
from fedkeeper.store.runs import StoreUsage, live_holder


def folder_bytes(path: Path) -> int:
    """Bytes of every file under ``path`` (0 when it does not exist)."""
    if not path.is_dir():
        return 0
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


@dataclass
class RunEntry:
    """One run as the store and Logs/ know it (``store`` / ``logs`` None: not on that side)."""

    run_id: str
    store: dict[str, Any] | None = None
    logs: dict[str, Any] | None = None
    holder: Holder | None = field(default=None, repr=False)

    @property
    def experiment(self) -> str | None:
        return (self.store or {}).get("experiment") or (self.logs or {}).get("experiment")

    @property
    def started(self) -> float:
        for side in (self.store, self.logs):
            value = (side or {}).get("started")
            if isinstance(value, (int, float)):
                return float(value)
        return 0.0

    @property
    def status(self) -> str | None:
        return (self.store or {}).get("status") or (self.logs or {}).get("status")

    @property
    def live(self) -> bool:
        return self.holder is not None

    def as_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "experiment": self.experiment, "status": self.status,
                "started": self.started or None, "live": self.live,
                "holder": self.holder.describe() if self.holder else None, "store": self.store, "logs": self.logs}


def _store_side(store: Any, run: dict[str, Any]) -> dict[str, Any]:
    usage: StoreUsage = store.run_usage(str(run["_id"]))
    return {"experiment": run.get("experiment"), "status": run.get("status"),
            "rounds": int(run.get("last_completed_round") or 0), "rounds_planned": run.get("rounds"),
            "started": run.get("started"), "finished": run.get("finished"),
            "accuracy": run.get("last_accuracy"), "config_digest": run.get("config_digest"), **usage.as_dict()}


def _logs_side(path: Path) -> dict[str, Any]:
    folder = load_run(path)
    final = (folder.summary or {}).get("final") or {}
    return {"path": str(path), "experiment": folder.experiment, "status": folder.status,
            "rounds": len(folder.rounds), "started": folder.started_ts, "accuracy": final.get("accuracy"),
            "bytes": folder_bytes(path)}


def inventory(store: Any | None, logs_dir: Path, *, only: set[str] | None = None) -> list[RunEntry]:
    """Every run of the store (when given) and of ``logs_dir``, oldest first (``only``: just these ids)."""
    entries: dict[str, RunEntry] = {}
    if store is not None:
        for run in store.list_runs():
            run_id = str(run["_id"])
            if only is None or run_id in only:
                entries[run_id] = RunEntry(run_id, store=_store_side(store, run),
                                           holder=live_holder(store, run_id))
    for path in list_runs(logs_dir):
        if only is None or path.name in only:
            entries.setdefault(path.name, RunEntry(path.name)).logs = _logs_side(path)
    return sorted(entries.values(), key=lambda e: (e.started, e.run_id))


def prune_plan(entries: list[RunEntry], keep: int) -> list[RunEntry]:
    """The runs beyond the newest ``keep`` of each experiment (by start time), oldest first."""
    if keep < 0:
        raise ValueError("keep must be >= 0")
    by_experiment: dict[str | None, list[RunEntry]] = {}
    for entry in entries:
        by_experiment.setdefault(entry.experiment, []).append(entry)
    drop: list[RunEntry] = []
    for runs in by_experiment.values():
        newest_first = sorted(runs, key=lambda e: (e.started, e.run_id), reverse=True)
        drop.extend(newest_first[keep:])
    return sorted(drop, key=lambda e: (e.started, e.run_id))


@dataclass(frozen=True)
class Removal:
    """What deleting one run freed on each side."""

    run_id: str
    store: StoreUsage
    logs_bytes: int
    logs_files: int

    @property
    def bytes(self) -> int:
        return self.store.bytes + self.logs_bytes

    def as_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "bytes": self.bytes, "store": self.store.as_dict(),
                "logs": {"bytes": self.logs_bytes, "files": self.logs_files}}


def remove_run(store: Any | None, logs_dir: Path, run_id: str) -> Removal:
    """Delete the run's documents and blobs from the store and its folder under ``logs_dir``. The caller decides
    about live runs (``RunEntry.live``) first."""
    freed = store.purge_run(run_id) if store is not None else StoreUsage()
    folder = logs_dir / run_id
    size, files = 0, 0
    if is_run_folder(folder) and folder.resolve().parent == logs_dir.resolve():
        size = folder_bytes(folder)
        files = sum(1 for p in folder.rglob("*") if p.is_file())
        shutil.rmtree(folder)
    return Removal(run_id, freed, size, files)

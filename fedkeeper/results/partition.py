"""Logs/<run>/partition.json: which labels each client trains on, and its table for `fedkeeper report --partition`.

The aggregator computes the partition summary in round 0 (`runtime.tasks.partition.summary`, the code the clients
cut their shards with) and keeps it in model 0's metrics; the orchestrator copies it here, so the report needs no
store and no task.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from fedkeeper.results.run_folders import RunFileError

FILE = "partition.json"


def write(runlog: Any, summary: Mapping[str, Any] | None) -> Path | None:
    """Write the summary once (a resumed run keeps the first); None when the model has none."""
    if not isinstance(summary, Mapping) or (runlog.dir / FILE).exists():
        return None
    return runlog.write_json(FILE, dict(summary))


def read(folder: Path) -> dict[str, Any]:
    path = folder / FILE
    if not path.exists():
        raise RunFileError(f"{path}: no partition recorded for this run (runs before FedKeeper recorded it, or "
                           "round 0 has not finished)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        clients, classes = data["clients"], data["classes"]
        if not isinstance(clients, list) or not isinstance(classes, list):
            raise TypeError("clients and classes must be lists")
    except (ValueError, KeyError, TypeError) as exc:
        raise RunFileError(f"{path}: not a partition summary ({exc})") from None
    return data


def with_stats(data: Mapping[str, Any]) -> dict[str, Any]:
    """The summary plus, per client, the share of its majority label and the number of labels it holds."""
    out = dict(data)
    rows = []
    for row in data["clients"]:
        hist = [int(v) for v in row.get("histogram") or []]
        size = int(row.get("size") or 0)
        rows.append({**row, "labels_present": sum(1 for v in hist if v),
                     "majority_share": (max(hist) / size) if size and hist else None})
    out["clients"] = rows
    sizes = [int(r.get("size") or 0) for r in rows]
    out["sizes"] = {"min": min(sizes, default=0), "max": max(sizes, default=0),
                    "mean": (sum(sizes) / len(sizes)) if sizes else 0.0}
    return out


def render(run_id: str, data: Mapping[str, Any], console: Console) -> None:
    params = ", ".join(f"{k} {v}" for k, v in (data.get("params") or {}).items())
    sizes = data["sizes"]
    console.print(f"[bold]{run_id}[/] · partition {data.get('scheme')}{f' ({params})' if params else ''} · "
                  f"{len(data['clients'])} clients · seed {data.get('seed')} · shard sizes "
                  f"{sizes['min']}–{sizes['max']} (mean {sizes['mean']:.1f})", soft_wrap=True)
    table = Table(title="examples per label and client", title_justify="left", box=box.SIMPLE_HEAD,
                  padding=(0, 1, 0, 0), pad_edge=False, show_edge=False)
    table.add_column("client", justify="right")
    table.add_column("size", justify="right")
    for label in data["classes"]:
        table.add_column(str(label), justify="right")
    table.add_column("labels", justify="right")
    table.add_column("top", justify="right")
    for row in data["clients"]:
        share = row.get("majority_share")
        table.add_row(str(row["client_id"]), str(row["size"]),
                      *[str(v) if v else "[dim]·[/]" for v in row.get("histogram") or []],
                      str(row["labels_present"]), "–" if share is None else f"{share:.0%}")
    console.print(table)


def write_csv(data: Mapping[str, Any], handle: Any) -> None:
    import csv

    writer = csv.writer(handle)
    writer.writerow(["client_id", "size", *[f"label_{c}" for c in data["classes"]]])
    for row in data["clients"]:
        writer.writerow([row["client_id"], row["size"], *(row.get("histogram") or [])])

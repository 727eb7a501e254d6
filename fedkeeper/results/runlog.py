"""`Logs/<run_id>/` writers; every line goes through `fedkeeper.secrets.Redactor`.

Files are appended to and flushed as events happen, so a killed run leaves a readable record and a resumed
run continues the same files. Activation rows come in the tracker's batches (`activations`), written once the
batch's store records are: a row never names an activation the store does not record in that state. Column
sets are fixed here (docs/contracts.md) because `report.py` reads them back without the store.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TextIO

import yaml

from fedkeeper.secrets import RedactingFilter, RedactingStream, Redactor  # noqa: F401

#: rounds.csv; the counts are defined in `fedkeeper.results.counts`. Columns are only ever added at the end, and a
#: resumed run appends to an older file under that file's own header (a column it lacks is left out)
ROUND_COLUMNS = ["round", "selected", "succeeded", "failed", "timed_out", "lost", "retries", "rejected",
                 "accuracy", "loss", "invoke_s", "slowest_client_s", "aggregate_s", "round_s",
                 "aggregated", "throttled", "abandoned",
                 "epsilon", "clip_norm",  # differential privacy (docs/privacy.md): ε after the round, C used in it
                 "cost"]  # USD of the round's activations at the config's prices (docs/scheduling.md)
ACTIVATION_COLUMNS = ["round", "client_id", "cluster", "platform", "function", "activation_id",
                      "platform_activation_id", "attempt", "state", "cold", "start", "end", "duration_s",
                      "memory_mb", "injected", "error",
                      "level", "part"]  # tree aggregation nodes (docs/aggregation.md); empty for other rows

#: values written as they are, checked by exact type first: most cells of most rows are one of these
_PLAIN = frozenset({str, int, type(None)})
#: activations.csv columns whose values recur row after row (a few cluster names, states, functions): their
#: redaction is remembered (`Redactor.repeated`) instead of done again for each of a thousand rows a round
_REPEATED = frozenset({"client_id", "cluster", "platform", "function", "state", "injected", "part"})
#: what `json.dumps(record, default=str)` makes, without building an encoder per line
_ENCODE = json.JSONEncoder(default=str).encode


def _jsonable(value: Any) -> Any:
    if type(value) in _PLAIN:  # a str or int subclass (an enum) goes on to the checks below, as before
        return value
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if hasattr(value, "value") and not isinstance(value, (str, int, float, bool)):  # enums
        return value.value
    return value


class RunLog:
    """The files of one run. Thread-safe: activations may be recorded from several threads."""

    def __init__(self, logs_dir: Path | str, run_id: str, redactor: Redactor) -> None:
        self.run_id = run_id
        self.dir = Path(logs_dir) / run_id
        self.dir.mkdir(parents=True, exist_ok=True)
        self.redact = redactor
        self._lock = threading.Lock()
        self._events = open(self.dir / "events.jsonl", "a", encoding="utf-8")
        self._rounds = self._csv("rounds.csv", ROUND_COLUMNS)
        self._activations = self._csv("activations.csv", ACTIVATION_COLUMNS)
        self.logger = logging.getLogger(f"fedkeeper.run.{run_id}")
        self.logger.setLevel(logging.DEBUG)
        self.logger.propagate = True
        self._handler = logging.FileHandler(self.dir / "fedkeeper.log", encoding="utf-8")
        self._handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s"))
        self._handler.addFilter(RedactingFilter(redactor))
        self.logger.addHandler(self._handler)

    def _csv(self, name: str, columns: list[str]) -> tuple[TextIO, csv.DictWriter[str]]:
        path = self.dir / name
        new = not path.exists() or path.stat().st_size == 0
        if not new:  # a resumed run: keep writing the columns the file's header names (older versions had fewer)
            with open(path, encoding="utf-8", newline="") as existing:
                header = next(csv.reader(existing), None)
            if header and "round" in header:
                columns = header
        handle = open(path, "a", encoding="utf-8", newline="")
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        if new:
            writer.writeheader()
            handle.flush()
        return handle, writer

    def _event_line(self, event: str, ts: float | None, fields: Mapping[str, Any]) -> str:
        record = {"ts": round(time.time() if ts is None else ts, 6), "run_id": self.run_id, "event": event}
        record.update({k: _jsonable(v) for k, v in fields.items()})
        return self.redact(json.dumps(record, default=str)) + "\n"

    def event(self, event: str, *, ts: float | None = None, **fields: Any) -> None:
        """One line of events.jsonl; `ts` when the time must equal one recorded elsewhere (the summary's end)."""
        line = self._event_line(event, ts, fields)
        with self._lock:
            self._events.write(line)
            self._events.flush()

    def activation(self, row: Mapping[str, Any]) -> None:
        """One activation reached a final state (or was re-invoked): activations.csv and events.jsonl."""
        self.activations([row])

    def activations(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Several activations' rows at once (the tracker's batch, written after its store records): one write
        and one flush per file instead of two flushes per row, each row still its own line in both files."""
        rows = list(rows)
        if not rows:
            return
        fields = self._activations[1].fieldnames  # the file's own header (a resumed older file may have fewer)
        cells, lines = [], []
        for row in rows:
            cell, record = self._activation_row(row)
            cells.append([cell.get(k, "") for k in fields])
            lines.append(self.redact(_ENCODE(record)) + "\n")
        with self._lock:
            handle, writer = self._activations
            writer.writer.writerows(cells)  # the DictWriter's own csv writer: the same line from the same cells
            handle.flush()
            self._events.write("".join(lines))
            self._events.flush()

    def _activation_row(self, row: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """One row's activations.csv cells (`_cell`) and its events.jsonl record (`_event_line`), in one pass over
        its values: the common cell types are told apart by exact type first, a thousand rows a round."""
        cell: dict[str, Any] = {}
        record: dict[str, Any] = {"ts": round(time.time(), 6), "run_id": self.run_id, "event": "activation"}
        repeated = getattr(self.redact, "repeated", self.redact)  # a plain callable redacts every value
        for k in ACTIVATION_COLUMNS:
            value = row.get(k)
            kind = type(value)
            if value is None:
                cell[k], record[k] = "", None
            elif kind is int:
                cell[k] = record[k] = value
            elif kind is str:
                record[k] = value
                text = value if len(value) <= 500 and "\n" not in value else value.replace("\n", " ")[:500]
                cell[k] = repeated(text) if k in _REPEATED else self.redact(text)
            elif kind is float and value - value == 0.0:  # finite (NaN and ±inf go the general way: empty, null)
                record[k] = value
                cell[k] = f"{value:.6g}" if abs(value) < 1e6 else f"{value:.3f}"
            elif kind is bool:
                record[k], cell[k] = value, "true" if value else "false"
            else:
                record[k], cell[k] = _jsonable(value), self._cell(value)
        return cell, record

    def round(self, row: Mapping[str, Any]) -> None:
        clean = {k: self._cell(row.get(k)) for k in self._rounds[1].fieldnames}
        with self._lock:
            handle, writer = self._rounds
            writer.writerow(clean)
            handle.flush()
        self.event("round_finished", **{k: row.get(k) for k in ROUND_COLUMNS})

    def drop_rounds_after(self, last_completed: int) -> list[int]:
        """Keep only the rows of rounds the store records as completed; returns the rounds dropped.

        A session killed between writing a round's row and recording the round as completed in the store leaves
        a row for a round that the next session runs again; without this, rounds.csv would hold that round twice.
        The file is rewritten whole and swapped in atomically, so a kill here leaves the old or the new file."""
        with self._lock:
            handle, writer = self._rounds
            handle.flush()
            path = self.dir / "rounds.csv"
            with open(path, encoding="utf-8", newline="") as existing:
                rows = list(csv.DictReader(existing))
            keep, dropped = [], []
            for row in rows:
                try:
                    number = int(row.get("round") or "")
                except ValueError:
                    number = None
                if number is not None and number <= last_completed:
                    keep.append(row)
                else:
                    dropped.append(number if number is not None else -1)
            if not dropped:
                return []
            tmp = path.with_suffix(".csv.tmp")
            with open(tmp, "w", encoding="utf-8", newline="") as out:
                rewrite = csv.DictWriter(out, fieldnames=writer.fieldnames, extrasaction="ignore")
                rewrite.writeheader()
                rewrite.writerows(keep)
            handle.close()
            os.replace(tmp, path)
            new_handle = open(path, "a", encoding="utf-8", newline="")
            self._rounds = (new_handle, csv.DictWriter(new_handle, fieldnames=writer.fieldnames,
                                                       extrasaction="ignore"))
        return dropped

    def _cell(self, value: Any) -> Any:
        value = _jsonable(value)
        if value is None:
            return ""
        if type(value) is int:
            return value
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, float):
            return f"{value:.6g}" if abs(value) < 1e6 else f"{value:.3f}"
        if isinstance(value, str):
            return self.redact(value.replace("\n", " ")[:500])
        return value

    def write_json(self, name: str, data: Mapping[str, Any]) -> Path:
        path = self.dir / name
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(self.redact(json.dumps(data, indent=2, default=str, sort_keys=False)) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return path

    def write_config(self, redacted_config: Mapping[str, Any]) -> Path:
        path = self.dir / "config.yaml"
        path.write_text(self.redact(yaml.safe_dump(dict(redacted_config), sort_keys=False)), encoding="utf-8")
        return path

    def close(self) -> None:
        with self._lock:
            for handle in (self._events, self._rounds[0], self._activations[0]):
                if not handle.closed:
                    handle.close()
        self.logger.removeHandler(self._handler)
        self._handler.close()

    def __enter__(self) -> "RunLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

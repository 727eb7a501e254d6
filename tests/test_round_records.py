"""A sync round reads its activation records once, at its start: what the tracker writes afterwards it keeps
(`Tracker.mirror`), so the round's issued updates, counts and cost come from those records without reading the
round's thousand client records back. The rows must still count what the store holds."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pymongo
import pytest

from fedkeeper.results import counts
from fedkeeper.store.repository import Store
from round_support import experiment_yaml, start_in_process


def test_a_sync_round_reads_its_records_once_and_counts_what_the_store_holds(
        nx_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[tuple[Any, Any, int]] = []  # (round, state filter, records returned) of each round read
    original = Store.find_activations

    def counted(self: Store, run_id: str, round: int | None = None, state: Any = None) -> list[dict[str, Any]]:
        found = original(self, run_id, round=round, state=state)
        if round is not None:
            reads.append((round, state, len(found)))
        return found

    monkeypatch.setattr(Store, "find_activations", counted)
    db = f"t_{uuid.uuid4().hex[:12]}"
    # a failing cluster: retried attempts, failed records and their counts in the rows
    text = experiment_yaml(nx_server, db=db, clusters={"lab": {"concurrency": 3},
                                                       "bad": {"faults": {"failure_rate": 0.5, "seed": 3}}},
                           placement={"lab": 4, "bad": 2}, rounds=2, per_round=6,
                           resilience={"max_attempts": 4, "min_fraction": 0.5})
    client: pymongo.MongoClient = pymongo.MongoClient(nx_server, serverSelectionTimeoutMS=5000)
    try:
        run = start_in_process(tmp_path, text, client)
        assert run.summary["status"] == "completed"
        # one read per round, at its start, before any of its clients ran (nothing of the round stored yet)
        assert reads == [(1, None, 0), (2, None, 0)]
        rows = run.rounds()
        assert len(rows) == 2
        for row in rows:
            stored = run.store_activations(int(row["round"]))
            expected = counts.round_counts(stored, selected=6, aggregated=int(row["aggregated"]),
                                           rejected=int(row["rejected"]))
            assert {k: int(row[k]) for k in expected} == expected
        assert sum(int(r["failed"]) for r in rows) > 0  # the failing cluster did fail: retries were counted
    finally:
        client.drop_database(db)
        client.close()

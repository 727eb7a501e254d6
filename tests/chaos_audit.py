"""The audit every chaos test ends with: a run's store against its Logs/ folder, counted by hand.

After faults, kills and resumes, a run must still say exactly what happened:

- no activation left `invoked` (a completed run has an outcome for every call it made), and the store's
  records and `activations.csv` hold the same activations in the same final states (the last row of each);
- `rounds.csv` has one row per completed round (no round recorded twice), and its counts, summary.json's
  `totals` and `activations` equal a recount from the store (`test_run_counts.recount`: plain code over the raw
  records, not `fedkeeper.results.counts`);
- nothing lost, nothing counted twice: every round's global model was built from distinct clients, each the
  update of exactly one `succeeded` client activation of that round, stored under that activation's key; and
  without over-selection every client whose activation succeeded is in the model or among the rejected.

`Audit` keeps the figures docs/reliability.md quotes (activations, retries, orphan updates: documents written by
a call whose answer never reached the orchestrator, which are never aggregated).
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedkeeper.runtime.blobstore import update_key
from test_run_counts import STATES, recount

CLIENT = "fl_client"


@dataclass(frozen=True)
class Audit:
    """What one audited run did."""

    activations: int  # activation records in a final state (every invocation made)
    retries: int
    failures: int  # failed + timed_out + lost records
    throttled: int
    aggregated: int  # updates the run's models were built from
    rejected: int
    orphans: int  # update documents of an activation not recorded as succeeded (never aggregated)
    repeated_rows: int  # activations.csv rows that repeat an activation's final state (see audit_run)


def _csv(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def audit_run(db: Any, folder: Path, *, overselect: bool = False) -> Audit:
    """Check a finished run (its Logs/<run> folder and its store database); raise AssertionError on the first
    inconsistency, else return its figures."""
    summary = json.loads((folder / "summary.json").read_text())
    run_id = summary["run_id"]
    assert folder.name == run_id
    records = list(db["activations"].find({"run_id": run_id}))
    in_flight = [r["_id"] for r in records if r["state"] == "invoked"]
    if summary["status"] == "completed":
        assert in_flight == [], f"records still in flight after a completed run: {in_flight}"
    final = [r for r in records if r["state"] in STATES]

    # the store and activations.csv: the same activations, in the same final states. A row may repeat: a session
    # whose store died after the row was written could not record the state in the store, and the next session
    # records it again (`Tracker.settle_stored`); every count takes the last row of an activation.
    rows = _csv(folder / "activations.csv")
    last_row = {row["activation_id"]: row["state"] for row in rows}
    assert {str(r["_id"]): r["state"] for r in final} == last_row, "store records differ from activations.csv"
    repeated = len(rows) - len(last_row)

    # counts: summary.json = a recount from the store = a recount from activations.csv
    by_hand = recount(final)
    assert recount(rows) == by_hand
    for key, value in by_hand.items():
        assert summary["activations"][key] == value, (key, summary["activations"][key], value)

    rounds = _csv(folder / "rounds.csv")
    done = int(summary["rounds_completed"])
    assert [int(r["round"]) for r in rounds] == list(range(1, done + 1)), "a round recorded twice or missing"
    totals: Counter[str] = Counter()
    aggregated = rejected = orphans = 0
    seen: set[tuple[int, int, str]] = set()  # (round, client, activation) of every aggregated update
    for row in rounds:
        r = int(row["round"])
        clients = [x for x in final if x["round"] == r and x["function"] == CLIENT]
        mine = recount(clients)
        stale = "updates" in ((db["models"].find_one({"_id": f"{run_id}:{r}"}, {"blob": 0}) or {}).get("metrics")
                              or {})
        for key in (*STATES, "retries"):  # stale modes: calls still running when the row was written end later
            assert int(row[key]) <= mine[key] if stale else int(row[key]) == mine[key], (r, key, row[key], mine[key])
        for key in ("selected", "aggregated", "rejected", *STATES, "retries"):
            totals[key] += int(row[key])

        model = db["models"].find_one({"_id": f"{run_id}:{r}"}, {"blob": 0})
        assert model is not None, f"round {r} is completed but its model is not in the store"
        used = list(model["metrics"]["clients"])
        refused = [int(x["client_id"]) for x in model["metrics"].get("rejected") or []]
        assert len(used) == len(set(used)) == model["num_updates"] == int(row["aggregated"]), (r, used)
        assert len(refused) == int(row["rejected"]) and not set(used) & set(refused), (r, used, refused)
        succeeded = Counter(x["client_id"] for x in clients if x["state"] == "succeeded")
        twice = [c for c, n in succeeded.items() if n > 1]
        assert twice == [], f"round {r}: clients whose activation succeeded twice: {twice}"
        docs = {d["_id"]: d for d in db["updates"].find({"run_id": run_id, "round": r}, {"blob": 0})}
        listed = model["metrics"].get("updates")
        if listed is not None:  # stale round modes (docs/scheduling.md): updates of earlier rounds too
            assert sorted(int(u["client_id"]) for u in listed) == sorted(used), (r, listed, used)
            for u in listed:
                key = (int(u["round"]), int(u["client_id"]), str(u["activation_id"]))
                assert key not in seen, f"round {r}: update {key} aggregated twice"
                seen.add(key)
                assert int(u["round"]) <= r and int(u["staleness"]) == r - int(u["round"]), (r, u)
                ok = [x for x in final if str(x["_id"]) == key[2] and x["state"] == "succeeded"
                      and x["round"] == key[0] and x["client_id"] == key[1] and x["function"] == CLIENT]
                assert len(ok) == 1, f"round {r}: aggregated update {key} is no succeeded activation's"
                doc = db["updates"].find_one({"_id": update_key(run_id, key[0], key[1], key[2])}, {"blob": 0})
                assert doc is not None and doc.get("sha256"), f"round {r}: the update {key} is not in the store"
            aggregated += len(used)
            rejected += len(refused)
            continue
        for client in used:
            ok = [x for x in clients if x["client_id"] == client and x["state"] == "succeeded"]
            assert len(ok) == 1, f"round {r}: aggregated client {client} has {len(ok)} succeeded activations"
            doc = docs.get(update_key(run_id, r, client, str(ok[0]["_id"])))
            assert doc is not None and doc.get("sha256"), \
                f"round {r}: the update of client {client}'s succeeded activation is not in the store"
        if not overselect:
            assert set(succeeded) == set(used) | set(refused), \
                f"round {r}: succeeded {sorted(succeeded)} but aggregated {used} and rejected {refused}"
        recorded_ok = {str(x["_id"]) for x in clients if x["state"] == "succeeded"}
        orphans += sum(d.get("activation_id") not in recorded_ok for d in docs.values())
        aggregated += len(used)
        rejected += len(refused)
    for key, value in totals.items():
        assert summary["totals"][key] == value, (key, summary["totals"][key], value)
    if summary["status"] == "completed":
        last = db["models"].find_one({"_id": f"{run_id}:{done}"}, {"blob": 0})
        assert last is not None and last["sha256"] == summary["model_sha256"]
    failures = sum(by_hand[s] for s in ("failed", "timed_out", "lost"))
    return Audit(by_hand["total"], by_hand["retries"], failures, by_hand["throttled"], aggregated, rejected, orphans,
                 repeated)

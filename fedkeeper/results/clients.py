"""`report RUN --clients`: per-client statistics of one run, the view an FL server's dashboard gives.

Per client: rounds it was selected for (`round_started` events), rounds its update went into the global model,
its `fl_client` activations (failed / timed out / lost, cold starts, mean and p95 duration of the successful
ones) and the examples it contributed (the sum of `num_examples` of its aggregated updates).

Which updates were aggregated comes from the `updates_aggregated` events; a run written before that event existed
has it reconstructed from activations.csv and events.jsonl the way the orchestrator picks (clients whose
activation succeeded, by rank, up to num_clients_per_round, minus `update_rejected`). Example counts come from the
store's update documents when the store can be asked, else from the `updates_aggregated` events; `sources` says
which was used, and a run with neither shows them as unknown.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TextIO

from fedkeeper.results import counts as C
from fedkeeper.results.run_folders import RunFolder, read_events
from fedkeeper.results.stats import percentile

#: a round's update documents (`BlobStore.list_updates`), or None to read Logs/ only
UpdateDocs = Callable[[int], list[dict[str, Any]]]
CSV_COLUMNS = ["client_id", "selected", "aggregated", "activations", "succeeded", "failed", "timed_out", "lost",
               "cold_starts", "duration_mean_s", "duration_p95_s", "examples"]


def _client(value: Any) -> int | str | None:
    if isinstance(value, bool) or value in (None, "", "server"):
        return None
    if isinstance(value, int):
        return value
    try:
        return int(str(value))
    except ValueError:
        return str(value)


def _last_per_round(events: Iterable[Mapping[str, Any]], kind: str) -> dict[int, Mapping[str, Any]]:
    """The last event of a kind per round (a resumed round emits round_started again)."""
    out: dict[int, Mapping[str, Any]] = {}
    for event in events:
        if event.get("event") == kind and isinstance(event.get("round"), int):
            out[event["round"]] = event
    return out


def _per_client_per_round(entries: Any) -> list[Any]:
    return [_client(c) for c in entries if _client(c) is not None] if isinstance(entries, list) else []


def _reconstructed(run: RunFolder, events: list[dict[str, Any]], started: Mapping[int, Mapping[str, Any]],
                   client_rows: list[dict[str, Any]]) -> dict[int, dict[Any, dict[str, Any]]]:
    """{round: {client: {}}} as the orchestrator picks, for runs without `updates_aggregated` events."""
    needed = run.setting("scenarios", "federated_learning", "clients_info", "num_clients_per_round")
    rejected: dict[int, set[Any]] = {}
    for event in events:
        if event.get("event") == "update_rejected" and isinstance(event.get("round"), int):
            rejected.setdefault(event["round"], set()).add(_client(event.get("client_id")))
    out: dict[int, dict[Any, dict[str, Any]]] = {}
    for row in run.rounds:
        r = row["round"]
        ok = {_client(a["client_id"]) for a in client_rows if a["round"] == r and a.get("state") == "succeeded"}
        ranked = _per_client_per_round(started.get(r, {}).get("ranked")) or sorted(ok, key=str)
        picked = [c for c in ranked if c in ok]
        if isinstance(needed, int) and needed > 0:
            picked = picked[:needed]
        out[r] = {c: {} for c in picked if c not in rejected.get(r, set())}
    return out


def client_stats(run: RunFolder, updates: UpdateDocs | None = None, *, store_note: str | None = None) -> dict[str, Any]:
    """The per-client report of one run (JSON-ready)."""
    events = list(read_events(run.path / "events.jsonl"))
    client_rows = [r for r in run.activations if r.get("function") == C.CLIENT_FUNCTION
                   and _client(r.get("client_id")) is not None]
    started = _last_per_round(events, "round_started")
    completed = {r["round"] for r in run.rounds}

    selected: dict[Any, set[int]] = {}
    for r, event in started.items():
        for c in _per_client_per_round(event.get("selected")):
            selected.setdefault(c, set()).add(r)
    if not started:  # no events: a client was selected in a round it was invoked in
        for row in client_rows:
            selected.setdefault(_client(row["client_id"]), set()).add(row["round"])

    logged = _last_per_round(events, "updates_aggregated")
    if logged:
        aggregated = {r: {_client(c.get("client_id")): dict(c) for c in (e.get("clients") or [])
                          if isinstance(c, Mapping) and _client(c.get("client_id")) is not None}
                      for r, e in logged.items() if r in completed}
        aggregated_source = "events.jsonl (updates_aggregated)"
    else:
        aggregated = _reconstructed(run, events, started, client_rows)
        aggregated_source = "reconstructed from activations.csv and events.jsonl (no updates_aggregated events)"

    examples: dict[tuple[int, Any], int | None] = {}
    examples_source: str | None = None
    if updates is not None:
        for r, clients in aggregated.items():
            docs = updates(r)
            for c, item in clients.items():
                mine = [d for d in docs if _client(d.get("client_id")) == c]
                if item.get("activation_id"):
                    mine = [d for d in mine if d.get("activation_id") == item["activation_id"]] or mine
                mine.sort(key=lambda d: int(d.get("attempt") or 0))
                # no update document: a client of a pack (docs/aggregation.md#client-packing), whose count the
                # event gives
                n = mine[-1].get("num_examples") if mine else item.get("num_examples")
                examples[(r, c)] = n if isinstance(n, int) and not isinstance(n, bool) else None
        examples_source = "store (update documents)"
    elif logged:
        for r, clients in aggregated.items():
            for c, item in clients.items():
                n = item.get("num_examples")
                examples[(r, c)] = n if isinstance(n, int) and not isinstance(n, bool) else None
        examples_source = "events.jsonl (updates_aggregated)"

    ids = set(selected) | {_client(r["client_id"]) for r in client_rows} | \
        {c for clients in aggregated.values() for c in clients}
    rows = []
    for c in sorted(ids, key=lambda x: (isinstance(x, str), x if isinstance(x, int) else 0, str(x))):
        mine = [r for r in client_rows if _client(r["client_id"]) == c]
        final = C.count_activations(mine)
        durations = [float(r["duration_s"]) for r in mine
                     if r.get("state") == "succeeded" and r.get("duration_s") is not None]
        rounds_in = sorted(r for r, clients in aggregated.items() if c in clients)
        contributed = [examples.get((r, c)) for r in rounds_in]
        rows.append({
            "client_id": c,
            "selected": len(selected.get(c, ())),
            "aggregated": len(rounds_in),
            "activations": final.total,
            "succeeded": final.succeeded, "failed": final.failed, "timed_out": final.timed_out, "lost": final.lost,
            "cold_starts": sum(r.get("cold") is True for r in mine),
            "duration_mean_s": sum(durations) / len(durations) if durations else None,
            "duration_p95_s": percentile(durations, 95),
            # unknown as a whole when any aggregated round's count is unknown: never a partial sum shown as total
            "examples": sum(contributed) if examples_source and None not in contributed else None,  # type: ignore[arg-type]
        })
    return {
        "run_id": run.run_id,
        "sources": {"aggregated": aggregated_source, "examples": examples_source or "unknown (no store, and "
                    "this run's events.jsonl has no updates_aggregated events)"},
        "store_note": store_note,
        "rounds": len(run.rounds),
        "clients": rows,
    }


def write_clients_csv(data: Mapping[str, Any], stream: TextIO) -> None:
    writer = csv.DictWriter(stream, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in data["clients"]:
        writer.writerow({k: "" if row.get(k) is None else format(row[k], ".12g") if isinstance(row[k], float)
                         else row[k] for k in CSV_COLUMNS})

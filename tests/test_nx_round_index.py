"""Why the embedded server indexes `round` on its own (`BlobStore.ensure_indexes(embedded=True)`): neosqlite, the
library nx-27017 runs, looks a field's single-field index up and writes its equality so that SQLite answers it from
that index, while with no index, or only the (run, round, client) one, a round's listing scans every row of every
earlier round (issue 18)."""

from __future__ import annotations

import neosqlite


def _plans(conn, coll, query: dict) -> list[str]:
    """SQLite's plan for each SELECT neosqlite runs to answer `find(query)`."""
    seen: list[str] = []
    conn.db.set_trace_callback(lambda sql: seen.append(sql) if sql.lstrip().upper().startswith("SELECT ID, _ID")
                               else None)
    try:
        list(coll.find(query, {"blob": 0}))
    finally:
        conn.db.set_trace_callback(None)
    assert seen, "neosqlite ran no SELECT for the query (it filtered in Python)"
    return [" / ".join(row[-1] for row in conn.db.execute(f"EXPLAIN QUERY PLAN {sql}").fetchall()) for sql in seen]


def _updates(conn):
    updates = conn["updates"]
    updates.insert_many([{"_id": f"run:{r}:{c}", "run_id": "run", "round": r, "client_id": c}
                         for r in range(1, 4) for c in range(5)])
    return updates


def test_a_rounds_listing_is_answered_from_the_round_index() -> None:
    conn = neosqlite.Connection(":memory:")
    updates = _updates(conn)
    updates.create_index([("round", 1)], name="round")
    plans = _plans(conn, updates, {"run_id": "run", "round": 2})
    assert all(plan.startswith("SEARCH updates USING INDEX idx_updates_round") for plan in plans), plans
    assert sorted(d["_id"] for d in updates.find({"run_id": "run", "round": 2})) == [f"run:2:{c}" for c in range(5)]


def test_the_compound_index_leaves_a_rounds_listing_scanning_every_row() -> None:
    conn = neosqlite.Connection(":memory:")
    updates = _updates(conn)
    updates.create_index([("run_id", 1), ("round", 1), ("client_id", 1)], name="run_round_client")
    plans = _plans(conn, updates, {"run_id": "run", "round": 2})
    assert all(plan.startswith("SCAN updates") for plan in plans), plans

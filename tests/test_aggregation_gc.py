"""Garbage collection off the aggregation's critical path, and the aggregator's read-ahead (issue 18).

- the aggregator with ``gc: false`` prunes nothing; the orchestrator's background collector
  (``scenarios/rounds/collect.py``) then leaves the store exactly as the pruning aggregator did, and the models'
  bits do not depend on who prunes;
- the collector runs requests in order, one at a time, folds the queued ones into the newest, survives a failure
  and waits for what is queued when the run ends;
- the aggregator's read-ahead of the next chunk of update documents gives the same bits as reading one update at
  a time, and never holds more than two chunks.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest

from fedkeeper.runtime import admission, blobstore
from fedkeeper.runtime import weights as W
from fedkeeper.scenarios.rounds.collect import Collector

from test_functions_fl import DIGITS, MLP, aggregator, client  # the handlers, loaded once from functions/

TRAIN = {"optim": "adam", "lr": 0.01, "batch_size": 10, "local_epochs": 1, "mu": 0.0, "l2": 0.0}
CLIENTS = 6


def _run(db: Any, run_id: str, rounds: int, *, gc: bool | None, keep_models: int = 2,
         collector: Collector | None = None, after_round: Any = None) -> list[str]:
    """``rounds`` rounds of every client through the handlers; the models' digests."""
    base = {"run_id": run_id, "seed": 5, "model": MLP, "data": DIGITS, "keep_models": keep_models}
    shas = [aggregator.handle({**base, "mode": "init", "round": 0}, db=db)["model_sha256"]]
    for rnd in range(1, rounds + 1):
        acks = [client.handle({"run_id": run_id, "round": rnd, "client_id": c, "num_clients": CLIENTS, "seed": 5,
                               "model": MLP, "train": TRAIN, "data": DIGITS, "activation_id": f"a{rnd}-{c}",
                               "attempt": 1}, db=db) for c in range(CLIENTS)]
        payload = {**base, "mode": "aggregate", "round": rnd, "num_clients": CLIENTS,
                   "updates": [{k: a[k] for k in ("client_id", "activation_id", "attempt", "sha256")} for a in acks]}
        if gc is not None:
            payload["gc"] = gc
        result = aggregator.handle(payload, db=db)
        assert result["num_updates"] == CLIENTS and not result["already_done"]
        shas.append(result["model_sha256"])
        if after_round is not None:
            after_round(rnd)
        if collector is not None:
            collector.collect(rnd, keep_models, rnd)
    return shas


def _blobs(db: Any, collection: str, run_id: str) -> set[Any]:
    key = "round" if collection == "models" else "_id"
    return {d[key] for d in db[collection].find({"run_id": run_id, "blob": {"$ne": None}}, {key: 1})}


def test_background_collection_leaves_the_store_as_the_pruning_aggregator_did(nx_db: Any) -> None:
    pruned_by_aggregator = _run(nx_db, "agg", 3, gc=None)

    def nothing_pruned_yet(rnd: int) -> None:  # gc: false, and the (held) collector has not run
        assert _blobs(nx_db, "models", "bg") == set(range(rnd + 1))
        assert len(_blobs(nx_db, "updates", "bg")) == CLIENTS * rnd

    collector = Collector(blobstore.BlobStore(nx_db), "bg", batch=4)  # 4: several writes per round
    gate = threading.Event()
    work = collector._work
    collector._work = lambda: (gate.wait(30), work())[1]  # type: ignore[method-assign]
    assert _run(nx_db, "bg", 3, gc=False, collector=collector, after_round=nothing_pruned_yet) == pruned_by_aggregator
    gate.set()
    collector.close()
    assert collector.errors == []
    assert [d["round"] for d in collector.done] == [3]  # rounds 1 and 2, still queued, were covered by round 3
    assert collector.done[0]["updates"] == 3 * CLIENTS and collector.done[0]["models"] == 2
    assert _blobs(nx_db, "models", "bg") == _blobs(nx_db, "models", "agg") == {2, 3}
    assert _blobs(nx_db, "updates", "bg") == _blobs(nx_db, "updates", "agg") == set()
    assert nx_db["updates"].count_documents({"run_id": "bg", "pruned": {"$exists": True}}) == 3 * CLIENTS
    with pytest.raises(ValueError, match="params.gc must be true or false"):
        aggregator.handle({"mode": "aggregate", "run_id": "bg", "round": 4, "seed": 5, "model": MLP, "data": DIGITS,
                           "keep_models": 2, "num_clients": CLIENTS, "updates": [], "gc": "no"}, db=nx_db)


class _Blobs:
    """A stand-in for BlobStore's two collection calls: records them, can block or fail."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.after: list[int | None] = []
        self.release = threading.Event()
        self.release.set()
        self.fail_next = False

    def gc_models(self, run_id: str, keep_last: int) -> int:
        self.release.wait(30)
        return 0

    def gc_updates(self, run_id: str, through_round: int, *, after_round: int | None = None, batch: int | None = None,
                   between: Any = None) -> int:
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("store gone")
        between()  # the collector's pause between two writes
        self.calls.append(("updates", through_round))
        self.after.append(after_round)
        return through_round


def test_collector_runs_in_order_folds_queued_requests_and_survives_a_failure() -> None:
    blobs = _Blobs()
    collector = Collector(blobs, "run")
    collector.collect(1, keep_models=0, through=1)  # keep_models 0: the run keeps everything
    collector.close()
    assert blobs.calls == []
    blobs.release.clear()  # the first request blocks; 2 and 3 queue behind it and fold into 3
    blobs.fail_next = True
    collector.collect(1, keep_models=3, through=1)
    collector.collect(2, keep_models=3, through=1)  # stale modes: through below the round
    collector.collect(3, keep_models=3, through=5)  # never beyond the round itself
    blobs.release.set()
    collector.close()
    assert blobs.calls == [("updates", 3)] and len(collector.errors) == 1 and "store gone" in collector.errors[0]
    collector.collect(4, keep_models=3, through=4)  # a closed collector starts again when asked
    deadline = time.monotonic() + 30
    while len(blobs.calls) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    collector.close()  # round 4 ran on its own (rounds 1-3 collected), then close's over every round
    assert blobs.calls == [("updates", 3), ("updates", 4), ("updates", 4)]
    assert blobs.after == [None, 0, None]


class _Spy:
    """A BlobStore that counts the update documents read ahead and not yet verified."""

    def __init__(self, store: blobstore.BlobStore, batched: bool) -> None:
        self.store, self.lock = store, threading.Lock()
        self.outstanding = self.peak = self.reads = 0
        if batched:
            self.find_updates = self._find_updates

    def _find_updates(self, run_id: str, wanted: Any) -> Any:
        wanted = list(wanted)
        with self.lock:
            self.outstanding += len(wanted)
            self.peak = max(self.peak, self.outstanding)
            self.reads += 1
        return self.store.find_updates(run_id, wanted)

    def find_update(self, *a: Any, **k: Any) -> Any:
        return self.store.find_update(*a, **k)

    def decode_update(self, *a: Any, **k: Any) -> Any:
        with self.lock:
            self.outstanding -= 1
        return self.store.decode_update(*a, **k)


def test_read_ahead_gives_the_bits_of_one_by_one_reads_and_holds_two_chunks(nx_db: Any,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    store = blobstore.BlobStore(nx_db)
    rng = np.random.default_rng(3)
    spec = {"w": ((16, 8), "float32"), "b": ((8,), "float32")}
    issued, shards = [], [50] * 40
    for c in range(40):
        weights = {k: rng.standard_normal(shape).astype(np.float32) for k, (shape, _) in spec.items()}
        if c == 17:
            weights["b"][3] = np.nan  # one bad update: rejected in either reading
        doc = store.write_update("ra", 1, c, weights, base_round=0, num_examples=int(rng.integers(1, 50)),
                                 activation_id=f"x{c}", attempt=1)
        issued.append(admission.Issued(c, f"x{c}", 1, doc["sha256"]))
    per_chunk = 3  # half the budget holds 3 updates: 14 chunks, each read while the one before is verified
    monkeypatch.setattr(admission, "READ_BATCH_BYTES", 2 * per_chunk * admission.max_blob_bytes(spec) + 1)
    ahead = _Spy(store, batched=True)
    one_by_one = _Spy(store, batched=False)
    got = admission.aggregate(issued, ahead, run_id="ra", round=1, expected=spec, shard_sizes=shards)
    want = admission.aggregate(issued, one_by_one, run_id="ra", round=1, expected=spec, shard_sizes=shards)
    assert ahead.reads == -(-40 // per_chunk) and 0 < ahead.peak <= 2 * per_chunk
    assert got.accepted == want.accepted and len(got.accepted) == 39
    assert [r["reason"] for r in got.rejected] == ["non_finite"] == [r["reason"] for r in want.rejected]
    for name in spec:
        assert got.weights[name].tobytes() == want.weights[name].tobytes()
    assert W.encode(got.weights) == W.encode(want.weights)


def test_resuming_an_aggregation_reads_only_the_rounds_aggregator_records(nx_db: Any) -> None:
    """`Tracker.resume` of aggregator jobs reads `find_server_activations`: the same attempt numbers and adoptions
    as from all the round's records, without its client records."""
    from fedkeeper.store.repository import Store
    from fedkeeper.tracker import attempt_bases, in_flight

    store = Store(nx_db, url="mongodb://127.0.0.1")
    for n, (client_id, attempt, state, part) in enumerate([(0, 1, "failed", None), (0, 2, "succeeded", None),
                                                           (None, 1, "failed", None), (None, 2, "invoked", None),
                                                           (None, 1, "succeeded", "l1-0"), (3, 5, "invoked", None)]):
        store.insert_activation({"_id": f"a{n}", "run_id": "run", "round": 2, "client_id": client_id, "part": part,
                                 "function": "fl_client" if client_id is not None else "fl_server_aggregator",
                                 "attempt": attempt, "state": state, "platform_activation_id": f"p{n}"})
    store.insert_activation({"_id": "other", "run_id": "run", "round": 3, "client_id": None, "attempt": 9,
                             "function": "fl_server_aggregator", "state": "failed"})
    every, server = store.find_activations("run", round=2), store.find_server_activations("run", 2)
    assert sorted(r["_id"] for r in server) == ["a2", "a3", "a4"]
    assert {w: a for w, a in attempt_bases(every).items() if not isinstance(w, int)} == attempt_bases(server)
    assert {k: r["_id"] for k, r in in_flight(every).items() if not isinstance(k[1], int)} == \
        {k: r["_id"] for k, r in in_flight(server).items()} == {(2, None, "fl_server_aggregator"): "a3"}


def _update_doc(run_id: str, rnd: int, client_id: int) -> dict[str, Any]:
    return {"_id": f"{run_id}:{rnd}:{client_id}:a", "run_id": run_id, "round": rnd, "client_id": client_id,
            "blob": b"\x00" * 64}


def _held(db: Any, run_id: str) -> list[tuple[int, int]]:
    return sorted((d["round"], d["client_id"]) for d in db["updates"].find({"run_id": run_id, "blob": {"$ne": None}}))


def test_collections_look_back_a_window_and_every_few_at_every_round_and_the_last_at_all(
        nx_db: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A collection reads only the rounds not collected yet and the WINDOW before them; a late update older than
    that (a straggler's) is pruned by the next collection over every round: every FULL_EVERY-th, and the run's
    last (close), which leaves the store as pruning every round each time would."""
    import fedkeeper.scenarios.rounds.collect as collect

    monkeypatch.setattr(collect, "WINDOW", 2)
    monkeypatch.setattr(collect, "FULL_EVERY", 4)
    run_id = "window"
    collector = Collector(blobstore.BlobStore(nx_db), run_id, pace=0.0)

    def collect_round(rnd: int) -> None:
        nx_db["updates"].insert_many([_update_doc(run_id, rnd, c) for c in range(3)])
        collector.collect(rnd, keep_models=1, through=rnd)
        deadline = time.monotonic() + 30
        while len(collector.done) < rnd and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(collector.done) == rnd and collector.errors == []

    for rnd in range(1, 4):
        collect_round(rnd)
    nx_db["updates"].insert_one(_update_doc(run_id, 1, 99))  # a straggler of round 1
    collect_round(4)  # rounds 2-4: round 3 was the last collected, and the window is 2
    assert _held(nx_db, run_id) == [(1, 99)]
    collect_round(5)  # the 5th: 1 over every round, then 3 that do not, then one that does again
    assert _held(nx_db, run_id) == []
    nx_db["updates"].insert_one(_update_doc(run_id, 5, 99))  # a straggler inside the next one's window
    collect_round(6)
    assert _held(nx_db, run_id) == []
    nx_db["updates"].insert_one(_update_doc(run_id, 2, 99))  # and one outside it
    collect_round(7)
    assert _held(nx_db, run_id) == [(2, 99)]
    assert [d["after_round"] for d in collector.done] == [None, 0, 0, 1, None, 3, 4]
    collector.close()  # the run's end: one more collection, over every round
    assert collector.done[-1]["after_round"] is None and len(collector.done) == 8
    assert _held(nx_db, run_id) == []
    assert nx_db["updates"].count_documents({"run_id": run_id}) == 7 * 3 + 3  # metadata stays


def test_a_failed_collection_makes_the_next_look_at_every_round() -> None:
    blobs = _Blobs()
    collector = Collector(blobs, "run")
    for rnd, fail in ((1, False), (2, False), (3, True), (4, False), (5, False)):
        blobs.fail_next = fail
        collector.collect(rnd, keep_models=3, through=rnd)
        deadline = time.monotonic() + 30
        while len(collector.done) + len(collector.errors) < rnd and time.monotonic() < deadline:
            time.sleep(0.01)
    collector.close()
    assert len(collector.errors) == 1
    assert blobs.after == [None, 0, None, 0, None]  # 1: the session's first; 4: after the failure; 5: close

"""Store contract, part 1: connection lifecycle, indexes, runs and activations, on every backend (store_backends.py).

Part 2 (test_store_blobs_contract.py) covers models and updates through ``Store.blobs``. The last test fails when
a public method of ``Store`` or of ``BlobStore`` is called by no contract test, so a new method cannot go untested.
"""

from __future__ import annotations

import ast
import enum
import inspect
from pathlib import Path

import numpy as np
import pytest
from pymongo.errors import DuplicateKeyError, InvalidOperation
from store_backends import Backend, backend, external_mongo, small_inline, store  # noqa: F401
from store_support import settings

from fedkeeper.runtime.blobstore import BlobStore
from fedkeeper.store import (
    ActivationConflict,
    ActivationMissing,
    Connection,
    RunMissing,
    Store,
    hosts_of,
    open_store,
)


class State(str, enum.Enum):  # the shape of providers.base.State
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


def act(client: str | None, attempt: int = 1, round: int = 1, **kw) -> dict:
    return {"run_id": "r1", "round": round, "client_id": client, "attempt": attempt, "state": State.PENDING, **kw}


# ------------------------------------------------------------------------------------------ lifecycle, indexes


def index_keys(coll) -> list[tuple[str, ...]]:
    return [tuple(k for k, _ in spec["key"]) for spec in coll.index_information().values()]


def test_connect_ping_and_close(backend: Backend) -> None:
    store = Store.connect(Connection(backend.url, {"serverSelectionTimeoutMS": 5000}), backend.db.name)
    try:
        assert store.db_name == backend.db.name and store.hosts == hosts_of(backend.url)
        store.ping()
        store.create_run({"_id": "r1", "experiment": "e"})
        assert backend.db.runs.find_one({"_id": "r1"})["experiment"] == "e"  # the same database
    finally:
        store.close()
    with pytest.raises(InvalidOperation):  # it owned its client
        store.ping()


def test_close_leaves_a_callers_client_open(store: Store) -> None:
    store.close()
    store.ping()


def test_open_store_connects_creates_indexes_and_closes(backend: Backend, tmp_path: Path) -> None:
    cfg = settings(url=backend.url, db=backend.db.name, keep_models=5)
    with open_store(cfg, workdir=tmp_path) as opened:
        assert opened.keep_models == 5 and opened.embedded is None and opened.hosts == hosts_of(backend.url)
        assert ("run_id", "round", "client_id", "attempt") in index_keys(backend.db.activations)
    with pytest.raises(InvalidOperation):
        opened.ping()
    assert not (tmp_path / ".fedkeeper").exists()  # no embedded server for a URL


def test_indexes_exist_are_idempotent_and_the_activation_key_is_unique(store: Store) -> None:
    store.ensure_indexes()
    store.blobs.ensure_indexes()
    assert ("run_id", "round", "client_id", "attempt") in index_keys(store.activations)
    assert ("run_id", "state") in index_keys(store.activations)
    assert ("experiment", "started") in index_keys(store.runs)
    assert ("run_id", "round") in index_keys(store.blobs.models)
    assert ("run_id", "round", "client_id") in index_keys(store.blobs.updates)
    store.activations.insert_one(act("c1", _id="a"))
    with pytest.raises(DuplicateKeyError):
        store.activations.insert_one(act("c1", _id="b"))


def test_the_embedded_servers_update_indexes_replace_an_old_one_and_listings_answer_the_same(store: Store) -> None:
    """The embedded server's choice (`BlobStore.ensure_indexes(embedded=True)`): an index on round alone on the
    updates; the (run, round, client) one an earlier version made goes, the other indexes stay, and listings
    answer the same, on every backend."""
    store.blobs.ensure_indexes()
    store.blobs.ensure_indexes(embedded=True)
    store.blobs.ensure_indexes(embedded=True)  # idempotent
    assert ("run_id", "round", "client_id") not in index_keys(store.blobs.updates)
    assert ("round",) in index_keys(store.blobs.updates)
    assert ("run_id", "round") in index_keys(store.blobs.models)
    store.blobs.updates.insert_many([{"_id": f"r1:{r}:{c}", "run_id": "r1", "round": r, "client_id": c}
                                     for r in (1, 2) for c in (2, 0, 1)]
                                    + [{"_id": "r2:1:0", "run_id": "r2", "round": 1, "client_id": 0}])
    assert [d["client_id"] for d in store.blobs.list_updates("r1", 1)] == [0, 1, 2]
    assert [d["_id"] for d in store.blobs.list_updates("r1", 2)] == ["r1:2:0", "r1:2:1", "r1:2:2"]


def test_open_store_on_the_embedded_server_indexes_round_for_its_planner(tmp_path: Path) -> None:
    with open_store(settings(), workdir=tmp_path) as opened:
        assert opened.embedded is not None
        assert ("run_id", "round", "client_id") not in index_keys(opened.blobs.updates)
        assert ("round",) in index_keys(opened.blobs.updates) and ("round",) in index_keys(opened.activations)
        assert ("run_id", "round", "client_id", "attempt") in index_keys(opened.activations)  # unique: kept


# ------------------------------------------------------------------------------------------------------- runs


def test_create_run_is_idempotent_and_validates_the_id(store: Store) -> None:
    first = store.create_run({"_id": "r1", "experiment": "exp", "seed": 1, "started": 100.0})
    assert first["duplicate"] is False and first["status"] == "running" and first["run_id"] == "r1"
    again = store.create_run({"_id": "r1", "experiment": "exp", "seed": 99})
    assert again["duplicate"] is True and again["seed"] == 1
    assert store.get_run("r1")["seed"] == 1 and store.get_run("nope") is None
    assert store.create_run({"run_id": "r2", "status": State.FAILED})["_id"] == "r2"
    assert store.get_run("r2")["status"] == "failed"
    for bad in ({"experiment": "exp"}, {"_id": "a:b"}, {"_id": ""}):
        with pytest.raises(ValueError):
            store.create_run(bad)


def test_update_run_sets_fields_and_returns_the_run(store: Store) -> None:
    store.create_run({"_id": "r1", "experiment": "exp", "updated": 1.0})
    updated = store.update_run("r1", status=State.SUCCEEDED, last_round=4, **{"final.accuracy": 0.9})
    assert updated["status"] == "succeeded" and updated["last_round"] == 4 and updated["final"] == {"accuracy": 0.9}
    assert updated["updated"] > 1.0
    assert store.get_run("r1")["last_round"] == 4
    with pytest.raises(RunMissing) as info:
        store.update_run("nope", status="failed")
    assert str(info.value) == "run nope does not exist" and isinstance(info.value, KeyError)


def test_list_runs_oldest_first_and_latest_run(store: Store) -> None:
    store.create_run({"_id": "r2", "experiment": "exp", "started": 200.0})
    store.create_run({"_id": "r1", "experiment": "exp", "started": 100.0})
    store.create_run({"_id": "r3", "experiment": "other", "started": 300.0})
    store.create_run({"_id": "r0", "experiment": "exp", "started": 200.0})  # a tie: ordered by id
    assert [r["_id"] for r in store.list_runs("exp")] == ["r1", "r0", "r2"]
    assert [r["_id"] for r in store.list_runs()] == ["r1", "r0", "r2", "r3"]
    assert store.list_runs("none") == []
    assert store.latest_run("exp")["_id"] == "r2" and store.latest_run("other")["_id"] == "r3"
    assert store.latest_run("none") is None


def test_delete_run_removes_its_activations_models_and_updates_only(small_inline: Store) -> None:
    w = {"w": np.ones(256, np.float32)}  # above 512 bytes: GridFS
    for run in ("r1", "keep"):
        small_inline.create_run({"_id": run, "experiment": "e"})
        small_inline.insert_activation({**act("c1"), "run_id": run})
        small_inline.blobs.write_model(run, 0, w, {})
        small_inline.blobs.write_update(run, 1, "c1", w, base_round=0, num_examples=3)
    assert small_inline.delete_run("r1") == 4
    assert small_inline.get_run("r1") is None and small_inline.find_activations("r1") == []
    assert small_inline.list_model_docs("r1") == [] and small_inline.blobs.list_updates("r1", 1) == []
    assert len(list(small_inline.db["fs.files"].find({}, {"_id": 1}))) == 2  # the other run's files
    assert small_inline.get_run("keep") is not None and len(small_inline.find_activations("keep")) == 1
    small_inline.blobs.read_model("keep", 0)
    assert small_inline.delete_run("r1") == 0


# ------------------------------------------------------------------------------------------------ activations


def test_insert_activation_is_idempotent_and_the_key_is_unique(store: Store) -> None:
    assert store.insert_activation(act("c1", _id="a-1")) == "a-1"
    assert store.insert_activation(act("c1", _id="a-1")) == "a-1"  # a retried insert
    with pytest.raises(ActivationConflict) as info:
        store.insert_activation(act("c1", _id="a-2"))  # same (run, round, client, attempt), another id
    assert "round 1 client c1 attempt 1" in str(info.value)
    generated = store.insert_activation(act("c1", attempt=2))
    assert len(generated) == 32
    store.insert_activation(act(None, _id="agg-1"))  # the aggregator has no client id
    assert store.insert_activation({"run_id": "r1", "round": 2, "_id": "bare"}) == "bare"
    docs = {d["_id"]: d for d in store.find_activations("r1")}
    assert set(docs) == {"a-1", generated, "agg-1", "bare"}
    assert docs["a-1"]["state"] == "pending" and docs["bare"]["client_id"] is None and docs["bare"]["attempt"] is None


def test_update_activation_and_find_activations(store: Store) -> None:
    for client, attempt, rnd in [("c2", 1, 1), ("c1", 2, 1), ("c1", 1, 1), ("c1", 1, 2)]:
        store.insert_activation(act(client, attempt, rnd, _id=f"{client}-{attempt}-{rnd}"))
    doc = store.update_activation("c1-1-1", state=State.FAILED, error="boom", end=12.5)
    assert doc["state"] == "failed" and doc["error"] == "boom" and doc["end"] == 12.5
    store.update_activation("c1-2-1", state=State.SUCCEEDED)
    order = [(d["round"], d["client_id"], d["attempt"]) for d in store.find_activations("r1")]
    assert order == [(1, "c1", 1), (1, "c1", 2), (1, "c2", 1), (2, "c1", 1)]
    assert [d["_id"] for d in store.find_activations("r1", round=1, state=State.FAILED)] == ["c1-1-1"]
    assert [d["_id"] for d in store.find_activations("r1", state="succeeded")] == ["c1-2-1"]
    assert len(store.find_activations("r1", state=[State.FAILED, State.SUCCEEDED])) == 2
    assert len(store.find_activations("r1", state={"pending"})) == 2
    assert store.find_activations("r1", round=3) == [] and store.find_activations("zz") == []
    with pytest.raises(ActivationMissing) as info:
        store.update_activation("nope", state="lost")
    assert str(info.value) == "activation nope does not exist"


def test_find_server_activations_reads_only_the_rounds_aggregator_records(store: Store) -> None:
    """What resuming an aggregation reads (`Tracker.resume`): the records without a client id, of one round."""
    for client, attempt, rnd in [("c1", 1, 1), (None, 2, 1), (None, 1, 1), ("c2", 1, 1), (None, 1, 2)]:
        store.insert_activation(act(client, attempt, rnd, _id=f"{client}-{attempt}-{rnd}"))
    assert [d["_id"] for d in store.find_server_activations("r1", 1)] == ["None-1-1", "None-2-1"]
    assert store.find_server_activations("r1", 3) == [] and store.find_server_activations("zz", 1) == []


def test_record_activations_inserts_then_updates_in_one_batch(store: Store) -> None:
    store.record_activations(
        inserts=[act("c1", _id="a1"), act("c2", _id="a2"), act(None, _id="agg"), act("c3")],
        updates=[("a1", {"state": State.SUCCEEDED, "end": 3.5}), ("a2", {"state": "failed", "error": "boom"}),
                 ("a1", {"cold": True})],  # applied in order, after the inserts
    )
    docs = {d["_id"]: d for d in store.find_activations("r1")}
    assert len(docs) == 4 and all(len(i) == 32 for i in docs if i not in ("a1", "a2", "agg"))
    assert (docs["a1"]["state"], docs["a1"]["end"], docs["a1"]["cold"]) == ("succeeded", 3.5, True)
    assert (docs["a2"]["state"], docs["a2"]["error"]) == ("failed", "boom")
    assert docs["agg"]["state"] == "pending"
    store.record_activations(updates=[("a2", {"state": State.SUCCEEDED}), ("unknown", {"state": "lost"})])
    assert [d["_id"] for d in store.find_activations("r1", state="succeeded")] == ["a1", "a2"]
    assert len(store.find_activations("r1")) == 4  # an update of an unknown id inserts nothing
    store.record_activations()  # nothing to write


def test_record_activations_retried_flush_is_a_no_op(store: Store) -> None:
    batch = [act("c1", _id="a1"), act("c2", _id="a2")]
    store.record_activations(batch, [("a1", {"state": State.SUCCEEDED})])
    store.record_activations(batch + [act("c3", _id="a3")])  # the same flush again (reply lost), plus a new one
    docs = {d["_id"]: d for d in store.find_activations("r1")}
    assert set(docs) == {"a1", "a2", "a3"}
    assert docs["a1"]["state"] == "succeeded"  # the repeated insert overwrote nothing


def test_record_activations_raises_on_a_second_activation_for_a_key(store: Store) -> None:
    store.record_activations([act("c1", _id="a1")])
    with pytest.raises(ActivationConflict) as info:
        store.record_activations([act("c2", _id="a2"), act("c1", _id="other")])
    assert "round 1 client c1 attempt 1" in str(info.value)
    assert [d["_id"] for d in store.find_activations("r1")] == ["a1", "a2"]  # unordered: the rest is written
    with pytest.raises(ActivationConflict):  # an id reused for another key
        store.record_activations([act("c9", _id="a1")])


# -------------------------------------------------------------------------------- models and gc (Store level)


def test_model_docs_and_collect_garbage(store: Store) -> None:
    store.create_run({"_id": "r1", "experiment": "e"})
    w = {"w": np.ones(4, np.float32)}
    for r in range(5):
        store.blobs.write_model("r1", r, w, {"accuracy": 0.1 * r})
        store.blobs.write_update("r1", r, "c1", w, base_round=r - 1, num_examples=3)
    assert store.get_model_doc("r1", 3)["metrics"] == {"accuracy": pytest.approx(0.3)}
    assert store.get_model_doc("r1", 9) is None and "blob" not in store.get_model_doc("r1", 0)
    # keep_models=2 keeps rounds 3 and 4; round 0 is protected; updates of rounds <= 2 were aggregated
    assert store.collect_garbage("r1", last_aggregated_round=2, protect=[0]) == {"models": 2, "updates": 3}
    docs = store.list_model_docs("r1")
    assert [d["round"] for d in docs] == [0, 1, 2, 3, 4] and all("blob" not in d for d in docs)
    assert [d["round"] for d in docs if not d.get("pruned")] == [0, 3, 4]
    assert store.collect_garbage("r1", last_aggregated_round=2, protect=[0]) == {"models": 0, "updates": 0}
    assert store.list_model_docs("nope") == []


# ---------------------------------------------------------------------------------------------------- locks


def holder(token: str, **kw) -> dict:
    return {"host": "lab-1", "pid": 4242, "process_start": 1.0e9, "token": token, **kw}


def test_acquire_lock_takes_a_free_lock_and_refuses_a_held_one(store: Store) -> None:
    assert store.get_lock("r1") is None
    mine = store.acquire_lock("r1", holder("a"), 15, now=1000.0)
    assert (mine["_id"], mine["token"], mine["host"], mine["pid"]) == ("r1", "a", "lab-1", 4242)
    assert (mine["acquired"], mine["expires"], mine["lease_s"]) == (1000.0, 1015.0, 15)
    stored = store.get_lock("r1")
    assert stored["token"] == "a" and stored["expires"] == 1015.0
    theirs = store.acquire_lock("r1", holder("b", pid=7), 15, now=1010.0)  # not lapsed: a's lock comes back
    assert theirs["token"] == "a" and theirs["expires"] == 1015.0
    again = store.acquire_lock("r1", holder("a"), 15, now=1012.0)  # its own holder may take it again
    assert again["token"] == "a" and again["expires"] == 1027.0
    assert store.acquire_lock("other", holder("b"), 15, now=1012.0)["token"] == "b"  # one lock per name


def test_a_lapsed_lock_or_one_taken_from_a_named_holder_changes_hands(store: Store) -> None:
    store.acquire_lock("r1", holder("a"), 15, now=1000.0)
    taken = store.acquire_lock("r1", holder("b", pid=7), 15, now=1015.0)  # expires <= now: lapsed
    assert (taken["token"], taken["pid"], taken["expires"]) == ("b", 7, 1030.0)
    assert store.renew_lock("r1", "a", 15, now=1016.0) is None  # a lost it
    assert store.acquire_lock("r1", holder("c"), 15, now=1016.0, take_from="a")["token"] == "b"  # a is not b
    assert store.acquire_lock("r1", holder("c"), 15, now=1016.0, take_from="b")["token"] == "c"


def test_renew_and_release_only_by_the_holder(store: Store) -> None:
    store.acquire_lock("r1", holder("a"), 15, now=1000.0)
    renewed = store.renew_lock("r1", "a", 15, now=1010.0)
    assert (renewed["renewed"], renewed["expires"], renewed["acquired"]) == (1010.0, 1025.0, 1000.0)
    assert store.acquire_lock("r1", holder("b"), 15, now=1020.0)["token"] == "a"  # renewed: still held
    assert store.renew_lock("r1", "b", 15) is None and store.renew_lock("nope", "a", 15) is None
    assert store.release_lock("r1", "b") is False and store.get_lock("r1")["token"] == "a"
    assert store.release_lock("r1", "a") is True and store.get_lock("r1") is None
    assert store.release_lock("r1", "a") is False
    assert store.acquire_lock("r1", holder("b"), 15)["token"] == "b"  # free again; now defaults to the clock


def test_of_many_contenders_exactly_one_gets_the_lock(backend: Backend) -> None:
    """Separate clients racing for one lock (the threads of two orchestrators): one winner, all agree on it."""
    import threading

    stores = [Store.connect(Connection(backend.url, {"serverSelectionTimeoutMS": 5000}), backend.db.name)
              for _ in range(6)]
    results: dict[str, str] = {}
    start = threading.Barrier(len(stores))

    def contend(i: int, s: Store) -> None:
        start.wait()
        results[f"t{i}"] = s.acquire_lock("race", holder(f"t{i}"), 30)["token"]

    threads = [threading.Thread(target=contend, args=(i, s)) for i, s in enumerate(stores)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        for s in stores:
            s.close()
    winners = set(results.values())
    assert len(results) == len(stores) and len(winners) == 1 and winners <= set(results)


# ------------------------------------------------------------------------------------- every method is covered

CONTRACT_MODULES = sorted(Path(__file__).parent.glob("test_store_*.py"))
STORE_NAMES = {"Store", "store", "small_inline", "opened"}  # what contract tests call Store objects


def public_methods(cls: type) -> set[str]:
    """Public callables of the class, inherited ones included (properties and attributes are not methods)."""
    def is_method(attr: object) -> bool:
        return callable(attr) or isinstance(attr, (classmethod, staticmethod))

    return {name for name in dir(cls) if not name.startswith("_") and is_method(inspect.getattr_static(cls, name))}


def called_in_tests() -> tuple[set[str], set[str]]:
    """(Store methods, BlobStore methods) that some test function of the suite calls directly."""
    on_store, on_blobs = set(), set()
    for path in CONTRACT_MODULES:
        for fn in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(fn, ast.FunctionDef) and fn.name.startswith("test_")):
                continue
            for node in ast.walk(fn):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                    continue
                receiver = node.func.value
                if isinstance(receiver, ast.Name) and receiver.id in STORE_NAMES:
                    on_store.add(node.func.attr)
                elif (isinstance(receiver, ast.Attribute) and receiver.attr == "blobs"
                      and isinstance(receiver.value, ast.Name) and receiver.value.id in STORE_NAMES):
                    on_blobs.add(node.func.attr)
    return on_store, on_blobs


def test_every_public_method_has_a_contract_test() -> None:
    assert len(CONTRACT_MODULES) >= 2
    on_store, on_blobs = called_in_tests()
    assert public_methods(Store) - on_store == set(), "Store methods no contract test calls"
    assert public_methods(BlobStore) - on_blobs == set(), "Store.blobs methods no contract test calls"
    assert {"create_run", "record_activations", "connect"} <= public_methods(Store)  # the scan sees the class

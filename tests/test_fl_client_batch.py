"""fl_client's `handle_batch` (a local worker runs the calls already waiting in its pipe together, issue 18): every
call gets what `handle` would have given it, the updates go to the store in one insert command, and one call's
error stays that call's."""

from __future__ import annotations

import numpy as np
import pytest
from pymongo import monitoring

from fedkeeper.runtime import blobstore, model
from fedkeeper.runtime import weights as W
from function_support import DIGITS_IID as DIGITS
from function_support import SMALL_MLP as MLP
from function_support import SMALL_TRAIN as TRAIN
from function_support import load_handler


@pytest.fixture
def client():
    return load_handler("fl_client", "fk_test_fl_client_batch")


def _params(run_id: str, cid: int, activation: str | None = None) -> dict:
    return {"run_id": run_id, "round": 1, "client_id": cid, "num_clients": 8, "seed": 3, "model": MLP,
            "train": TRAIN, "data": DIGITS, "activation_id": activation or f"act{cid}", "attempt": 1,
            "hash_alg": "xxh3_128"}


class _Inserts(monitoring.CommandListener):
    def __init__(self) -> None:
        self.counts: list[int] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "insert" and event.command.get("insert") == blobstore.UPDATES:
            self.counts.append(len(event.command.get("documents", [])))

    def succeeded(self, event) -> None:
        pass

    def failed(self, event) -> None:
        pass


def _stored(db, run_id: str) -> dict[int, tuple[str, int, bytes]]:
    return {d["client_id"]: (d["sha256"], d["num_examples"], bytes(d["blob"]["inline"]))
            for d in db[blobstore.UPDATES].find({"run_id": run_id})}


def test_a_batch_stores_what_single_calls_store_in_one_insert(client, nx_server) -> None:
    import pymongo

    listener = _Inserts()
    conn = pymongo.MongoClient(nx_server, directConnection=True, event_listeners=[listener])
    try:
        db = conn["fk_batch"]
        for run in ("single", "batch"):
            blobstore.BlobStore(db, hash_alg="xxh3_128").write_model(run, 0, model.build_model(MLP).init(1), {})
        singles = [client.handle(_params("single", c), db=db) for c in range(4)]
        listener.counts.clear()
        batch = client.handle_batch([_params("batch", c) for c in range(4)], db=db)
        assert listener.counts == [4]  # one command for the four updates
        assert [a["client_id"] for a in batch] == [0, 1, 2, 3] and all(a["ok"] for a in batch)
        for one, many in zip(singles, batch):
            assert {k: v for k, v in one.items() if k != "duration_s"} == {
                k: v for k, v in many.items() if k != "duration_s"}
        assert _stored(db, "single") == _stored(db, "batch")  # the same bits, client by client
        blobstore.BlobStore(db, hash_alg="xxh3_128").write_model("small", 0, model.build_model(MLP).init(1), {})
        client.BATCH_BYTES = 1  # every update is over it: each is stored as soon as it is trained
        listener.counts.clear()
        client.handle_batch([_params("small", c) for c in range(3)], db=db)
        assert listener.counts == [1, 1, 1] and _stored(db, "small") == {
            c: v for c, v in _stored(db, "single").items() if c < 3}
    finally:
        conn.close()


def test_one_calls_error_is_its_own_and_a_repeat_is_acknowledged(client, nx_db) -> None:
    blobstore.BlobStore(nx_db, hash_alg="xxh3_128").write_model("run", 0, model.build_model(MLP).init(1), {})
    first = client.handle(_params("run", 1), db=nx_db)
    bad = dict(_params("run", 2), client_id=99)  # not below num_clients
    foreign = dict(_params("run", 1), seed=4)  # the same key as client 1's stored update, other bits
    out = client.handle_batch([_params("run", 0), bad, _params("run", 1), foreign, {"warmup": True}], db=nx_db)
    assert out[0]["ok"] and out[0]["duplicate"] is False
    assert isinstance(out[1], ValueError) and "client_id 99" in str(out[1])
    assert out[2]["duplicate"] is True and out[2]["sha256"] == first["sha256"]  # a repeated delivery: its own
    assert isinstance(out[3], client.UpdateConflict)
    assert out[4]["warmup"] is True
    assert nx_db[blobstore.UPDATES].count_documents({}) == 2


def test_handle_raises_what_a_single_call_raised(client, nx_db) -> None:
    with pytest.raises(ValueError, match="params must be a JSON object"):
        client.handle([], db=nx_db)
    with pytest.raises(blobstore.ModelMissing):
        client.handle(_params("nothing", 0), db=nx_db)


def test_the_stored_update_is_a_valid_update(client, nx_db) -> None:
    blobstore.BlobStore(nx_db).write_model("run", 0, model.build_model(MLP).init(1), {})
    client.handle_batch([_params("run", c) for c in range(2)], db=nx_db)
    store = blobstore.BlobStore(nx_db)
    spec = W.spec_of(model.build_model(MLP).init(1))
    for c in range(2):
        weights, doc = store.read_update("run", 1, c, spec, activation_id=f"act{c}")
        assert all(np.all(np.isfinite(w)) for w in weights.values()) and doc["hash_alg"] == "xxh3_128"

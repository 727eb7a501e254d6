"""The per-process caches of a warm fl_client worker (issue 18): each one is hit while its input stays the same and
missed as soon as it changes (a new round's model, another run, another architecture, another data spec)."""

from __future__ import annotations

import numpy as np
import pytest

from fedkeeper.runtime import blobstore, data, model
from function_support import DIGITS_IID as DIGITS
from function_support import SMALL_MLP as MLP
from function_support import SMALL_TRAIN as TRAIN
from function_support import load_handler


@pytest.fixture
def client():
    """A fresh copy of the handler module: its caches start empty."""
    return load_handler("fl_client", "fk_test_fl_client_caches")


@pytest.fixture
def reads(monkeypatch):
    """(run_id, round) of every global model the handler reads from the store."""
    seen: list[tuple[str, int]] = []
    original = blobstore.BlobStore.read_model

    def counting(self, run_id, rnd, *args, **kw):
        seen.append((run_id, rnd))
        return original(self, run_id, rnd, *args, **kw)

    monkeypatch.setattr(blobstore.BlobStore, "read_model", counting)
    return seen


def _params(run_id: str, rnd: int, cid: int, arch=MLP) -> dict:
    return {"run_id": run_id, "round": rnd, "client_id": cid, "num_clients": 8, "seed": 3, "model": arch,
            "train": TRAIN, "data": DIGITS, "activation_id": f"a{rnd}x{cid}", "attempt": 1}


def _write_model(db, run_id: str, rnd: int, seed: int, arch=MLP) -> dict[str, np.ndarray]:
    weights = model.build_model(arch).init(seed)
    blobstore.BlobStore(db).write_model(run_id, rnd, weights, {})
    return weights


def test_global_model_is_read_once_per_round_and_again_for_a_new_round(client, reads, nx_db):
    _write_model(nx_db, "run", 0, seed=1)
    for cid in range(3):
        assert client.handle(_params("run", 1, cid), db=nx_db)["ok"]
    assert reads == [("run", 0)]  # three clients of round 1, one read

    _write_model(nx_db, "run", 1, seed=2)  # the next round's model: other weights
    first = client.handle(_params("run", 2, 0), db=nx_db)
    assert reads == [("run", 0), ("run", 1)]
    # trained from round 1's model, not from the cached round-0 weights: a fresh handler agrees bit for bit
    blobstore.BlobStore(nx_db).updates.delete_many({})
    client._MODEL_CACHE.clear()
    again = client.handle(_params("run", 2, 0), db=nx_db)
    assert again["sha256"] == first["sha256"]


def test_global_model_cache_misses_for_another_run_and_another_architecture(client, reads, nx_db):
    _write_model(nx_db, "one", 0, seed=1)
    _write_model(nx_db, "two", 0, seed=1)
    client.handle(_params("one", 1, 0), db=nx_db)
    client.handle(_params("two", 1, 0), db=nx_db)
    assert reads == [("one", 0), ("two", 0)]
    # same store, run and round, another architecture: read and validated again, never served from the cache
    wide = {**MLP, "hidden_size": 16}
    with pytest.raises(blobstore.CorruptModel):
        client.handle(_params("two", 1, 1, arch=wide), db=nx_db)
    assert reads[-1] == ("two", 0) and len(reads) == 3


def test_data_spec_is_parsed_once_per_distinct_data_and_follows_changes():
    data.clear_caches()
    params = {"dataset": "digits", "partition": "iid"}
    first = data.DataSpec.from_params(params, "params.data")
    assert data.DataSpec.from_params(dict(params), "params.data") is first  # an equal payload: the cached spec
    params["partition"] = "shards"  # another partition: another spec
    shards = data.DataSpec.from_params(params, "params.data")
    assert shards.partition == "shards" and shards is not first
    assert data.DataSpec.from_params({**params, "shards_per_client": 3}).shards_per_client == 3


def test_data_spec_cache_keeps_types_apart_and_never_keeps_a_refusal():
    data.clear_caches()
    assert data.DataSpec.from_params({"dataset": "digits", "allow_pickle": True}).allow_pickle is True
    # 1 == True in Python, but allow_pickle must be a boolean: the cached spec of `true` must not answer for `1`
    with pytest.raises(data.DataError, match="params.data.allow_pickle"):
        data.DataSpec.from_params({"dataset": "digits", "allow_pickle": 1}, "params.data")
    with pytest.raises(data.DataError, match="^data.alpha"):
        data.DataSpec.from_params({"dataset": "digits", "alpha": 0}, "data")  # refused again, under each path
    with pytest.raises(data.DataError, match="other.alpha"):
        data.DataSpec.from_params({"dataset": "digits", "alpha": 0}, "other")
    alpha_int = data.DataSpec.from_params({"dataset": "digits", "alpha": 1})
    assert data.DataSpec.from_params({"dataset": "digits", "alpha": 1.0}) == alpha_int  # both mean 1.0


def test_data_spec_with_unhashable_values_is_still_parsed():
    data.clear_caches()
    odd = {"dataset": "digits", "sha256": {}, "client_files": None, 1: "not a string key"}
    assert data.DataSpec.from_params(odd).dataset == "digits"  # mixed key types: no cache key, parsed each time

"""fl_client and fl_server_aggregator handlers, run in-process against the session's nx-27017 server."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from function_support import load_handler
from fedkeeper.runtime import admission, blobstore, data, model, weights as W


def _load(name: str):
    return load_handler(name, f"fk_test_{name}_handler")


client = _load("fl_client")
aggregator = _load("fl_server_aggregator")

MLP = {"model": "mlp", "input_size": 64, "hidden_size": 32, "output_size": 10}
TRAIN = {"optim": "adam", "lr": 0.01, "batch_size": 10, "local_epochs": 5, "mu": 0.0, "l2": 0.0}
DIGITS = {"dataset": "digits", "partition": "iid"}


@pytest.fixture
def db(nx_db):
    return nx_db  # a fresh database per test


def _client_params(run_id, rnd, cid, *, seed=42, num_clients=20, model_p=MLP, train=TRAIN, data_p=DIGITS):
    return {
        "run_id": run_id, "round": rnd, "client_id": cid, "num_clients": num_clients, "seed": seed,
        "model": model_p, "train": train, "data": data_p, "activation_id": f"act-{rnd}-{cid}", "attempt": 1,
    }  # fmt: skip


def _agg_params(mode, run_id, rnd, updates=None, *, seed=42, model_p=MLP, data_p=DIGITS, keep_models=0,
                num_clients=20):
    """`updates`: the issued activations to aggregate, as acknowledgements or (client id, activation id) pairs."""
    p = {"mode": mode, "run_id": run_id, "round": rnd, "seed": seed, "model": model_p, "data": data_p,
         "keep_models": keep_models}  # fmt: skip
    if updates is not None:
        p["updates"] = [_issued(u) for u in updates]
        p["num_clients"] = num_clients
    return p


def _issued(update) -> dict:
    if isinstance(update, dict):  # a client's acknowledgement: what the orchestrator saw
        return {k: update[k] for k in ("client_id", "activation_id", "attempt", "sha256")}
    cid, aid = update if isinstance(update, tuple) else (update, f"act-1-{update}")
    return {"client_id": cid, "activation_id": aid, "attempt": 1}


def _select(seed: int, rnd: int, total: int, per_round: int) -> list[int]:
    return sorted(np.random.default_rng([seed, rnd]).choice(total, per_round, replace=False).tolist())


def _run_sample_experiment(db, run_id: str, seed: int = 42, rounds: int = 20) -> list[dict]:
    """The sample config's experiment: 20 clients IID, 10 per round, mlp 64-32-10, adam 0.01, batch 10, 5 epochs."""
    results = [aggregator.handle(_agg_params("init", run_id, 0, seed=seed), db=db)]
    for rnd in range(1, rounds + 1):
        selected = _select(seed, rnd, 20, 10)
        acks = []
        for cid in reversed(selected):  # arrival order must not matter
            ack = client.handle(_client_params(run_id, rnd, cid, seed=seed), db=db)
            assert ack["ok"] and not ack["duplicate"]
            acks.append(ack)
        params = _agg_params("aggregate", run_id, rnd, acks, seed=seed, keep_models=3)
        results.append(aggregator.handle(params, db=db))
    return results


def _model_blob(db, run_id: str, rnd: int) -> bytes:
    return bytes(db["models"].find_one({"_id": f"{run_id}:{rnd}"})["blob"]["inline"])


def test_sample_experiment_reaches_095_and_is_bit_identical_twice(db):
    started = time.perf_counter()
    first = _run_sample_experiment(db, "run-a")
    second = _run_sample_experiment(db, "run-b")
    elapsed = time.perf_counter() - started
    final = first[-1]
    assert final["round"] == 20 and final["num_updates"] == 10 and final["rejected"] == []
    assert final["accuracy"] >= 0.95, [round(r["accuracy"], 3) for r in first]
    assert first[0]["accuracy"] < 0.3  # it really learned
    assert [r["model_sha256"] for r in first] == [r["model_sha256"] for r in second]
    assert _model_blob(db, "run-a", 20) == _model_blob(db, "run-b", 20)
    print(f"\nsample experiment: accuracy {final['accuracy']:.4f} after 20 rounds, two runs in {elapsed:.2f} s")


def test_a_different_seed_gives_a_different_model(db):
    a = _run_sample_experiment(db, "s1", seed=1, rounds=2)
    b = _run_sample_experiment(db, "s2", seed=2, rounds=2)
    assert a[-1]["model_sha256"] != b[-1]["model_sha256"]


def test_client_ack_is_small_and_the_update_is_stored(db):
    aggregator.handle(_agg_params("init", "r", 0), db=db)
    ack = client.handle(_client_params("r", 1, 3), db=db)
    assert set(ack) == {"ok", "client_id", "round", "num_examples", "train_loss", "train_accuracy", "duration_s",
                        "sha256", "activation_id", "attempt", "duplicate"}  # fmt: skip
    assert len(json.dumps(ack)) < 1000  # never weights
    assert ack["client_id"] == 3 and ack["round"] == 1 and ack["num_examples"] in (71, 72)
    assert ack["activation_id"] == "act-1-3" and ack["attempt"] == 1
    assert 0.0 <= ack["train_accuracy"] <= 1.0 and ack["train_loss"] > 0
    doc = db["updates"].find_one({"_id": "r:1:3:act-1-3"})  # keyed by the activation that wrote it
    assert doc["base_round"] == 0 and doc["activation_id"] == "act-1-3" and doc["sha256"] == ack["sha256"]
    assert doc["attempt"] == 1 and doc["client_id"] == 3 and doc["num_examples"] == ack["num_examples"]
    weights = W.decode(bytes(doc["blob"]["inline"]))
    assert {k: v.shape for k, v in weights.items()} == {"w1": (64, 32), "b1": (32,), "w2": (32, 10), "b2": (10,)}
    # Seeded from (seed, round, client): the same client in the same round of another run trains the same bits.
    aggregator.handle(_agg_params("init", "r2", 0), db=db)
    assert client.handle(_client_params("r2", 1, 3), db=db)["sha256"] == ack["sha256"]
    assert client.handle(_client_params("r2", 1, 4), db=db)["sha256"] != ack["sha256"]


def test_a_repeated_activation_keeps_its_update_and_a_retry_stores_its_own(db):
    aggregator.handle(_agg_params("init", "r", 0), db=db)
    first = client.handle(_client_params("r", 1, 0), db=db)
    again = client.handle(_client_params("r", 1, 0), db=db)  # the platform delivered the same activation twice
    assert again["duplicate"] is True and again["sha256"] == first["sha256"]
    assert again["activation_id"] == first["activation_id"] == "act-1-0"
    retry = client.handle({**_client_params("r", 1, 0), "attempt": 2, "activation_id": "act-1-0-b"}, db=db)
    assert retry["duplicate"] is False and retry["sha256"] == first["sha256"]  # seeded: the same bits
    assert retry["attempt"] == 2
    assert sorted(d["_id"] for d in db["updates"].find({}, {"_id": 1})) == ["r:1:0:act-1-0", "r:1:0:act-1-0-b"]


def test_a_forger_who_writes_first_cannot_take_or_hide_the_honest_update(db):
    """Under the old `run:round:client` key the first writer won; now a forger can only write under keys of its
    own choosing, and one that guessed an activation's key makes that activation fail (and be retried) instead
    of acknowledging an update it did not compute."""
    aggregator.handle(_agg_params("init", "r", 0), db=db)
    store = blobstore.BlobStore(db)
    junk = {k: np.full(s, 1e3, np.float32) for k, (s, _) in model.build_model(MLP).expected().items()}
    store.write_update("r", 1, 0, junk, base_round=0, num_examples=2**40)  # the old key, written before the round
    store.write_update("r", 1, 0, junk, base_round=0, num_examples=5, activation_id="act-1-0", attempt=1)
    with pytest.raises(client.UpdateConflict, match=r"another update under activation act-1-0 \(mismatch"):
        client.handle(_client_params("r", 1, 0), db=db)
    honest = client.handle({**_client_params("r", 1, 0), "activation_id": "act-1-0-b", "attempt": 2}, db=db)
    assert honest["duplicate"] is False
    res = aggregator.handle(_agg_params("aggregate", "r", 1, [honest]), db=db)
    assert res["num_updates"] == 1 and res["rejected"] == []
    # Handing the aggregator the forged activation gets it rejected: its blob is not the acknowledged one.
    ack_of_forger = {**honest, "activation_id": "act-1-0", "attempt": 1}
    db["models"].delete_one({"_id": "r:1"})  # aggregate round 1 again
    with pytest.raises(aggregator.NoValidUpdates, match=r"client 0: mismatch"):
        aggregator.handle(_agg_params("aggregate", "r", 1, [ack_of_forger]), db=db)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"client_id": 20}, "client_id 20 is not below params.num_clients 20"),
        ({"round": 0}, r"params.round must be >= 1"),
        ({"round": True}, r"params.round must be int"),
        ({"run_id": None}, r"params.run_id is required"),
        ({"seed": -1}, r"params.seed must be >= 0"),
        ({"train": {**TRAIN, "optim": "adagrad"}}, r"params.train.optim"),
        ({"model": {**MLP, "hidden_size": 0}}, r"params.model.hidden_size"),
        ({"data": {"dataset": "cifar"}}, r"params.data.dataset"),
    ],
)
def test_client_rejects_bad_params(db, change, match):
    with pytest.raises(ValueError, match=match):
        client.handle({**_client_params("r", 1, 0), **change}, db=db)


def test_client_errors_name_the_missing_or_mismatched_model(db):
    with pytest.raises(blobstore.ModelMissing, match="run nope round 0 does not exist"):
        client.handle(_client_params("nope", 1, 0), db=db)
    aggregator.handle(_agg_params("init", "r", 0), db=db)
    with pytest.raises(blobstore.CorruptModel, match="shape"):
        client.handle(_client_params("r", 1, 0, model_p={**MLP, "hidden_size": 16}), db=db)
    store = blobstore.BlobStore(db)  # another run in the same database
    narrow = model.build_model({**MLP, "input_size": 32})
    store.write_model("n", 0, narrow.init(0), {"accuracy": 0.0, "loss": 0.0})
    with pytest.raises(ValueError, match="64 features per sample, params.model needs 32"):
        client.handle(_client_params("n", 1, 0, model_p={**MLP, "input_size": 32}), db=db)


def test_handlers_connect_from_the_environment(monkeypatch):
    monkeypatch.delenv("FK_MONGO_URL", raising=False)
    with pytest.raises(blobstore.BlobStoreError, match="FK_MONGO_URL"):
        client.handle(_client_params("r", 1, 0))
    with pytest.raises(blobstore.BlobStoreError, match="FK_MONGO_URL"):
        aggregator.handle(_agg_params("init", "r", 0))


# ------------------------------------------------------------------------------------------------ aggregator


def _random_round(db, run_id: str, count: int, seed: int):
    """A round-0 model plus `count` random client updates for round 1 (activation `act-1-<client>`, attempt 1,
    num_examples within the client's shard); returns the (weights, n) per client id."""
    store = blobstore.BlobStore(db)
    mdl = model.build_model(MLP)
    store.write_model(run_id, 0, mdl.init(0), {"accuracy": 0.0, "loss": 0.0})
    rng = np.random.default_rng(seed)
    updates = {}
    for cid in range(count):
        w = {k: (rng.standard_normal(s) * 3).astype(np.float32) for k, (s, _) in mdl.expected().items()}
        n = int(rng.integers(1, SHARDS[cid] + 1))
        store.write_update(run_id, 1, cid, w, base_round=0, num_examples=n, activation_id=f"act-1-{cid}", attempt=1)
        updates[cid] = (w, n)
    return store, updates


SHARDS = data.shard_sizes(data.DataSpec.from_params(DIGITS), 20, 42)  # what the aggregator bounds num_examples by


def _textbook(updates):
    total = sum(n for _, n in updates)
    return {k: sum(n * w[k].astype(np.float64) for w, n in updates) / total for k in updates[0][0]}


def test_shard_sizes_are_the_client_splits():
    spec = data.DataSpec.from_params(DIGITS)
    assert SHARDS == [len(data.client_split(spec, 20, c, 42)) for c in range(20)]
    assert sum(SHARDS) == len(data.load_split(spec, "train")) and min(SHARDS) >= 71


@pytest.mark.parametrize("seed", [0, 1])
def test_aggregate_equals_the_fedavg_formula_on_random_inputs(db, seed):
    store, updates = _random_round(db, "f", 12, seed)
    res = aggregator.handle(_agg_params("aggregate", "f", 1, list(range(12))), db=db)
    assert res["num_updates"] == 12 and res["rejected"] == [] and not res["already_done"]
    got, doc = store.read_model("f", 1)
    want = _textbook(list(updates.values()))
    for k, v in want.items():
        np.testing.assert_allclose(got[k], v, rtol=1e-6, atol=1e-6)
    assert doc["metrics"]["clients"] == list(range(12))
    assert doc["metrics"]["num_examples"] == sum(n for _, n in updates.values())
    assert res["model_sha256"] == doc["sha256"] and 0 <= res["accuracy"] <= 1


def test_aggregate_rejects_each_kind_of_bad_update_and_uses_the_rest(db):
    store, updates = _random_round(db, "bad", 4, 7)  # clients 0..3 are good
    good_w = updates[0][0]
    upd = db["updates"]

    def put(cid, weights, *, base_round=0, num_examples=10, attempt=1, **fields):
        store.write_update("bad", 1, cid, weights, base_round=base_round, num_examples=num_examples,
                           activation_id=f"act-1-{cid}", attempt=attempt)
        if fields:  # what a writer with the store's credentials can put in the document
            upd.update_one({"_id": f"bad:1:{cid}:act-1-{cid}"}, {"$set": fields})

    put(4, {**good_w, "w1": good_w["w1"][:, :16]})  # shape
    put(5, {**good_w, "b2": good_w["b2"].astype(np.float64)})  # dtype
    nan = {k: v.copy() for k, v in good_w.items()}
    nan["w2"][0, 0] = np.nan
    put(6, nan)  # non_finite
    put(7, good_w)  # checksum: flip a payload byte in storage, keep the recorded digest
    blob = bytearray(upd.find_one({"_id": "bad:1:7:act-1-7"})["blob"]["inline"])
    blob[-5] ^= 0xFF
    upd.update_one({"_id": "bad:1:7:act-1-7"}, {"$set": {"blob.inline": bytes(blob)}})
    put(8, good_w, base_round=-1)  # stale_round: trained on another global model
    put(9, {**good_w, "extra": np.zeros(3, np.float32)})  # names
    put(10, good_w, num_examples=0)  # num_examples: weight of zero examples
    put(11, good_w)  # truncated
    short = bytes(upd.find_one({"_id": "bad:1:11:act-1-11"})["blob"]["inline"])[:100]
    upd.update_one({"_id": "bad:1:11:act-1-11"}, {"$set": {"blob.inline": short}})
    # 12: listed but never stored (missing)
    put(13, {k: v * 1000 for k, v in good_w.items()}, num_examples=2**62)  # would take over the model
    put(14, good_w, num_examples=SHARDS[14] + 1)  # more examples than the client's shard holds
    put(15, good_w, client_id=None)  # malformed: crashed a resume before
    put(16, good_w, client_id=3)  # forged: claims another client
    put(17, good_w, attempt=2)  # forged: not the issued attempt
    put(18, good_w)  # num_examples: not an integer
    upd.update_one({"_id": "bad:1:18:act-1-18"}, {"$set": {"num_examples": 7.0}})
    put(19, good_w, blob={"gridfs": {"$exists": True}})  # malformed: a query, not a file id
    # stored but not issued by the orchestrator: never read
    store.write_update("bad", 1, 0, {k: v * 1000 for k, v in good_w.items()}, base_round=0, num_examples=2**40)

    ids = list(range(19, -1, -1))  # unsorted
    res = aggregator.handle(_agg_params("aggregate", "bad", 1, ids), db=db)
    reasons = {r["client_id"]: r["reason"] for r in res["rejected"]}
    assert reasons == {
        4: "shape", 5: "dtype", 6: "non_finite", 7: "checksum", 8: "stale_round", 9: "names", 10: "num_examples",
        11: "truncated", 12: "missing", 13: "num_examples", 14: "num_examples", 15: "malformed", 16: "forged",
        17: "forged", 18: "num_examples", 19: "malformed",
    }  # fmt: skip
    assert [r["client_id"] for r in res["rejected"]] == sorted(reasons)
    assert all(r["detail"] and r["activation_id"] == f"act-1-{r['client_id']}" and r["attempt"] == 1
               for r in res["rejected"])
    assert set(reasons.values()) <= set(admission.REASONS)
    assert res["num_updates"] == 4
    got, doc = store.read_model("bad", 1)
    assert doc["metrics"]["clients"] == [0, 1, 2, 3]
    want = _textbook([updates[c] for c in range(4)])
    for k, v in want.items():
        np.testing.assert_allclose(got[k], v, rtol=1e-6, atol=1e-6)


def test_an_acknowledged_sha256_must_match_the_stored_update(db):
    store, updates = _random_round(db, "ack", 2, 1)
    doc = db["updates"].find_one({"_id": "ack:1:1:act-1-1"})
    issued = [(0, "act-1-0"), {"client_id": 1, "activation_id": "act-1-1", "attempt": 1, "sha256": "0" * 64}]
    res = aggregator.handle(_agg_params("aggregate", "ack", 1, issued), db=db)
    assert [(r["client_id"], r["reason"]) for r in res["rejected"]] == [(1, "mismatch")]
    assert doc["sha256"][:16] in res["rejected"][0]["detail"]


def test_updates_stored_by_the_previous_version_are_still_aggregated(db):
    """Before updates were keyed by activation, a client's update lived at `run:round:client` with no attempt."""
    store, updates = _random_round(db, "old", 0, 1)
    w, _ = _random_round(db, "tmp", 1, 2)[1][0]
    store.write_update("old", 1, 5, w, base_round=0, num_examples=40, activation_id=None)
    db["updates"].update_one({"_id": "old:1:5"}, {"$set": {"activation_id": "legacy-5"}, "$unset": {"attempt": 1}})
    res = aggregator.handle(_agg_params("aggregate", "old", 1, [(5, "legacy-5")]), db=db)
    assert res["num_updates"] == 1 and res["rejected"] == []
    db["models"].delete_one({"_id": "old:1"})
    with pytest.raises(aggregator.NoValidUpdates, match="client 5: forged"):  # it names another activation
        aggregator.handle(_agg_params("aggregate", "old", 1, [(5, "other")]), db=db)


def test_aggregate_without_valid_updates_fails_and_writes_nothing(db):
    store, _ = _random_round(db, "none", 1, 3)
    message = r"no valid updates for round 1 of run none \(client 5: missing\)"
    with pytest.raises(aggregator.NoValidUpdates, match=message):
        aggregator.handle(_agg_params("aggregate", "none", 1, [5]), db=db)
    with pytest.raises(aggregator.NoValidUpdates, match="no updates listed"):
        aggregator.handle(_agg_params("aggregate", "none", 1, []), db=db)
    assert store.get_model_doc("none", 1) is None
    assert aggregator.handle(_agg_params("aggregate", "none", 1, [0]), db=db)["num_updates"] == 1


def test_aggregate_is_idempotent(db):
    store, updates = _random_round(db, "idem", 3, 5)
    first = aggregator.handle(_agg_params("aggregate", "idem", 1, [0, 1]), db=db)
    before = db["models"].find_one({"_id": "idem:1"})
    # A late update and a repeated call with other ids must not change the finished round.
    again = aggregator.handle(_agg_params("aggregate", "idem", 1, [0, 1, 2]), db=db)
    assert again["already_done"] is True and not first["already_done"]
    for key in ("round", "accuracy", "loss", "num_updates", "rejected", "model_sha256"):
        assert again[key] == first[key]
    assert db["models"].find_one({"_id": "idem:1"}) == before
    assert db["models"].count_documents({"run_id": "idem"}) == 2


def test_init_is_idempotent_and_evaluates_the_model(db):
    first = aggregator.handle(_agg_params("init", "i", 0), db=db)
    assert first["round"] == 0 and first["num_updates"] == 0 and not first["already_done"]
    assert 0.0 <= first["accuracy"] <= 0.3 and first["loss"] > 1.0
    again = aggregator.handle(_agg_params("init", "i", 0, seed=7), db=db)
    assert again["already_done"] is True and again["model_sha256"] == first["model_sha256"]
    other = aggregator.handle(_agg_params("init", "j", 0, seed=7), db=db)
    assert other["model_sha256"] != first["model_sha256"]
    with pytest.raises(ValueError, match="mode init writes round 0"):
        aggregator.handle(_agg_params("init", "k", 3), db=db)


def test_keep_models_collects_old_global_models_and_aggregated_updates(db):
    results = _run_sample_experiment(db, "gc", rounds=4)
    assert results[-1]["round"] == 4
    kept = {d["round"] for d in db["models"].find({"run_id": "gc", "blob": {"$ne": None}})}
    assert kept == {2, 3, 4}  # keep_models: 3
    assert db["models"].count_documents({"run_id": "gc"}) == 5  # metrics history stays
    assert db["updates"].count_documents({"run_id": "gc", "blob": {"$ne": None}}) == 0
    # An interrupted run resumes from the newest model; a repeated aggregate of an old round changes nothing.
    assert aggregator.handle(_agg_params("aggregate", "gc", 2, _select(42, 2, 20, 10)), db=db)["already_done"]


@pytest.mark.parametrize(
    "params, match",
    [
        ({"mode": "train"}, "params.mode must be init or aggregate"),
        ({"updates": "0,1"}, "params.updates must be list"),
        ({"updates": [0]}, r"params.updates\[0\] must be an object"),
        ({"updates": [{"client_id": "1", "activation_id": "a", "attempt": 1}]}, r"updates\[0\].client_id must be"),
        ({"updates": [{"client_id": 20, "activation_id": "a", "attempt": 1}]}, r"an integer in 0..19, got 20"),
        ({"updates": [{"client_id": 1, "activation_id": "a:b", "attempt": 1}]}, r"activation_id must be"),
        ({"updates": [{"client_id": 1, "activation_id": "a", "attempt": 0}]}, r"attempt must be an integer >= 1"),
        ({"updates": [{"client_id": 1, "activation_id": "a", "attempt": 1, "sha256": "x"}]}, r"sha256 must be"),
        ({"updates": [{"client_id": 1, "activation_id": "a", "attempt": 1}] * 2}, r"client_id 1 is listed twice"),
        ({"num_clients": None}, "params.num_clients is required"),
        ({"keep_models": -1}, "params.keep_models"),
        ({"round": 0}, r"params.round must be >= 1"),
    ],
)
def test_aggregator_rejects_bad_params(db, params, match):
    with pytest.raises(ValueError, match=match):
        aggregator.handle({**_agg_params("aggregate", "p", 1, [0]), **params}, db=db)


def test_other_models_data_and_partitions_run_through_the_handlers(db, tmp_path):
    """cnn on the digits with shards, and logreg on .npz files with dirichlet, one round each."""
    cnn = {"model": "cnn", "input_shape_x": 8, "input_shape_y": 8, "output_size": 10}
    shards = {"dataset": "digits", "partition": "shards", "shards_per_client": 2}
    fast = {**TRAIN, "local_epochs": 1, "optim": "momentum", "lr": 0.05}
    aggregator.handle(_agg_params("init", "cnn", 0, model_p=cnn, data_p=shards), db=db)
    for cid in (0, 1):
        client.handle(_client_params("cnn", 1, cid, num_clients=10, model_p=cnn, train=fast, data_p=shards), db=db)
    res = aggregator.handle(_agg_params("aggregate", "cnn", 1, [0, 1], model_p=cnn, data_p=shards, num_clients=10),
                            db=db)
    assert res["num_updates"] == 2 and np.isfinite(res["loss"])

    rng = np.random.default_rng(0)
    files = {}
    for split, n in (("train", 300), ("test", 100)):
        y = rng.integers(0, 3, n)
        x = rng.integers(0, 50, (n, 5, 4)).astype(np.uint8)
        x[np.arange(n), y, :] = 250  # class k lights up row k
        np.savez(tmp_path / f"{split}.npz", x=x, y=y)
        files[f"{split}_images"] = str(tmp_path / f"{split}.npz#x")
        files[f"{split}_labels"] = str(tmp_path / f"{split}.npz#y")
    logreg = {"model": "logreg", "input_size": 20, "output_size": 3}
    npz = {**files, "partition": "dirichlet", "alpha": 0.3}
    aggregator.handle(_agg_params("init", "lr", 0, model_p=logreg, data_p=npz), db=db)
    for cid in range(5):
        client.handle(_client_params("lr", 1, cid, num_clients=5, model_p=logreg, train=TRAIN, data_p=npz), db=db)
    res = aggregator.handle(_agg_params("aggregate", "lr", 1, list(range(5)), model_p=logreg, data_p=npz,
                                        num_clients=5), db=db)
    assert res["num_updates"] == 5 and res["accuracy"] > 0.8

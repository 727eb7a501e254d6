"""The FedAvg family's NaN/Inf check on the mean instead of on every update (runtime/admission.py ``deferred_mean``),
through the aggregator function on the session's store: the same rejections and the same bits as the per-update
checks, one pass over the updates when they are finite, a second, checked one when one is not, and each rejection
logged once. The property test beside the admission oracle is in test_aggregation_properties.py."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np
import pytest

from fedkeeper.runtime import blobstore, data, model, partials
from fedkeeper.runtime import weights as W

AGGREGATOR = Path(__file__).resolve().parents[1] / "functions" / "fl_server_aggregator" / "handler.py"
_spec = importlib.util.spec_from_file_location("fk_deferred_aggregator", AGGREGATOR)
aggregator = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(aggregator)

MLP = {"model": "mlp", "input_size": 64, "hidden_size": 8, "output_size": 10}
DIGITS = {"dataset": "digits", "partition": "iid"}
NUM_CLIENTS = 12
SHARDS = data.shard_sizes(data.DataSpec.from_params(DIGITS), NUM_CLIENTS, 1)
AGAIN = "aggregating again with every update checked"


def _store_round(db, run_id: str, poison: dict[int, float]) -> list[dict]:
    """Model 0 and round-1 updates of clients 0..5 (``poison``: client -> the value put in its first weight), plus
    client 6's update whose document claims another client (forged); returns the issued list."""
    store = blobstore.BlobStore(db)
    mdl = model.build_model(MLP)
    store.write_model(run_id, 0, mdl.init(0), {"accuracy": 0.0, "loss": 0.0})
    rng = np.random.default_rng(7)
    issued = []
    for cid in range(7):
        w = {k: rng.standard_normal(s).astype(np.float32) for k, (s, _) in mdl.expected().items()}
        if cid in poison:
            next(iter(w.values())).reshape(-1)[3] = poison[cid]
        store.write_update(run_id, 1, cid, w, base_round=0, num_examples=int(rng.integers(1, SHARDS[cid] + 1)),
                           activation_id=f"a{cid}", attempt=1)
        issued.append({"client_id": cid, "activation_id": f"a{cid}", "attempt": 1})
    db["updates"].update_one({"_id": f"{run_id}:1:6:a6"}, {"$set": {"client_id": 5}})
    return issued


def _params(run_id: str, issued: list[dict], **extra) -> dict:
    return {"mode": "aggregate", "run_id": run_id, "round": 1, "seed": 1, "model": MLP, "data": DIGITS,
            "keep_models": 0, "num_clients": NUM_CLIENTS, "updates": issued, **extra}


def _warnings(caplog, text: str) -> int:
    return sum(text in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def _handle(nx_db, monkeypatch, caplog, deferred: bool, run_id: str, poison: dict[int, float], **extra) -> dict:
    """The aggregator on a freshly stored round, with the check on the mean on or off; caplog holds its warnings."""
    monkeypatch.setattr(aggregator, "DEFER_FINITE_CHECK", deferred)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        return aggregator.handle(_params(run_id, _store_round(nx_db, run_id, poison), **extra), db=nx_db)


@pytest.mark.parametrize("poison", [{}, {2: float("nan")}, {1: float("inf"), 4: float("-inf")}],
                         ids=["finite", "nan", "inf"])
def test_the_mean_checked_once_gives_the_per_update_checks_model_and_rejections(nx_db, monkeypatch, caplog, poison):
    results = {}
    for deferred in (True, False):
        run_id = f"defer{int(deferred)}"
        res = _handle(nx_db, monkeypatch, caplog, deferred, run_id, poison)
        blob = bytes(nx_db["models"].find_one({"_id": f"{run_id}:1"})["blob"]["inline"])
        results[deferred] = (res, W.decode(blob, verify=False))
        # a second pass only when an update is not finite, and every rejection logged once either way
        assert _warnings(caplog, AGAIN) == (1 if deferred and poison else 0)
        assert _warnings(caplog, "forged") == 1
        assert _warnings(caplog, "NaN or Inf") == len(poison)
    (got, got_w), (want, want_w) = results[True], results[False]
    assert [(r["client_id"], r["reason"]) for r in got["rejected"]] == \
        [(r["client_id"], r["reason"]) for r in want["rejected"]]
    assert {r["client_id"]: r["reason"] for r in got["rejected"]} == {6: "forged", **{c: "non_finite" for c in poison}}
    assert got["num_updates"] == want["num_updates"] == 6 - len(poison)
    assert all(got_w[k].tobytes() == want_w[k].tobytes() for k in want_w)


def test_a_tree_leaf_checks_its_sums_once_and_rejects_a_non_finite_update_as_before(nx_db, monkeypatch, caplog):
    stored = {}
    for deferred in (True, False):
        run_id = f"leaf{int(deferred)}"
        res = _handle(nx_db, monkeypatch, caplog, deferred, run_id, {3: float("nan")}, mode="partial", level=1,
                      index=0)
        assert _warnings(caplog, AGAIN) == (1 if deferred else 0)
        assert _warnings(caplog, "forged") == 1
        spec = model.build_model(MLP).expected()
        sums, doc = blobstore.BlobStore(nx_db).read_partial(run_id, 1, res["key"], partials.sum_spec(spec))
        stored[deferred] = (sums, {k: doc[k] for k in ("kind", "weight", "count", "clients")},
                            [(r["client_id"], r["reason"]) for r in doc["rejected"]])
    (sums, meta, rejected), (want_sums, want_meta, want_rejected) = stored[True], stored[False]
    assert rejected == want_rejected == [(3, "non_finite"), (6, "forged")]
    assert meta == want_meta and meta["clients"] == [0, 1, 2, 4, 5]
    assert all(sums[k].tobytes() == want_sums[k].tobytes() for k in want_sums)
    assert all(np.isfinite(a).all() for a in sums.values())


def test_decode_without_the_finite_check_still_verifies_the_digest_and_layout():
    w = {"w": np.array([1.0, np.nan, np.inf], np.float32), "b": np.zeros(2, np.float32)}
    blob = bytearray(W.encode(w, "sha256"))
    with pytest.raises(W.WeightsError) as err:
        W.decode(bytes(blob))
    assert err.value.reason == "non_finite"
    got = W.decode(bytes(blob), check_finite=False)
    assert np.isnan(got["w"][1]) and np.isinf(got["w"][2])
    with pytest.raises(W.WeightsError) as err:
        W.decode(bytes(blob), {"w": ((4,), "float32"), "b": ((2,), "float32")}, check_finite=False)
    assert err.value.reason == "shape"
    blob[-1] ^= 0x01
    with pytest.raises(W.WeightsError) as err:
        W.decode(bytes(blob), check_finite=False)
    assert err.value.reason == "checksum"

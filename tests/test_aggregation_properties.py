"""Property tests of update admission and aggregation (runtime/admission.py, functions/fl_server_aggregator): for
any set of stored updates with any metadata — hostile num_examples, NaN/Inf, wrong shapes or dtypes, forged ids,
broken blobs — every update is either rejected with its documented reason or averaged, and the model is the
FedAvg of exactly the valid ones: never NaN, never a hang, never an exception other than the typed ones.

Each generated update carries at most one defect, and the test knows what that defect must be rejected as: the
oracle is independent of the code under test. The average is compared with a float64 reference FedAvg (same
order, bit for bit where the model is float16/float32) and with the exact rational average."""

from __future__ import annotations

import importlib.util
import json
import math
import uuid
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedkeeper.runtime import admission, blobstore, data, model, strategies
from fedkeeper.runtime import weights as W
from fedkeeper.runtime.admission import Issued
from fedkeeper.runtime.blobstore import BlobStore, update_key
from fedkeeper.scenarios.issued_updates import IGNORED_REASONS, round_updates

RUN, ROUND = "prop", 3

# defect → the reason it must be rejected with (None: a valid update, averaged)
DEFECTS: dict[str, str | None] = {
    "none": None, "legacy": None, "acknowledged": None,
    "missing": "missing", "pruned": "missing",
    "client_null": "malformed", "client_text": "malformed", "client_bool": "malformed", "client_float": "malformed",
    "client_other": "forged", "run_other": "forged", "run_null": "malformed", "round_other": "forged",
    "activation_other": "forged", "attempt_other": "forged", "attempt_text": "malformed",
    "attempt_missing": "malformed", "ack_other": "mismatch", "sha_null": "malformed",
    "base_other": "stale_round", "base_null": "malformed",
    "n_zero": "num_examples", "n_negative": "num_examples", "n_over_shard": "num_examples",
    "n_2_62": "num_examples", "n_int64_max": "num_examples", "n_float": "num_examples", "n_bool": "num_examples",
    "n_text": "num_examples", "n_null": "num_examples",
    "nan": "non_finite", "inf": "non_finite", "shape": "shape", "dtype": "dtype", "names": "names",
    "checksum": "checksum", "truncated": "truncated", "bad_magic": "bad_magic",
    "blob_text": "malformed", "blob_inline_text": "malformed", "blob_query": "malformed", "blob_too_big": "malformed",
}
VALID = [d for d, r in DEFECTS.items() if r is None]


def pick_defect(rnd: Any) -> str:
    """Half valid, half one of every defect alike (sampled_from would favour the first ones)."""
    return rnd.choice(VALID) if rnd.random() < 0.5 else rnd.choice(sorted(DEFECTS))


# ------------------------------------------------------------------------------------------- building updates


def build(cid: int, weights: dict[str, np.ndarray], n: int, shard: int, defect: str, attempt: int, run_id: str = RUN
          ) -> tuple[Issued, dict[str, Any] | None, str]:
    """(what the orchestrator issues, the stored document or None, the defect actually applied)."""
    aid = f"act{cid}x{attempt}"
    w = {k: v.copy() for k, v in weights.items()}
    floats = [k for k, v in w.items() if v.size]
    if defect in ("nan", "inf", "checksum") and not floats:
        defect = "none"  # nothing to poison: an update of empty arrays
    if defect in ("nan", "inf"):
        w[floats[0]].reshape(-1)[0] = np.nan if defect == "nan" else -np.inf
    if defect == "shape":  # one more dimension
        name = next(iter(w))
        w[name] = np.zeros((2, *w[name].shape), w[name].dtype)
    if defect == "dtype":
        name = next(iter(w))
        with np.errstate(over="ignore"):
            w[name] = w[name].astype(np.float32 if w[name].dtype != np.float32 else np.float64)
    if defect == "names":
        w["zz-extra"] = np.zeros(1, np.float32)
    blob = W.encode(w)
    sha = W.digest_of(blob)
    if defect == "checksum":  # the last payload byte changed in storage, the recorded digest kept
        blob = blob[:-1] + bytes([blob[-1] ^ 0x01])
    elif defect == "truncated":
        blob = blob[: len(blob) // 2]
    elif defect == "bad_magic":
        blob = b"PK" + blob[2:]
    doc: dict[str, Any] = {
        "_id": update_key(run_id, ROUND, cid, aid), "run_id": run_id, "round": ROUND, "client_id": cid,
        "activation_id": aid, "attempt": attempt, "base_round": ROUND - 1, "num_examples": n, "sha256": sha,
        "blob": {"inline": blob}, "metrics": {"train_loss": 0.1},
    }
    issued = Issued(cid, aid, attempt, sha if defect in ("acknowledged", "ack_other", "checksum") else None)
    changes: dict[str, Any] = {
        "client_null": {"client_id": None}, "client_text": {"client_id": str(cid)}, "client_bool": {"client_id": True},
        "client_float": {"client_id": float(cid)}, "client_other": {"client_id": cid + 1000},
        "run_other": {"run_id": "other"}, "run_null": {"run_id": None}, "round_other": {"round": ROUND + 1},
        "activation_other": {"activation_id": "someone-else"}, "attempt_other": {"attempt": attempt + 1},
        "attempt_text": {"attempt": str(attempt)}, "sha_null": {"sha256": None},
        "base_other": {"base_round": ROUND - 2}, "base_null": {"base_round": None},
        "n_zero": {"num_examples": 0}, "n_negative": {"num_examples": -n}, "n_over_shard": {"num_examples": shard + n},
        "n_2_62": {"num_examples": 2**62}, "n_int64_max": {"num_examples": 2**63 - 1},
        "n_float": {"num_examples": float(n)}, "n_bool": {"num_examples": True}, "n_text": {"num_examples": str(n)},
        "n_null": {"num_examples": None}, "pruned": {"blob": None}, "blob_text": {"blob": "inline"},
        "blob_inline_text": {"blob": {"inline": "bytes"}}, "blob_query": {"blob": {"gridfs": {"$ne": None}}},
        "blob_too_big": {"blob": {"inline": blob + bytes(admission.max_blob_bytes(W.spec_of(weights)))}},
    }
    doc.update(changes.get(defect, {}))
    if defect == "legacy":  # written by the version before updates were keyed by activation
        doc["_id"] = update_key(run_id, ROUND, cid)
        del doc["attempt"]
    if defect == "attempt_missing":
        del doc["attempt"]
    if defect == "ack_other":
        issued = Issued(cid, aid, attempt, "f" * 64)
    return issued, (None if defect == "missing" else doc), defect


class _Docs:
    """The collection calls `BlobStore.find_update` and `find_updates` (the aggregator's batched read) make, over
    a dict."""

    def __init__(self, docs: dict[str, dict[str, Any]]) -> None:
        self.docs = docs

    def find_one(self, query: dict[str, Any], projection: Any = None) -> dict[str, Any] | None:
        return self.docs.get(query["_id"])

    def find(self, query: dict[str, Any], projection: Any = None) -> list[dict[str, Any]]:
        (key, condition), = query.items()
        assert key == "_id" and list(condition) == ["$in"], query
        return [self.docs[k] for k in condition["$in"] if k in self.docs]


def memory_store(docs: dict[str, dict[str, Any]]) -> BlobStore:
    """BlobStore's own reading and checking code over documents in memory (inline blobs): fast examples."""
    store = BlobStore.__new__(BlobStore)
    store.updates = _Docs(docs)  # type: ignore[assignment]
    store._retry = lambda fn: fn()  # type: ignore[assignment]
    return store


# ------------------------------------------------------------------------------------------------ references


def float64_fedavg(updates: list[tuple[dict[str, np.ndarray], int]], spec: W.Expected) -> dict[str, np.ndarray]:
    total = float(sum(n for _, n in updates))
    out = {}
    for name, (shape, dtype) in spec.items():
        acc = np.zeros(shape, np.float64)
        with np.errstate(over="ignore", invalid="ignore"):  # float64 models of huge values: compared exactly instead
            for w, n in updates:
                acc += w[name].astype(np.float64) * np.float64(n)
            out[name] = (acc / total).astype(dtype)
    return out


def assert_exact_average(got: dict[str, np.ndarray], updates: list[tuple[dict[str, np.ndarray], int]],
                         spec: W.Expected) -> None:
    """Within float64 summation error (and the model dtype's rounding) of the exact rational average."""
    total = sum(n for _, n in updates)
    for name, (shape, dtype) in spec.items():
        flat = [(w[name].astype(np.float64).reshape(-1), n) for w, n in updates]
        for i in range(int(np.prod(shape, dtype=np.int64))):
            exact = sum(Fraction(float(w[i])) * n for w, n in flat) / total
            biggest = max(abs(float(w[i])) for w, _ in flat)
            tol = (2 * len(flat) + 3) * 2.0**-52 * biggest + 2.0**-1000  # products, sums, the division
            near = np.abs(np.asarray(float(exact), dtype=dtype))
            ulp = float(np.spacing(np.nextafter(near, near.dtype.type(0))))  # the gap below: finite at the top
            assert abs(Fraction(float(got[name].reshape(-1)[i])) - exact) <= Fraction(tol) + Fraction(ulp), name


# ------------------------------------------------------------------------------------------ strategies


float_dtypes = st.sampled_from([np.dtype("<f2"), np.dtype("<f4"), np.dtype("<f8")])
specs = st.dictionaries(st.text("abcdefgh/_", min_size=1, max_size=6),
                        st.tuples(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=3), float_dtypes),
                        min_size=1, max_size=3)


@st.composite
def rounds(draw: st.DrawFn, non_finite: float = 0.0
           ) -> tuple[W.Expected, list[int], list[tuple[Issued, dict | None, str, dict, int]]]:
    """``non_finite``: the share of updates poisoned with NaN or Inf on top of the defects ``pick_defect`` draws."""
    spec = draw(specs)
    rnd = draw(st.randoms(use_true_random=False))
    num_clients = rnd.randint(1, 8)
    shards = draw(st.lists(st.integers(1, 60), min_size=num_clients, max_size=num_clients))
    clients = rnd.sample(range(num_clients), rnd.randint(1, min(6, num_clients)))
    out = []
    for cid in clients:
        weights = {name: draw(hnp.arrays(dtype, shape, elements=st.floats(allow_nan=False, allow_infinity=False,
                                                                          width=dtype.itemsize * 8)))
                   for name, (shape, dtype) in spec.items()}
        n = draw(st.integers(1, shards[cid]))
        defect = rnd.choice(["nan", "inf"]) if rnd.random() < non_finite else pick_defect(rnd)
        issued, doc, defect = build(cid, weights, n, shards[cid], defect, rnd.randint(1, 4))
        out.append((issued, doc, defect, weights, n))
    return {k: (tuple(s), d.str) for k, (s, d) in spec.items()}, shards, out


# ------------------------------------------------------------------------------------------------ properties


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(rounds())
def test_any_update_set_gives_typed_rejections_and_the_fedavg_of_the_valid_ones(case) -> None:
    spec, shards, updates = case
    for _, _, defect, _, _ in updates:
        event(f"reason {DEFECTS[defect]}")
    event(f"{sum(DEFECTS[u[2]] is None for u in updates)} of {len(updates)} valid")
    docs = {doc["_id"]: doc for _, doc, _, _, _ in updates if doc is not None}
    outcome = admission.aggregate([u[0] for u in updates], memory_store(docs), run_id=RUN, round=ROUND,
                                  expected=spec, shard_sizes=shards)
    want_rejected = {u[0].client_id: DEFECTS[u[2]] for u in updates if DEFECTS[u[2]] is not None}
    assert {r["client_id"]: r["reason"] for r in outcome.rejected} == want_rejected
    assert all(r["detail"] and r["reason"] in admission.REASONS for r in outcome.rejected)
    valid = sorted((u for u in updates if DEFECTS[u[2]] is None), key=lambda u: u[0].client_id)
    assert outcome.accepted == [u[0].client_id for u in valid]
    assert outcome.total_examples == sum(u[4] for u in valid)
    if not valid:
        assert outcome.weights is None
        return
    got = outcome.weights
    assert got is not None and list(got) == list(spec)
    assert all(np.all(np.isfinite(a)) for a in got.values()), "NaN or Inf in the model"
    pairs = [(u[3], u[4]) for u in valid]
    reference = float64_fedavg(pairs, spec)
    for name, (shape, dtype) in spec.items():
        assert got[name].shape == shape and got[name].dtype == np.dtype(dtype)
        if np.dtype(dtype) != np.float64:  # float64 products cannot overflow here: the same bits
            assert got[name].tobytes() == reference[name].tobytes(), name
    assert_exact_average(got, pairs, spec)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(rounds(non_finite=0.15))
def test_checking_nan_inf_once_on_the_mean_admits_and_averages_as_checking_every_update(case) -> None:
    """``admission.deferred_mean`` (what the aggregator runs for the FedAvg family) against the per-update checks
    of ``admission.aggregate``: the same admitted and rejected updates, with the same reasons, the same bits."""
    spec, shards, updates = case
    docs = {doc["_id"]: doc for _, doc, _, _, _ in updates if doc is not None}
    issued = [u[0] for u in updates]
    eager = admission.aggregate(issued, memory_store(docs), run_id=RUN, round=ROUND, expected=spec,
                                shard_sizes=shards)
    passes: list[bool] = []

    def admit(check_finite: bool) -> admission.Admitted:
        passes.append(check_finite)
        return admission.Admitted(issued, memory_store(docs), run_id=RUN, round=ROUND, expected=spec,
                                  shard_sizes=shards, check_finite=check_finite)

    previous = {name: np.zeros(shape, dtype) for name, (shape, dtype) in spec.items()}
    fedavg = strategies.make_strategy("fedavg")
    poisoned = any(u[2] in ("nan", "inf") for u in updates)  # build() returns the defect it applied
    event("a non-finite update" if poisoned else "no non-finite update")
    if eager.weights is None:
        with pytest.raises(strategies.StrategyError, match="no updates"):
            admission.deferred_mean(admit, lambda admitted: fedavg.mean(admitted, previous))
        return
    admitted, mean = admission.deferred_mean(admit, lambda admitted: fedavg.mean(admitted, previous))
    # a second, checked pass exactly when an update held NaN or Inf (finite updates never overflow the sums)
    assert passes == ([False, True] if poisoned else [False])
    assert admitted.rejected == eager.rejected
    assert admitted.accepted == eager.accepted and admitted.total_examples == eager.total_examples
    assert all(mean[k].tobytes() == eager.weights[k].tobytes() for k in spec)


@pytest.mark.parametrize("dtype", ["<f2", "<f4", "<f8"])
@pytest.mark.parametrize("defect", sorted(DEFECTS))
def test_each_defect_is_rejected_with_its_reason_next_to_an_honest_update(defect: str, dtype: str) -> None:
    """Every defect the property test draws, for certain: beside one honest update (client 0)."""
    spec = {"w": ((3, 2), dtype), "b": ((2,), dtype)}
    rng = np.random.default_rng(3)
    honest_w = {k: (rng.standard_normal(s) * 1e3).astype(d) for k, (s, d) in spec.items()}
    bad_w = {k: (rng.standard_normal(s) * 1e3).astype(d) for k, (s, d) in spec.items()}
    honest = build(0, honest_w, 7, 9, "none", 2)
    other = build(1, bad_w, 4, 9, defect, 1)
    docs = {d["_id"]: d for d in (honest[1], other[1]) if d is not None}
    outcome = admission.aggregate([other[0], honest[0]], memory_store(docs), run_id=RUN, round=ROUND,
                                  expected=spec, shard_sizes=[9, 9])
    if DEFECTS[defect] is None:
        assert outcome.rejected == [] and outcome.accepted == [0, 1]
        reference = float64_fedavg([(honest_w, 7), (bad_w, 4)], spec)
    else:
        assert [(r["client_id"], r["reason"]) for r in outcome.rejected] == [(1, DEFECTS[defect])]
        assert outcome.accepted == [0]
        reference = float64_fedavg([(honest_w, 7)], spec)
    assert all(outcome.weights[k].tobytes() == reference[k].tobytes() for k in spec)


field_values = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**63 - 1), st.floats(), st.text(max_size=8),
                         st.binary(max_size=8), st.lists(st.integers(), max_size=2),
                         st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
FIELDS = ("_id", "run_id", "round", "client_id", "activation_id", "attempt", "base_round", "num_examples", "sha256")


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(FIELDS), field_values, max_size=len(FIELDS)),
       st.integers(0, 5), st.integers(1, 3), st.booleans(), st.integers(1, 100))
def test_check_never_raises_anything_but_a_typed_rejection(fields, cid, attempt, acked, shard) -> None:
    """Random values over an honest document: accepted only if every field is still the issued one."""
    honest = {"_id": update_key(RUN, ROUND, cid, "a"), "run_id": RUN, "round": ROUND, "client_id": cid,
              "activation_id": "a", "attempt": attempt, "base_round": ROUND - 1, "num_examples": shard,
              "sha256": "0" * 64}
    doc = {**honest, **fields}
    item = Issued(cid, "a", attempt, "0" * 64 if acked else None)
    try:
        n = admission.check(doc, item, run_id=RUN, round=ROUND, shard_size=shard)
    except blobstore.CorruptUpdate as exc:
        assert exc.reason in admission.REASONS and exc.client_id == cid
        assert len(str(exc)) < 1000  # a hostile value is shown short
        return
    for key in ("run_id", "round", "client_id", "activation_id", "base_round"):
        assert type(doc[key]) is not bool and doc[key] == (honest[key] if key != "base_round" else ROUND - 1)
    assert doc.get("attempt") == attempt or (doc.get("attempt") is None and doc["_id"] == update_key(RUN, ROUND, cid))
    assert type(n) is int and 1 <= n <= shard and isinstance(doc["sha256"], str)
    assert not acked or doc["sha256"] == "0" * 64


records_ = st.fixed_dictionaries(
    {"_id": st.sampled_from(["a1", "a2", "a3"]) | field_values,
     "function": st.sampled_from(["fl_client", "fl_server_aggregator"]) | field_values,
     "round": st.just(ROUND) | field_values, "client_id": st.integers(0, 3) | field_values,
     "attempt": st.integers(1, 3) | field_values, "state": st.sampled_from(["succeeded", "failed", "invoked"])})
update_docs = st.fixed_dictionaries(
    {"_id": st.sampled_from([update_key(RUN, ROUND, c, a) for c in range(4) for a in ("a1", "a2", "a3")]
                            + [update_key(RUN, ROUND, c) for c in range(4)]) | field_values,
     "client_id": st.integers(0, 3) | field_values, "activation_id": st.sampled_from(["a1", "a2", "a3"]) | field_values,
     "created": field_values, "num_examples": field_values})


@settings(max_examples=250, deadline=None)
@given(st.lists(records_, max_size=6), st.lists(update_docs, max_size=8),
       st.dictionaries(st.integers(0, 3), st.fixed_dictionaries({"activation_id": st.sampled_from(["a1", "a2"]),
                                                                 "sha256": st.just("ab" * 32) | field_values})))
def test_the_orchestrator_only_hands_over_updates_of_activations_it_issued(records, docs, acks) -> None:
    """Whatever the round's documents and records hold (client_id null, text rounds...): no exception, and each
    chosen update is a document under the key of a recorded fl_client activation of that very client."""
    found = round_updates(records, docs, run_id=RUN, round_number=ROUND, acks=acks)
    json.dumps(found.ignored)  # an event line can always be written
    assert all(i["reason"] in IGNORED_REASONS for i in found.ignored)
    for cid, item in found.chosen.items():
        assert item.client_id == cid
        assert any(r["_id"] == item.activation_id and r["function"] == "fl_client" and r["client_id"] == cid
                   and type(r["client_id"]) is int and r["round"] == ROUND and r["attempt"] == item.attempt
                   for r in records)
        assert any(d.get("activation_id") == item.activation_id and d.get("_id") in (
            update_key(RUN, ROUND, cid, item.activation_id), update_key(RUN, ROUND, cid)) for d in docs)
        assert item.sha256 is None or (acks[cid]["activation_id"] == item.activation_id
                                       and item.sha256 == acks[cid]["sha256"])
        item.as_params()
    assert len(found.docs) == len(found.chosen)


# ------------------------------------------------------------------------------- through the real handler


AGGREGATOR = Path(__file__).resolve().parents[1] / "functions" / "fl_server_aggregator" / "handler.py"
_spec = importlib.util.spec_from_file_location("fk_prop_aggregator", AGGREGATOR)
aggregator = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(aggregator)

MLP = {"model": "mlp", "input_size": 64, "hidden_size": 8, "output_size": 10}
DIGITS = {"dataset": "digits", "partition": "iid"}
NUM_CLIENTS = 20
SHARDS = data.shard_sizes(data.DataSpec.from_params(DIGITS), NUM_CLIENTS, 1)
STORE_DEFECTS = ["none", "legacy", "acknowledged", "missing", "client_null", "client_other", "attempt_other",
                 "ack_other", "base_other", "n_over_shard", "n_2_62", "n_int64_max", "n_float", "nan", "inf",
                 "shape", "dtype", "checksum", "blob_query"]


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, NUM_CLIENTS - 1), st.sampled_from(STORE_DEFECTS),
                          st.sampled_from([1e-3, 1.0, 1e3, 1e20]), st.booleans()),
                min_size=1, max_size=4, unique_by=lambda t: t[0]),
       st.integers(0, 2**32 - 1))
def test_the_aggregator_function_on_hostile_stored_updates(nx_db, plan, seed) -> None:
    """The whole function on the embedded store (inline and GridFS blobs): the round's model is the FedAvg of
    exactly the valid updates, finite, and an all-invalid round is a NoValidUpdates error that writes nothing."""
    run_id = f"p{uuid.uuid4().hex[:10]}"
    mdl = model.build_model(MLP)
    inline, files = BlobStore(nx_db), BlobStore(nx_db, inline_limit=0)
    inline.write_model(run_id, ROUND - 1, mdl.init(0), {"accuracy": 0.0, "loss": 0.0})
    rng = np.random.default_rng(seed)
    issued, made, want = [], [], {}
    for cid, defect, scale, via_gridfs in plan:
        weights = {k: (rng.standard_normal(s) * scale).astype(np.float32) for k, (s, _) in mdl.expected().items()}
        n = int(rng.integers(1, SHARDS[cid] + 1))
        item, doc, defect = build(cid, weights, n, SHARDS[cid], defect, 1, run_id)
        issued.append(item.as_params())
        if doc is not None:  # stored the way a writer with the store's credentials would
            if via_gridfs and isinstance(doc.get("blob"), dict) and isinstance(doc["blob"].get("inline"), bytes):
                doc = {**doc, **files._put_blob(doc["blob"]["inline"], doc["_id"], "w")}
            nx_db["updates"].insert_one(doc)
        made.append((cid, weights, n, DEFECTS[defect] is None))
        if DEFECTS[defect] is not None:
            want[cid] = DEFECTS[defect]
    valid = [(w, n) for _, w, n, ok in sorted(made, key=lambda m: m[0]) if ok]
    params = {"mode": "aggregate", "run_id": run_id, "round": ROUND, "seed": 1, "model": MLP, "data": DIGITS,
              "keep_models": 0, "num_clients": NUM_CLIENTS, "updates": issued}
    if not valid:
        with pytest.raises(aggregator.NoValidUpdates):
            aggregator.handle(params, db=nx_db)
        assert inline.get_model_doc(run_id, ROUND) is None
        return
    with np.errstate(over="ignore", invalid="ignore"):  # a 1e20-scaled model overflows its own evaluation
        result = aggregator.handle(params, db=nx_db)
    assert {r["client_id"]: r["reason"] for r in result["rejected"]} == want
    assert result["num_updates"] == len(valid)
    got, doc = inline.read_model(run_id, ROUND, mdl.expected())  # decoding checks that it is finite
    assert doc["metrics"]["num_examples"] == sum(n for _, n in valid) <= sum(SHARDS)
    reference = float64_fedavg(valid, mdl.expected())
    assert all(got[k].tobytes() == reference[k].tobytes() for k in got)
    assert math.isfinite(result["accuracy"])

"""Client packing (`clients_info.clients_per_invocation`, docs/aggregation.md#client-packing): the plan of a round's
packs, the fl_client pack handler against the store, the config checks, and whole runs on the local platform
against the same runs without packing (same model within float tolerance, the same bits run to run, a lost
quorum resumed without running stored packs again)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import fl_payloads as P
from function_support import load_handler
from round_support import Loop, Run, experiment_yaml, loop  # noqa: F401 - loop: the fixture
from fedkeeper.config import load_text
from fedkeeper.config.errors import ConfigError
from fedkeeper.runtime import partials
from fedkeeper.runtime.blobstore import BlobStore
from fedkeeper.scenarios import packing

# ----------------------------------------------------------------------------------------------- the plan


def _cluster_of(blocks: list[int]) -> Any:
    """client id -> cluster for clusters holding `blocks[i]` consecutive ids each (the fabric's placement)."""
    owner = [i for i, count in enumerate(blocks) for _ in range(count)]
    return lambda c: f"c{owner[c]}"


def test_packs_split_at_clusters_and_balance_their_sizes() -> None:
    packs = packing.plan_packs("run", 3, [9, 0, 1, 2, 3, 4, 5, 6, 7, 8], 4, _cluster_of([7, 3]), None)
    assert [p.clients for p in packs] == [(0, 1, 2, 3), (4, 5, 6), (7, 8, 9)]
    assert [p.index for p in packs] == [0, 1, 2]
    assert packs[1].key == partials.pack_key("run", 3, 1, None, [4, 5, 6])
    # 7 clients of one cluster in packs of at most 3: sizes 3, 2, 2 (never a pack of one left over)
    assert [len(p.clients) for p in packing.plan_packs("run", 1, range(7), 3, _cluster_of([7]), None)] == [3, 2, 2]


@settings(max_examples=60, deadline=None)
@given(blocks=st.lists(st.integers(1, 12), min_size=1, max_size=4), k=st.integers(1, 9), data=st.data())
def test_packs_cover_the_selection_in_ascending_order(blocks: list[int], k: int, data: st.DataObject) -> None:
    total = sum(blocks)
    selected = data.draw(st.lists(st.integers(0, total - 1), min_size=1, unique=True))
    cluster_of = _cluster_of(blocks)
    packs = packing.plan_packs("r", 2, selected, k, cluster_of, None)
    flat = [c for p in packs for c in p.clients]
    assert flat == sorted(selected)  # each client once, in the order partials are combined
    for p in packs:
        assert 1 <= len(p.clients) <= k and len({cluster_of(c) for c in p.clients}) == 1
    assert len({p.key for p in packs}) == len(packs)
    per_cluster: dict[str, list[int]] = {}
    for p in packs:
        per_cluster.setdefault(cluster_of(p.first), []).append(len(p.clients))
    assert all(max(sizes) - min(sizes) <= 1 for sizes in per_cluster.values())


def test_a_key_names_what_the_pack_covers() -> None:
    base = partials.pack_key("run", 1, 0, None, [1, 2])
    assert base != partials.pack_key("run", 1, 0, None, [1, 3])
    assert base != partials.pack_key("run", 2, 0, None, [1, 2])
    assert base != partials.pack_key("run", 1, 0, {"mode": "local", "noise_multiplier": 1.0}, [1, 2])
    assert base.startswith("run:1:partial:1:0:")


# ------------------------------------------------------------------------------------------ the handler


def _pack_payload(run_id: str, clients: list[int], index: int = 0) -> dict[str, Any]:
    payload = P.client(run_id, 1, clients[0])
    payload["pack"] = {"index": index, "clients": clients}
    return payload


def _init(db: Any, run_id: str) -> None:
    load_handler("fl_server_aggregator", "fk_pack_agg").handle(P.init(run_id), db=db)


def test_a_pack_stores_the_sum_of_its_clients_updates(nx_db: Any) -> None:
    client = load_handler("fl_client", "fk_pack_client")
    _init(nx_db, "pk")
    store = BlobStore(nx_db)
    ack = client.handle(_pack_payload("pk", [0, 2, 3]), db=nx_db)
    assert ack["ok"] and ack["clients"] == [0, 2, 3] and ack["rejected"] == [] and not ack["duplicate"]
    assert ack["key"] == partials.pack_key("pk", 1, 0, None, [0, 2, 3])
    # the same clients one by one: their stored updates, summed as the aggregator's leaves sum them
    spec = {name: (tuple(w.shape), w.dtype) for name, w in store.read_model("pk", 0)[0].items()}
    expected = partials.PartialSum.empty(partials.MEAN, spec)
    examples = []
    for c in (0, 2, 3):
        one = client.handle(P.client("pk", 1, c), db=nx_db)
        weights, _ = store.read_update("pk", 1, c, None, activation_id=one["activation_id"])
        expected.add_update(c, weights, one["num_examples"])
        examples.append(one["num_examples"])
    sums, doc = store.read_partial("pk", 1, ack["key"], partials.sum_spec(spec))
    assert doc["clients"] == [0, 2, 3] and doc["examples"] == examples and doc["weight"] == sum(examples)
    for name in spec:
        assert np.array_equal(sums[name], expected.sums[name])  # the same operations, the same bits
    # a repeated delivery (or a retry under a new activation) finds the stored sum: first write wins
    again = client.handle(_pack_payload("pk", [0, 2, 3]), db=nx_db)
    assert again["duplicate"] and again["sha256"] == ack["sha256"] and again["activation_id"] == ack["activation_id"]
    assert nx_db.partials.count_documents({"_id": ack["key"]}) == 1


def test_a_client_whose_training_fails_is_listed_and_the_pack_goes_on(nx_db: Any, monkeypatch: Any) -> None:
    client = load_handler("fl_client", "fk_pack_client_fail")
    _init(nx_db, "pf")
    original = client._Call.train

    def train(self: Any, client_id: int, **kwargs: Any) -> Any:
        if client_id == 1:
            raise ValueError("fl_client: the trained weights['w1'] is not finite (training diverged?)")
        return original(self, client_id, **kwargs)

    monkeypatch.setattr(client._Call, "train", train)
    ack = client.handle(_pack_payload("pf", [0, 1, 2]), db=nx_db)
    assert ack["clients"] == [0, 2]
    assert [(r["client_id"], r["reason"]) for r in ack["rejected"]] == [(1, "training_failed")]
    assert "not finite" in ack["rejected"][0]["detail"]


def test_non_finite_sums_send_the_pack_through_again_with_each_update_checked(nx_db: Any) -> None:
    """The first pass checks only the sums; an overflowing poisoned update makes them infinite, and the careful
    pass names every client whose update is not finite instead of storing a sum of infinities."""
    client = load_handler("fl_client", "fk_pack_client_inf")
    _init(nx_db, "pi")
    payload = _pack_payload("pi", [0, 1, 2])
    payload["local_fault_poison_scale"] = 1e300  # previous + 1e300 * delta: infinite in float32
    ack = client.handle(payload, db=nx_db)
    assert ack["clients"] == [] and sorted(r["client_id"] for r in ack["rejected"]) == [0, 1, 2]
    assert {r["reason"] for r in ack["rejected"]} == {"not_finite"}
    sums, doc = BlobStore(nx_db).read_partial("pi", 1, ack["key"], partials.sum_spec(
        {name: (tuple(w.shape), w.dtype) for name, w in BlobStore(nx_db).read_model("pi", 0)[0].items()}))
    assert doc["count"] == 0 and all(np.all(v == 0) for v in sums.values())


@pytest.mark.parametrize("pack, message", [
    ({"index": 0, "clients": []}, "params.pack.clients must be a list of 1 to"),
    ({"index": 0, "clients": [2, 1]}, "distinct and in ascending order"),
    ({"index": 0, "clients": [1, 1]}, "distinct and in ascending order"),
    ({"index": 0, "clients": [0, 4]}, "holds 4 is not below params.num_clients 4"),
    ({"index": 0, "clients": [0, True]}, "params.pack.clients must be a list"),
    ({"index": -1, "clients": [0]}, "params.pack.index must be an integer >= 0"),
    ({"clients": [0]}, "params.pack.index must be an integer >= 0"),
    ("all", "params.pack must be Mapping"),
])
def test_a_bad_pack_is_refused_before_anything_is_trained(nx_db: Any, pack: Any, message: str) -> None:
    client = load_handler("fl_client", "fk_pack_client_bad")
    _init(nx_db, "pb")
    payload = _pack_payload("pb", [0])
    payload["pack"] = pack
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        client.handle(payload, db=nx_db)
    assert nx_db.partials.count_documents({}) == 0


# ---------------------------------------------------------------------------------------- config checks


def _fl_config(**fl: Any) -> str:
    text = yaml.safe_load(experiment_yaml("mongodb://127.0.0.1:1", clusters={"lab": {}}, placement={"lab": 8},
                                          per_round=8, clients_per_invocation=4))
    for key, value in fl.items():
        text["scenarios"]["federated_learning"][key] = value
    return yaml.safe_dump(text)


@pytest.mark.parametrize("fl, says", [
    ({"strategy": {"name": "krum"}}, "strategy 'krum' needs every update on its own"),
    ({"mode": {"name": "buffered"}}, "mode buffered takes updates one by one"),
    ({"privacy": {"mode": "central", "noise_multiplier": 1.0, "clip_norm": 1.0}},
     "central differential privacy clips each client's update"),
    ({"resilience": {"overselect": 0.5}}, "over-selection"),
])
def test_validate_refuses_what_a_pack_cannot_do(fl: dict[str, Any], says: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_text(_fl_config(**fl), source=str(tmp_path / "c.yaml"), base_dir=tmp_path)
    issues = [i for i in caught.value.issues if i.path.endswith("clients_info.clients_per_invocation")]
    assert issues and says in issues[0].message, [str(i) for i in caught.value.issues]


def test_validate_takes_packing_with_the_fedavg_family(tmp_path: Path) -> None:
    config = load_text(_fl_config(strategy={"name": "fedadam"}), source=str(tmp_path / "c.yaml"), base_dir=tmp_path)
    assert config.scenarios.federated_learning.clients_info.clients_per_invocation == 4


# ------------------------------------------------------------------------------------------- whole runs


def _model(run: Run, round_number: int) -> dict[str, np.ndarray]:
    weights, _ = BlobStore(run.db).read_model(run.run_id, round_number)
    return weights


TWO_CLUSTERS = dict(clusters={"a": {}, "b": {}}, placement={"a": 7, "b": 5}, per_round=10, rounds=3)


@pytest.mark.integration
def test_a_packed_run_gives_the_flat_runs_model_and_the_same_bits_every_time(loop: Loop) -> None:
    flat = loop.start(loop.yaml(clients_per_invocation=1, **TWO_CLUSTERS)[0], workdir="flat")
    packed = loop.start(loop.yaml(clients_per_invocation=3, **TWO_CLUSTERS)[0], workdir="packed")
    again = loop.start(loop.yaml(clients_per_invocation=3, **TWO_CLUSTERS)[0], workdir="again")
    assert flat.summary["status"] == packed.summary["status"] == "completed"
    a, b = _model(flat, 3), _model(packed, 3)
    for name in a:  # float64 sums in another association: the last bits at most
        np.testing.assert_allclose(b[name], a[name], rtol=0, atol=1e-6)
    assert packed.summary["model_sha256"] == again.summary["model_sha256"]
    # one activation per pack, each naming its clients; packs never straddle a cluster
    for r in (1, 2, 3):
        records = packed.store_activations(r)
        assert all(rec["state"] == "succeeded" for rec in records)
        covered = sorted(c for rec in records for c in rec["clients"])
        assert len(covered) == 10 and len(records) < 10
        for rec in records:
            assert {("a" if c < 7 else "b") for c in rec["clients"]} == {rec["cluster"]}
            assert rec["client_id"] == rec["clients"][0]
    rows = packed.rounds()
    assert [int(r["aggregated"]) for r in rows] == [10, 10, 10]
    aggregated = packed.events("updates_aggregated")[-1]["clients"]
    assert sorted(c["client_id"] for c in aggregated) == sorted(
        c["client_id"] for c in flat.events("updates_aggregated")[-1]["clients"])
    assert packed.db.partials.count_documents({}) == 0  # the final invocation deletes the round's partials
    # `report --clients` with the store at hand: a packed client has no update document; the event gives its count
    from fedkeeper.results.clients import client_stats
    from fedkeeper.results.run_folders import load_run

    stats = {row["client_id"]: row for row in client_stats(
        load_run(packed.folder), lambda r: BlobStore(packed.db).list_updates(packed.run_id, r))["clients"]}
    flat_stats = {row["client_id"]: row for row in client_stats(
        load_run(flat.folder), lambda r: BlobStore(flat.db).list_updates(flat.run_id, r))["clients"]}
    assert {c: (r["aggregated"], r["examples"]) for c, r in stats.items()} == \
        {c: (r["aggregated"], r["examples"]) for c, r in flat_stats.items()}


@pytest.mark.integration
def test_a_lost_quorum_resumes_without_running_the_stored_packs_again(loop: Loop) -> None:
    failing = dict(clusters={"lab": {}, "bad": {"faults": {"failure_rate": 1.0}}}, placement={"lab": 4, "bad": 4},
                   per_round=8, rounds=2, resilience={"max_attempts": 1, "min_fraction": 0.75})
    text, db = loop.yaml(clients_per_invocation=2, **failing)
    first = loop.start(text, workdir="w")
    assert first.summary["status"] == "quorum_lost"
    assert "round 1: only 4 of 8 selected clients were trained in packs" in first.summary["reason"]
    run_id = first.run_id
    stored = list(loop.client[db].partials.find({"run_id": run_id}, {"_id": 1, "clients": 1}))
    assert sorted(c for d in stored for c in d["clients"]) == [0, 1, 2, 3]

    healthy = text.replace("failure_rate: 1.0", "failure_rate: 0.0")
    resumed = loop.start(healthy, workdir="w", resume=run_id)
    assert resumed.summary["status"] == "completed" and resumed.summary["rounds_completed"] == 2
    by_pack: dict[int, list[tuple[int, str]]] = {}
    for rec in resumed.store_activations(1):
        by_pack.setdefault(rec["client_id"], []).append((rec["attempt"], rec["state"]))
    assert by_pack[0] == by_pack[2] == [(1, "succeeded")]  # stored before: not run again
    assert sorted(by_pack[4]) == sorted(by_pack[6]) == [(1, "failed"), (2, "succeeded")]
    reliable = {**failing, "clusters": {"lab": {}, "bad": {}}}
    reference = loop.start(loop.yaml(clients_per_invocation=2, **reliable)[0], workdir="ref")
    assert resumed.summary["model_sha256"] == reference.summary["model_sha256"]


@pytest.mark.parametrize("change, says", [
    ({"key": "run:1:partial:1:0:forged"}, "names partial"),
    ({"clients": [0, 1, 5]}, "covers clients"),
    ({"examples": [3, 0, 2]}, "not a positive integer"),
    ({"examples": [3, True, 2]}, "not a positive integer"),
    ({"examples": [3]}, "does not list its clients"),
    ({"rejected": "none"}, "does not list its clients"),
])
def test_a_packs_answer_is_checked_before_it_is_aggregated(change: dict[str, Any], says: str) -> None:
    from fedkeeper.scenarios.rounds.packed import _ack_problem

    pack = packing.plan_packs("run", 1, [0, 1, 2], 3, lambda c: "a", None)[0]
    ack = {"key": pack.key, "clients": [0, 1, 2], "examples": [3, 4, 2], "rejected": []}
    assert _ack_problem(ack, pack) is None
    assert _ack_problem({**ack, "clients": [0, 2], "examples": [3, 2],
                         "rejected": [{"client_id": 1, "reason": "training_failed"}]}, pack) is None
    problem = _ack_problem({**ack, **change}, pack)
    assert problem is not None and says in problem


@pytest.mark.integration
def test_local_privacy_is_packed_per_client_and_repeats_bit_for_bit(loop: Loop) -> None:
    """Under local DP each client of a pack noises its own update (its seed: the client's), and the pack's key
    covers the privacy parameters the function received, so the orchestrator finds what it stored."""
    def text(pack: int) -> str:
        data = yaml.safe_load(loop.yaml(clients_per_invocation=pack, clusters={"lab": {}}, placement={"lab": 6},
                                        per_round=6, rounds=2)[0])
        data["scenarios"]["federated_learning"]["privacy"] = {"mode": "local", "noise_multiplier": 0.5,
                                                              "clip_norm": 1.0}
        return yaml.safe_dump(data, sort_keys=False)

    flat, packed, again = (loop.start(text(k), workdir=w) for k, w in ((1, "flat"), (3, "packed"), (3, "again")))
    assert packed.summary["status"] == "completed" and packed.summary["rounds_completed"] == 2
    assert packed.summary["model_sha256"] == again.summary["model_sha256"]
    a, b = _model(flat, 2), _model(packed, 2)
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=0, atol=1e-6)
    assert [len(rec["clients"]) for rec in packed.store_activations(1)] == [3, 3]


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.sampled_from([1, 7, 640, 32768, 32769, 70000]), min_size=1, max_size=3),
       dtype=st.sampled_from([np.float32, np.float64]), counts=st.lists(st.integers(1, 5000), min_size=1, max_size=4),
       seed=st.integers(0, 2**16))
def test_a_partial_sum_is_the_flat_means_bits(sizes: list[int], dtype: Any, counts: list[int], seed: int) -> None:
    """A pack's sum (`PartialSum.add_update`: one step for arrays of one chunk, chunked above) gives the flat
    aggregation's `StreamingMean` bits, so a pack of all clients is the flat model."""
    from fedkeeper.runtime.strategies.streaming import StreamingMean

    rng = np.random.default_rng(seed)
    spec = {f"w{i}": ((n,), np.dtype(dtype)) for i, n in enumerate(sizes)}
    flat, part = StreamingMean(threads=1), partials.PartialSum.empty(partials.MEAN, spec)
    flat.begin(spec)
    for client, n in enumerate(counts):
        update = {name: (rng.standard_normal(shape) * 3).astype(dtype) for name, (shape, _) in spec.items()}
        flat.add(update, n, client)
        part.add_update(client, update, n)
    for name, value in flat.result().items():
        assert np.array_equal(part.mean()[name], value)


@pytest.mark.integration
def test_a_stored_pack_that_does_not_cover_its_clients_stops_the_resumed_round(loop: Loop) -> None:
    """A resumed round reads the packs stored by an earlier session; one whose clients are not the pack's (a
    tampered document) is refused with the key it was found under, nothing aggregated from it."""
    failing = dict(clusters={"lab": {}, "bad": {"faults": {"failure_rate": 1.0}}}, placement={"lab": 4, "bad": 4},
                   per_round=8, rounds=1, resilience={"max_attempts": 1, "min_fraction": 0.75})
    text, db = loop.yaml(clients_per_invocation=2, **failing)
    first = loop.start(text, workdir="w")
    assert first.summary["status"] == "quorum_lost"
    docs = loop.client[db].partials.find({"run_id": first.run_id}, {"clients": 1})
    (pack0,) = [d["_id"] for d in docs if d["clients"] == [0, 1]]
    loop.client[db].partials.update_one({"_id": pack0}, {"$set": {"clients": [0, 7]}})
    resumed = loop.start(text.replace("failure_rate: 1.0", "failure_rate: 0.0"), workdir="w", resume=first.run_id)
    assert resumed.summary["status"] == "failed"
    assert "the stored partial of pack 0" in resumed.summary["reason"] and "covers clients" in \
        resumed.summary["reason"]
    assert loop.client[db].models.count_documents({"run_id": first.run_id, "round": 1}) == 0

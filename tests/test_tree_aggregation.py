"""Tree (hierarchical) aggregation: the plan, when `auto` splits, the function's `partial`/`combine` modes against
flat aggregation (same bits), resume and idempotence, the store's partial documents and their collection, the
config, and a run end to end. The same tree on every platform's fake: tests/test_tree_platforms.py."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any
from collections.abc import Iterator

import pymongo
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import tree_support as TS
from function_support import load_handler
from fedkeeper import config as cfg
from fedkeeper.config import ConfigError
from fedkeeper.runtime import partials
from fedkeeper.runtime.blobstore import BlobStore
from fedkeeper.runtime.strategies import make_strategy
from fedkeeper.scenarios import tree_aggregation as T
from round_support import experiment_yaml, start_in_process

DP = {"mode": "central", "noise_multiplier": 0.5, "clip_norm": 1.0, "adaptive": True, "seed": 7,
      "count_noise_multiplier": 1.0}


def _handler() -> Any:
    return load_handler("fl_server_aggregator", "fk_tree_handler")


H = _handler()


# ------------------------------------------------------------------------------------------------ the plan


@pytest.mark.parametrize(("n", "k", "sizes"), [
    (0, 2, []), (5, 10, []), (10, 10, []), (11, 10, [2]), (100, 10, [10]), (101, 10, [11, 2]),
    (1000, 10, [100, 10]), (1001, 10, [101, 11, 2]), (8, 2, [4, 2]), (9, 2, [5, 3, 2]), (1000, 32, [32]),
])
def test_level_sizes(n: int, k: int, sizes: list[int]) -> None:
    assert T.level_sizes(n, k) == sizes


def test_level_sizes_refuses_a_fan_in_below_two() -> None:
    with pytest.raises(ValueError, match="fan_in"):
        T.level_sizes(10, 1)


def _entries(n: int) -> list[dict[str, Any]]:
    return [{"client_id": c, "activation_id": f"a{c}", "attempt": 1} for c in range(n)]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(min_value=3, max_value=700), k=st.integers(min_value=2, max_value=40),
       dp=st.booleans())
def test_the_plan_covers_every_update_once_in_order_within_the_fan_in(n: int, k: int, dp: bool) -> None:
    if n <= k:
        with pytest.raises(ValueError, match="no tree"):
            T.build_plan("run", 1, _entries(n), k, DP if dp else None, n)
        return
    plan = T.build_plan("run", 1, _entries(n), k, DP if dp else None, n)
    assert plan.sizes() == T.level_sizes(n, k) and plan.height == len(plan.sizes()) + 1
    leaves = plan.levels[0]
    assert [u["client_id"] for node in leaves for u in node.updates] == list(range(n))  # once, ascending
    assert len(plan.root_parts) <= k
    for depth, level in enumerate(plan.levels, start=1):
        widths = [len(node.updates) if depth == 1 else len(node.parts) for node in level]
        assert all(1 <= w <= k for w in widths) and max(widths) - min(widths) <= 1  # balanced
        assert [node.index for node in level] == list(range(len(level)))
        if depth > 1:  # every child of the level below once, in order
            assert [p for node in level for p in node.parts] == [node.key for node in plan.levels[depth - 2]]
    assert list(plan.root_parts) == [node.key for node in plan.levels[-1]]
    keys = [node.key for level in plan.levels for node in level]
    assert len(set(keys)) == len(keys)
    # the function computes the same key from what it is sent
    node = leaves[0]
    kind = partials.DP if dp else partials.MEAN
    assert node.key == partials.partial_key("run", 1, 1, 0, partials.inputs_digest(kind, DP if dp else None,
                                                                                    list(node.updates)))


def test_a_different_cohort_fan_in_or_privacy_gives_other_keys() -> None:
    plan = T.build_plan("run", 1, _entries(8), 2, None, 8)
    keys = {node.key for level in plan.levels for node in level}
    other_cohort = T.build_plan("run", 1, _entries(9)[1:], 2, None, 9)
    other_fan_in = T.build_plan("run", 1, _entries(8), 3, None, 8)
    with_dp = T.build_plan("run", 1, _entries(8), 2, DP, 8)
    for other in (other_cohort, other_fan_in, with_dp):
        assert not keys & {node.key for level in other.levels for node in level}


def test_needed_skips_what_is_stored_and_the_subtrees_under_it() -> None:
    plan = T.build_plan("run", 1, _entries(8), 2, None, 8)  # levels [4, 2]
    assert [len(x) for x in plan.needed(set())] == [4, 2]
    level1 = {node.key for node in plan.levels[0]}
    assert [len(x) for x in plan.needed(level1)] == [0, 2]  # killed after the leaves
    assert [len(x) for x in plan.needed({plan.levels[1][0].key})] == [2, 1]  # one inner node stored
    assert [len(x) for x in plan.needed(set(plan.root_parts))] == [0, 0]


# ------------------------------------------------------------------------------------------------ when


def test_decide() -> None:
    fedavg, median = make_strategy("fedavg"), make_strategy("fedmedian")
    common = dict(model_bytes=40_000, memory_mb=256, timeout_s=60.0)
    assert not T.decide("off", 4, 10_000, fedavg, per_update_s=1.0, **common).tree
    assert not T.decide("on", 16, 16, fedavg, per_update_s=None, **common).tree  # fits one node
    assert T.decide("on", 16, 17, fedavg, per_update_s=None, **common).tree
    with pytest.raises(Exception, match="every update"):
        T.decide("on", 16, 100, median, per_update_s=None, **common)
    assert not T.decide("auto", 16, 10_000, median, per_update_s=1.0, **common).tree
    # auto: time, measured or estimated
    assert not T.decide("auto", 16, 100, fedavg, per_update_s=0.01, **common).tree  # 1 s of 60
    slow = T.decide("auto", 16, 100, fedavg, per_update_s=0.5, **common)  # 50 s > 30 s
    assert slow.tree and "measured" in slow.reason and slow.flat_time_s == pytest.approx(50.0)
    assert T.decide("auto", 16, 20_000, fedavg, per_update_s=None, **common).tree  # 3.4 ms x 20,000 = 68 s
    # auto: memory (a model whose flat aggregation needs more than the aggregator has)
    big = T.decide("auto", 16, 100, fedavg, model_bytes=200 * 2**20, memory_mb=512, timeout_s=1e6,
                   per_update_s=0.0)
    assert big.tree and "MB" in big.reason


# ------------------------------------------------------------------------------------------------ the function


def _run_tree(db: Any, run_id: str, entries: list[dict[str, Any]], fan_in: int, *, strategy: Any = None,
              privacy: Any = None, stop_at_level: int | None = None) -> dict[str, Any] | None:
    """The tree's nodes in plan order, in this process (the orchestrator's payloads); `stop_at_level`: a kill
    before that level's first node."""
    plan = T.build_plan(run_id, 1, entries, fan_in, privacy, TS.N)
    base = TS.base(run_id, strategy=strategy, privacy=privacy)
    for level in plan.levels:
        for node in level:
            if node.level == stop_at_level:
                return None
            body = dict(base, mode="partial", level=node.level, index=node.index)
            body.update(updates=list(node.updates)) if node.level == 1 else body.update(parts=list(node.parts))
            out = H.handle(body, db=db)
            assert out["key"] == node.key
    if stop_at_level is not None and stop_at_level >= plan.height:
        return None
    return H.handle(dict(base, mode="combine", parts=list(plan.root_parts), level=plan.height), db=db)


@pytest.mark.parametrize(("strategy", "privacy"), [
    ({"name": "fedavg"}, None),
    ({"name": "fedadam", "server_learning_rate": 0.1}, None),
    ({"name": "fedavg"}, DP),
], ids=["fedavg", "fedadam", "central-dp"])
@pytest.mark.parametrize("fan_in", [2, 3])
def test_tree_gives_the_flat_model(nx_db: Any, strategy: dict[str, Any], privacy: Any, fan_in: int) -> None:
    store = BlobStore(nx_db)
    flat, tree = "flat", "tree"
    entries = TS.seed_round(store, H.handle, flat, db=nx_db)
    TS.seed_round(store, H.handle, tree, db=nx_db)
    entries[5] = dict(entries[5], attempt=2)  # forged: not the activation that wrote the update → rejected
    flat_result = H.handle(dict(TS.base(flat, strategy=strategy, privacy=privacy), mode="aggregate",
                                updates=entries), db=nx_db)
    tree_result = _run_tree(nx_db, tree, entries, fan_in, strategy=strategy, privacy=privacy)
    assert tree_result is not None
    assert TS.models_equal(store, flat, tree) == (0, 0.0)  # summed in plan order: here the same bits
    for key in ("accuracy", "loss", "num_updates", "rejected", "clip_norm", "unclipped_fraction"):
        assert tree_result.get(key) == flat_result.get(key), key
    assert [r["client_id"] for r in tree_result["rejected"]] == [5]
    flat_doc, tree_doc = store.get_model_doc(flat, 1), store.get_model_doc(tree, 1)
    assert tree_doc["metrics"]["clients"] == flat_doc["metrics"]["clients"]
    assert tree_doc["metrics"]["num_examples"] == flat_doc["metrics"]["num_examples"]
    assert tree_doc.get("state_sha256") == flat_doc.get("state_sha256")
    assert nx_db.partials.count_documents({"run_id": tree}) == 0  # the model committed: its intermediates went


def test_a_tree_killed_between_levels_resumes_to_the_same_model(nx_db: Any) -> None:
    store = BlobStore(nx_db)
    entries = TS.seed_round(store, H.handle, "whole", db=nx_db)
    TS.seed_round(store, H.handle, "killed", db=nx_db)
    assert _run_tree(nx_db, "whole", entries, 2, privacy=DP) is not None
    assert _run_tree(nx_db, "killed", entries, 2, privacy=DP, stop_at_level=2) is None
    assert nx_db.partials.count_documents({"run_id": "killed", "level": 1}) == 4
    assert nx_db.partials.count_documents({"run_id": "killed", "level": 2}) == 0
    stored = {d["_id"]: d["write_id"] for d in nx_db.partials.find({"run_id": "killed"}, {"write_id": 1})}
    plan = T.build_plan("killed", 1, entries, 2, DP, TS.N)
    assert set(stored) == {node.key for node in plan.levels[0]} == set(store.partials_present(stored))
    # a leaf invoked again (a retry, a duplicate) finds its partial and changes nothing
    leaf = plan.levels[0][0]
    again = H.handle(dict(TS.base("killed", privacy=DP), mode="partial", level=1, index=0,
                          updates=list(leaf.updates)), db=nx_db)
    assert again["already_done"] and again["key"] == leaf.key
    assert {d["_id"]: d["write_id"] for d in nx_db.partials.find({"run_id": "killed"}, {"write_id": 1})} == stored
    # the resume: only the missing levels run (the orchestrator asks the store, tree_aggregation.TreePlan.needed)
    for node in plan.needed(set(stored))[1]:
        H.handle(dict(TS.base("killed", privacy=DP), mode="partial", level=2, index=node.index,
                      parts=list(node.parts)), db=nx_db)
    result = H.handle(dict(TS.base("killed", privacy=DP), mode="combine", parts=list(plan.root_parts), level=3),
                      db=nx_db)
    assert not result["already_done"]
    assert TS.models_equal(store, "whole", "killed") == (0, 0.0)
    repeated = H.handle(dict(TS.base("killed", privacy=DP), mode="combine", parts=list(plan.root_parts), level=3),
                        db=nx_db)
    assert repeated["already_done"] and repeated["model_sha256"] == result["model_sha256"]


def test_a_missing_or_corrupt_partial_fails_the_combining_node(nx_db: Any) -> None:
    store = BlobStore(nx_db)
    entries = TS.seed_round(store, H.handle, "r", db=nx_db)
    assert _run_tree(nx_db, "r", entries, 4, stop_at_level=2) is None  # the leaves only: 2 nodes of 4
    plan = T.build_plan("r", 1, entries, 4, None, TS.N)
    nx_db.partials.update_one({"_id": plan.root_parts[1]}, {"$set": {"sha256": "0" * 64}})
    with pytest.raises(ValueError, match="checksum"):
        H.handle(dict(TS.base("r"), mode="combine", parts=list(plan.root_parts)), db=nx_db)
    nx_db.partials.delete_one({"_id": plan.root_parts[1]})
    with pytest.raises(ValueError, match="not stored"):
        H.handle(dict(TS.base("r"), mode="combine", parts=list(plan.root_parts)), db=nx_db)
    assert store.get_model_doc("r", 1) is None


def test_the_function_refuses_order_statistics_and_stale_updates(nx_db: Any) -> None:
    body = dict(TS.base("r", strategy={"name": "fedmedian"}), mode="partial", level=1, index=0, updates=[])
    with pytest.raises(ValueError, match="every update at once"):
        H.handle(body, db=nx_db)
    with pytest.raises(ValueError, match="stale"):
        H.handle(dict(TS.base("r"), mode="combine", parts=["x"], staleness={"weighting": "constant"}), db=nx_db)


def test_partials_are_collected_with_updates_and_by_delete_run(nx_db: Any) -> None:
    store = BlobStore(nx_db, inline_limit=1024)  # the partials go to GridFS: their files must go too
    entries = TS.seed_round(store, H.handle, "r", db=nx_db)
    for run_id in ("r", "s"):
        if run_id == "s":
            TS.seed_round(store, H.handle, "s", db=nx_db)
        for index, chunk in enumerate((entries[:4], entries[4:])):
            key = partials.partial_key(run_id, 1, 1, index, partials.inputs_digest("mean", None, chunk))
            total = partials.PartialSum.empty("mean", {"w": ((1000,), "<f4")})  # 8 KB: over the inline limit
            store.write_partial(key, run_id, 1, 1, index, total.sums, total.meta())
    def files() -> int:
        return sum((f.get("metadata") or {}).get("collection") == "partials" for f in nx_db["fs.files"].find())

    assert files() == 4 and store.partials_present([]) == set()
    store.gc_updates("r", through_round=0)
    assert nx_db.partials.count_documents({"run_id": "r"}) == 2
    store.gc_updates("r", through_round=1)
    assert nx_db.partials.count_documents({"run_id": "r"}) == 0
    assert store.delete_run("s") >= 2 and nx_db.partials.count_documents({}) == 0
    assert files() == 0


# ------------------------------------------------------------------------------------------------ config


def _config(aggregation: Any, strategy: dict[str, Any] | None = None) -> str:
    data = yaml.safe_load(experiment_yaml("mongodb://127.0.0.1:1", clusters={"lab": {}}, placement={"lab": 4}))
    fl = data["scenarios"]["federated_learning"]
    fl["aggregation"] = aggregation
    if strategy is not None:
        fl["strategy"] = strategy
    return yaml.safe_dump(data, sort_keys=False)


def test_config_aggregation_section() -> None:
    assert cfg.load_text(_config({"fan_in": 4}), env={}).fl.aggregation.tree == "auto"
    bare_on = _config({}).replace("aggregation: {}", "aggregation: {tree: on, fan_in: 3}")
    assert cfg.load_text(bare_on, env={}).fl.aggregation.model_dump() == {"tree": "on", "fan_in": 3}
    with pytest.raises(ConfigError) as info:
        cfg.load_text(_config({"tree": "on"}, {"name": "trimmed_mean", "beta": 0.1}), env={})
    messages = {issue.path: issue.message for issue in info.value.issues}
    assert "every update" in messages["scenarios.federated_learning.aggregation.tree"]
    assert cfg.load_text(_config({"tree": "auto"}, {"name": "krum"}), env={})  # auto: never splits krum
    with pytest.raises(ConfigError) as info:
        cfg.load_text(_config({"fan_in": 1}), env={})
    assert any(i.path.endswith("aggregation.fan_in") for i in info.value.issues)


# ------------------------------------------------------------------------------------------------ a run


@pytest.fixture
def client(nx_server: str) -> Iterator[pymongo.MongoClient]:
    made: pymongo.MongoClient = pymongo.MongoClient(nx_server, serverSelectionTimeoutMS=5000)
    names: list[str] = []
    made.fk_names = names  # type: ignore[attr-defined]
    try:
        yield made
    finally:
        for name in names:
            made.drop_database(name)
        made.close()


@pytest.mark.integration
@pytest.mark.slow
def test_a_run_with_tree_aggregation_gives_the_model_of_a_flat_run(client: Any, nx_server: str,
                                                                  tmp_path: Path) -> None:
    shas, runs = {}, {}
    for tree in ("off", "on"):
        db = f"t_{uuid.uuid4().hex[:12]}"
        client.fk_names.append(db)
        data = yaml.safe_load(experiment_yaml(nx_server, db=db, clusters={"lab": {"concurrency": 2}},
                                              placement={"lab": 6}, rounds=2, per_round=5))
        data["providers"]["local"]["agg"]["concurrency"] = 2
        data["scenarios"]["federated_learning"]["aggregation"] = {"tree": tree, "fan_in": 2}
        folder = tmp_path / tree
        folder.mkdir()
        run = start_in_process(folder, yaml.safe_dump(data, sort_keys=False), client)
        assert run.summary["status"] == "completed", run.summary
        shas[tree], runs[tree] = run.summary["model_sha256"], run
    assert shas["on"] == shas["off"]
    records = list(runs["on"].db["activations"].find({"function": "fl_server_aggregator", "round": 1}))
    levels = sorted((r.get("level"), r.get("part")) for r in records)
    assert levels == [(1, "1.0"), (1, "1.1"), (1, "1.2"), (2, "2.0"), (2, "2.1"), (3, "root")]  # 5 → [3, 2] → 1
    events = [e for e in runs["on"].events() if e.get("event") == "tree_aggregation"]
    assert [e["levels"] for e in events] == [[3, 2], [3, 2]]
    rows = runs["on"].rounds()
    assert [int(r["aggregated"]) for r in rows] == [5, 5]
    assert runs["on"].summary["totals"]["aggregated"] == runs["off"].summary["totals"]["aggregated"]

"""Tree aggregation on every platform's fake (tests/contract/platforms.py gives each registered platform): the real
aggregator zip deployed there, the tree's levels issued through the tracker (tree_aggregation.TreeAggregation),
against a flat aggregation of the same updates through the same platform, and an orchestrator killed between two
levels whose successor resumes from the stored partials. One parametrized test per registry kind."""

from __future__ import annotations

import logging
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymongo
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "contract"))
from platforms import CLUSTER, HARNESSES, Harness  # noqa: E402

import tree_support as TS  # noqa: E402
from function_support import load_handler  # noqa: E402
from fedkeeper import packaging  # noqa: E402
from fedkeeper.activations import JobState  # noqa: E402
from fedkeeper.config.models import Resilience  # noqa: E402
from fedkeeper.providers import registry  # noqa: E402
from fedkeeper.providers.base import LABEL_DIGEST, LABEL_EXPERIMENT, LABEL_FUNCTION, DeploySpec, spec_digest  # noqa: E402
from fedkeeper.runtime.blobstore import BlobStore  # noqa: E402
from fedkeeper.scenarios import tree_aggregation as T  # noqa: E402
from fedkeeper.tracker import Job, Tracker  # noqa: E402

pytestmark = pytest.mark.integration

NAME = "fk-treeexp-agg"  # a DNS-1035 label: every platform takes it
FAN_IN = 2  # 8 updates: levels [4, 2], then the final node


def _handler() -> Any:
    return load_handler("fl_server_aggregator", "fk_tree_pf_handler")


class _Fabric:
    """The tracker's view of one cluster (`TrackerFabric`)."""

    def __init__(self, provider: Any, kind: str) -> None:
        self._provider, self._kind = provider, kind

    def provider(self, cluster: str) -> Any:
        return self._provider

    def kind(self, cluster: str) -> str:
        return self._kind

    def max_inflight(self, cluster: str) -> int:
        return 4

    def poll_max_s(self, cluster: str) -> float | None:
        return None


class _Records:
    """Activation records in memory (the tracker's `ActivationStore`)."""

    def __init__(self) -> None:
        self.docs: dict[str, dict[str, Any]] = {}

    def find_activations(self, run_id: str, round: int | None = None, state: Any = None) -> list[dict[str, Any]]:
        return [dict(d) for d in self.docs.values() if d["run_id"] == run_id and (round is None or d["round"] == round)
                and (state is None or d["state"] == state)]

    def record_activations(self, inserts: Any = (), updates: Any = ()) -> None:
        for doc in inserts:
            self.docs[doc["_id"]] = dict(doc)
        for key, fields in updates:
            self.docs[key].update(fields)


class _RunLog:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.logger = logging.getLogger("fedkeeper.test.tree")

    def event(self, name: str, **fields: Any) -> None:
        self.events.append({"event": name, **fields})

    def activation(self, row: Any) -> None:
        self.events.append({"event": "activation", **dict(row)})


class _Store:
    def __init__(self, db: Any) -> None:
        self.blobs = BlobStore(db)

    def get_model_doc(self, run_id: str, round_number: int) -> dict[str, Any] | None:
        return self.blobs.get_model_doc(run_id, round_number)


class Killed(BaseException):
    """The orchestrator's death between two levels (nothing of the next level was issued)."""


#: platforms whose fake takes more than ~10 s here (starting it, or cold starts of the aggregator zip)
SLOW = {"aws", "google", "ray"}


@pytest.fixture(scope="module", params=[pytest.param(k, marks=pytest.mark.slow) if k in SLOW else k
                                        for k in registry.kinds()])
def harness(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    kind = request.param
    if kind not in HARNESSES:
        pytest.fail(f"platform {kind!r} is registered but tests/contract/platforms.py has no harness for it")
    with HARNESSES[kind](tmp_path_factory.mktemp(f"tree-{kind}")) as started:
        yield started


@pytest.fixture
def db(nx_server: str) -> Iterator[Any]:
    client: pymongo.MongoClient = pymongo.MongoClient(nx_server, serverSelectionTimeoutMS=5000)
    name = f"t_{uuid.uuid4().hex[:12]}"
    try:
        yield client[name]
    finally:
        client.drop_database(name)
        client.close()


def _deploy(harness: Harness, provider: Any, nx_server: str, db_name: str) -> None:
    artifact = packaging.build("fl_server_aggregator", harness.kind, packaging.options_for(harness.config()))
    env = {"FK_MONGO_URL": nx_server, "FK_MONGO_DB": db_name}
    digest = spec_digest(artifact.sha256, 512, 60.0, 1, env, {})
    provider.deploy(DeploySpec(name=NAME, function=artifact.function, artifact=artifact.data, digest=digest,
                               memory_mb=512, timeout_s=60.0, env=env,
                               labels={LABEL_EXPERIMENT: "treeexp", LABEL_FUNCTION: artifact.function,
                                       LABEL_DIGEST: digest}))


def _tracker(provider: Any, kind: str, records: _Records, runlog: _RunLog) -> Tracker:
    """An orchestrator's tracker over the platform (a successor gets a new one over the same records)."""
    return Tracker(_Fabric(provider, kind), records, runlog,
                   Resilience(backoff_base_s=0.01, backoff_max_s=0.05, poll_max_s=0.05))


def _tree(run_id: str, db: Any, tracker: Tracker, runlog: _RunLog, *, kill_at_level: int | None = None
          ) -> T.TreeAggregation:
    def make_job(round_number: int, payload: dict[str, Any]) -> Job:
        if payload.get("level") == kill_at_level:
            raise Killed()
        return Job(run_id, round_number, None, CLUSTER, "fl_server_aggregator", NAME, payload, 60.0, 512)

    return T.TreeAggregation(run_id, "on", FAN_IN, None, None, TS.N, 512, 60.0, _Store(db), tracker, make_job,
                             runlog)


def test_tree_on_the_platform_gives_the_flat_model_and_resumes_after_a_kill(
        harness: Harness, db: Any, nx_server: str) -> None:
    provider = harness.provider()
    try:
        _deploy(harness, provider, nx_server, db.name)
        records, runlog = _Records(), _RunLog()
        tracker = _tracker(provider, harness.kind, records, runlog)
        store, handle = BlobStore(db), _handler().handle
        entries = {run: TS.seed_round(store, handle, run, db=db) for run in ("flat", "tree", "killed")}

        flat = Job("flat", 1, None, CLUSTER, "fl_server_aggregator", NAME,
                   dict(TS.base("flat"), mode="aggregate", updates=entries["flat"]), 60.0, 512)
        tracker.run([flat])
        assert flat.state is JobState.SUCCEEDED, flat.error

        plan = T.build_plan("tree", 1, entries["tree"], FAN_IN, None, TS.N)
        result = _tree("tree", db, tracker, runlog).run(plan, dict(TS.base("tree"), mode="aggregate",
                                                                   updates=entries["tree"]), "test")
        assert result["tree"] == {"fan_in": FAN_IN, "levels": [4, 2], "reused": 0}
        assert TS.models_equal(store, "flat", "tree") == (0, 0.0)
        assert result["model_sha256"] == flat.result["model_sha256"]  # the same bytes: the same model
        for key in ("accuracy", "loss", "num_updates", "rejected"):
            assert result[key] == flat.result[key]
        tree_records = [r for r in records.docs.values() if r["run_id"] == "tree"]
        succeeded = sorted((r["level"], r["part"]) for r in tree_records if r["state"] == "succeeded")
        assert succeeded == [(1, "1.0"), (1, "1.1"), (1, "1.2"), (1, "1.3"), (2, "2.0"), (2, "2.1"), (3, "root")], \
            [(r["part"], r["attempt"], r["state"], r.get("error")) for r in tree_records]

        # killed after the leaves: their partials are stored, nothing of level 2
        payload = dict(TS.base("killed"), mode="aggregate", updates=entries["killed"])
        killed_plan = T.build_plan("killed", 1, entries["killed"], FAN_IN, None, TS.N)
        with pytest.raises(Killed):
            _tree("killed", db, tracker, runlog, kill_at_level=2).run(killed_plan, payload, "test")
        assert db.partials.count_documents({"run_id": "killed", "level": 1}) == 4
        assert db.partials.count_documents({"run_id": "killed", "level": 2}) == 0
        # a new orchestrator (its own tracker) resumes: only level 2 and the final node run
        successor = _tracker(provider, harness.kind, records, runlog)
        resumed = _tree("killed", db, successor, runlog).run(killed_plan, payload, "test")
        assert resumed["tree"]["reused"] == 4
        assert TS.models_equal(store, "flat", "killed") == (0, 0.0)
        assert resumed["model_sha256"] == flat.result["model_sha256"]
        leaves = [r for r in records.docs.values() if r["run_id"] == "killed" and r["level"] == 1]
        assert {r["submitted"] for r in leaves} and all(r["submitted"] < min(  # the leaves ran before the kill only
            d["submitted"] for d in records.docs.values() if d["run_id"] == "killed" and d["level"] == 2)
            for r in leaves)
        assert db.partials.count_documents({}) == 0
    finally:
        provider.remove(NAME)
        provider.close()


def _client_payload(run_id: str, client_id: int, pack: list[int] | None = None, index: int = 0) -> dict[str, Any]:
    import fl_payloads as P

    payload = dict(P.client(run_id, 1, client_id), num_clients=TS.N)
    if pack is not None:
        payload["pack"] = {"index": index, "clients": pack}
    return payload


def test_client_packs_combined_on_the_platform_give_the_flat_model_and_resume_after_a_kill(
        harness: Harness, db: Any, nx_server: str) -> None:
    """Client packing (docs/aggregation.md#client-packing): four packs of two clients stored by fl_client, combined
    on the platform through an inner level of fan-in 2 and the final invocation, against a flat aggregation of the
    same clients trained one by one; then an orchestrator killed before the final invocation, resumed."""
    import fl_payloads as P
    from fedkeeper.runtime import partials

    provider = harness.provider()
    try:
        _deploy(harness, provider, nx_server, db.name)
        records, runlog = _Records(), _RunLog()
        tracker = _tracker(provider, harness.kind, records, runlog)
        store, aggregator = BlobStore(db), _handler()
        client = load_handler("fl_client", "fk_tree_pf_client")
        for run in ("flat", "packs", "killed"):
            aggregator.handle(dict(P.init(run)), db=db)
        entries = []
        for c in range(TS.N):
            sent = _client_payload("flat", c)
            ack = client.handle(sent, db=db)
            entries.append({"client_id": c, "activation_id": sent["activation_id"], "attempt": 1,
                            "sha256": ack["sha256"]})
        flat = Job("flat", 1, None, CLUSTER, "fl_server_aggregator", NAME,
                   dict(TS.base("flat"), mode="aggregate", updates=entries), 60.0, 512)
        tracker.run([flat])
        assert flat.state is JobState.SUCCEEDED, flat.error

        def packs(run: str) -> list[str]:
            keys = []
            for index, start in enumerate(range(0, TS.N, 2)):
                ack = client.handle(_client_payload(run, start, [start, start + 1], index), db=db)
                assert ack["key"] == partials.pack_key(run, 1, index, None, [start, start + 1])
                keys.append(ack["key"])
            return keys

        payload = dict(TS.base("packs"), mode="aggregate")
        result = _tree("packs", db, tracker, runlog).combine_stored(1, payload, packs("packs"), "test")
        assert result["tree"] == {"fan_in": FAN_IN, "levels": [2], "reused": 0}
        assert result["num_updates"] == flat.result["num_updates"] == TS.N
        assert TS.models_equal(store, "flat", "packs")[1] <= 1e-6  # float64 sums associated otherwise

        killed_payload = dict(TS.base("killed"), mode="aggregate")
        keys = packs("killed")
        with pytest.raises(Killed):
            _tree("killed", db, tracker, runlog, kill_at_level=3).combine_stored(1, killed_payload, keys, "test")
        assert db.partials.count_documents({"run_id": "killed", "level": 2}) == 2
        successor = _tracker(provider, harness.kind, records, runlog)
        resumed = _tree("killed", db, successor, runlog).combine_stored(1, killed_payload, keys, "test")
        assert resumed["tree"]["reused"] == 2
        assert resumed["model_sha256"] == result["model_sha256"]  # same packs, same plan: the same bits
        assert db.partials.count_documents({}) == 0
    finally:
        provider.remove(NAME)
        provider.close()

"""Batched polling (issue 18): OpenWhisk's `poll_many` lists activations instead of one GET per id, the fake
controller's listing follows the documented behaviour, and the tracker asks a batching cluster once per pass."""

from __future__ import annotations

import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from fake_openwhisk import FakeOpenWhisk
from fedkeeper import packaging
from fedkeeper.config.models import Resilience
from fedkeeper.providers.base import (
    LABEL_DIGEST,
    LABEL_EXPERIMENT,
    LABEL_FUNCTION,
    AuthError,
    DeploySpec,
    Invocation,
    PlatformError,
    Provider,
    State,
    Status,
    spec_digest,
)
from fedkeeper.providers.openwhisk import provider as ow_module
from fedkeeper.providers.openwhisk.client import RetryPolicy
from fedkeeper.providers.openwhisk.config import OpenWhiskCluster
from fedkeeper.providers.openwhisk.provider import OpenWhiskProvider
from fedkeeper.results.runlog import RunLog
from fedkeeper.secrets import Redactor
from fedkeeper.store import Store
from fedkeeper.tracker import Job, Tracker

FAST_RETRY = RetryPolicy(attempts=2, wait_initial_s=0.01, wait_max_s=0.02, throttle_wait_max_s=0.02)
SLEEP = '''
import time

def handle(params):
    time.sleep(float(params.get("seconds", 0)))
    return {"slept": params.get("seconds"), "i": params.get("i")}
'''
N = 12


def spec_for(function: str | Path, name: str) -> DeploySpec:
    artifact = packaging.build(function, "openwhisk")
    env = {"FK_MONGO_URL": "mongodb://127.0.0.1:1/fk", "FK_MONGO_DB": "fk"}
    digest = spec_digest(artifact.sha256, 256, 30.0, 1, env, {})
    return DeploySpec(name=name, function=artifact.function, artifact=artifact.data, digest=digest, memory_mb=256,
                      timeout_s=30.0, concurrency=1, env=env,
                      labels={LABEL_EXPERIMENT: "batch", LABEL_FUNCTION: artifact.function, LABEL_DIGEST: digest})


@pytest.fixture(scope="module")
def sleeper(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ow-fn") / "ow_sleep_echo"
    folder.mkdir()
    (folder / "handler.py").write_text(textwrap.dedent(SLEEP), encoding="utf-8")
    return folder


@pytest.fixture
def ow(fake_openwhisk: FakeOpenWhisk, tmp_path: Path, sleeper: Path) -> Iterator[OpenWhiskProvider]:
    config = OpenWhiskCluster(api_host=fake_openwhisk.url, auth=fake_openwhisk.auth, namespace="_")
    with OpenWhiskProvider("ow-batch", config, workdir=tmp_path, retry=FAST_RETRY) as provider:
        provider.deploy(spec_for(sleeper, "fk-batch-sleep"))
        yield provider


def listings(fake: FakeOpenWhisk) -> list[Any]:
    return [r for r in fake.requests_to("GET") if r.path.endswith("/activations")]


def single_gets(fake: FakeOpenWhisk) -> list[Any]:
    return [r for r in fake.requests_to("GET", "/activations/")]


def settled(ow: OpenWhiskProvider, fake: FakeOpenWhisk, n: int, seconds: float = 0.0) -> list[Invocation]:
    invs = [ow.invoke("fk-batch-sleep", {"i": i, "seconds": seconds}) for i in range(n)]
    assert fake.wait_idle(60)
    return invs


# ---------------------------------------------------------------------------------------------- the fake's listing


def test_fake_lists_activations_as_the_controller_documents(fake_openwhisk: FakeOpenWhisk,
                                                            ow: OpenWhiskProvider) -> None:
    fake = fake_openwhisk
    invs = settled(ow, fake, 5)
    ow.deploy(spec_for("nodeinfo", "fk-batch-other"))
    other = ow.invoke("fk-batch-other", {})
    assert fake.wait_idle(60)
    session = requests.Session()
    session.auth = tuple(fake.auth.split(":", 1))  # type: ignore[assignment]
    url = f"{fake.url}/api/v1/namespaces/_/activations"

    def get(**params: Any) -> requests.Response:
        return session.get(url, params=params, timeout=10)

    records = get(name="fk-batch-sleep", docs="true").json()
    ours = {inv.activation_id for inv in invs}
    assert {r["activationId"] for r in records} == ours  # the name filter
    assert [r["start"] for r in records] == sorted((r["start"] for r in records), reverse=True)  # newest first
    assert all(r == fake.activations[r["activationId"]] for r in records)  # docs=true: whole records
    summaries = get(name="fk-batch-sleep").json()
    assert all("response" not in s and s["statusCode"] == 0 for s in summaries)
    assert other.activation_id in {r["activationId"] for r in get(docs="true").json()}  # no name: the namespace
    starts = sorted(r["start"] for r in records)
    mid = starts[2]
    assert {r["start"] for r in get(name="fk-batch-sleep", since=mid).json()} == set(starts[2:])  # inclusive
    assert {r["start"] for r in get(name="fk-batch-sleep", upto=mid).json()} == set(starts[:3])
    page1 = get(name="fk-batch-sleep", limit=2, docs="true").json()
    page2 = get(name="fk-batch-sleep", limit=2, skip=2, docs="true").json()
    assert page1 + page2 == records[:4]
    assert len(get(name="fk-batch-sleep", limit=0).json()) == 5  # 0: the largest page
    assert get(name="fk-batch-sleep", count="true").json() == {"activations": 5}
    for bad in ({"limit": 201}, {"skip": -1}, {"since": "yesterday"}, {"count": "true", "docs": "true"},
                {"name": "a/b/c"}):
        assert get(**bad).status_code == 400, bad
    fake.list_lag_s = 3600.0  # a stale view: written records not listed yet, while GET by id finds them
    assert get(name="fk-batch-sleep").json() == []
    assert session.get(f"{url}/{invs[0].activation_id}", timeout=10).status_code == 200


# ---------------------------------------------------------------------------------------------- poll_many


def test_n_settled_activations_take_one_listing_instead_of_n_gets(fake_openwhisk: FakeOpenWhisk,
                                                                  ow: OpenWhiskProvider) -> None:
    fake = fake_openwhisk
    invs = settled(ow, fake, N)
    before_lists, before_gets = len(listings(fake)), len(single_gets(fake))
    batch = ow.poll_many(invs)
    assert len(listings(fake)) - before_lists == 1 and len(single_gets(fake)) == before_gets
    query = listings(fake)[-1].query
    assert query["name"] == ["fk-batch-sleep"] and query["docs"] == ["true"] and query["limit"] == ["200"]
    assert int(query["since"][0]) <= int(min(i.submitted for i in invs) * 1000) - 60_000  # clock-skew margin
    singles = {inv.activation_id: ow.poll(inv) for inv in invs}  # the old way: one GET each
    assert len(single_gets(fake)) - before_gets == N
    assert batch == singles
    assert all(s.state is State.SUCCEEDED for s in batch.values())
    assert sorted(s.result["i"] for s in batch.values()) == list(range(N))  # type: ignore[index]


def test_listing_is_paged_until_every_id_is_found(fake_openwhisk: FakeOpenWhisk, ow: OpenWhiskProvider,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    fake = fake_openwhisk
    invs = settled(ow, fake, 7)
    monkeypatch.setattr(ow_module, "_ACTIVATION_PAGE", 3)
    before = len(listings(fake))
    oldest = invs[:1]  # the last page holds it: pages of 3, newest first
    assert ow.poll_many(oldest)[oldest[0].activation_id].state is State.SUCCEEDED
    pages = listings(fake)[before:]
    assert [p.query["skip"] for p in pages] == [["0"], ["3"], ["6"]]
    before = len(listings(fake))
    assert ow.poll_many(invs[-2:])[invs[-1].activation_id].state is State.SUCCEEDED
    assert len(listings(fake)) - before == 1  # both on the first page: no further page is read


def test_running_calls_cost_the_listing_only_and_missed_ids_are_asked_later(
        fake_openwhisk: FakeOpenWhisk, ow: OpenWhiskProvider, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = fake_openwhisk
    running = [ow.invoke("fk-batch-sleep", {"i": i, "seconds": 1.0}) for i in range(3)]
    gets = len(single_gets(fake))
    for _ in range(3):  # a still-running call is not listed: PENDING, and no GET of its own
        assert {s.state for s in ow.poll_many(running).values()} == {State.PENDING}
    assert len(single_gets(fake)) == gets
    assert fake.wait_idle(60)
    fake.list_lag_s = 3600.0  # now they are written but the view does not show them (stale=update_after)
    assert {s.state for s in ow.poll_many(running).values()} == {State.PENDING}
    monkeypatch.setattr(ow_module, "_RECHECK_S", 0.0)
    monkeypatch.setattr(ow_module, "_RECHECK_PER_CALL", 2)
    first = ow.poll_many(running)  # missed for long enough: asked one by one, at most 2 per call
    assert sorted(s.state.value for s in first.values()) == ["pending", "succeeded", "succeeded"]
    assert len(single_gets(fake)) == gets + 2
    left = [inv for inv in running if first[inv.activation_id].state is State.PENDING]
    second = ow.poll_many(left)  # what the tracker asks next: the call still pending
    assert second == {inv.activation_id: ow.poll(inv) for inv in left}
    assert second[left[0].activation_id].state is State.SUCCEEDED
    assert not ow._unlisted  # settled ids are forgotten


def test_a_failing_listing_falls_back_to_single_polls(fake_openwhisk: FakeOpenWhisk, ow: OpenWhiskProvider) -> None:
    fake = fake_openwhisk
    invs = settled(ow, fake, 4)
    gets = len(single_gets(fake))
    for status in (503, 429, 400):
        fake.fail_next(1, status=status)  # the listing only; the single GETs after it are answered
        batch = ow.poll_many(invs)
        assert {s.state for s in batch.values()} == {State.SUCCEEDED} and len(batch) == 4, status
    assert len(single_gets(fake)) == gets + 3 * 4
    fake.fail_next(2, status=502)  # the listing and the first single GET fail: that id is left out (ask again)
    batch = ow.poll_many(invs)
    assert set(batch) == {i.activation_id for i in invs[1:]}


def test_rejected_credentials_still_raise(fake_openwhisk: FakeOpenWhisk, tmp_path: Path) -> None:
    config = OpenWhiskCluster(api_host=fake_openwhisk.url, auth="u-u-i-d:not-the-key", namespace="_")
    with OpenWhiskProvider("ow-bad", config, workdir=tmp_path, retry=FAST_RETRY) as bad:
        with pytest.raises(AuthError):
            bad.poll_many([Invocation("ow-bad", "fk-x", "a" * 32, time.time())])


# ---------------------------------------------------------------------------------------------- tracker


class Batching:
    """A platform that answers for many calls at once; it records how it was asked."""

    batched_poll = True

    def __init__(self, ready_after: int = 1, fail_batches: int = 0, drop: int = 0) -> None:
        self.polls = 0
        self.batches: list[int] = []
        self.ready_after, self.fail_batches, self.drop = ready_after, fail_batches, drop
        self.seen: dict[str, int] = {}

    def invoke(self, name: str, payload: dict[str, Any]) -> Invocation:
        act = f"act-{payload['client_id']}-{payload['attempt']}"
        self.seen[act] = 0
        return Invocation("c1", name, act, time.time())

    def poll(self, inv: Invocation) -> Status:
        self.polls += 1
        return self._status(inv)

    def poll_many(self, invocations: list[Invocation]) -> dict[str, Status]:
        self.batches.append(len(invocations))
        if self.fail_batches:
            self.fail_batches -= 1
            raise PlatformError("c1", "listing failed")
        out = {inv.activation_id: self._status(inv) for inv in invocations}
        for inv in invocations[:self.drop]:  # not asked about this time
            out.pop(inv.activation_id)
        self.drop = 0
        return out

    def _status(self, inv: Invocation) -> Status:
        self.seen[inv.activation_id] += 1
        if self.seen[inv.activation_id] <= self.ready_after:
            return Status(State.PENDING)
        return Status(State.SUCCEEDED, result={"id": inv.activation_id}, duration_s=0.001)


class OneCluster:
    def __init__(self, provider: Any) -> None:
        self._provider = provider

    def provider(self, cluster: str) -> Any:
        return self._provider

    def kind(self, cluster: str) -> str:
        return "openwhisk"

    def max_inflight(self, cluster: str) -> int:
        return 1000

    def poll_max_s(self, cluster: str) -> float | None:
        return None


@pytest.fixture
def tracked(nx_server: str, nx_db: Any, tmp_path: Path) -> Iterator[Any]:
    store = Store(nx_db, url=nx_server)
    store.ensure_indexes()
    runlog = RunLog(tmp_path / "Logs", "run1", Redactor())

    def make(provider: Any, **policy: Any) -> Tracker:
        settings = dict(max_attempts=3, backoff_base_s=0.0, backoff_max_s=0.0, poll_initial_s=0.001,
                        poll_max_s=0.005, timeout_slack_s=0.0)
        settings.update(policy)
        return Tracker(OneCluster(provider), store, runlog, Resilience(**settings))

    yield make
    runlog.close()


def client_jobs(n: int, function_name: str = "fk-x", timeout_s: float = 30.0) -> list[Job]:
    return [Job("run1", 1, c, "c1", "fl_client", function_name, {"client_id": c}, timeout_s, 256) for c in range(n)]


def test_tracker_asks_a_batching_cluster_once_per_pass(tracked: Any) -> None:
    provider = Batching(ready_after=2, fail_batches=1, drop=3)
    tracker = tracked(provider)
    outcome = tracker.run(client_jobs(N))
    assert [j.state for j in outcome.jobs] == ["succeeded"] * N
    assert outcome.counts.retries == 0  # a failed listing or an id left out is asked again, never a failure
    assert provider.batches and max(provider.batches) == N
    assert provider.polls <= 1  # single polls only for a lone due attempt
    assert all(j.result == {"id": f"act-{j.client_id}-1"} for j in outcome.jobs)
    tracker.close()


def test_tracker_without_batching_polls_one_by_one(tracked: Any) -> None:
    provider = Batching(ready_after=1)
    provider.batched_poll = False  # type: ignore[misc]
    tracker = tracked(provider)
    assert [j.state for j in tracker.run(client_jobs(4)).jobs] == ["succeeded"] * 4
    assert not provider.batches and provider.polls >= 8
    tracker.close()


def test_tracker_over_openwhisk_settles_a_round_with_listings(fake_openwhisk: FakeOpenWhisk, ow: OpenWhiskProvider,
                                                               tracked: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same round with and without batching: the same results, and far fewer requests with it."""
    fake = fake_openwhisk
    counted: dict[bool, tuple[int, int]] = {}
    for batched in (False, True):
        monkeypatch.setattr(ow, "batched_poll", batched)
        tracker = tracked(ow, poll_initial_s=0.05, poll_max_s=0.2)
        jobs = [Job(f"run{batched}", 1, c, "c1", "fl_client", "fk-batch-sleep", {"i": c, "seconds": 0.3}, 30.0, 256)
                for c in range(N)]
        gets, lists = len(single_gets(fake)), len(listings(fake))
        outcome = tracker.run(jobs)
        tracker.close()
        assert [j.state for j in outcome.jobs] == ["succeeded"] * N
        assert sorted(j.result["i"] for j in outcome.jobs) == list(range(N))  # type: ignore[index]
        counted[batched] = (len(listings(fake)) - lists, len(single_gets(fake)) - gets)
    print(f"tracker over OpenWhisk, {N} activations of 0.3 s: (listings, single GETs) without batching "
          f"{counted[False]}, with {counted[True]}")
    assert counted[False][0] == 0 and counted[False][1] >= N
    assert counted[True][0] >= 1
    assert 2 * sum(counted[True]) <= sum(counted[False])


def test_every_provider_has_poll_many() -> None:
    assert Provider.batched_poll is False and OpenWhiskProvider.batched_poll is True
    assert OpenWhiskProvider.poll_many is not Provider.poll_many

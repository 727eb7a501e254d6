"""The fake controller behaves like a stock installation, and the provider copes with what a stock one does:
limits refused with the controller's messages, the stock kinds only, annotations merged on update, packaged
actions in listings, newest-first pages that shift under a reader, and `remove` still finding everything.
Each rule is the controller's (apache/openwhisk, cited in tests/fake_openwhisk.py)."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from fake_openwhisk import FakeOpenWhisk
from fedkeeper import config as cfg
from fedkeeper.fabric import Fabric
from fedkeeper.providers.base import LABEL_EXPERIMENT, InvocationFailed
from fedkeeper.providers.openwhisk import limits as ow_limits
from fedkeeper.providers.openwhisk import provider as ow_module
from fedkeeper.providers.openwhisk.config import OpenWhiskCluster
from fedkeeper.providers.openwhisk.provider import OpenWhiskProvider
from test_openwhisk_provider import make_spec

CODE = "def main(args):\n    return {'ok': True}\n"


def put(fake: FakeOpenWhisk, name: str, **body: Any) -> requests.Response:
    body.setdefault("exec", {"kind": "python:3.11", "code": CODE})
    return requests.put(f"{fake.url}/api/v1/namespaces/_/actions/{name}?overwrite=true", json=body, timeout=30,
                        auth=tuple(fake.auth.split(":", 1)))


def listing(fake: FakeOpenWhisk, **query: Any) -> requests.Response:
    return requests.get(f"{fake.url}/api/v1/namespaces/_/actions", params=query, timeout=30,
                        auth=tuple(fake.auth.split(":", 1)))


@pytest.fixture
def provider(fake_openwhisk: FakeOpenWhisk, tmp_path: Path) -> Iterator[OpenWhiskProvider]:
    with OpenWhiskProvider("ow", OpenWhiskCluster(api_host=fake_openwhisk.url, auth=fake_openwhisk.auth),
                           workdir=tmp_path) as p:
        yield p


def test_the_fake_defaults_to_the_stock_limits_of_the_table(fake_openwhisk: FakeOpenWhisk) -> None:
    """application.conf: whisk.memory 128m..512m, whisk.time-limit 100ms..5m, whisk.concurrency-limit 1..1."""
    assert fake_openwhisk.memory_mb == (128, 512) == ow_limits.STOCK.memory_mb
    assert fake_openwhisk.timeout_ms == (100, 300_000) and fake_openwhisk.concurrency == (1, 1)
    assert put(fake_openwhisk, "at-max", limits={"memory": 512, "timeout": 300_000, "concurrency": 1}).ok
    for limits, message in [
        ({"memory": 1024}, "memory size 1024 MB exceeds allowed threshold of 512 MB"),
        ({"memory": 64}, "memory size 64 MB below allowed threshold of 128 MB"),
        ({"timeout": 600_000}, "duration 600000 milliseconds exceeds allowed threshold of 300000 milliseconds"),
        ({"timeout": 50}, "duration 50 milliseconds below allowed threshold of 100 milliseconds"),
        ({"concurrency": 2}, "concurrency 2 exceeds allowed threshold of 1"),
    ]:
        answer = put(fake_openwhisk, "over", limits=limits)
        assert answer.status_code == 400 and answer.json()["error"] == message, limits
    # an update keeps the limits it does not name (Actions.scala, update)
    assert put(fake_openwhisk, "at-max", limits={"timeout": 1000}).ok
    assert fake_openwhisk.actions["at-max"].limits["memory"] == 512


def test_the_fake_offers_the_stock_kinds_only(tmp_path: Path) -> None:
    with FakeOpenWhisk(workdir=tmp_path / "stock") as stock:
        refused = put(stock, "p312", exec={"kind": "python:3.12", "code": CODE})
        assert refused.status_code == 400
        assert refused.json()["error"].startswith("The specified runtime 'python:3.12' is not supported")
        assert put(stock, "pdefault", exec={"kind": "python:default", "code": CODE}).ok
    with FakeOpenWhisk(workdir=tmp_path / "more", kinds=("python:3.11", "python:3.12")) as more:
        assert put(more, "p312", exec={"kind": "python:3.12", "code": CODE}).ok


def test_a_deploy_over_the_stock_memory_is_refused_with_the_controllers_reason(provider: OpenWhiskProvider) -> None:
    with pytest.raises(InvocationFailed, match=r"400: memory size 1024 MB exceeds allowed threshold of 512 MB"):
        provider.deploy(make_spec("nodeinfo", memory=1024))


def test_annotations_are_merged_on_update_and_the_provider_deletes_stale_ones(
        fake_openwhisk: FakeOpenWhisk, tmp_path: Path) -> None:
    assert put(fake_openwhisk, "merge", annotations=[{"key": "a", "value": 1}, {"key": "b", "value": 2}]).ok
    assert put(fake_openwhisk, "merge", annotations=[{"key": "b", "value": 3}, {"key": "c", "value": 4}]).ok
    annotations = {a["key"]: a["value"] for a in fake_openwhisk.actions["merge"].annotations}
    assert annotations == {"a": 1, "b": 3, "c": 4, "exec": "python"}  # old ++ new
    assert put(fake_openwhisk, "merge", annotations=[], delAnnotations=["a"]).ok
    assert "a" not in {a["key"] for a in fake_openwhisk.actions["merge"].annotations}

    cluster = OpenWhiskCluster(api_host=fake_openwhisk.url, auth=fake_openwhisk.auth, annotations={"team": "x"})
    spec = make_spec("nodeinfo")
    with OpenWhiskProvider("ow", cluster, workdir=tmp_path) as p:
        p.deploy(spec)
    assert fake_openwhisk.actions[spec.name].annotation("team") == "x"
    with OpenWhiskProvider("ow", OpenWhiskCluster(api_host=fake_openwhisk.url, auth=fake_openwhisk.auth),
                           workdir=tmp_path) as p:
        assert p.deploy(spec).action == "updated"
    action = fake_openwhisk.actions[spec.name]
    assert action.annotation("team") is None and action.annotation("final") is True


def test_listings_page_newest_first_within_the_controllers_limits(fake_openwhisk: FakeOpenWhisk) -> None:
    for i in range(35):
        assert put(fake_openwhisk, f"a{i:02d}").ok
    assert len(listing(fake_openwhisk).json()) == 30  # whisk.query-limit.default-list-limit
    assert len(listing(fake_openwhisk, limit=0).json()) == 35  # 0: the maximum
    assert [a["name"] for a in listing(fake_openwhisk, limit=3).json()] == ["a34", "a33", "a32"]
    assert [a["name"] for a in listing(fake_openwhisk, limit=2, skip=33).json()] == ["a01", "a00"]
    assert listing(fake_openwhisk, limit=201).status_code == 400
    assert listing(fake_openwhisk, skip=-1).status_code == 400


def test_packaged_actions_are_listed_and_removed(fake_openwhisk: FakeOpenWhisk, provider: OpenWhiskProvider) -> None:
    auth = tuple(fake_openwhisk.auth.split(":", 1))
    base = f"{fake_openwhisk.url}/api/v1/namespaces/_"
    assert put(fake_openwhisk, "tools/fk-owtest-nodeinfo").status_code == 404  # no such package yet
    assert requests.put(f"{base}/packages/tools", json={}, auth=auth, timeout=30).ok
    labels = [{"key": LABEL_EXPERIMENT, "value": "owtest"}]
    assert put(fake_openwhisk, "tools/fk-owtest-nodeinfo", annotations=labels).ok
    provider.deploy(make_spec("nodeinfo"))  # the same short name at the top level
    rows = {(a["namespace"], a["name"]) for a in listing(fake_openwhisk, limit=200).json()}
    assert rows == {("guest/tools", "fk-owtest-nodeinfo"), ("guest", "fk-owtest-nodeinfo")}
    found = sorted(f.name for f in provider.list({LABEL_EXPERIMENT: "owtest"}))
    assert found == ["fk-owtest-nodeinfo", "tools/fk-owtest-nodeinfo"]
    for name in found:
        assert provider.remove(name)
    assert fake_openwhisk.actions == {}


def test_a_listing_finds_actions_that_moved_while_it_was_paged(fake_openwhisk: FakeOpenWhisk,
                                                               provider: OpenWhiskProvider,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Newest first: an action updated between two pages jumps to the front, behind the reader."""
    specs = [make_spec("nodeinfo", name=f"fk-owtest-n{i}") for i in range(5)]
    for spec in specs:
        provider.deploy(spec)
    monkeypatch.setattr(ow_module, "_PAGE", 2)
    original = provider.client.send
    pages = {"n": 0}

    def send(method: str, path: str, **kwargs: Any) -> Any:
        response = original(method, path, **kwargs)
        if method == "GET" and path.endswith("/actions"):
            pages["n"] += 1
            if pages["n"] == 1:  # after the first page, the oldest action is updated: it moves to the front
                assert put(fake_openwhisk, specs[0].name, annotations=[{"key": "touched", "value": True}]).ok
        return response

    monkeypatch.setattr(provider.client, "send", send)
    assert sorted(f.name for f in provider.list({LABEL_EXPERIMENT: "owtest"})) == sorted(s.name for s in specs)
    assert pages["n"] > 4  # a second pass ran


def test_remove_sweeps_until_nothing_of_the_experiment_is_left(fake_openwhisk: FakeOpenWhisk, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    config = cfg.load_text(textwrap.dedent(f"""
        experiment: owtest
        providers:
          openwhisk:
            ow: {{api_host: "{fake_openwhisk.url}", auth: "{fake_openwhisk.auth}"}}
        scenarios: {{smoke: {{}}}}
        """), env={})
    with OpenWhiskProvider("ow", config.clusters()["ow"], workdir=tmp_path) as p:
        for i in range(3):
            p.deploy(make_spec("nodeinfo", name=f"fk-owtest-n{i}"))
    calls = {"n": 0}
    original = OpenWhiskProvider.list

    def first_listing_misses_one(self: OpenWhiskProvider, labels: Any = None) -> Any:
        calls["n"] += 1
        found = original(self, labels)
        return found[1:] if calls["n"] == 1 else found

    monkeypatch.setattr(OpenWhiskProvider, "list", first_listing_misses_one)
    with Fabric(config, tmp_path / "fabric") as fabric:
        removals = fabric.remove(fabric.removal_targets())
    assert sorted(r.name for r in removals) == ["fk-owtest-n0", "fk-owtest-n1", "fk-owtest-n2"]
    assert all(r.removed for r in removals) and fake_openwhisk.actions == {}


def test_the_action_image_recipe_brings_what_the_functions_import() -> None:
    """`python:3` is refused with a pointer to docker_image; the recipe it points at builds on OpenWhisk's own
    Python runtime and installs exactly the functions' run-time requirements."""
    from fedkeeper import packaging

    folder = packaging.FUNCTIONS_DIR / "openwhisk-image"
    assert "functions/openwhisk-image/Dockerfile" in ow_limits.KINDS["python:3"].refused  # type: ignore[operator]
    dockerfile = (folder / "Dockerfile").read_text()
    assert "ARG BASE=openwhisk/action-python-v3.11:" in dockerfile and "FROM ${BASE}" in dockerfile
    assert "pip install --no-cache-dir -r /fedkeeper/requirements.txt" in dockerfile
    wanted = [line for line in (folder / "requirements.txt").read_text().splitlines()
              if line and not line.startswith("#")]
    assert wanted == list(packaging.RUNTIME_REQUIREMENTS)


def test_a_package_over_the_clusters_limit_is_refused_before_upload(fake_openwhisk: FakeOpenWhisk,
                                                                   tmp_path: Path) -> None:
    from fedkeeper import packaging

    config = cfg.load_text(textwrap.dedent(f"""
        experiment: owtest
        providers:
          openwhisk:
            ow: {{api_host: "{fake_openwhisk.url}", auth: "{fake_openwhisk.auth}", limits: {{package_mb: 0.01}}}}
        scenarios: {{smoke: {{}}}}
        """), env={})
    with Fabric(config, tmp_path / "fabric") as fabric:
        with pytest.raises(packaging.PackagingError, match=r"nodeinfo \(openwhisk\) is .* MiB zipped, over the 0.01 MiB"):
            fabric.deploy_spec("nodeinfo", "ow", {"FK_MONGO_URL": "mongodb://127.0.0.1:9", "FK_MONGO_DB": "x"})
    assert not fake_openwhisk.requests_to("PUT")

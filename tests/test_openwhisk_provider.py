"""OpenWhiskProvider against the fake controller (tests/fake_openwhisk.py), which really runs the packaged zips.

Covers the issue's list: deploy, redeploy no-op, invoke and poll, application error, timeout, throttling,
missing action, wrong key, remove, remove of orphans; plus the transport rules (no credential in any URL,
retries only where they are safe).
"""

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
from fedkeeper.providers.openwhisk.config import OpenWhiskCluster
from fedkeeper.providers import create
from fedkeeper.providers.openwhisk import provider as ow_module
from fedkeeper.providers.base import (
    LABEL_DIGEST,
    LABEL_EXPERIMENT,
    LABEL_FUNCTION,
    AuthError,
    DeploySpec,
    FunctionMissing,
    Invocation,
    PlatformError,
    State,
    Status,
    Throttled,
    spec_digest,
)
from fedkeeper.providers.openwhisk.provider import OpenWhiskProvider
from fedkeeper.providers.openwhisk.client import RetryPolicy

MONGO_URL = "mongodb://fkuser:Pa55w0rd-not-for-logs@127.0.0.1:1/fk"
FAST_RETRY = RetryPolicy(attempts=3, wait_initial_s=0.01, wait_max_s=0.05, throttle_wait_max_s=0.05)

TEST_FUNCTIONS = {
    "ow_echo": '''
        import os
        import fedkeeper

        def handle(params):
            return {
                "params": sorted(params),
                "x": params.get("x"),
                "default": params.get("default_param"),
                "mongo_url_in_env": os.environ.get("FK_MONGO_URL") == params.get("expect_url"),
                "extra_env": os.environ.get("OTHER_SETTING"),
                "fedkeeper_file": fedkeeper.__file__,
                "platform_activation_id": os.environ.get("FK_PLATFORM_ACTIVATION_ID"),
                "ow_activation_id": os.environ.get("__OW_ACTIVATION_ID"),
                "api_key_visible": "__OW_API_KEY" in os.environ,
            }
    ''',
    "ow_raise": '''
        import os

        def handle(params):
            raise ValueError("bad input " + str(params.get("x")) + " via " + os.environ.get("FK_MONGO_URL", ""))
    ''',
    "ow_sleep": '''
        import time

        def handle(params):
            time.sleep(float(params.get("seconds", 60)))
            return {"slept": True}
    ''',
    "ow_crash": '''
        import os

        def handle(params):
            os._exit(3)
    ''',
}


@pytest.fixture(scope="module")
def function_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ow-functions")
    out = {}
    for name, source in TEST_FUNCTIONS.items():
        folder = root / name
        folder.mkdir()
        (folder / "handler.py").write_text(textwrap.dedent(source), encoding="utf-8")
        out[name] = folder
    return out


def cluster_config(fake: FakeOpenWhisk, **overrides: Any) -> OpenWhiskCluster:
    fields: dict[str, Any] = {"api_host": fake.url, "auth": fake.auth, "namespace": "_"}
    fields.update(overrides)
    return OpenWhiskCluster(**fields)


@pytest.fixture
def provider(fake_openwhisk: FakeOpenWhisk, tmp_path: Path) -> Iterator[OpenWhiskProvider]:
    p = OpenWhiskProvider("ow-test", cluster_config(fake_openwhisk), workdir=tmp_path, retry=FAST_RETRY)
    try:
        yield p
    finally:
        p.close()
        assert_no_credentials_in_urls(fake_openwhisk)


def assert_no_credentials_in_urls(fake: FakeOpenWhisk) -> None:
    uuid, key = fake.auth.split(":", 1)
    assert fake.requests, "the test sent no request"
    for recorded in fake.requests:
        assert key not in recorded.url and uuid not in recorded.url, recorded.url
        assert "@" not in recorded.url.split("//", 1)[1].split("/", 1)[0]
        assert recorded.headers.get("Authorization", "").startswith("Basic ")


def make_spec(function: str | Path, *, experiment: str = "owtest", name: str | None = None, memory: int = 256,
              timeout: float = 30.0, env: dict[str, str] | None = None, extra: dict[str, Any] | None = None
              ) -> DeploySpec:
    """What Fabric.deploy_spec builds, for a function name or a test function folder."""
    artifact = packaging.build(function, "openwhisk")
    env = {"FK_MONGO_URL": MONGO_URL, "FK_MONGO_DB": "fk"} if env is None else env
    extra = extra or {}
    digest = spec_digest(artifact.sha256, memory, timeout, 1, env, extra)
    fn = artifact.function
    return DeploySpec(name=name or f"fk-{experiment}-{fn.replace('_', '-')}", function=fn, artifact=artifact.data,
                      digest=digest, memory_mb=memory, timeout_s=timeout, concurrency=1, env=env,
                      labels={LABEL_EXPERIMENT: experiment, LABEL_FUNCTION: fn, LABEL_DIGEST: digest}, extra=extra)


def wait_done(provider: OpenWhiskProvider, inv: Invocation, guard_s: float = 120.0) -> Status:
    """Poll like the tracker does. `guard_s` only stops a hung test; nothing here measures time."""
    give_up = time.monotonic() + guard_s
    while True:
        status = provider.poll(inv)
        if status.state.done:
            return status
        if time.monotonic() > give_up:
            raise AssertionError(f"activation {inv.activation_id} never finished")
        time.sleep(0.01)


# ---------------------------------------------------------------------------------------------- deploy


def test_registry_builds_the_openwhisk_provider(fake_openwhisk: FakeOpenWhisk, tmp_path: Path) -> None:
    with create("openwhisk", "ow-reg", cluster_config(fake_openwhisk), workdir=tmp_path) as p:
        assert isinstance(p, OpenWhiskProvider)
        assert p.list() == []


def test_deploy_creates_then_redeploy_is_a_noop(provider: OpenWhiskProvider, fake_openwhisk: FakeOpenWhisk) -> None:
    spec = make_spec("nodeinfo")
    first = provider.deploy(spec)
    assert (first.action, first.name, first.digest) == ("created", spec.name, spec.digest)
    action = fake_openwhisk.actions[spec.name]
    assert action.limits["memory"] == 256 and action.limits["timeout"] == 30000
    puts = len(fake_openwhisk.requests_to("PUT"))
    assert puts == 1

    again = provider.deploy(make_spec("nodeinfo"))
    assert again.action == "unchanged"
    assert len(fake_openwhisk.requests_to("PUT")) == puts, "an unchanged redeploy must not send a PUT"
    assert fake_openwhisk.actions[spec.name].version == action.version


def test_changed_digest_updates(provider: OpenWhiskProvider, fake_openwhisk: FakeOpenWhisk) -> None:
    provider.deploy(make_spec("nodeinfo"))
    version = fake_openwhisk.actions["fk-owtest-nodeinfo"].version
    changed = make_spec("nodeinfo", memory=512, timeout=45.5)
    result = provider.deploy(changed)
    assert result.action == "updated"
    action = fake_openwhisk.actions[changed.name]
    assert action.version != version
    assert action.limits["memory"] == 512 and action.limits["timeout"] == 45500
    assert action.annotation(LABEL_DIGEST) == changed.digest
    put = fake_openwhisk.requests_to("PUT")[-1]
    assert put.query["overwrite"] == ["true"]


def test_cluster_level_settings_change_is_not_a_noop(fake_openwhisk: FakeOpenWhisk, tmp_path: Path) -> None:
    """The spec digest cannot see the cluster's runtime or parameters; the settings annotation does."""
    spec = make_spec("nodeinfo")
    with OpenWhiskProvider("ow", cluster_config(fake_openwhisk), workdir=tmp_path) as p:
        assert p.deploy(spec).action == "created"
    with OpenWhiskProvider("ow", cluster_config(fake_openwhisk, runtime="python:3.10"), workdir=tmp_path) as p:
        assert p.deploy(spec).action == "updated"
        assert p.deploy(spec).action == "unchanged"
    assert fake_openwhisk.actions[spec.name].exec["kind"] == "python:3.10"
    with OpenWhiskProvider("ow", cluster_config(fake_openwhisk, runtime="python:3.10", parameters={"a": 1}),
                           workdir=tmp_path) as p:
        assert p.deploy(spec).action == "updated"


def test_an_action_that_is_not_ours_is_never_overwritten(provider: OpenWhiskProvider,
                                                          fake_openwhisk: FakeOpenWhisk) -> None:
    from fedkeeper.providers.base import InvocationFailed

    spec = make_spec("nodeinfo")
    hand_made = requests.put(f"{fake_openwhisk.url}/api/v1/namespaces/_/actions/{spec.name}",
                             auth=tuple(fake_openwhisk.auth.split(":", 1)), timeout=10,
                             json={"exec": {"kind": "python:3.11", "code": "def main(a):\n    return a\n"}})
    assert hand_made.status_code == 200
    with pytest.raises(InvocationFailed) as err:
        provider.deploy(spec)
    assert spec.name in str(err.value) and "owtest" in str(err.value)
    assert fake_openwhisk.actions[spec.name].version == "0.0.1"
    assert len(fake_openwhisk.requests_to("PUT")) == 1  # only the hand-made one


def test_create_race_409_becomes_update(provider: OpenWhiskProvider, fake_openwhisk: FakeOpenWhisk,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Another deploy created the action between our GET and our PUT: overwrite=false gets 409, then we update."""
    spec = make_spec("nodeinfo")
    provider.deploy(make_spec("nodeinfo", memory=128))
    monkeypatch.setattr(provider, "_get_action", lambda name: None)
    assert provider.deploy(spec).action == "updated"
    assert fake_openwhisk.actions[spec.name].limits["memory"] == 256
    statuses = [q.query["overwrite"] for q in fake_openwhisk.requests_to("PUT")]
    assert statuses == [["false"], ["false"], ["true"]]


def test_put_body_binds_secrets_as_parameters_and_tags_the_experiment(
        provider: OpenWhiskProvider, fake_openwhisk: FakeOpenWhisk) -> None:
    spec = make_spec("nodeinfo", env={"FK_MONGO_URL": MONGO_URL, "OTHER_SETTING": "x"},
                     extra={"parameters": {"default_param": 7}})
    provider.deploy(spec)
    action = fake_openwhisk.actions[spec.name]
    assert action.exec["kind"] == "python:3.11" and action.exec["binary"] is True
    params = {p["key"]: p["value"] for p in action.parameters}
    assert params == {"FK_MONGO_URL": MONGO_URL, "OTHER_SETTING": "x", "default_param": 7,
                      "FK_ENV_KEYS": "OTHER_SETTING"}
    annotations = {a["key"]: a["value"] for a in action.annotations}
    assert annotations[LABEL_EXPERIMENT] == "owtest"
    assert annotations[LABEL_FUNCTION] == "nodeinfo"
    assert annotations[LABEL_DIGEST] == spec.digest
    assert annotations["provide-api-key"] is False
    for recorded in fake_openwhisk.requests:
        if recorded.method != "PUT":
            assert MONGO_URL.encode() not in recorded.body, "the store URL may only travel in the deploy body"


def test_docker_image_deploys_a_blackbox_action_with_the_zip(provider: OpenWhiskProvider,
                                                              fake_openwhisk: FakeOpenWhisk) -> None:
    spec = make_spec("nodeinfo", extra={"docker_image": "example/fk-python:3.11"})
    provider.deploy(spec)
    exec_ = fake_openwhisk.actions[spec.name].exec
    assert exec_["kind"] == "blackbox" and exec_["image"] == "example/fk-python:3.11"
    assert exec_["binary"] is True and exec_["code"]
    status = wait_done(provider, provider.invoke(spec.name, {}))
    assert status.state is State.SUCCEEDED  # the fake runs the zip as a python image would


def test_controller_rejection_names_the_problem(provider: OpenWhiskProvider) -> None:
    from fedkeeper.providers.base import InvocationFailed

    with pytest.raises(InvocationFailed) as err:
        provider.deploy(make_spec("nodeinfo", memory=64))
    assert "PUT" in str(err.value) and "400" in str(err.value) and "memory" in str(err.value)


# ---------------------------------------------------------------------------------------------- invoke / poll


def test_invoke_and_poll_nodeinfo(provider: OpenWhiskProvider, fake_openwhisk: FakeOpenWhisk) -> None:
    spec = make_spec("nodeinfo")
    provider.deploy(spec)
    inv = provider.invoke(spec.name, {"probe": 1})
    assert inv.cluster == "ow-test" and inv.name == spec.name and len(inv.activation_id) == 32
    post = fake_openwhisk.requests_to("POST")[-1]
    assert post.query == {"blocking": ["false"]}
    status = wait_done(provider, inv)
    assert status.state is State.SUCCEEDED, status.error
    assert status.result is not None and status.result["environment"] == "openwhisk"
    assert status.activation_id == inv.activation_id
    assert status.cold is True
    assert status.start is not None and status.end is not None and status.duration_s is not None
    assert 1e9 < status.start <= status.end  # seconds since the epoch, not ms
    assert status.duration_s == pytest.approx(status.end - status.start, abs=0.002)

    warm = wait_done(provider, provider.invoke(spec.name, {}))
    assert warm.state is State.SUCCEEDED and warm.cold is False


def test_poll_is_pending_until_the_record_exists(provider: OpenWhiskProvider, function_dirs: dict[str, Path],
                                                 fake_openwhisk: FakeOpenWhisk) -> None:
    spec = make_spec(function_dirs["ow_sleep"], timeout=30.0)
    provider.deploy(spec)
    inv = provider.invoke(spec.name, {"seconds": 1.0})
    assert provider.poll(inv).state is State.PENDING  # the record is written only at the end (404 before)
    assert fake_openwhisk.requests_to("GET", "/activations/")[-1] is not None
    assert wait_done(provider, inv).state is State.SUCCEEDED


def test_entry_moves_bound_settings_into_the_environment(provider: OpenWhiskProvider, function_dirs: dict[str, Path],
                                                         fake_openwhisk: FakeOpenWhisk) -> None:
    spec = make_spec(function_dirs["ow_echo"], env={"FK_MONGO_URL": MONGO_URL, "OTHER_SETTING": "v"},
                     extra={"parameters": {"default_param": "d"}})
    provider.deploy(spec)
    inv = provider.invoke(spec.name, {"x": 5, "expect_url": MONGO_URL, "__ow_method": "post"})
    status = wait_done(provider, inv)
    assert status.state is State.SUCCEEDED, status.error
    result = status.result or {}
    assert result["params"] == ["default_param", "expect_url", "x"]  # no FK_*, no __ow_*, no FK_ENV_KEYS
    assert result["x"] == 5 and result["default"] == "d"
    assert result["mongo_url_in_env"] is True and result["extra_env"] == "v"
    assert result["platform_activation_id"] == result["ow_activation_id"] == inv.activation_id
    assert result["api_key_visible"] is False  # provide-api-key: false
    # the zip's own fedkeeper package wins over the installed one
    action_dir = Path(fake_openwhisk.workdir or ".") / "actions"
    assert Path(result["fedkeeper_file"]).resolve().is_relative_to(action_dir.resolve())


def test_application_error_is_failed_with_the_message_and_no_secret(
        provider: OpenWhiskProvider, function_dirs: dict[str, Path], fake_openwhisk: FakeOpenWhisk) -> None:
    spec = make_spec(function_dirs["ow_raise"])
    provider.deploy(spec)
    inv = provider.invoke(spec.name, {"x": 42})
    status = wait_done(provider, inv)
    assert status.state is State.FAILED
    assert status.error is not None and status.error.startswith("ValueError: bad input 42 via ")
    assert "Pa55w0rd" not in status.error and "***" in status.error
    record = fake_openwhisk.activations[inv.activation_id]
    assert record["response"]["status"] == "application error"
    assert all("Pa55w0rd" not in line for line in record["logs"])  # the traceback in the logs is masked too
    assert any("ValueError" in line for line in record["logs"])


def test_timeout_is_timed_out(provider: OpenWhiskProvider, function_dirs: dict[str, Path],
                              fake_openwhisk: FakeOpenWhisk) -> None:
    spec = make_spec(function_dirs["ow_sleep"], timeout=0.3)
    provider.deploy(spec)
    status = wait_done(provider, provider.invoke(spec.name, {"seconds": 60}))
    assert status.state is State.TIMED_OUT
    assert status.error == "The action exceeded its time limits of 300 milliseconds."
    fake_openwhisk.wait_idle()
    assert fake_openwhisk.process_count() == 0, "the timed-out process must be killed, not kept warm"


def test_crash_is_failed(provider: OpenWhiskProvider, function_dirs: dict[str, Path]) -> None:
    spec = make_spec(function_dirs["ow_crash"])
    provider.deploy(spec)
    status = wait_done(provider, provider.invoke(spec.name, {}))
    assert status.state is State.FAILED
    assert "exited unexpectedly" in (status.error or "")


def test_throttling_raises_throttled_with_retry_after(provider: OpenWhiskProvider,
                                                      fake_openwhisk: FakeOpenWhisk) -> None:
    spec = make_spec("nodeinfo")
    provider.deploy(spec)
    fake_openwhisk.throttle(2, retry_after=3)
    posts = len(fake_openwhisk.requests_to("POST"))
    with pytest.raises(Throttled) as err:
        provider.invoke(spec.name, {})
    assert err.value.retry_after_s == 3.0 and "429" in str(err.value)
    assert len(fake_openwhisk.requests_to("POST")) == posts + 1, "a 429 on invoke is the tracker's to back off"
    with pytest.raises(Throttled):
        provider.invoke(spec.name, {})
    assert wait_done(provider, provider.invoke(spec.name, {})).state is State.SUCCEEDED


def test_concurrency_limit_is_throttling_too(fake_openwhisk: FakeOpenWhisk, provider: OpenWhiskProvider,
                                            function_dirs: dict[str, Path]) -> None:
    spec = make_spec(function_dirs["ow_sleep"])
    provider.deploy(spec)
    fake_openwhisk.concurrent_limit = 1
    first = provider.invoke(spec.name, {"seconds": 0.5})
    with pytest.raises(Throttled) as err:
        provider.invoke(spec.name, {"seconds": 0.5})
    assert err.value.retry_after_s is None and "concurrent" in str(err.value)
    assert wait_done(provider, first).state is State.SUCCEEDED


def test_missing_action_is_function_missing(provider: OpenWhiskProvider) -> None:
    with pytest.raises(FunctionMissing) as err:
        provider.invoke("fk-owtest-nothing-here", {})
    assert "404" in str(err.value) and "fk-owtest-nothing-here" in str(err.value)


def test_wrong_key_is_an_auth_error_without_the_key(fake_openwhisk: FakeOpenWhisk, tmp_path: Path) -> None:
    uuid = fake_openwhisk.auth.split(":", 1)[0]
    wrong_key = "WrongKeyWrongKeyWrongKey123"
    config = cluster_config(fake_openwhisk, auth=f"{uuid}:{wrong_key}")
    with OpenWhiskProvider("ow-bad", config, workdir=tmp_path, retry=FAST_RETRY) as p:
        for call in (lambda: p.deploy(make_spec("nodeinfo")), lambda: p.invoke("fk-x", {}), lambda: p.list(),
                     lambda: p.remove("fk-x"), lambda: p.poll(Invocation("ow-bad", "fk-x", "a" * 32, 0.0))):
            with pytest.raises(AuthError) as err:
                call()
            assert "401" in str(err.value) and "providers.openwhisk.ow-bad.auth" in str(err.value)
            assert wrong_key not in str(err.value) and fake_openwhisk.auth not in str(err.value)
    assert not fake_openwhisk.actions


def test_foreign_namespace_is_an_auth_error(fake_openwhisk: FakeOpenWhisk, tmp_path: Path) -> None:
    with OpenWhiskProvider("ow", cluster_config(fake_openwhisk, namespace="someone-else"), workdir=tmp_path) as p:
        with pytest.raises(AuthError) as err:
            p.list()
    assert "403" in str(err.value) and "someone-else" in str(err.value)


# ---------------------------------------------------------------------------------------------- remove / list


def test_list_by_annotation_finds_orphans_and_ignores_foreign_actions(
        provider: OpenWhiskProvider, fake_openwhisk: FakeOpenWhisk, monkeypatch: pytest.MonkeyPatch) -> None:
    ours = [make_spec("nodeinfo"), make_spec("nodeinfo", name="fk-owtest-fl-client-3"),
            make_spec("nodeinfo", name="fk-owtest-left-by-a-crash")]
    for spec in ours:
        provider.deploy(spec)
    provider.deploy(make_spec("nodeinfo", experiment="other"))
    foreign = requests.put(f"{fake_openwhisk.url}/api/v1/namespaces/_/actions/hand-made",
                           auth=tuple(fake_openwhisk.auth.split(":", 1)), timeout=10,
                           json={"exec": {"kind": "python:3.11", "code": "def main(a):\n    return a\n"}})
    assert foreign.status_code == 200
    monkeypatch.setattr(ow_module, "_PAGE", 2)  # force several pages

    found = provider.list({LABEL_EXPERIMENT: "owtest"})
    assert sorted(f.name for f in found) == sorted(s.name for s in ours)
    info = next(f for f in found if f.name == "fk-owtest-nodeinfo")
    assert info.digest == ours[0].digest and info.memory_mb == 256 and info.timeout_s == 30.0
    assert info.labels == ours[0].labels
    assert {f.name for f in provider.list()} == {s.name for s in ours} | {"fk-other-nodeinfo"}
    assert [f.name for f in provider.list({LABEL_FUNCTION: "nodeinfo", LABEL_EXPERIMENT: "other"})] == \
        ["fk-other-nodeinfo"]
    skips = {q.query["skip"][0] for q in fake_openwhisk.requests_to("GET") if q.path.endswith("/actions")}
    assert {"0", "2", "4"} <= skips

    for f in found:
        assert provider.remove(f.name)
    assert sorted(fake_openwhisk.actions) == ["fk-other-nodeinfo", "hand-made"]


# ---------------------------------------------------------------------------------------------- transport rules


def test_idempotent_calls_retry_5xx_but_invoke_does_not(provider: OpenWhiskProvider,
                                                        fake_openwhisk: FakeOpenWhisk) -> None:
    spec = make_spec("nodeinfo")
    fake_openwhisk.fail_next(2, status=503)
    assert provider.deploy(spec).action == "created"  # GET failed twice, then went through
    fake_openwhisk.fail_next(1, status=503)
    posts = len(fake_openwhisk.requests_to("POST"))
    with pytest.raises(PlatformError) as err:
        provider.invoke(spec.name, {})
    assert "503" in str(err.value)
    assert len(fake_openwhisk.requests_to("POST")) == posts + 1, "a POST that reached the controller is never resent"


def test_poll_failures_are_platform_errors_but_429_is_pending(provider: OpenWhiskProvider,
                                                               fake_openwhisk: FakeOpenWhisk) -> None:
    """The tracker polls again after a PlatformError; a Throttled would make it re-invoke (a duplicate run)."""
    spec = make_spec("nodeinfo")
    provider.deploy(spec)
    inv = provider.invoke(spec.name, {})
    fake_openwhisk.wait_idle()
    gets = len(fake_openwhisk.requests_to("GET"))
    fake_openwhisk.fail_next(1, status=502)
    with pytest.raises(PlatformError) as err:
        provider.poll(inv)
    assert "502" in str(err.value)
    assert len(fake_openwhisk.requests_to("GET")) == gets + 1, "a poll is one GET"
    fake_openwhisk.fail_next(1, status=429)
    assert provider.poll(inv).state is State.PENDING
    assert provider.poll(inv).state is State.SUCCEEDED


def test_unreachable_controller_is_a_platform_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = OpenWhiskCluster(api_host=f"http://127.0.0.1:{port}", auth="u-u-i-d:TopSecretKey42")
    with OpenWhiskProvider("ow-down", config, workdir=tmp_path, retry=FAST_RETRY) as p:
        for call in (lambda: p.invoke("fk-x", {}), lambda: p.list()):
            with pytest.raises(PlatformError) as err:
                call()
            assert "TopSecretKey42" not in str(err.value) and f"127.0.0.1:{port}" in str(err.value)
        with pytest.raises(PlatformError):
            p.poll(Invocation("ow-down", "fk-x", "b" * 32, 0.0))


def test_concurrent_invocations_all_complete(provider: OpenWhiskProvider, fake_openwhisk: FakeOpenWhisk) -> None:
    spec = make_spec("nodeinfo")
    provider.deploy(spec)
    invs = [provider.invoke(spec.name, {"i": i}) for i in range(6)]
    assert len({inv.activation_id for inv in invs}) == 6
    pending = list(invs)
    results: dict[str, Status] = {}
    give_up = time.monotonic() + 120
    while pending and time.monotonic() < give_up:
        for inv in list(pending):
            status = provider.poll(inv)
            if status.state.done:
                results[inv.activation_id] = status
                pending.remove(inv)
        time.sleep(0.01)
    assert not pending
    assert all(s.state is State.SUCCEEDED for s in results.values()), [s.error for s in results.values()]

"""GcfProvider against the fake admin API (real FunctionServiceClient, REST transport) and the packaged
artifact served by the real functions-framework runtime, all on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fake_gcf import FakeGcf, loopback_only
from fedkeeper import packaging
from fedkeeper.providers.google.config import GcfCluster
from fedkeeper.providers import create as create_provider
from fedkeeper.providers.base import (
    LABEL_DIGEST,
    LABEL_EXPERIMENT,
    LABEL_FUNCTION,
    DeploySpec,
    FunctionMissing,
    Invocation,
    State,
    Status,
    spec_digest,
)
from fedkeeper.providers.google.provider import DeployFailed, GcfProvider
from fedkeeper.providers.google.resources import LABEL_DIGEST_TAIL, LABEL_SETTINGS

pytestmark = pytest.mark.integration

PROBE = Path(__file__).parent / "functions" / "gcf_probe"
SECRET = "s3cr3t-Pa55word"
ENV = {"FK_MONGO_URL": f"mongodb://fk:{SECRET}@127.0.0.1:1/?authSource=admin", "FK_MONGO_DB": "fk_gcf_test"}
EXPERIMENT = "gcftest"
PROJECT, REGION = "fk-project", "europe-west1"


def make_spec(function: str | Path, name: str, *, memory_mb: int = 256, timeout_s: float = 30.0,
              env: dict[str, str] | None = None, experiment: str = EXPERIMENT, concurrency: int = 1) -> DeploySpec:
    artifact = packaging.build(function, "google")
    env = dict(ENV if env is None else env)
    digest = spec_digest(artifact.sha256, memory_mb, timeout_s, concurrency, env, {})
    return DeploySpec(name=name, function=artifact.function, artifact=artifact.data, digest=digest,
                      memory_mb=memory_mb, timeout_s=timeout_s, concurrency=concurrency, env=env,
                      labels={LABEL_EXPERIMENT: experiment, LABEL_FUNCTION: artifact.function, LABEL_DIGEST: digest})


def wait(provider: GcfProvider, inv: Invocation, limit_s: float = 60.0) -> Status:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        status = provider.poll(inv)
        if status.state.done:
            return status
        time.sleep(0.01)
    raise AssertionError(f"{inv.name} still pending after {limit_s} s")


def cluster(fake: FakeGcf, **kw: object) -> GcfCluster:
    settings: dict[str, object] = dict(project_id=PROJECT, region=REGION, credentials="anonymous",
                                       api_endpoint=fake.endpoint, id_token=False, max_inflight=4)
    settings.update(kw)
    return GcfCluster(**settings)


@pytest.fixture(scope="module", autouse=True)
def _loopback() -> Iterator[None]:
    with loopback_only():
        yield


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeGcf]:
    with FakeGcf(workdir=tmp_path_factory.mktemp("fake-gcf")) as server:
        yield server


@pytest.fixture(scope="module")
def provider(fake: FakeGcf, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GcfProvider]:
    made = create_provider("google", "gcf", cluster(fake), workdir=tmp_path_factory.mktemp("gcf-work"))
    assert isinstance(made, GcfProvider)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture(scope="module")
def probe(provider: GcfProvider) -> str:
    """The probe function, deployed once for the tests that only invoke it."""
    name = "fk-gcftest-probe"
    assert provider.deploy(make_spec(PROBE, name)).action == "created"
    return name


# ---------------------------------------------------------------------------------------------- deploy


def test_deploy_creates_through_a_pending_operation(fake: FakeGcf, provider: GcfProvider) -> None:
    name = "fk-gcftest-nodeinfo"
    spec = make_spec("nodeinfo", name, memory_mb=512, timeout_s=45)
    before = len(fake.received)
    result = provider.deploy(spec)
    assert result.action == "created" and result.digest == spec.digest
    sent = fake.received[before:]
    create = [r for r in sent if r.method == "POST" and "functionId=" in r.query]
    assert len(create) == 1
    body = json.loads(create[0].body)
    assert body["buildConfig"]["runtime"] == "python311" and body["buildConfig"]["entryPoint"] == "entry"
    assert body["serviceConfig"]["availableMemory"] == "512Mi"
    assert body["serviceConfig"]["timeoutSeconds"] == 45
    assert body["serviceConfig"]["environmentVariables"] == ENV
    assert body["labels"][LABEL_EXPERIMENT] == EXPERIMENT and body["labels"][LABEL_FUNCTION] == "nodeinfo"
    assert body["labels"][LABEL_DIGEST] + body["labels"][LABEL_DIGEST_TAIL] == spec.digest
    assert all(len(v) <= 63 for v in body["labels"].values())
    # the zip went to the signed URL, as a zip, with no credentials attached
    upload = [r for r in sent if r.method == "PUT"]
    assert len(upload) == 1 and upload[0].body == spec.artifact
    assert upload[0].headers["Content-Type"] == "application/zip" and "Authorization" not in upload[0].headers
    # the create operation answered "not done" first and the provider kept polling
    op = [o for o in fake.operations.values() if o.target.endswith(name) and o.verb == "create"][0]
    assert op.polls >= 2 and op.on_done is None
    info = {i.name: i for i in provider.list({LABEL_EXPERIMENT: EXPERIMENT})}[name]
    assert info.digest == spec.digest and info.memory_mb == 512 and info.timeout_s == 45
    assert provider.exists(name)


def test_redeploy_of_the_same_spec_is_a_no_op(fake: FakeGcf, provider: GcfProvider) -> None:
    name = "fk-gcftest-nodeinfo"
    spec = make_spec("nodeinfo", name, memory_mb=512, timeout_s=45)
    provider.deploy(spec)  # created earlier, or updated if a source file changed meanwhile
    before = len(fake.received)
    result = provider.deploy(spec)
    assert result.action == "unchanged"
    sent = fake.received[before:]
    assert [(r.method, r.path.rsplit("/", 1)[-1]) for r in sent] == [("GET", name)]


def test_changed_settings_update_in_place(fake: FakeGcf, provider: GcfProvider) -> None:
    name = "fk-gcftest-update"
    provider.deploy(make_spec("nodeinfo", name, memory_mb=256))
    before = len(fake.received)
    result = provider.deploy(make_spec("nodeinfo", name, memory_mb=1024, concurrency=4))
    assert result.action == "updated"
    patch = [r for r in fake.received[before:] if r.method == "PATCH"]
    assert len(patch) == 1
    assert "serviceConfig.availableMemory" in patch[0].query and "labels" in patch[0].query
    resource = fake.get(f"projects/{PROJECT}/locations/{REGION}/functions/{name}")
    assert resource["serviceConfig"]["availableMemory"] == "1024Mi"
    assert resource["serviceConfig"]["maxInstanceRequestConcurrency"] == 4
    assert resource["serviceConfig"]["availableCpu"] == "1"  # concurrency > 1 needs a whole vCPU
    status = wait(provider, provider.invoke(name, {}))
    assert status.state is State.SUCCEEDED and status.cold is True  # a new revision, a new instance
    assert provider.remove(name)


@pytest.mark.slow
def test_cluster_settings_count_as_a_change(fake: FakeGcf, tmp_path: Path) -> None:
    name = "fk-gcftest-settings"
    spec = make_spec("nodeinfo", name)
    with GcfProvider("gcf", cluster(fake), workdir=tmp_path) as plain:
        assert plain.deploy(spec).action == "created"
        with GcfProvider("gcf", cluster(fake, max_instances=3, labels={"Team": "ML"},
                                        environment={"EXTRA": "1"}), workdir=tmp_path) as tuned:
            assert tuned.deploy(spec).action == "updated"
            assert tuned.deploy(spec).action == "unchanged"
        resource = fake.get(f"projects/{PROJECT}/locations/{REGION}/functions/{name}")
        assert resource["serviceConfig"]["maxInstanceCount"] == 3
        assert resource["serviceConfig"]["environmentVariables"] == {"EXTRA": "1", **ENV}
        assert resource["labels"]["team"] == "ml" and LABEL_SETTINGS in resource["labels"]
        assert plain.remove(name)


def test_failed_build_is_a_typed_error(fake: FakeGcf, provider: GcfProvider) -> None:
    fake.fail_next_deploy = "requirements could not be installed"
    with pytest.raises(DeployFailed, match="requirements could not be installed"):
        provider.deploy(make_spec("nodeinfo", "fk-gcftest-broken"))
    # the failed function is not taken for an up-to-date one: the next deploy repairs it
    assert provider.deploy(make_spec("nodeinfo", "fk-gcftest-broken")).action == "updated"
    assert provider.remove("fk-gcftest-broken")


def test_unsupported_settings_are_refused(provider: GcfProvider) -> None:
    spec = make_spec("nodeinfo", "fk-gcftest-docker")
    spec = DeploySpec(**{**spec.__dict__, "extra": {"docker_image": "me/img:1"}})
    with pytest.raises(DeployFailed, match="docker_image"):
        provider.deploy(spec)


def test_invalid_name_is_refused_before_any_call(fake: FakeGcf, provider: GcfProvider) -> None:
    before = len(fake.received)
    with pytest.raises(ValueError, match="Cloud Functions id"):
        provider.deploy(make_spec("nodeinfo", "fk_bad_name"))
    assert len(fake.received) == before


# ---------------------------------------------------------------------------------------------- invoke


def test_invoke_nodeinfo_succeeds(fake: FakeGcf, provider: GcfProvider) -> None:
    name = "fk-gcftest-nodeinfo"
    provider.deploy(make_spec("nodeinfo", name, memory_mb=512, timeout_s=45))
    inv = provider.invoke(name, {"hello": "gcf"})
    assert inv.cluster == "gcf" and inv.name == name and len(inv.activation_id) == 32
    status = wait(provider, inv)
    assert status.state is State.SUCCEEDED, status.error
    assert status.result["environment"] == "google" and status.result["python"]
    # the platform's execution id (from Function-Execution-Id), not ours
    assert status.activation_id != inv.activation_id and len(status.activation_id) == 12
    assert status.start <= status.end and status.duration_s >= 0
    call = fake.invocations[-1]
    assert json.loads(call.body) == {"hello": "gcf"}
    assert "Authorization" not in call.headers  # id_token: false


def test_probe_sees_its_environment_and_warm_instances(provider: GcfProvider, probe: str) -> None:
    first = wait(provider, provider.invoke(probe, {"n": 1}))
    second = wait(provider, provider.invoke(probe, {"n": 2}))
    assert first.result["echo"] == {"n": 1} and second.result["echo"] == {"n": 2}
    assert first.result["fk_env"] == ["FK_MONGO_DB", "FK_MONGO_URL"] and first.result["service"] == probe
    assert second.cold is False


def test_function_error_is_failed_with_its_message(fake: FakeGcf, provider: GcfProvider, probe: str) -> None:
    status = wait(provider, provider.invoke(probe, {"mode": "raise", "message": "bad shard 7"}))
    assert status.state is State.FAILED and status.error == "RuntimeError: bad shard 7"
    leaked = wait(provider, provider.invoke(probe, {"mode": "raise", "message": "cannot connect", "leak": True}))
    assert leaked.state is State.FAILED and SECRET not in leaked.error and "***" in leaked.error
    assert SECRET not in fake.runtime_log(probe)  # the traceback in the function's log is masked too


def test_platform_errors_end_the_attempt_as_failed(fake: FakeGcf, provider: GcfProvider, probe: str) -> None:
    fake.platform_errors_next = [500, 502, 400]
    first = wait(provider, provider.invoke(probe, {}))
    assert first.state is State.FAILED and first.error.startswith("PlatformError") and "HTTP 500" in first.error
    second = wait(provider, provider.invoke(probe, {}))
    assert second.state is State.FAILED and "HTTP 502" in second.error
    third = wait(provider, provider.invoke(probe, {}))
    assert third.state is State.FAILED and third.error.startswith("InvocationFailed") and "HTTP 400" in third.error
    assert wait(provider, provider.invoke(probe, {})).state is State.SUCCEEDED


def test_many_calls_through_a_small_pool(provider: GcfProvider, probe: str) -> None:
    invocations = [provider.invoke(probe, {"i": i}) for i in range(12)]
    statuses = [wait(provider, inv) for inv in invocations]
    assert [s.result["echo"]["i"] for s in statuses] == list(range(12))
    assert len({inv.activation_id for inv in invocations}) == 12


def test_missing_function_then_redeploy(fake: FakeGcf, provider: GcfProvider) -> None:
    name = "fk-gcftest-vanishing"
    spec = make_spec("nodeinfo", name)
    provider.deploy(spec)
    assert wait(provider, provider.invoke(name, {})).state is State.SUCCEEDED
    fake.delete_behind(name)
    inv = provider.invoke(name, {})  # the URL is cached: the call itself finds the function gone
    with pytest.raises(FunctionMissing, match="404"):
        wait(provider, inv)
    with pytest.raises(FunctionMissing, match="not deployed"):  # the admin API says so as well now
        provider.invoke(name, {})
    assert not provider.exists(name)
    assert provider.deploy(spec).action == "created"
    assert wait(provider, provider.invoke(name, {})).state is State.SUCCEEDED
    assert provider.remove(name)


# ---------------------------------------------------------------------------------------------- remove


def test_remove_by_label_includes_orphans(fake: FakeGcf, provider: GcfProvider) -> None:
    parent = f"projects/{PROJECT}/locations/{REGION}"
    mine = "fk-orphans-nodeinfo"
    provider.deploy(make_spec("nodeinfo", mine, experiment="orphans"))
    fake.add_foreign(parent, "fk-orphans-fl-client-3", {LABEL_EXPERIMENT: "orphans", LABEL_FUNCTION: "fl_client"})
    fake.add_foreign(parent, "fk-other-fl-client", {LABEL_EXPERIMENT: "other"})
    fake.add_foreign(parent, "someone-elses-function", {})
    found = provider.list({LABEL_EXPERIMENT: "orphans"})
    assert [i.name for i in found] == ["fk-orphans-fl-client-3", mine]  # across pages (page size 2)
    assert {i.labels[LABEL_FUNCTION] for i in found} == {"fl_client", "nodeinfo"}
    assert "someone-elses-function" not in {i.name for i in provider.list()}  # unlabelled: not ours
    assert all(provider.remove(i.name) for i in found)
    assert provider.list({LABEL_EXPERIMENT: "orphans"}) == []
    assert provider.remove(mine) is False  # idempotent
    remaining = {fake.function_id(n) for n in fake.functions}
    assert {"fk-other-fl-client", "someone-elses-function"} <= remaining
    assert mine not in remaining and mine not in {fake.function_id(n) for n in fake.runtimes}


# ---------------------------------------------------------------------------------------------- secrets


def test_secrets_stay_out_of_urls_logs_and_payloads(fake: FakeGcf, tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    name = "fk-gcftest-secret"
    with GcfProvider("gcf", cluster(fake), workdir=tmp_path) as provider:
        spec = make_spec("nodeinfo", name)
        assert SECRET not in repr(spec)
        before = len(fake.received)
        provider.deploy(spec)
        wait(provider, provider.invoke(name, {"round": 1}))
        provider.remove(name)
    sent = fake.received[before:]
    for record in sent:
        assert SECRET not in record.url
        assert all(SECRET not in v for v in record.headers.values())
    carrying = [r for r in sent if SECRET.encode() in r.body]
    # only the create request, in serviceConfig.environmentVariables, carries it
    assert len(carrying) == 1 and "functionId=" in carrying[0].query
    body = json.loads(carrying[0].body)
    assert SECRET not in json.dumps(body["labels"]) and SECRET not in json.dumps(body["buildConfig"])
    assert SECRET not in caplog.text


# ---------------------------------------------------------------------------------------------- credentials


def test_service_account_file_access_and_id_tokens(fake: FakeGcf, tmp_path: Path) -> None:
    key_file = tmp_path / "sa.json"
    info = fake.service_account(key_file, PROJECT)
    name = "fk-gcftest-authed"
    fake.require_access_token = fake.require_id_token = True
    try:
        config = cluster(fake, credentials=str(key_file), id_token=True)
        with GcfProvider("gcf", config, workdir=tmp_path) as provider:
            provider.deploy(make_spec("nodeinfo", name))
            minted = len(fake.id_tokens)
            first = wait(provider, provider.invoke(name, {}))
            second = wait(provider, provider.invoke(name, {}))
            assert first.state is State.SUCCEEDED and second.state is State.SUCCEEDED
            assert len(fake.id_tokens) == minted + 1  # one ID token for both calls
            url = fake.get(provider.full_name(name))["url"]
            assert [c["target_audience"] for c in fake.token_requests if "target_audience" in c][-1] == url
            fake.revoke_id_tokens()  # the cached token is now refused (401): one fresh token, one retry
            assert wait(provider, provider.invoke(name, {})).state is State.SUCCEEDED
            assert len(fake.id_tokens) == 1
            assert provider.remove(name)
        assert all(info["private_key"].split("\n")[1] not in r.body.decode(errors="replace") for r in fake.received)
    finally:
        fake.require_access_token = fake.require_id_token = False


def test_anonymous_calls_to_a_protected_function_are_auth_errors(fake: FakeGcf, provider: GcfProvider,
                                                                 probe: str) -> None:
    from fedkeeper.providers.base import AuthError

    fake.require_id_token = True
    try:
        with pytest.raises(AuthError, match="403"):
            wait(provider, provider.invoke(probe, {}))
    finally:
        fake.require_id_token = False


def test_legacy_inline_service_account_from_a_config_file(fake: FakeGcf, tmp_path: Path) -> None:
    """The prototype's `providers.gcf.<c>.auth: {service-account fields}` still deploys and invokes."""
    import yaml

    from fedkeeper import config as fk_config

    info = fake.service_account(tmp_path / "unused.json", "legacy-proj")
    (tmp_path / "legacy.yaml").write_text(yaml.safe_dump({
        "experiment": "legacy",
        "providers": {"gcf": {"g1": {"region": REGION, "api_endpoint": fake.endpoint, "auth": info}}},
        "scenarios": {"smoke": {}},
    }))
    loaded = fk_config.load(str(tmp_path / "legacy.yaml"))
    settings = loaded.clusters()["g1"]
    assert isinstance(settings, GcfCluster) and settings.project_id == "legacy-proj"
    assert info["private_key"] not in repr(settings)
    name = "fk-legacy-nodeinfo"
    fake.require_access_token = fake.require_id_token = True
    try:
        with create_provider("google", "g1", settings, workdir=tmp_path) as provider:
            assert provider.deploy(make_spec("nodeinfo", name, experiment="legacy")).action == "created"
            assert wait(provider, provider.invoke(name, {})).state is State.SUCCEEDED
            assert provider.remove(name)
    finally:
        fake.require_access_token = fake.require_id_token = False


def test_closed_provider_refuses_new_calls(fake: FakeGcf, probe: str, tmp_path: Path) -> None:
    from fedkeeper.providers.base import PlatformError

    provider = GcfProvider("gcf", cluster(fake), workdir=tmp_path)
    assert wait(provider, provider.invoke(probe, {})).state is State.SUCCEEDED
    provider.close()
    provider.close()  # idempotent
    with pytest.raises(PlatformError, match="closed"):
        provider.invoke(probe, {})


def test_create_race_falls_back_to_update(fake: FakeGcf, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another deploy created the function between our get and our create: ALREADY_EXISTS becomes an update."""
    name = "fk-gcftest-race"
    with GcfProvider("gcf", cluster(fake), workdir=tmp_path) as provider:
        provider.deploy(make_spec("nodeinfo", name, memory_mb=256))
        monkeypatch.setattr(provider, "_get", lambda _name: None)  # what the get saw before the other deploy
        assert provider.deploy(make_spec("nodeinfo", name, memory_mb=512)).action == "updated"
        monkeypatch.undo()
        assert fake.get(provider.full_name(name))["serviceConfig"]["availableMemory"] == "512Mi"
        assert provider.remove(name)

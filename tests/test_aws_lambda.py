"""LambdaProvider against moto's in-process Lambda and IAM (no Docker: invoke echoes or returns queued results).

What moto cannot do (throttle, report a FunctionError, time out, refuse a missing function on invoke) is
injected at the HTTP layer with a `before-send` hook on the provider's boto3 session, answering with the
wire shapes real Lambda uses, so the provider's botocore parsing and error mapping run unchanged.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import threading
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ReadTimeoutError
from moto import mock_aws
from moto.moto_api._internal.models import moto_api_backend

from fedkeeper.providers.aws.config import LambdaCluster
from fedkeeper.providers.aws import client as aws_client, provider as aws_lambda
from fedkeeper.providers.aws.provider import LambdaProvider, code_sha256
from fedkeeper.providers.base import (
    LABEL_DIGEST,
    LABEL_EXPERIMENT,
    LABEL_FUNCTION,
    AuthError,
    DeploySpec,
    FunctionMissing,
    InvocationFailed,
    PlatformError,
    ProviderError,
    State,
    Status,
    Throttled,
    spec_digest,
)

REGION = "eu-west-1"
ACCOUNT = "123456789012"


# ---------------------------------------------------------------------------------------------- helpers


def make_zip(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            zf.writestr(info, files[name])
    return buf.getvalue()


def make_spec(name: str = "fk-exp-nodeinfo", *, code: str = "v1", memory: int = 256, timeout: float = 30,
              env: dict[str, str] | None = None, experiment: str = "exp", function: str = "nodeinfo",
              extra: dict[str, Any] | None = None) -> DeploySpec:
    artifact = make_zip({"lambda_function.py": "def handler(event, context):\n    return event\n",
                         "handler.py": f"VERSION = {code!r}\n"})
    env = {"FK_MONGO_URL": "mongodb://u:s3cret@db.example:27017", "FK_MONGO_DB": "fk"} if env is None else env
    extra = extra or {}
    digest = spec_digest(hashlib.sha256(artifact).hexdigest(), memory, timeout, 1, env, extra)
    return DeploySpec(name=name, function=function, artifact=artifact, digest=digest, memory_mb=memory,
                      timeout_s=timeout, env=env, extra=extra,
                      labels={LABEL_EXPERIMENT: experiment, LABEL_FUNCTION: function, LABEL_DIGEST: digest})


class _Raw(io.BytesIO):
    """The raw body botocore reads (`stream()` for parsing, `read()` for streaming payloads)."""

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.getvalue()


def aws_response(url: str, status: int, body: Any, headers: dict[str, str] | None = None) -> AWSResponse:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    hdrs = {"Content-Type": "application/json", "x-amzn-RequestId": "req-" + hashlib.sha1(data).hexdigest()[:12]}
    hdrs.update(headers or {})
    return AWSResponse(url, status, hdrs, _Raw(data))


def lambda_error(url: str, status: int, code: str, message: str, **extra: Any) -> AWSResponse:
    """An error response as Lambda's REST-JSON protocol sends it."""
    headers = {"x-amzn-ErrorType": code, **{k: v for k, v in extra.items() if k == "Retry-After"}}
    body = {"Type": "User", "message": message, **{k: v for k, v in extra.items() if k != "Retry-After"}}
    return aws_response(url, status, body, headers)


InvokeHook = Callable[[Any], AWSResponse | None]


@pytest.fixture(scope="module")
def moto_lambda(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """moto with Lambda (no Docker) and IAM for the whole module, an IAM role, and a slot for an invoke hook."""
    home = tmp_path_factory.mktemp("aws")
    state: dict[str, Any] = {"hook": None}
    real_make_session = aws_client.make_session

    def make_session(cluster: str, config: LambdaCluster) -> boto3.Session:
        session = real_make_session(cluster, config)

        def before_send(request: Any, **_: Any) -> AWSResponse | None:
            hook = state["hook"]
            return hook(request) if hook else None

        session.events.register_first("before-send.lambda.Invoke", before_send)
        return session

    with pytest.MonkeyPatch.context() as mp:
        for key in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
            mp.delenv(key, raising=False)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_CONFIG_FILE", str(home / "aws-config"))
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home / "aws-credentials"))
        mp.setattr(aws_client, "make_session", make_session)
        with mock_aws(config={"lambda": {"use_docker": False}}):
            iam = boto3.client("iam", region_name=REGION)
            state["role_arn"] = iam.create_role(RoleName="fk-lambda", AssumeRolePolicyDocument=json.dumps({
                "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                        "Principal": {"Service": "lambda.amazonaws.com"}}]},
            ))["Role"]["Arn"]
            state["lambda"] = boto3.client("lambda", region_name=REGION)
            yield state


@pytest.fixture
def aws(moto_lambda: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The module's moto, emptied after each test: no functions, no hook, no queued results."""
    from moto.awslambda_simple.models import lambda_simple_backends

    yield moto_lambda
    moto_lambda["hook"] = None
    lam = moto_lambda["lambda"]
    for page in lam.get_paginator("list_functions").paginate():
        for fn in page["Functions"]:
            lam.delete_function(FunctionName=fn["FunctionName"])
    lambda_simple_backends[ACCOUNT][REGION].lambda_simple_results_queue.clear()


@pytest.fixture
def make_provider(aws: dict[str, Any], tmp_path: Path) -> Iterator[Callable[..., LambdaProvider]]:
    made: list[LambdaProvider] = []

    def make(**fields: Any) -> LambdaProvider:
        fields.setdefault("region", REGION)
        fields.setdefault("role_arn", aws["role_arn"])
        provider = LambdaProvider("lambda-eu", LambdaCluster(**fields), workdir=tmp_path)
        made.append(provider)
        return provider

    yield make
    for provider in made:
        provider.close()


@pytest.fixture
def provider(make_provider: Callable[..., LambdaProvider]) -> LambdaProvider:
    return make_provider(architecture="arm64")


def count_calls(provider: LambdaProvider) -> list[str]:
    """Names of the Lambda API operations the provider's control client sends from now on."""
    calls: list[str] = []
    provider._clients.control.meta.events.register(
        "before-call.lambda", lambda model, **_: calls.append(model.name))
    return calls


def wait_done(provider: LambdaProvider, inv: Any) -> Status:
    future = inv.handle
    future.exception(timeout=30)  # block until the pool thread has finished (no timing assertion)
    return provider.poll(inv)


def queue_results(*results: dict[str, Any]) -> None:
    """What POST /moto-api/static/lambda-simple/response does: the next invokes return these bodies."""
    for result in results:
        moto_api_backend.set_lambda_simple_result(result=json.dumps(result), account_id=ACCOUNT, region=REGION)


# ---------------------------------------------------------------------------------------------- deploy


def test_deploy_creates_function_with_settings_tags_and_code(provider: LambdaProvider, aws: dict[str, Any]) -> None:
    spec = make_spec(memory=384, timeout=12.5)
    result = provider.deploy(spec)
    assert (result.action, result.name, result.digest) == ("created", spec.name, spec.digest)

    got = aws["lambda"].get_function(FunctionName=spec.name)
    conf = got["Configuration"]
    assert conf["CodeSha256"] == code_sha256(spec.artifact)
    assert conf["CodeSha256"] == base64.b64encode(hashlib.sha256(spec.artifact).digest()).decode()
    assert (conf["Runtime"], conf["Handler"], conf["MemorySize"], conf["Timeout"]) == \
        ("python3.11", "lambda_function.handler", 384, 13)
    assert conf["Architectures"] == ["arm64"]
    assert conf["Role"] == aws["role_arn"]
    assert conf["Environment"]["Variables"] == spec.env
    assert conf["State"] == "Active"
    assert got["Tags"] == spec.labels
    assert provider.exists(spec.name)
    assert not provider.exists("fk-exp-other")


def test_redeploy_of_same_spec_is_a_noop(provider: LambdaProvider) -> None:
    spec = make_spec()
    provider.deploy(spec)
    calls = count_calls(provider)
    again = provider.deploy(make_spec())
    assert again.action == "unchanged"
    assert calls == ["GetFunction"]


def test_code_change_updates_code_only(provider: LambdaProvider, aws: dict[str, Any]) -> None:
    provider.deploy(make_spec(code="v1"))
    calls = count_calls(provider)
    new = make_spec(code="v2")
    assert provider.deploy(new).action == "updated"
    assert "UpdateFunctionCode" in calls and "UpdateFunctionConfiguration" not in calls
    got = aws["lambda"].get_function(FunctionName=new.name)
    assert got["Configuration"]["CodeSha256"] == code_sha256(new.artifact)
    assert got["Tags"][LABEL_DIGEST] == new.digest
    assert provider.deploy(make_spec(code="v2")).action == "unchanged"


def test_config_only_change_updates_configuration_not_code(provider: LambdaProvider, aws: dict[str, Any]) -> None:
    provider.deploy(make_spec())
    calls = count_calls(provider)
    bigger = make_spec(memory=1024, env={"FK_MONGO_URL": "mongodb://other:27017", "FK_MONGO_DB": "fk"})
    assert provider.deploy(bigger).action == "updated"
    assert "UpdateFunctionConfiguration" in calls and "UpdateFunctionCode" not in calls
    got = aws["lambda"].get_function(FunctionName=bigger.name)
    assert got["Configuration"]["MemorySize"] == 1024
    assert got["Configuration"]["Environment"]["Variables"]["FK_MONGO_URL"] == "mongodb://other:27017"
    assert got["Tags"][LABEL_DIGEST] == bigger.digest


def test_drift_made_outside_fedkeeper_is_undone(provider: LambdaProvider, aws: dict[str, Any]) -> None:
    spec = make_spec()
    provider.deploy(spec)
    aws["lambda"].update_function_configuration(FunctionName=spec.name, MemorySize=2048)
    assert provider.deploy(spec).action == "updated"
    assert aws["lambda"].get_function(FunctionName=spec.name)["Configuration"]["MemorySize"] == 256


def test_architecture_change_reuploads_code(make_provider: Callable[..., LambdaProvider],
                                            aws: dict[str, Any]) -> None:
    spec = make_spec()
    make_provider(architecture="x86_64").deploy(spec)
    arm = make_provider(architecture="arm64")
    sent: list[dict[str, Any]] = []
    arm._clients.control.meta.events.register(
        "provide-client-params.lambda.UpdateFunctionCode", lambda params, **_: sent.append(dict(params)))
    assert arm.deploy(spec).action == "updated"
    # moto 5.2 ignores Architectures on UpdateFunctionCode, real Lambda applies it: check what was sent.
    assert [(p["Architectures"], p["ZipFile"] == spec.artifact) for p in sent] == [(["arm64"], True)]


def test_reserved_concurrency_is_set_and_cleared(make_provider: Callable[..., LambdaProvider],
                                                 aws: dict[str, Any]) -> None:
    spec = make_spec()
    assert make_provider(reserved_concurrency=3).deploy(spec).action == "created"
    assert aws["lambda"].get_function_concurrency(FunctionName=spec.name)["ReservedConcurrentExecutions"] == 3
    assert make_provider(reserved_concurrency=3).deploy(spec).action == "unchanged"
    assert make_provider().deploy(spec).action == "updated"
    assert "ReservedConcurrentExecutions" not in aws["lambda"].get_function_concurrency(FunctionName=spec.name)


def test_layers_from_cluster_and_function_settings(make_provider: Callable[..., LambdaProvider]) -> None:
    numpy_layer = f"arn:aws:lambda:{REGION}:{ACCOUNT}:layer:numpy:3"
    pymongo_layer = f"arn:aws:lambda:{REGION}:{ACCOUNT}:layer:pymongo:1"
    provider = make_provider(layers=[numpy_layer])
    sent: list[dict[str, Any]] = []
    provider._clients.control.meta.events.register(
        "provide-client-params.lambda.CreateFunction", lambda params, **_: sent.append(dict(params)))
    # The layers do not exist in this account: Lambda refuses with ResourceNotFoundException, which is about
    # the layer, so it must not read as "function missing" (the tracker would redeploy forever).
    with pytest.raises(InvocationFailed, match="LayerVersion does not exist"):
        provider.deploy(make_spec(extra={"layers": [pymongo_layer, numpy_layer]}))
    assert [p["Layers"] for p in sent] == [[numpy_layer, pymongo_layer]]


def test_layer_comparison_uses_arns_in_order() -> None:
    want = {"Layers": ["arn:a:1", "arn:b:2"], "MemorySize": 256}
    live = {"Layers": [{"Arn": "arn:a:1", "CodeSize": 10}, {"Arn": "arn:b:2", "CodeSize": 20}], "MemorySize": 256}
    assert LambdaProvider._config_matches(live, want)
    assert not LambdaProvider._config_matches({**live, "Layers": live["Layers"][::-1]}, want)
    assert not LambdaProvider._config_matches({"MemorySize": 256}, want)
    assert LambdaProvider._config_matches({"MemorySize": 256}, {"Layers": [], "MemorySize": 256})


def test_create_racing_another_deploy_falls_back_to_update(provider: LambdaProvider, aws: dict[str, Any]) -> None:
    spec = make_spec(memory=512)
    rival = make_spec(memory=128, code="rival")

    def another_deploy_wins(request: Any, **_: Any) -> None:
        aws["lambda"].create_function(FunctionName=spec.name, Runtime="python3.11", Role=aws["role_arn"],
                                      Handler="lambda_function.handler", Code={"ZipFile": rival.artifact},
                                      MemorySize=128, Tags=rival.labels)

    provider._clients.control.meta.events.register_first("before-send.lambda.CreateFunction", another_deploy_wins)
    # moto answers our create with 409 ResourceConflictException ("already exists"), as Lambda does
    assert provider.deploy(spec).action == "updated"
    got = aws["lambda"].get_function(FunctionName=spec.name)
    assert got["Configuration"]["CodeSha256"] == code_sha256(spec.artifact)
    assert got["Configuration"]["MemorySize"] == 512 and got["Tags"][LABEL_DIGEST] == spec.digest


def test_function_that_fails_to_become_active_names_lambdas_reason(provider: LambdaProvider) -> None:
    spec = make_spec()
    created = threading.Event()
    reason = "The role defined for the function cannot be assumed by Lambda."

    def lambda_says_failed(request: Any, **_: Any) -> AWSResponse | None:
        if not created.is_set():
            return None  # the first GetFunction (does it exist?) goes to moto
        return aws_response(request.url, 200, {"Configuration": {
            "FunctionName": spec.name, "State": "Failed", "StateReason": reason, "StateReasonCode": "InvalidRole"}})

    events = provider._clients.control.meta.events
    events.register("after-call.lambda.CreateFunction", lambda **_: created.set())
    events.register_first("before-send.lambda.GetFunction", lambda_says_failed)
    with pytest.raises(InvocationFailed, match="could not make the function ready: The role defined"):
        provider.deploy(spec)


def test_create_without_role_names_the_config_key(make_provider: Callable[..., LambdaProvider]) -> None:
    with pytest.raises(InvocationFailed, match=r"providers\.aws\.lambda-eu\.role_arn"):
        make_provider(role_arn=None).deploy(make_spec())


def test_artifact_checks(provider: LambdaProvider, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = make_spec()
    monkeypatch.setattr(aws_lambda, "MAX_ZIP_BYTES", len(spec.artifact) - 1)
    with pytest.raises(InvocationFailed, match=r"50 MB direct upload limit \(S3 upload is not supported\)"):
        provider.deploy(spec)
    monkeypatch.undo()
    no_entry = DeploySpec(name="fk-exp-x", function="x", artifact=make_zip({"handler.py": ""}), digest="d",
                          memory_mb=128, timeout_s=3)
    with pytest.raises(InvocationFailed, match="no lambda_function.py"):
        provider.deploy(no_entry)
    not_zip = DeploySpec(name="fk-exp-x", function="x", artifact=b"not a zip", digest="d", memory_mb=128,
                         timeout_s=3)
    with pytest.raises(InvocationFailed, match="not a zip"):
        provider.deploy(not_zip)


def test_unknown_profile_is_an_auth_error_naming_the_key(aws: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(AuthError, match=r"providers\.aws\.lambda-eu\.profile.*'nope'"):
        LambdaProvider("lambda-eu", LambdaCluster(region=REGION, profile="nope"), workdir=tmp_path)


def test_secrets_stay_out_of_repr_and_errors(provider: LambdaProvider, aws: dict[str, Any]) -> None:
    spec = make_spec()
    assert "s3cret" not in repr(spec)
    aws["hook"] = lambda request: lambda_error(request.url, 403, "AccessDeniedException", "not allowed")
    provider.deploy(spec)
    inv = provider.invoke(spec.name, {"x": 1})
    with pytest.raises(AuthError) as err:
        wait_done(provider, inv)
    assert "s3cret" not in str(err.value) and "testing" not in str(err.value)


# ---------------------------------------------------------------------------------------------- invoke


def test_invoke_returns_queued_result_with_request_id(provider: LambdaProvider) -> None:
    spec = make_spec()
    provider.deploy(spec)
    queue_results({"ok": True, "host": "sandbox-1"}, {"ok": True, "host": "sandbox-2"})
    first = provider.invoke(spec.name, {"run_id": "r1"})
    s1 = wait_done(provider, first)
    second = provider.invoke(spec.name, {"run_id": "r1"})
    s2 = wait_done(provider, second)
    assert (s1.state, s1.result) == (State.SUCCEEDED, {"ok": True, "host": "sandbox-1"})
    assert (s2.state, s2.result) == (State.SUCCEEDED, {"ok": True, "host": "sandbox-2"})
    assert s1.activation_id and s1.activation_id != first.activation_id  # Lambda's request id, not our uuid
    assert s1.activation_id != s2.activation_id
    assert first.activation_id != second.activation_id
    assert s1.start is not None and s1.end is not None and s1.end >= s1.start and s1.duration_s is not None
    assert s1.cold is None  # moto sends no log tail


def test_invoke_without_queued_result_gets_moto_echo(provider: LambdaProvider) -> None:
    spec = make_spec()
    provider.deploy(spec)
    status = wait_done(provider, provider.invoke(spec.name, {"round": 3, "client_id": 7}))
    assert status.state is State.SUCCEEDED and status.result == {"round": 3, "client_id": 7}


def test_invoke_function_deployed_by_another_process(make_provider: Callable[..., LambdaProvider]) -> None:
    spec = make_spec(timeout=45)
    make_provider().deploy(spec)
    fresh = make_provider()  # knows nothing of the function: reads its timeout for the read timeout
    calls = count_calls(fresh)
    status = wait_done(fresh, fresh.invoke(spec.name, {"a": 1}))
    assert status.state is State.SUCCEEDED and calls == ["GetFunctionConfiguration"]
    assert fresh._clients.for_timeout(45).meta.config.read_timeout == 45 + aws_client.READ_TIMEOUT_SLACK_S


def test_function_error_is_failed_with_message(provider: LambdaProvider, aws: dict[str, Any]) -> None:
    spec = make_spec()
    provider.deploy(spec)
    aws["hook"] = lambda request: aws_response(
        request.url, 200, {"errorMessage": "shard 4 has no examples", "errorType": "ValueError",
                           "stackTrace": ["  File \"handler.py\", line 3"]},
        {"X-Amz-Function-Error": "Unhandled", "X-Amz-Executed-Version": "$LATEST"})
    inv = provider.invoke(spec.name, {"client_id": 4})
    status = wait_done(provider, inv)
    assert status.state is State.FAILED
    assert status.error == "ValueError: shard 4 has no examples"
    assert status.result is None and status.activation_id and status.activation_id.startswith("req-")


def test_read_timeout_is_timed_out(provider: LambdaProvider, aws: dict[str, Any]) -> None:
    spec = make_spec(timeout=5)
    provider.deploy(spec)

    def hook(request: Any) -> None:
        raise ReadTimeoutError(endpoint_url=request.url)

    aws["hook"] = hook
    status = wait_done(provider, provider.invoke(spec.name, {}))
    assert status.state is State.TIMED_OUT and "function timeout 5 s" in (status.error or "")


def test_log_tail_gives_cold_start_and_platform_duration(provider: LambdaProvider, aws: dict[str, Any]) -> None:
    spec = make_spec()
    provider.deploy(spec)
    tail = ("START RequestId: 1 Version: $LATEST\nEND RequestId: 1\n"
            "REPORT RequestId: 1\tDuration: 1234.50 ms\tBilled Duration: 1235 ms\tMemory Size: 256 MB\t"
            "Max Memory Used: 80 MB\tInit Duration: 300.12 ms\t\n")
    aws["hook"] = lambda request: aws_response(request.url, 200, {"ok": 1}, {
        "X-Amz-Log-Result": base64.b64encode(tail.encode()).decode()})
    status = wait_done(provider, provider.invoke(spec.name, {}))
    assert status.state is State.SUCCEEDED and status.cold is True and status.duration_s == pytest.approx(1.2345)
    warm = tail.replace("\tInit Duration: 300.12 ms", "")
    aws["hook"] = lambda request: aws_response(request.url, 200, {"ok": 1}, {
        "X-Amz-Log-Result": base64.b64encode(warm.encode()).decode()})
    assert wait_done(provider, provider.invoke(spec.name, {})).cold is False


def test_throttling_raises_throttled_from_poll(provider: LambdaProvider, aws: dict[str, Any]) -> None:
    spec = make_spec()
    provider.deploy(spec)
    aws["hook"] = lambda request: lambda_error(
        request.url, 429, "TooManyRequestsException", "Rate Exceeded.",
        Reason="ReservedFunctionConcurrentInvocationLimitExceeded", **{"Retry-After": "2"})
    inv = provider.invoke(spec.name, {})
    with pytest.raises(Throttled) as err:
        wait_done(provider, inv)
    assert err.value.retry_after_s == 2.0
    assert "ReservedFunctionConcurrentInvocationLimitExceeded" in str(err.value)
    assert err.value.cluster == "lambda-eu"
    aws["hook"] = None  # the platform has capacity again: the same function answers
    assert wait_done(provider, provider.invoke(spec.name, {"n": 1})).result == {"n": 1}


@pytest.mark.parametrize(("status", "code"), [
    (403, "AccessDeniedException"),
    (403, "UnrecognizedClientException"),
    (403, "InvalidSignatureException"),
])
def test_auth_errors_are_raised_from_poll(provider: LambdaProvider, aws: dict[str, Any], status: int,
                                          code: str) -> None:
    spec = make_spec()
    provider.deploy(spec)
    aws["hook"] = lambda request: lambda_error(request.url, status, code, f"{code} happened")
    with pytest.raises(AuthError) as err:
        wait_done(provider, provider.invoke(spec.name, {}))
    assert code in str(err.value) and spec.name in str(err.value)


@pytest.mark.parametrize(("status", "code", "kind"), [
    (500, "ServiceException", "platform error"),
    (502, "EC2ThrottledException", "platform error"),
    (502, "KMSAccessDeniedException", "platform error"),
    (409, "ResourceConflictException", "platform error"),
    (413, "RequestTooLargeException", "rejected"),
    (400, "InvalidRequestContentException", "rejected"),
])
def test_other_refusals_are_failed_attempts(provider: LambdaProvider, aws: dict[str, Any], status: int, code: str,
                                            kind: str) -> None:
    """The call is over: a FAILED status (retried under the policy), not an error the tracker would re-poll."""
    spec = make_spec()
    provider.deploy(spec)
    aws["hook"] = lambda request: lambda_error(request.url, status, code, f"{code} happened")
    status_ = wait_done(provider, provider.invoke(spec.name, {}))
    assert status_.state is State.FAILED
    assert status_.error is not None and status_.error.startswith(f"{kind}: invoke {spec.name!r}: {code}")
    assert status_.activation_id and status_.activation_id.startswith("req-")


def test_error_mapping_table() -> None:
    """Every code class maps to its typed error (what deploy/list/remove raise, and what poll builds on)."""
    from botocore.exceptions import ClientError

    from fedkeeper.providers.aws.errors import map_client_error

    def err(code: str, status: int, message: str = "m") -> ClientError:
        return ClientError({"Error": {"Code": code, "Message": message},
                            "ResponseMetadata": {"HTTPStatusCode": status}}, "Invoke")

    cases = [
        (err("TooManyRequestsException", 429), Throttled), (err("ThrottlingException", 400), Throttled),
        (err("ResourceNotFoundException", 404, "Function not found: arn"), FunctionMissing),
        (err("AccessDeniedException", 403), AuthError), (err("ExpiredTokenException", 403), AuthError),
        (err("ServiceException", 500), PlatformError), (err("SomethingNew", 503), PlatformError),
        (err("InvalidParameterValueException", 400), InvocationFailed),
    ]
    for exc, expected in cases:
        assert type(map_client_error("c", "invoke", "f", exc)) is expected, exc
    layer_missing = err("ResourceNotFoundException", 404, "Layer version arn:aws:lambda:x does not exist")
    assert type(map_client_error("c", "create_function", "f", layer_missing)) is InvocationFailed
    assert type(map_client_error("c", "update_function_configuration", "f", layer_missing)) is InvocationFailed
    assert type(map_client_error("c", "update_function_configuration", "f",
                                 err("ResourceNotFoundException", 404, "Function not found: arn"))) is FunctionMissing


def test_invocations_are_bounded_by_max_inflight(make_provider: Callable[..., LambdaProvider],
                                                 aws: dict[str, Any]) -> None:
    provider = make_provider(max_inflight=3)
    spec = make_spec()
    provider.deploy(spec)
    lock = threading.Lock()
    inside = {"now": 0, "max": 0}
    three_inside = threading.Event()
    release = threading.Event()

    def slow(request: Any) -> None:
        with lock:
            inside["now"] += 1
            inside["max"] = max(inside["max"], inside["now"])
            if inside["now"] == 3:
                three_inside.set()
        release.wait(30)
        with lock:
            inside["now"] -= 1
        return None  # let moto answer (echo)

    aws["hook"] = slow
    invs = [provider.invoke(spec.name, {"i": i}) for i in range(8)]
    assert three_inside.wait(30)
    assert sum(provider.poll(inv).state is State.PENDING for inv in invs) == 8
    release.set()
    results = [wait_done(provider, inv) for inv in invs]
    assert [s.result for s in results] == [{"i": i} for i in range(8)]
    assert inside["max"] == 3


def test_oversized_payload_is_refused_before_sending(provider: LambdaProvider) -> None:
    with pytest.raises(InvocationFailed, match="6 MB synchronous limit"):
        provider.invoke("fk-exp-nodeinfo", {"blob": "x" * (6 * 1024 * 1024)})


def test_poll_without_future_is_lost_and_closed_provider_refuses(provider: LambdaProvider) -> None:
    from fedkeeper.providers.base import Invocation

    assert provider.poll(Invocation("lambda-eu", "fk-exp-nodeinfo", "abc", 0.0)).state is State.LOST
    provider.close()
    provider.close()
    with pytest.raises(ProviderError, match="closed"):
        provider.invoke("fk-exp-nodeinfo", {})


# ---------------------------------------------------------------------------------------------- list / remove


def test_list_and_remove_by_tag_including_orphans(make_provider: Callable[..., LambdaProvider],
                                                  aws: dict[str, Any]) -> None:
    provider = make_provider()
    provider.deploy(make_spec("fk-exp-nodeinfo"))
    provider.deploy(make_spec("fk-exp-fl-client", function="fl_client"))
    make_provider().deploy(make_spec("fk-other-nodeinfo", experiment="other"))
    # An orphan: created by a deploy that crashed before FedKeeper recorded it (same tags, different name).
    orphan = make_spec("fk-exp-fl-client-7", function="fl_client")
    aws["lambda"].create_function(FunctionName=orphan.name, Runtime="python3.11", Role=aws["role_arn"],
                                  Handler="lambda_function.handler", Code={"ZipFile": orphan.artifact},
                                  Tags=orphan.labels)
    aws["lambda"].create_function(FunctionName="someone-elses", Runtime="python3.11", Role=aws["role_arn"],
                                  Handler="x.y", Code={"ZipFile": orphan.artifact})

    ours = provider.list({LABEL_EXPERIMENT: "exp"})
    assert [info.name for info in ours] == ["fk-exp-fl-client", "fk-exp-fl-client-7", "fk-exp-nodeinfo"]
    assert all(info.labels[LABEL_EXPERIMENT] == "exp" and info.digest == info.labels[LABEL_DIGEST] for info in ours)
    assert ours[2].memory_mb == 256 and ours[2].timeout_s == 30
    assert [i.name for i in provider.list({LABEL_EXPERIMENT: "exp", LABEL_FUNCTION: "fl_client"})] == \
        ["fk-exp-fl-client", "fk-exp-fl-client-7"]
    assert [i.name for i in provider.list()] == \
        ["fk-exp-fl-client", "fk-exp-fl-client-7", "fk-exp-nodeinfo", "fk-other-nodeinfo"]

    assert [provider.remove(info.name) for info in ours] == [True, True, True]
    assert provider.list({LABEL_EXPERIMENT: "exp"}) == []
    assert provider.remove("fk-exp-nodeinfo") is False
    left = {f["FunctionName"] for f in aws["lambda"].list_functions()["Functions"]}
    assert left == {"fk-other-nodeinfo", "someone-elses"}

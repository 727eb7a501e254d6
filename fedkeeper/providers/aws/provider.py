"""AWS Lambda behind the `Provider` interface (boto3).

Deploy creates or updates a function and waits until Lambda reports it Active / Successful. A redeploy is a
no-op only when the code (Lambda's `CodeSha256`, the base64 sha256 of the zip), the `fedkeeper-digest` tag
(spec.digest: settings and env) and the live configuration (runtime, role, handler, memory, timeout,
architecture, layers, environment, reserved concurrency) all match, so that a config-only change or a change
made in the console is still applied. The digest tag is written last: an update interrupted half-way is
redone by the next deploy.

Invocation is synchronous (`RequestResponse`) on a bounded thread pool (`max_inflight` workers), so `invoke`
returns at once and `poll` looks at the future. How outcomes are reported:

* the platform refused the call for a reason the tracker must act on → `poll` (never `invoke`) raises the
  typed error: `Throttled` (TooManyRequestsException, 429: back off, not a client failure), `FunctionMissing`
  (ResourceNotFoundException: redeploy), `AuthError` (access denied, unknown or expired keys: stop the run).
* the call failed for any other reason → `Status(FAILED)` whose error names the code: AWS-side trouble
  (ServiceException, 5xx, ENI/EC2/KMS errors, a refused connection; `PlatformError` in the mapping) and other
  4xx refusals (`InvocationFailed`). They are returned, not raised, because the call is over: the tracker
  re-polls a raised `PlatformError` as "could not ask", which would stall the client until its deadline,
  whereas a failed attempt is retried at once under the resilience policy.
* the function ran and raised → `Status(FAILED)` with "errorType: errorMessage" from the runtime's payload;
  a sandbox timeout ("Task timed out after …") and a read timeout of our own → `Status(TIMED_OUT)`.
* success → `Status(SUCCEEDED)` with the handler's dict; `Status.activation_id` is Lambda's request id (the
  `Invocation.activation_id` is our own uuid, known before the call is sent).

Synchronous invocations leave no record to look up later: an `Invocation` without its future (an
orchestrator restart) is reported `LOST`. Lambda runs one request per instance, so `DeploySpec.concurrency`
has no Lambda setting; the cluster's `reserved_concurrency` caps parallel instances instead.
Code goes up directly as a zip (≤ 50 MB); uploading through S3 is not supported.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import time
import uuid
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from botocore.exceptions import BotoCoreError, ClientError, ReadTimeoutError, WaiterError
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from fedkeeper.providers.aws.config import LAMBDA_TIMEOUT_S, LambdaCluster
from fedkeeper.providers.aws.client import READ_TIMEOUT_SLACK_S, LambdaClients
from fedkeeper.providers.aws.errors import (
    error_code,
    map_client_error,
    map_transport_error,
    parse_function_error,
    parse_log_tail,
)
from fedkeeper.providers.base import (
    LABEL_DIGEST,
    LABEL_EXPERIMENT,
    AuthError,
    DeployResult,
    DeploySpec,
    FunctionInfo,
    FunctionMissing,
    InvocationFailed,
    Invocation,
    PlatformError,
    Provider,
    ProviderError,
    State,
    Status,
    Throttled,
)
from fedkeeper.providers.threaded import CallPool, settled_status

HANDLER = "lambda_function.handler"
ENTRY_FILE = "lambda_function.py"
MAX_ZIP_BYTES = 50 * 1024 * 1024            # direct upload limit (zipped)
MAX_UNZIPPED_BYTES = 250 * 1024 * 1024      # function + layers, unzipped
MAX_SYNC_PAYLOAD_BYTES = 6 * 1024 * 1024    # RequestResponse request and response
CREATE_TRIES = 3                             # creates tried while a look says the function still does not exist
WAIT_TRIES = 4                               # waits for a ready function, when its polls are lost in transit

T = TypeVar("T")


def code_sha256(artifact: bytes) -> str:
    """What Lambda reports as `CodeSha256`: base64 of the zip's sha256 digest."""
    return base64.b64encode(hashlib.sha256(artifact).digest()).decode("ascii")


class LambdaProvider(Provider):
    kind: ClassVar[str] = "aws"
    config: LambdaCluster

    def __init__(self, cluster: str, config: LambdaCluster, *, workdir: Path) -> None:
        super().__init__(cluster, config, workdir=workdir)
        self._clients = LambdaClients(cluster, config)
        self._calls = CallPool(cluster, config.max_inflight, f"fk-lambda-{cluster}")
        self._timeouts: dict[str, int] = {}   # function name -> Lambda timeout (s), for the invoke read timeout
        fast = config.is_loopback           # emulators answer at once: poll their state quickly
        self._wait_delay_s = 0.05 if fast else 1.0
        self._wait_max_s = 30.0 if fast else 600.0
        self._retry_wait = (0.02, 0.2) if fast else (0.5, 8.0)

    # ------------------------------------------------------------------ control plane

    def _call(self, action: str, name: str, fn: Callable[..., T], *, attempts: int = 4, **kwargs: Any) -> T:
        """One control-plane call with typed errors; throttling and transient trouble retried by tenacity."""
        initial, maximum = self._retry_wait
        for attempt in Retrying(retry=retry_if_exception_type((Throttled, PlatformError)),
                                stop=stop_after_attempt(attempts),
                                wait=wait_exponential_jitter(multiplier=initial, max=maximum, jitter=initial),
                                reraise=True):
            with attempt:
                try:
                    return fn(**kwargs)
                except ClientError as exc:
                    raise map_client_error(self.cluster, action, name, exc) from None
                except BotoCoreError as exc:
                    raise map_transport_error(self.cluster, action, name, exc) from None
        raise AssertionError("unreachable: tenacity re-raises the last error")

    def _get(self, name: str) -> dict[str, Any] | None:
        try:
            return self._call("get_function", name, self._clients.control.get_function, FunctionName=name)
        except FunctionMissing:
            return None

    def _wait(self, waiter_name: str, name: str) -> None:
        """Wait until Lambda has finished creating/updating; a terminal failure names Lambda's reason. A poll
        lost in transit (botocore's waiters do not retry a dropped connection) is polled again."""
        control = self._clients.control
        try:
            for tries_left in reversed(range(WAIT_TRIES)):
                try:
                    control.get_waiter(waiter_name).wait(FunctionName=name, WaiterConfig={
                        "Delay": self._wait_delay_s,
                        "MaxAttempts": max(1, int(self._wait_max_s / self._wait_delay_s))})
                    return
                except BotoCoreError as exc:
                    if isinstance(exc, WaiterError) or not tries_left:
                        raise
        except WaiterError as exc:
            last = exc.last_response or {}
            cfg = last.get("Configuration", {})
            reason = cfg.get("StateReason") or cfg.get("LastUpdateStatusReason")
            if "Error" in last:
                err = last["Error"]
                raise PlatformError(self.cluster, f"waiting for {name!r}: {err.get('Code')}: "
                                                  f"{err.get('Message')}") from None
            if cfg.get("State") == "Failed" or cfg.get("LastUpdateStatus") == "Failed":
                raise InvocationFailed(self.cluster, f"deploy {name!r}: Lambda could not make the function ready: "
                                                     f"{reason or 'state Failed'}") from None
            raise PlatformError(self.cluster, f"deploy {name!r}: still not ready after {self._wait_max_s:.0f} s"
                                              + (f" ({reason})" if reason else "")) from None
        except BotoCoreError as exc:
            raise map_transport_error(self.cluster, f"waiting for {waiter_name}", name, exc) from None

    def _layers(self, spec: DeploySpec) -> list[str]:
        out: list[str] = []
        for arn in [*self.config.layers, *(spec.extra.get("layers") or [])]:
            if arn not in out:
                out.append(arn)
        return out

    def _configuration(self, spec: DeploySpec) -> dict[str, Any]:
        """The function settings FedKeeper manages (the keyword arguments of update_function_configuration)."""
        conf: dict[str, Any] = {
            "Runtime": self.config.runtime,
            "Handler": HANDLER,
            "MemorySize": int(spec.memory_mb),
            "Timeout": max(1, min(LAMBDA_TIMEOUT_S, math.ceil(spec.timeout_s))),
            "Environment": {"Variables": dict(spec.env)},
            "Layers": self._layers(spec),
            "Description": f"FedKeeper {spec.labels.get(LABEL_EXPERIMENT, '')} {spec.function}".strip()[:256],
        }
        if self.config.role_arn:
            conf["Role"] = self.config.role_arn
        return conf

    @staticmethod
    def _config_matches(live: dict[str, Any], want: dict[str, Any]) -> bool:
        for key, value in want.items():
            if key == "Environment":
                if (live.get("Environment") or {}).get("Variables", {}) != value["Variables"]:
                    return False
            elif key == "Layers":
                if [layer.get("Arn") for layer in live.get("Layers") or []] != value:
                    return False
            elif live.get(key) != value:
                return False
        return True

    def _check_artifact(self, spec: DeploySpec) -> None:
        if len(spec.artifact) > MAX_ZIP_BYTES:
            raise InvocationFailed(
                self.cluster,
                f"deploy {spec.name!r}: the zip is {len(spec.artifact) / 2**20:.1f} MB, above Lambda's 50 MB direct "
                f"upload limit (S3 upload is not supported): set providers.aws.{self.cluster}.vendor_wheels: false "
                f"and provide numpy/pymongo through providers.aws.{self.cluster}.layers")
        try:
            with zipfile.ZipFile(io.BytesIO(spec.artifact)) as zf:
                names = set(zf.namelist())
                unzipped = sum(info.file_size for info in zf.infolist())
        except zipfile.BadZipFile:
            raise InvocationFailed(self.cluster, f"deploy {spec.name!r}: the artifact is not a zip file") from None
        if ENTRY_FILE not in names:
            raise InvocationFailed(self.cluster, f"deploy {spec.name!r}: the zip has no {ENTRY_FILE} "
                                                 f"(handler {HANDLER}); build it with packaging.build(..., 'aws')")
        if unzipped > MAX_UNZIPPED_BYTES:
            raise InvocationFailed(self.cluster, f"deploy {spec.name!r}: {unzipped / 2**20:.0f} MB unzipped, above "
                                                 "Lambda's 250 MB limit")

    def deploy(self, spec: DeploySpec) -> DeployResult:
        start = time.monotonic()
        self._check_artifact(spec)
        want = self._configuration(spec)
        sha = code_sha256(spec.artifact)
        arch = [self.config.architecture]
        current = self._get(spec.name)
        for tries_left in reversed(range(CREATE_TRIES)):
            if current is not None:
                break
            try:
                self._create(spec, want, arch)
                action = "created"
                break
            except (PlatformError, Throttled):
                # Not retried blindly (create is not idempotent): a create that timed out may have worked, or
                # another deploy may have created it meanwhile. Then it exists now and is updated below; if it
                # does not, the create never happened and is tried again.
                current = self._get(spec.name)
                if current is None and not tries_left:
                    raise
        if current is not None:
            live = current.get("Configuration", {})
            tags = current.get("Tags") or {}
            reserved = (current.get("Concurrency") or {}).get("ReservedConcurrentExecutions")
            code_same = live.get("CodeSha256") == sha and (live.get("Architectures") or ["x86_64"]) == arch
            conf_same = self._config_matches(live, want)
            healthy = live.get("State") not in ("Failed", "Inactive") and live.get("LastUpdateStatus") != "Failed"
            tags_same = all(tags.get(k) == v for k, v in spec.labels.items())
            if code_same and conf_same and healthy and tags_same and reserved == self.config.reserved_concurrency:
                action = "unchanged"
            else:
                self._update(spec, want, arch, live, code_same=code_same and healthy, conf_same=conf_same,
                             reserved=reserved)
                action = "updated"
        self._timeouts[spec.name] = want["Timeout"]
        return DeployResult(spec.name, action, spec.digest, time.monotonic() - start)

    def _create(self, spec: DeploySpec, want: dict[str, Any], arch: list[str]) -> None:
        if not self.config.role_arn:
            raise InvocationFailed(self.cluster, f"deploy {spec.name!r}: providers.aws.{self.cluster}.role_arn is "
                                                 "required to create a function (an IAM role Lambda can assume)")
        control = self._clients.control
        self._call("create_function", spec.name, control.create_function, attempts=1, FunctionName=spec.name,
                   Code={"ZipFile": spec.artifact}, Architectures=arch, PackageType="Zip",
                   Tags=dict(spec.labels), Publish=False, **want)
        self._wait("function_active_v2", spec.name)
        if self.config.reserved_concurrency is not None:
            self._call("put_function_concurrency", spec.name, control.put_function_concurrency,
                       FunctionName=spec.name, ReservedConcurrentExecutions=self.config.reserved_concurrency)

    def _update(self, spec: DeploySpec, want: dict[str, Any], arch: list[str], live: dict[str, Any], *,
                code_same: bool, conf_same: bool, reserved: int | None) -> None:
        control = self._clients.control
        if live.get("State") == "Pending":
            self._wait("function_active_v2", spec.name)
        if live.get("LastUpdateStatus") == "InProgress":
            self._wait("function_updated_v2", spec.name)
        if not code_same:
            self._call("update_function_code", spec.name, control.update_function_code, FunctionName=spec.name,
                       ZipFile=spec.artifact, Architectures=arch, Publish=False)
            self._wait("function_updated_v2", spec.name)
        if not conf_same:
            self._call("update_function_configuration", spec.name, control.update_function_configuration,
                       FunctionName=spec.name, **want)
            self._wait("function_updated_v2", spec.name)
        if reserved != self.config.reserved_concurrency:
            if self.config.reserved_concurrency is None:
                self._call("delete_function_concurrency", spec.name, control.delete_function_concurrency,
                           FunctionName=spec.name)
            else:
                self._call("put_function_concurrency", spec.name, control.put_function_concurrency,
                           FunctionName=spec.name, ReservedConcurrentExecutions=self.config.reserved_concurrency)
        # Tags last: the digest tag says "this spec is fully applied".
        self._call("tag_resource", spec.name, control.tag_resource, Resource=live["FunctionArn"],
                   Tags=dict(spec.labels))

    def remove(self, name: str) -> bool:
        self._timeouts.pop(name, None)
        try:
            self._call("delete_function", name, self._clients.control.delete_function, FunctionName=name)
        except FunctionMissing:
            return False
        return True

    def exists(self, name: str) -> bool:
        try:
            self._call("get_function_configuration", name, self._clients.control.get_function_configuration,
                       FunctionName=name)
        except FunctionMissing:
            return False
        return True

    def list(self, labels: dict[str, str] | None = None) -> list[FunctionInfo]:
        """Every function whose tags carry all `labels` (all FedKeeper functions when None), orphans included."""
        control = self._clients.control
        functions: list[dict[str, Any]] = []
        paginator = control.get_paginator("list_functions")
        try:
            for page in paginator.paginate():
                functions.extend(page.get("Functions", []))
        except ClientError as exc:
            raise map_client_error(self.cluster, "list_functions", "*", exc) from None
        except BotoCoreError as exc:
            raise map_transport_error(self.cluster, "list_functions", "*", exc) from None

        def tags_of(fn: dict[str, Any]) -> dict[str, str] | None:
            try:
                return self._call("list_tags", fn["FunctionName"], control.list_tags,
                                  Resource=fn["FunctionArn"]).get("Tags", {})
            except FunctionMissing:  # deleted between the listing and now
                return None

        with ThreadPoolExecutor(max_workers=8) as pool:
            all_tags = list(pool.map(tags_of, functions))
        out = []
        for fn, tags in zip(functions, all_tags):
            if tags is None:
                continue
            wanted = labels if labels is not None else {}
            if labels is None and LABEL_EXPERIMENT not in tags:
                continue
            if all(tags.get(k) == v for k, v in wanted.items()):
                out.append(FunctionInfo(name=fn["FunctionName"], labels=dict(tags), digest=tags.get(LABEL_DIGEST),
                                        memory_mb=fn.get("MemorySize"), timeout_s=fn.get("Timeout")))
        out.sort(key=lambda info: info.name)
        return out

    # ------------------------------------------------------------------ invocation

    def invoke(self, name: str, payload: dict[str, Any]) -> Invocation:
        body = json.dumps(payload, separators=(",", ":")).encode("utf-8")
        if len(body) > MAX_SYNC_PAYLOAD_BYTES:
            raise InvocationFailed(self.cluster, f"invoke {name!r}: payload of {len(body)} bytes is above Lambda's "
                                                 "6 MB synchronous limit (pass data by reference through the store)")
        future = self._calls.submit(self._invoke_now, name, body)
        return Invocation(self.cluster, name, uuid.uuid4().hex, time.time(), handle=future)

    def _function_timeout(self, name: str) -> int:
        timeout = self._timeouts.get(name)
        if timeout is None:
            conf = self._call("get_function_configuration", name, self._clients.control.get_function_configuration,
                              FunctionName=name)
            timeout = self._timeouts[name] = int(conf.get("Timeout") or LAMBDA_TIMEOUT_S)
        return timeout

    def _invoke_now(self, name: str, body: bytes) -> Status:
        """Runs on a pool thread: one synchronous call, its outcome as a Status or a typed error."""
        start = time.time()
        try:
            timeout = self._function_timeout(name)
        except (PlatformError, InvocationFailed) as exc:
            return self._call_failed(exc, start)
        client = self._clients.for_timeout(timeout)
        try:
            response = client.invoke(FunctionName=name, InvocationType="RequestResponse", LogType="Tail",
                                     Payload=body)
            raw = response["Payload"].read()
        except ReadTimeoutError:
            end = time.time()
            return Status(State.TIMED_OUT, start=start, end=end, duration_s=end - start,
                          error=f"no response within {timeout + READ_TIMEOUT_SLACK_S} s "
                                f"(function timeout {timeout} s)")
        except ClientError as exc:
            if error_code(exc) == "ResourceNotFoundException":
                self._timeouts.pop(name, None)
            error = map_client_error(self.cluster, "invoke", name, exc)
            if isinstance(error, (Throttled, FunctionMissing, AuthError)):
                raise error from None
            return self._call_failed(error, start, exc.response.get("ResponseMetadata", {}).get("RequestId"))
        except BotoCoreError as exc:
            error = map_transport_error(self.cluster, "invoke", name, exc)
            if isinstance(error, AuthError):
                raise error from None
            return self._call_failed(error, start)
        end = time.time()
        request_id = response.get("ResponseMetadata", {}).get("RequestId")
        report = parse_log_tail(response.get("LogResult"))
        timing = {"start": start, "end": end, "activation_id": request_id,
                  "duration_s": report.duration_s if report else end - start,
                  "cold": report.cold if report else None}
        if response.get("FunctionError"):
            failure = parse_function_error(response["FunctionError"], raw)
            return Status(State.TIMED_OUT if failure.timed_out else State.FAILED, error=failure.describe(), **timing)
        try:
            result = json.loads(raw.decode("utf-8")) if raw else None
        except (UnicodeDecodeError, json.JSONDecodeError):
            return Status(State.FAILED, error=f"the function returned {len(raw)} bytes that are not JSON", **timing)
        if not isinstance(result, dict):
            return Status(State.FAILED, error=f"the function returned {type(result).__name__}, not a JSON object",
                          **timing)
        return Status(State.SUCCEEDED, result=result, **timing)

    @staticmethod
    def _call_failed(error: ProviderError, start: float, request_id: str | None = None) -> Status:
        end = time.time()
        kind = "platform error" if isinstance(error, PlatformError) else "rejected"
        return Status(State.FAILED, error=f"{kind}: {error.message}", activation_id=request_id, start=start,
                      end=end, duration_s=end - start)

    def poll(self, inv: Invocation) -> Status:
        try:
            return settled_status(inv, lost="synchronous Lambda call not made by this process (no record to query)",
                                  cancelled="the call was cancelled before it was sent (provider closed)")
        except (Throttled, FunctionMissing, AuthError):
            raise  # the tracker decides: back off, redeploy, stop the run
        except ProviderError as exc:
            return Status(State.FAILED, error=exc.message)
        except Exception as exc:
            return Status(State.FAILED, error=f"invoke {inv.name!r}: {type(exc).__name__}: {exc}")

    def close(self) -> None:
        self._calls.close()
        self._clients.close()

"""AWS Lambda for tests: moto's Lambda and IAM (control plane), plus what moto without Docker cannot do.

moto with `use_docker: False` answers every control-plane call, but its `invoke` never runs the handler: it echoes
the payload or returns queued results (../shared/reference/providers.md). This fake adds the documented data-plane
behaviour of Lambda on top, at the HTTP layer of the provider's own boto3 session (a `before-send` hook), so that
botocore's parsing and the provider's error mapping run unchanged:

- `Invoke` runs the deployed zip's handler (`Handler = module.function`) in a fresh Python process with the
  function's environment variables, as a cold sandbox would, and answers with Lambda's wire shapes
  (https://docs.aws.amazon.com/lambda/latest/api/API_Invoke.html): 200 with the handler's JSON result; 200 with
  `X-Amz-Function-Error: Unhandled` and `{"errorType", "errorMessage", "stackTrace"}` when the handler raised
  (https://docs.aws.amazon.com/lambda/latest/dg/python-exceptions.html); the sandbox is killed at the function's
  `Timeout` and the answer is `{"errorType": "Sandbox.Timedout", "errorMessage": "RequestId: ... Error: Task
  timed out after N.NN seconds"}`; `X-Amz-Log-Result` carries the log tail with its REPORT line.
- a function that does not exist → 404 `ResourceNotFoundException` "Function not found: arn:..." (moto's Docker-less
  invoke answers even for deleted functions);
- `throttle(n)`: the next n invokes → 429 `TooManyRequestsException` (reason
  `ReservedFunctionConcurrentInvocationLimitExceeded`, `Retry-After`), as Lambda answers when concurrency is used up;
- every Lambda request signed with an access key id not in `access_key_ids` → 403 `UnrecognizedClientException`
  "The security token included in the request is invalid." (what AWS answers for an unknown key);
- `chaos` (tests/chaos.py): any request answered at random with 5xx `ServiceException`, 429, a dropped
  connection (botocore's `ConnectionClosedError`), a lost answer (an invoke that ran, then the connection
  dropped; a control-plane call is dropped before moto sees it) or a late answer.

Every request the provider sends is recorded (`requests`: method, URL, headers without `Authorization`, body), the
invocations separately (`invocations`), and each sandbox's output in `logs`. Use as a context manager.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ConnectionClosedError

REGION = "eu-west-1"
ACCOUNT = "123456789012"
_INVOKE_PATH = re.compile(r"/2015-03-31/functions/([^/]+)/invocations$")
_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/")

#: runs inside the sandbox process: imports the handler, calls it once, writes the outcome to FAKE_LAMBDA_OUT
SANDBOX = r'''
import json, os, sys, time, traceback
sys.path.insert(0, os.getcwd())
out_path = os.environ.pop("FAKE_LAMBDA_OUT")
request_id = os.environ.pop("FAKE_LAMBDA_REQUEST_ID")
deadline_ms = float(os.environ.pop("FAKE_LAMBDA_DEADLINE_MS"))
module_name, function_name = os.environ.pop("FAKE_LAMBDA_HANDLER").rsplit(".", 1)


class Context:
    aws_request_id = request_id
    function_name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME")

    def get_remaining_time_in_millis(self):
        return max(0, int(deadline_ms - time.time() * 1000))


def error(exc):
    print("[ERROR] %s: %s" % (type(exc).__name__, exc), file=sys.stderr)
    traceback.print_exc()
    return {"error": {"errorMessage": str(exc), "errorType": type(exc).__name__, "requestId": request_id,
                      "stackTrace": traceback.format_list(traceback.extract_tb(exc.__traceback__))}}


try:
    event = json.loads(sys.stdin.buffer.read() or b"null")
    handler = getattr(__import__(module_name), function_name)
    outcome = {"result": handler(event, Context())}
except Exception as exc:
    outcome = error(exc)
sys.stdout.flush()
sys.stderr.flush()
with open(out_path, "w", encoding="utf-8") as fh:
    json.dump(outcome, fh)
'''


@dataclass(frozen=True)
class Recorded:
    """One request the provider sent (credentials removed: the `Authorization` header is not kept)."""

    operation: str
    method: str
    url: str
    headers: dict[str, str]
    body: bytes


class _Raw(io.BytesIO):
    """The raw body botocore reads (`stream()` for parsing, `read()` for streaming payloads)."""

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.getvalue()


def _response(url: str, status: int, body: Any, headers: dict[str, str] | None = None) -> AWSResponse:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    hdrs = {"Content-Type": "application/json", "x-amzn-RequestId": str(uuid.uuid4())}
    hdrs.update(headers or {})
    return AWSResponse(url, status, hdrs, _Raw(data))


def _error(url: str, status: int, code: str, message: str, headers: dict[str, str] | None = None,
           **fields: Any) -> AWSResponse:
    """An error as Lambda's REST-JSON protocol sends it."""
    return _response(url, status, {"Type": "User", "message": message, **fields},
                     {"x-amzn-ErrorType": code, **(headers or {})})


@dataclass
class FakeLambda:
    """moto Lambda + a sandbox runner; `start()`/`stop()` or `with FakeLambda(workdir) as aws:`."""

    workdir: Path
    access_key_ids: set[str] = field(default_factory=lambda: {"AKIAFAKELAMBDA000001"})
    python: str = sys.executable
    requests: list[Recorded] = field(default_factory=list)
    invocations: list[Recorded] = field(default_factory=list)
    logs: dict[str, str] = field(default_factory=dict)  # request id -> the sandbox's stdout and stderr
    #: tests/chaos.py `Chaos`: random 5xx, 429, dropped connections, lost and slow answers on any request
    chaos: Any = None

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        self.role_arn = ""
        self._lock = threading.Lock()
        self._throttle_left = 0
        self._throttle_retry_after: float | None = None
        self._stack: contextlib.ExitStack | None = None

    # ------------------------------------------------------------------ lifecycle and switches

    def start(self) -> "FakeLambda":
        from moto import mock_aws

        from fedkeeper.providers.aws import client as aws_client

        self.workdir.mkdir(parents=True, exist_ok=True)
        stack = contextlib.ExitStack()
        mp = stack.enter_context(pytest.MonkeyPatch.context())
        for key in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
            mp.delenv(key, raising=False)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")  # the fake's own client; providers bring their keys
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_CONFIG_FILE", str(self.workdir / "aws-config"))
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(self.workdir / "aws-credentials"))
        real_make_session = aws_client.make_session

        def make_session(cluster: str, config: Any) -> boto3.Session:
            session = real_make_session(cluster, config)
            session.events.register_first("before-send.lambda", self._before_send)
            return session

        mp.setattr(aws_client, "make_session", make_session)
        stack.enter_context(mock_aws(config={"lambda": {"use_docker": False}}))
        iam = boto3.client("iam", region_name=REGION)
        self.role_arn = iam.create_role(RoleName="fk-lambda", AssumeRolePolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                    "Principal": {"Service": "lambda.amazonaws.com"}}]},
        ))["Role"]["Arn"]
        self._stack = stack
        return self

    def stop(self) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack = None

    def __enter__(self) -> "FakeLambda":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def throttle(self, n: int, retry_after: float | None = 1.0) -> None:
        """Answer the next `n` invocations with 429 TooManyRequestsException."""
        with self._lock:
            self._throttle_left = n
            self._throttle_retry_after = retry_after

    # ------------------------------------------------------------------ the hook

    def _before_send(self, request: Any, **kwargs: Any) -> AWSResponse | None:
        operation = str(kwargs.get("event_name", "")).rsplit(".", 1)[-1]
        headers = {k: (v.decode() if isinstance(v, bytes) else str(v)) for k, v in request.headers.items()}
        auth = headers.pop("Authorization", "")
        headers.pop("X-Amz-Security-Token", None)
        raw = request.body
        body = raw if isinstance(raw, bytes) else raw.encode() if isinstance(raw, str) else b""
        record = Recorded(operation, request.method, request.url, headers, body)
        with self._lock:
            self.requests.append(record)
        match = _CREDENTIAL.search(auth)
        if match is None or match.group(1) not in self.access_key_ids:
            return _error(request.url, 403, "UnrecognizedClientException",
                          "The security token included in the request is invalid.")
        invoke = _INVOKE_PATH.search(request.url.split("?", 1)[0])
        fault = self.chaos.draw(request.method, request.url.split("?", 1)[0]) if self.chaos is not None else None
        if fault is not None:
            if fault.kind == "reset" or (fault.kind == "lost" and invoke is None):  # moto cannot lose an answer
                raise ConnectionClosedError(endpoint_url=request.url)
            if fault.kind == "error":
                return _error(request.url, fault.status, "ServiceException", "injected platform error (chaos)")
            if fault.kind == "throttle":
                return _error(request.url, 429, "TooManyRequestsException", "Rate Exceeded. (chaos)",
                              {"Retry-After": f"{self.chaos.retry_after_s:g}"}, Reason="CallerRateLimitExceeded")
            if fault.kind == "slow":
                fault.pause()
        if operation != "Invoke" or invoke is None:
            return None  # moto answers the control plane
        with self._lock:
            self.invocations.append(record)
            throttled = self._throttle_left > 0
            if throttled:
                self._throttle_left -= 1
            retry_after = self._throttle_retry_after
        if throttled:
            extra = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else {}
            return _error(request.url, 429, "TooManyRequestsException", "Rate Exceeded.", extra,
                          Reason="ReservedFunctionConcurrentInvocationLimitExceeded")
        from urllib.parse import unquote

        answer = self._invoke(request.url, unquote(invoke.group(1)), body)
        if fault is not None and fault.kind == "lost":  # it ran; the answer never arrives
            raise ConnectionClosedError(endpoint_url=request.url)
        return answer

    def _function(self, name: str) -> Any | None:
        from moto.awslambda.exceptions import UnknownFunctionException
        from moto.awslambda_simple.models import lambda_simple_backends

        try:
            return lambda_simple_backends[ACCOUNT][REGION].get_function(name)
        except UnknownFunctionException:
            return None

    def _code_dir(self, name: str, code: bytes) -> Path:
        digest = hashlib.sha256(code).hexdigest()[:16]
        target = self.workdir / "sandboxes" / f"{name}-{digest}"
        with self._lock:
            if not target.is_dir():
                staging = Path(tempfile.mkdtemp(dir=self.workdir))
                with zipfile.ZipFile(io.BytesIO(code)) as zf:
                    zf.extractall(staging)
                target.parent.mkdir(parents=True, exist_ok=True)
                staging.rename(target)
        return target

    def _invoke(self, url: str, name: str, payload: bytes) -> AWSResponse:
        fn = self._function(name)
        if fn is None:
            return _error(url, 404, "ResourceNotFoundException",
                          f"Function not found: arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}")
        request_id = str(uuid.uuid4())
        timeout_s = float(fn.timeout)
        code_dir = self._code_dir(name, fn.code_bytes)
        out_path = self.workdir / f"out-{request_id}.json"
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
               "AWS_LAMBDA_FUNCTION_NAME": name, "AWS_REGION": REGION, **dict(fn.environment_vars or {}),
               "FAKE_LAMBDA_OUT": str(out_path), "FAKE_LAMBDA_REQUEST_ID": request_id,
               "FAKE_LAMBDA_DEADLINE_MS": str(time.time() * 1000 + timeout_s * 1000),
               "FAKE_LAMBDA_HANDLER": str(fn.handler)}
        started = time.monotonic()
        proc = subprocess.Popen([self.python, "-c", SANDBOX], cwd=code_dir, env=env, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            output, _ = proc.communicate(payload, timeout=timeout_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the sandbox and anything it started
            output, _ = proc.communicate()
            timed_out = True
        duration_ms = (time.monotonic() - started) * 1000
        log = output.decode("utf-8", "replace")
        try:
            outcome = json.loads(out_path.read_text(encoding="utf-8")) if not timed_out else None
        except (OSError, ValueError):
            outcome = None
        finally:
            out_path.unlink(missing_ok=True)
        headers = {"x-amzn-RequestId": request_id, "X-Amz-Executed-Version": "$LATEST"}
        if timed_out:
            body: Any = {"errorType": "Sandbox.Timedout",
                         "errorMessage": f"RequestId: {request_id} Error: Task timed out after {timeout_s:.2f} seconds"}
            headers["X-Amz-Function-Error"] = "Unhandled"
        elif outcome is None:
            body = {"errorType": "Runtime.ExitError",
                    "errorMessage": f"RequestId: {request_id} Error: Runtime exited without providing a reason"}
            headers["X-Amz-Function-Error"] = "Unhandled"
        elif "error" in outcome:
            body = outcome["error"]
            headers["X-Amz-Function-Error"] = "Unhandled"
        else:
            body = outcome["result"]
        # every call runs in a new process, so every call is a cold start ("Init Duration" in the REPORT line)
        report = (f"START RequestId: {request_id} Version: $LATEST\n{log}END RequestId: {request_id}\n"
                  f"REPORT RequestId: {request_id}\tDuration: {duration_ms:.2f} ms\t"
                  f"Billed Duration: {math.ceil(duration_ms)} ms\tMemory Size: {fn.memory_size} MB\t"
                  f"Max Memory Used: 1 MB\tInit Duration: 0.01 ms\t\n")
        headers["X-Amz-Log-Result"] = base64.b64encode(report.encode()[-4096:]).decode()  # Lambda sends the last 4 KB
        with self._lock:
            self.logs[request_id] = log
        return _response(url, 200, json.dumps(body).encode(), headers)

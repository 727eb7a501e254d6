"""Translate what boto3 and the Lambda runtime report into FedKeeper's typed outcomes.

Kept apart from the provider so the mapping can be read (and tested) as one table: platform refusals become
typed `ProviderError`s (the tracker decides: back off, redeploy, stop the run, retry), while a function that
ran and failed becomes a `Status` (a client failure, counted as such).
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    ProfileNotFound,
    ReadTimeoutError,
)

from fedkeeper.providers.base import (
    AuthError,
    FunctionMissing,
    InvocationFailed,
    PlatformError,
    ProviderError,
    Throttled,
)

#: Error codes that mean "these credentials may not do this": retrying cannot help.
AUTH_CODES = frozenset({
    "AccessDeniedException", "AccessDenied", "UnrecognizedClientException", "InvalidSignatureException",
    "ExpiredTokenException", "ExpiredToken", "InvalidClientTokenId", "SignatureDoesNotMatch",
    "MissingAuthenticationTokenException", "IncompleteSignature",
})
THROTTLE_CODES = frozenset({"TooManyRequestsException", "ThrottlingException", "Throttling",
                            "RequestLimitExceeded"})
MISSING_CODES = frozenset({"ResourceNotFoundException"})
#: Transient trouble on AWS's side (or a function still being updated): back off and retry.
PLATFORM_CODES = frozenset({
    "ServiceException", "ServiceUnavailableException", "InternalFailure", "ResourceConflictException",
    "ResourceNotReadyException", "EC2ThrottledException", "EC2UnexpectedException", "EC2AccessDeniedException",
    "ENILimitReachedException", "SubnetIPAddressLimitReachedException", "EFSMountConnectivityException",
    "EFSMountTimeoutException", "EFSIOException", "KMSAccessDeniedException", "KMSDisabledException",
    "KMSInvalidStateException", "KMSNotFoundException", "SnapStartTimeoutException", "SnapStartNotReadyException",
})

#: Calls that name other resources too (layers, roles): their ResourceNotFoundException is not about the function.
OTHER_RESOURCE_ACTIONS = frozenset({"create_function", "update_function_configuration"})

_TASK_TIMEOUT = re.compile(r"Task timed out after ([\d.]+) seconds")
_REPORT = re.compile(
    r"REPORT RequestId: \S+\s+Duration: (?P<duration>[\d.]+) ms\s+Billed Duration: \d+ ms"
    r"(?:.*?Init Duration: (?P<init>[\d.]+) ms)?")


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", "") or "")


def http_status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def map_client_error(cluster: str, action: str, name: str, exc: ClientError) -> ProviderError:
    """One typed error for a rejected Lambda API call; the message names the call and the function."""
    code = error_code(exc)
    status = http_status(exc)
    detail = str(exc.response.get("Error", {}).get("Message", "") or exc.response.get("message", "") or "").strip()
    what = f"{action} {name!r}: {code or 'HTTP ' + str(status)}" + (f" ({detail})" if detail else "")
    if code in THROTTLE_CODES or status == 429:
        reason = exc.response.get("Reason")
        retry_after = _seconds(exc.response.get("retryAfterSeconds")
                               or exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("retry-after"))
        return Throttled(cluster, what + (f" [reason {reason}]" if reason else ""), retry_after_s=retry_after)
    if code in MISSING_CODES and (action not in OTHER_RESOURCE_ACTIONS or detail.startswith("Function not found")):
        return FunctionMissing(cluster, f"{action} {name!r}: the function does not exist on this cluster")
    if code in AUTH_CODES or status in (401, 403) and code not in PLATFORM_CODES:
        return AuthError(cluster, what + "; check the cluster's profile/credentials and the IAM permissions")
    if code in PLATFORM_CODES or status >= 500:
        return PlatformError(cluster, what)
    return InvocationFailed(cluster, what)


def map_transport_error(cluster: str, action: str, name: str, exc: Exception) -> ProviderError:
    """Errors raised before AWS answered: no credentials, no route, a dropped connection."""
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return AuthError(cluster, f"{action} {name!r}: no usable AWS credentials (set profile, ${{ENV}} keys, "
                                  "or the standard AWS_* variables / credential files)")
    if isinstance(exc, ProfileNotFound):
        return AuthError(cluster, f"{action} {name!r}: {exc}")
    if isinstance(exc, NoRegionError):
        return InvocationFailed(cluster, f"{action} {name!r}: no region configured")
    if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError, ConnectionClosedError, ReadTimeoutError)):
        return PlatformError(cluster, f"{action} {name!r}: {type(exc).__name__}: {exc}")
    return PlatformError(cluster, f"{action} {name!r}: {type(exc).__name__}: {exc}")


def _seconds(value: Any) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class FunctionFailure:
    """What the Lambda runtime said when the handler raised (or the sandbox gave up)."""

    kind: str                # the FunctionError header: "Unhandled" or "Handled"
    error_type: str | None
    message: str
    timed_out: bool

    def describe(self) -> str:
        head = self.error_type or f"FunctionError {self.kind}"
        return f"{head}: {self.message}" if self.message else head


def parse_function_error(kind: str, payload: bytes) -> FunctionFailure:
    """Read the runtime's `{"errorType", "errorMessage", ...}` body; a sandbox timeout is recognised as such."""
    error_type: str | None = None
    message = ""
    try:
        body = json.loads(payload.decode("utf-8")) if payload else {}
    except (UnicodeDecodeError, json.JSONDecodeError):
        body = payload.decode("utf-8", "replace")[:500]
    if isinstance(body, dict):
        error_type = body.get("errorType") or None
        message = str(body.get("errorMessage") or "")
    elif body:
        message = str(body)[:500]
    timed_out = error_type == "Sandbox.Timedout" or bool(_TASK_TIMEOUT.search(message))
    return FunctionFailure(kind, error_type, message.strip(), timed_out)


@dataclass(frozen=True)
class Report:
    """Figures from the runtime's REPORT log line (present when the invoke asked for the log tail)."""

    duration_s: float
    cold: bool


def parse_log_tail(log_result: str | None) -> Report | None:
    """The base64 tail of the execution log → duration and cold start (an `Init Duration` means a cold start)."""
    if not log_result:
        return None
    try:
        text = base64.b64decode(log_result).decode("utf-8", "replace")
    except (ValueError, TypeError):
        return None
    match = _REPORT.search(text)
    if not match:
        return None
    return Report(duration_s=float(match["duration"]) / 1000.0, cold=match["init"] is not None)

"""One HTTPS call to a Cloud Functions (2nd gen) URL and what its answer means.

2nd gen functions have no invoke RPC: the function URL is the API. The answer is classified so that the
tracker can tell a function that raised (FAILED, counted against the client) from a platform that refused
(typed errors: throttling is retried without counting, a missing function is redeployed, rejected
credentials stop the run). Our entry file (`entries/google.py`) answers errors as HTTP 500 with a JSON body
`{"error": "<Type>: message"}`; a 500 without such a body came from the platform, not from our code.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import requests

from fedkeeper.providers.base import (
    AuthError,
    FunctionMissing,
    InvocationFailed,
    PlatformError,
    State,
    Status,
    Throttled,
)

EXECUTION_ID_HEADER = "Function-Execution-Id"
#: set by our entry file: "1" on the first call an instance serves, and the handler's own run time
COLD_HEADER = "X-FedKeeper-Cold"
DURATION_HEADER = "X-FedKeeper-Duration-Ms"

#: seconds to open a connection; reading waits for the function's timeout plus `READ_SLACK_S`
CONNECT_TIMEOUT_S = 10.0
READ_SLACK_S = 10.0


@dataclass(frozen=True)
class Target:
    """Where a function answers and how long it may take."""

    name: str
    url: str
    timeout_s: float


def retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date; the tracker's own backoff applies


def _json_object(response: requests.Response) -> dict[str, Any] | None:
    if "json" not in response.headers.get("Content-Type", ""):
        return None
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _snippet(response: requests.Response, limit: int = 200) -> str:
    text = " ".join(response.text.split())
    return text[:limit] + ("..." if len(text) > limit else "")


def classify(cluster: str, target: Target, response: requests.Response, *, activation_id: str,
             start: float, end: float) -> Status:
    """Status of a finished call, or the typed error the platform's refusal means."""
    code = response.status_code
    name = target.name
    execution_id = response.headers.get(EXECUTION_ID_HEADER) or activation_id
    cold_header = response.headers.get(COLD_HEADER)
    cold = None if cold_header is None else cold_header == "1"
    common = dict(activation_id=execution_id, start=start, end=end, duration_s=end - start, cold=cold)
    if 200 <= code < 300:
        body = _json_object(response)
        if body is None:
            try:
                value = response.json()
            except ValueError:
                return Status(State.FAILED, error=f"{name} answered HTTP {code} with a non-JSON body "
                                                 f"({len(response.content)} bytes)", **common)
            body = {"result": value}
        return Status(State.SUCCEEDED, result=body, **common)
    body = _json_object(response)
    if code == 500 and body is not None and isinstance(body.get("error"), str):
        return Status(State.FAILED, error=body["error"], **common)
    if code in (429, 503):
        raise Throttled(cluster, f"{name}: HTTP {code} (execution {execution_id})", retry_after(response))
    if code == 504:
        return Status(State.TIMED_OUT, error=f"{name}: no answer within the function timeout of "
                                             f"{target.timeout_s:g} s (HTTP 504)", **common)
    if code in (401, 403):
        raise AuthError(cluster, f"{name}: HTTP {code} from the function URL; the ID token was rejected: the "
                                 "caller needs roles/run.invoker on the function, or set id_token correctly")
    if code == 404:
        raise FunctionMissing(cluster, f"{name}: HTTP 404 from the function URL (function deleted?)")
    if 400 <= code < 500:
        detail = body.get("error") if body and isinstance(body.get("error"), str) else _snippet(response)
        raise InvocationFailed(cluster, f"{name}: HTTP {code}: {detail}")
    raise PlatformError(cluster, f"{name}: HTTP {code} from the platform: {_snippet(response)}")


class TokenRejected(Exception):
    """HTTP 401 to a call that carried a token: the caller may retry once with a freshly minted one."""

    def __init__(self, response: requests.Response, start: float, end: float) -> None:
        super().__init__("HTTP 401")
        self.response = response
        self.start = start
        self.end = end


def post(session: requests.Session, cluster: str, target: Target, payload: dict[str, Any], *,
         activation_id: str, token: str | None) -> Status:
    """POST the payload and classify the answer. Network trouble becomes PlatformError, a read timeout
    TIMED_OUT; HTTP 401 to a call with a token raises TokenRejected (see `classify` for the rest)."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    start = time.time()
    try:
        response = session.post(target.url, data=json.dumps(payload, separators=(",", ":")), headers=headers,
                                timeout=(CONNECT_TIMEOUT_S, target.timeout_s + READ_SLACK_S))
    except requests.exceptions.ReadTimeout:
        end = time.time()
        return Status(State.TIMED_OUT, error=f"{target.name}: no answer within {target.timeout_s:g} s "
                                             f"+ {READ_SLACK_S:g} s slack", activation_id=activation_id,
                      start=start, end=end, duration_s=end - start)
    except requests.exceptions.RequestException as exc:
        raise PlatformError(cluster, f"{target.name}: cannot reach the function URL: {type(exc).__name__}") from None
    end = time.time()
    if response.status_code == 401 and token:
        raise TokenRejected(response, start, end)
    return classify(cluster, target, response, activation_id=activation_id, start=start, end=end)

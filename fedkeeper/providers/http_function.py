"""One HTTP call to a function served by `fedkeeper.runtime.http_entry` behind a platform's proxy, classified.

Container platforms (OpenFaaS's gateway and of-watchdog, Knative's ingress and queue-proxy) put a proxy between
the caller and the function's process; the proxy answers on its own for what the platform decides (no such
function, too busy, took too long) and passes the function's answers through. This module reads one answer:

- 200 with a JSON object: SUCCEEDED; `X-FedKeeper-Cold` (set by the entry on an instance's first call) marks a
  cold start, `X-FedKeeper-Duration-Ms` the handler's own time;
- 500 with `{"error": ...}` (the entry's shape for a handler that raised): FAILED with that message;
- `timeout_statuses` (the proxy's 504) or a read timeout: TIMED_OUT;
- 401/403 AuthError, 404 FunctionMissing, `throttle_statuses` Throttled (Retry-After kept): raised, since the
  tracker reacts to them (stop, redeploy, back off) rather than counting a failed attempt;
- anything else (a 5xx without our body, a broken connection): PlatformError / InvocationFailed, raised.

Who calls (a thread pool, a callback) and where the URL comes from stays with each platform.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
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

COLD_HEADER = "X-FedKeeper-Cold"
DURATION_HEADER = "X-FedKeeper-Duration-Ms"
#: seconds to open a connection; reading waits for the function's timeout plus `READ_SLACK_S`
CONNECT_TIMEOUT_S = 10.0
READ_SLACK_S = 10.0
_MAX_TEXT = 300


def retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: the tracker's own backoff applies


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _text(body: bytes) -> str:
    text = body.decode("utf-8", "replace").strip().splitlines()
    line = text[0] if text else ""
    return line if len(line) <= _MAX_TEXT else line[:_MAX_TEXT] + "..."


def classify(cluster: str, name: str, status: int, headers: Mapping[str, str], body: bytes, *,
             activation_id: str, start: float, end: float, throttle_statuses: tuple[int, ...] = (429,),
             timeout_statuses: tuple[int, ...] = (504,)) -> Status:
    """The Status of one answer, or the typed refusal it means (raised)."""
    common: dict[str, Any] = {"activation_id": activation_id, "start": start, "end": end,
                              "duration_s": max(0.0, end - start)}
    cold = headers.get(COLD_HEADER)
    if cold is not None:
        common["cold"] = cold == "1"
    duration = headers.get(DURATION_HEADER)
    if duration:
        try:
            common["duration_s"] = float(duration) / 1000.0
        except ValueError:
            pass
    where = f"{name}: HTTP {status}"
    if status == 200:
        result = _json_object(body)
        if result is None:
            return Status(State.FAILED, error=f"{where}: the answer is not a JSON object", **common)
        return Status(State.SUCCEEDED, result=result, **common)
    if status == 500:
        payload = _json_object(body)
        if payload is not None and isinstance(payload.get("error"), str):
            return Status(State.FAILED, error=payload["error"], **common)
    if status in timeout_statuses:
        return Status(State.TIMED_OUT, error=f"{where}: the function exceeded its timeout ({_text(body)})", **common)
    message = f"{where}: {_text(body) or 'no details'}"
    if status in (401, 403):
        raise AuthError(cluster, message)
    if status == 404:
        raise FunctionMissing(cluster, message)
    if status in throttle_statuses:
        raise Throttled(cluster, message, retry_after_s=retry_after(headers))
    if status >= 500:
        raise PlatformError(cluster, message)
    raise InvocationFailed(cluster, message)


def post(session: requests.Session, cluster: str, name: str, url: str, payload: dict[str, Any], *,
         timeout_s: float, activation_id: str, headers: dict[str, str] | None = None,
         throttle_statuses: tuple[int, ...] = (429,), timeout_statuses: tuple[int, ...] = (504,)) -> Status:
    """POST `payload` to `url` and classify the answer (see the module docstring). The URL must carry no
    credential; errors name the function and the status, never the URL's query or any header."""
    start = time.time()
    try:
        response = session.post(url, json=payload, headers=headers or {}, allow_redirects=False,
                                timeout=(CONNECT_TIMEOUT_S, timeout_s + READ_SLACK_S))
    except requests.exceptions.ReadTimeout:
        end = time.time()
        return Status(State.TIMED_OUT, error=f"{name}: no answer within {timeout_s + READ_SLACK_S:g} s",
                      activation_id=activation_id, start=start, end=end, duration_s=end - start)
    except requests.exceptions.RequestException as exc:
        raise PlatformError(cluster, f"{name}: {type(exc).__name__} calling the function") from None
    return classify(cluster, name, response.status_code, response.headers, response.content,
                    activation_id=activation_id, start=start, end=time.time(),
                    throttle_statuses=throttle_statuses, timeout_statuses=timeout_statuses)

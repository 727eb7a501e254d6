"""HTTP plumbing of the OpenWhisk provider: one pooled `requests.Session`, typed errors, tenacity retries.

Kept apart from `openwhisk.py` so that the provider reads as OpenWhisk semantics (actions, activations) and
this module as transport rules:

- credentials travel only in the `Authorization` header (HTTP Basic, `uuid:key` split at the first colon);
  they are never put in a URL, a log line or an error message;
- TLS verification is on unless the cluster config says `verify_tls: false`, and the flag is passed on every
  request so that `REQUESTS_CA_BUNDLE` and friends can never silently switch it back on or off;
- idempotent calls (GET, PUT with overwrite, DELETE) are retried on connection errors, 5xx and 429;
- a POST (an invocation) is retried only when the connection could not even be opened, because a request
  that reached the controller may already have started an activation. A duplicate client run would be
  harmless (the store keeps the first update), but a duplicate is still wasted work and a misleading record.
"""

from __future__ import annotations

import email.utils
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import requests
import urllib3
from requests.adapters import HTTPAdapter
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from fedkeeper.providers.base import (
    AuthError,
    FunctionMissing,
    InvocationFailed,
    PlatformError,
    ProviderError,
    Throttled,
)

log = logging.getLogger("fedkeeper.providers.openwhisk.provider")

#: the longest error text we copy from a controller response into our messages
_MAX_ERROR_TEXT = 300


@dataclass(frozen=True)
class RetryPolicy:
    """How hard the client insists. Small numbers in tests; the defaults suit a real controller."""

    attempts: int = 4
    wait_initial_s: float = 0.2
    wait_max_s: float = 5.0
    throttle_wait_max_s: float = 30.0


def split_auth(auth: str) -> tuple[str, str]:
    """`uuid:key` → (uuid, key), split at the first colon as the wsk CLI does."""
    uuid, sep, key = auth.partition(":")
    if not sep or not uuid or not key:
        raise ValueError("auth must be uuid:key")
    return uuid, key


def retry_after_seconds(value: str | None) -> float | None:
    """Parse a `Retry-After` header (seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def controller_error_text(response: requests.Response) -> str:
    """The controller's `{"error": ..., "code": ...}` text, shortened; falls back to the reason phrase."""
    text = ""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("error"):
        text = str(body["error"])
        if body.get("code"):
            text += f" (transaction {body['code']})"
    elif response.text:
        text = response.text.strip().splitlines()[0] if response.text.strip() else ""
    text = text or response.reason or "no details"
    return text if len(text) <= _MAX_ERROR_TEXT else text[:_MAX_ERROR_TEXT] + "..."


def _sent_nothing(exc: BaseException) -> bool:
    """True when a connection error certainly happened before any byte of the request was sent."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    if not isinstance(exc, requests.exceptions.ConnectionError):
        return False
    reason: Any = exc.args[0] if exc.args else None
    reason = getattr(reason, "reason", reason)  # MaxRetryError wraps the real cause
    return isinstance(reason, (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError))


class OpenWhiskClient:
    """REST calls to one controller and namespace. Thread-safe for concurrent polls (pooled connections)."""

    def __init__(self, cluster: str, *, api_host: str, namespace: str, auth: str, verify_tls: bool,
                 request_timeout_s: float, pool_maxsize: int, retry: RetryPolicy | None = None,
                 user_agent: str = "fedkeeper") -> None:
        self.cluster = cluster
        self.api_host = api_host.rstrip("/")
        self.namespace = namespace or "_"
        self.base_path = f"/api/v1/namespaces/{quote(self.namespace, safe='')}"
        self.verify = bool(verify_tls)
        self.timeout = (min(10.0, request_timeout_s), request_timeout_s)
        self.retry = retry or RetryPolicy()
        self.session = requests.Session()
        self.session.auth = split_auth(auth)
        self.session.verify = self.verify
        self.session.headers["User-Agent"] = user_agent
        self.session.headers["Accept"] = "application/json"
        adapter = HTTPAdapter(pool_connections=2, pool_maxsize=max(10, pool_maxsize), max_retries=0)
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)
        if not self.verify:
            log.warning("%s: TLS certificate verification is OFF for %s (verify_tls: false in the config)",
                        cluster, self.api_host)

    # ------------------------------------------------------------------ paths

    def action_path(self, name: str | None = None) -> str:
        """`actions/{name}`; an action inside a package is `package/name` (each part quoted on its own)."""
        if name is None:
            return f"{self.base_path}/actions"
        return f"{self.base_path}/actions/" + "/".join(quote(part, safe="") for part in name.split("/", 1))

    def activation_path(self, activation_id: str) -> str:
        return f"{self.base_path}/activations/{quote(activation_id, safe='')}"

    # ------------------------------------------------------------------ requests

    def send(self, method: str, path: str, *, params: dict[str, Any] | None = None, json: Any = None,
             ok: tuple[int, ...] = (200,), passthrough: tuple[int, ...] = (), retry: bool = True
             ) -> requests.Response:
        """One call with the retry rules above. Returns responses whose status is in `ok` or `passthrough`;
        every other status becomes a typed `ProviderError` naming method, path, status and the controller's text."""

        def once() -> requests.Response:
            response = self._raw(method, path, params=params, json=json)
            if response.status_code in ok or response.status_code in passthrough:
                return response
            raise self.error_for(method, path, response)

        if not retry:
            return once()
        idempotent = method != "POST"
        retryer = Retrying(
            stop=stop_after_attempt(max(1, self.retry.attempts)),
            wait=self._wait,
            retry=retry_if_exception(self._retryable_idempotent if idempotent else _sent_nothing),
            before_sleep=self._log_retry(method, path),
            reraise=True,
        )
        try:
            return retryer(once)
        except requests.exceptions.RequestException as exc:
            raise self.transport_error(method, path, exc) from None

    def _raw(self, method: str, path: str, *, params: dict[str, Any] | None, json: Any) -> requests.Response:
        url = self.api_host + path
        started = time.monotonic()
        response = self.session.request(method, url, params=params, json=json, timeout=self.timeout,
                                        verify=self.verify, allow_redirects=False)
        log.debug("%s: %s %s -> %d in %.3f s", self.cluster, method, path, response.status_code,
                  time.monotonic() - started)
        return response

    def transport_error(self, method: str, path: str, exc: BaseException) -> PlatformError:
        """A connection-level failure as a PlatformError; the text names the exception type, host and path only."""
        reason: Any = exc.args[0] if exc.args else exc
        cause = str(getattr(reason, "reason", reason))
        cause = cause.split(">: ", 1)[-1][:200]  # drop urllib3's object repr, keep "[Errno 111] Connection refused"
        return PlatformError(self.cluster, f"{method} {self.api_host}{path}: {type(exc).__name__}: {cause}")

    def error_for(self, method: str, path: str, response: requests.Response) -> ProviderError:
        status = response.status_code
        where = f"{method} {path} -> {status}: {controller_error_text(response)}"
        if status in (401, 403):
            hint = (f"the key was rejected; check providers.openwhisk.{self.cluster}.auth" if status == 401
                    else f"the key is not allowed to do this in namespace {self.namespace!r}")
            return AuthError(self.cluster, f"{where} ({hint})")
        if status == 404:
            return FunctionMissing(self.cluster, where)
        if status == 429:
            retry_after = retry_after_seconds(response.headers.get("Retry-After"))
            return Throttled(self.cluster, where, retry_after_s=retry_after)
        if status >= 500:
            return PlatformError(self.cluster, where)
        return InvocationFailed(self.cluster, where)

    # ------------------------------------------------------------------ retry rules

    @staticmethod
    def _retryable_idempotent(exc: BaseException) -> bool:
        return isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                                PlatformError, Throttled))

    def _wait(self, state: RetryCallState) -> float:
        backoff = min(self.retry.wait_max_s, self.retry.wait_initial_s * 2 ** (state.attempt_number - 1))
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, Throttled) and exc.retry_after_s is not None:
            return min(self.retry.throttle_wait_max_s, max(backoff, exc.retry_after_s))
        return backoff

    def _log_retry(self, method: str, path: str) -> Callable[[RetryCallState], None]:
        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            what = exc.message if isinstance(exc, ProviderError) else type(exc).__name__
            log.info("%s: retrying %s %s after attempt %d (%s)", self.cluster, method, path,
                     state.attempt_number, what)
        return before_sleep

    def close(self) -> None:
        self.session.close()

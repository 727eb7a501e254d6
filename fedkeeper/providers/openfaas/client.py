"""The OpenFaaS gateway's REST API (https://docs.openfaas.com/reference/rest-api/, the gateway's swagger.yml):
one pooled `requests.Session` with basic auth, typed errors, retries of idempotent calls.

- credentials travel only in the `Authorization` header; never in a URL, a log line or an error message;
- GET, PUT and DELETE are retried on connection errors, 5xx and 429; a POST (a create or an invocation) only when
  the connection could not even be opened;
- statuses: 401/403 AuthError, 404 FunctionMissing, 429 Throttled, 5xx PlatformError, other 4xx InvocationFailed,
  each naming method, path, status and the gateway's text (it answers errors as plain text).
"""

from __future__ import annotations

import logging
import time
from typing import Any

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
from fedkeeper.providers.http_function import retry_after

log = logging.getLogger("fedkeeper.providers.openfaas")

_MAX_TEXT = 300


def _sent_nothing(exc: BaseException) -> bool:
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    if not isinstance(exc, requests.exceptions.ConnectionError):
        return False
    reason: Any = exc.args[0] if exc.args else None
    reason = getattr(reason, "reason", reason)
    return isinstance(reason, (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError))


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout, PlatformError,
                            Throttled))


class GatewayClient:
    """REST calls to one gateway. Thread-safe (pooled connections)."""

    def __init__(self, cluster: str, *, gateway: str, username: str, password: str, verify_tls: bool,
                 request_timeout_s: float, pool_maxsize: int, attempts: int = 4) -> None:
        self.cluster = cluster
        self.gateway = gateway.rstrip("/")
        self.timeout = (min(10.0, request_timeout_s), request_timeout_s)
        self.attempts = attempts
        self.session = requests.Session()
        self.session.auth = (username, password)
        self.session.verify = verify_tls
        self.session.headers["User-Agent"] = "fedkeeper"
        adapter = HTTPAdapter(pool_connections=2, pool_maxsize=max(10, pool_maxsize), max_retries=0)
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)
        self.verify = verify_tls
        if not verify_tls:
            log.warning("%s: TLS certificate verification is OFF for %s (verify_tls: false)", cluster, self.gateway)

    def send(self, method: str, path: str, *, params: dict[str, Any] | None = None, json: Any = None,
             ok: tuple[int, ...] = (200,), passthrough: tuple[int, ...] = ()) -> requests.Response:
        """One call with the retry rules above; a status outside `ok` and `passthrough` raises a ProviderError."""

        def once() -> requests.Response:
            started = time.monotonic()
            response = self.session.request(method, self.gateway + path, params=params, json=json,
                                            timeout=self.timeout, verify=self.verify, allow_redirects=False)
            log.debug("%s: %s %s -> %d in %.3f s", self.cluster, method, path, response.status_code,
                      time.monotonic() - started)
            if response.status_code in ok or response.status_code in passthrough:
                return response
            raise self.error_for(method, path, response)

        retryer = Retrying(stop=stop_after_attempt(max(1, self.attempts)), wait=self._wait,
                           retry=retry_if_exception(_retryable if method != "POST" else _sent_nothing),
                           reraise=True)
        try:
            return retryer(once)
        except requests.exceptions.RequestException as exc:
            raise self.transport_error(method, path, exc) from None

    @staticmethod
    def _wait(state: RetryCallState) -> float:
        backoff = min(5.0, 0.2 * 2 ** (state.attempt_number - 1))
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, Throttled) and exc.retry_after_s is not None:
            return min(30.0, max(backoff, exc.retry_after_s))
        return backoff

    def transport_error(self, method: str, path: str, exc: BaseException) -> PlatformError:
        reason: Any = exc.args[0] if exc.args else exc
        cause = str(getattr(reason, "reason", reason)).split(">: ", 1)[-1][:200]
        return PlatformError(self.cluster, f"{method} {self.gateway}{path}: {type(exc).__name__}: {cause}")

    def error_for(self, method: str, path: str, response: requests.Response) -> ProviderError:
        status = response.status_code
        text = (response.text or "").strip().splitlines()
        detail = (text[0] if text else "") or response.reason or "no details"
        where = f"{method} {path} -> {status}: {detail[:_MAX_TEXT]}"
        if status in (401, 403):
            return AuthError(self.cluster, f"{where} (the gateway refused the credentials; check "
                                           f"providers.openfaas.{self.cluster}.username and password)")
        if status == 404:
            return FunctionMissing(self.cluster, where)
        if status == 429:
            return Throttled(self.cluster, where, retry_after_s=retry_after(response.headers))
        if status >= 500:
            return PlatformError(self.cluster, where)
        return InvocationFailed(self.cluster, where)

    def close(self) -> None:
        self.session.close()

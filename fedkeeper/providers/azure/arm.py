"""Azure Resource Manager over plain HTTPS: a client-credentials token from Microsoft Entra ID, and ARM requests
whose failures become FedKeeper's typed provider errors.

Token: `POST {authority}/{tenant}/oauth2/v2.0/token` (grant_type=client_credentials, scope
`https://management.azure.com/.default`; learn.microsoft.com/en-us/entra/identity-platform/
v2-oauth2-client-creds-grant-flow), cached until a minute before it expires. The same token is accepted by the
app's SCM (Kudu) site for zip deployment (learn.microsoft.com/en-us/azure/app-service/deploy-zip). ARM errors
carry `{"error": {"code", "message"}}` (learn.microsoft.com/en-us/azure/azure-resource-manager/management/
common-deployment-errors); the message is kept, minus any secret of the request.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import requests

from fedkeeper.providers.base import (
    AuthError,
    FunctionMissing,
    InvocationFailed,
    PlatformError,
    ProviderError,
    Throttled,
)

ARM_SCOPE = "https://management.azure.com/.default"


class DeployFailed(InvocationFailed):
    """Azure rejected or failed a deployment (bad settings, build error): retrying will not help."""


def retry_after(response: requests.Response) -> float | None:
    try:
        value = response.headers.get("Retry-After")
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def arm_error(cluster: str, response: requests.Response, what: str, secrets: tuple[str, ...] = ()) -> ProviderError:
    """The typed error of a failed ARM (or Kudu) answer."""
    try:
        body = response.json()
        error = body.get("error") if isinstance(body, dict) else None
        detail = f"{error.get('code')}: {error.get('message')}" if isinstance(error, dict) else \
            " ".join(response.text.split())[:200]
    except ValueError:
        detail = " ".join(response.text.split())[:200]
    for secret in secrets:
        if secret:
            detail = detail.replace(secret, "***")
    message = f"{what}: HTTP {response.status_code}: {detail}"[:500]
    code = response.status_code
    if code in (401, 403):
        return AuthError(cluster, message)
    if code == 404:
        return FunctionMissing(cluster, message)
    if code == 429:
        return Throttled(cluster, message, retry_after(response))
    if code == 409 or code >= 500:
        return PlatformError(cluster, message)
    return DeployFailed(cluster, message)


class Arm:
    """Token cache and JSON requests to ARM and to apps' SCM sites, for one cluster."""

    def __init__(self, cluster: str, config: Any, session: requests.Session) -> None:
        self.cluster = cluster
        self.config = config
        self.session = session
        self._token: tuple[str, float] | None = None
        self._lock = threading.Lock()

    def token(self) -> str:
        with self._lock:
            if self._token is not None and self._token[1] > time.time() + 60:
                return self._token[0]
        c = self.config
        url = f"{c.authority_host.rstrip('/')}/{c.tenant_id}/oauth2/v2.0/token"
        try:
            response = self.session.post(url, data={"grant_type": "client_credentials", "client_id": c.client_id,
                                                    "client_secret": c.client_secret or "", "scope": ARM_SCOPE},
                                         timeout=c.request_timeout_s)
        except requests.exceptions.RequestException as exc:
            raise PlatformError(self.cluster, f"token request failed: {type(exc).__name__}") from None
        if response.status_code in (400, 401, 403):
            try:
                code = response.json().get("error", "")
            except ValueError:
                code = ""
            raise AuthError(self.cluster, f"Microsoft Entra ID refused the client credentials of client "
                                          f"{c.client_id} (HTTP {response.status_code} {code})")
        if response.status_code >= 300:
            raise arm_error(self.cluster, response, "token request", (c.client_secret or "",))
        body = response.json()
        token = str(body["access_token"])
        with self._lock:
            self._token = (token, time.time() + float(body.get("expires_in", 3600)))
        return token

    def site_url(self, app: str = "", suffix: str = "") -> str:
        c = self.config
        base = (f"{c.management_endpoint.rstrip('/')}/subscriptions/{c.subscription_id}/resourceGroups/"
                f"{c.resource_group}/providers/Microsoft.Web/sites")
        return f"{base}/{app}{suffix}" if app else base

    def request(self, method: str, url: str, what: str, *, json_body: Any = None, data: bytes | None = None,
                secrets: tuple[str, ...] = (), ok_missing: bool = False,
                headers: dict[str, str] | None = None) -> requests.Response | None:
        """One authorised request; None for a 404 when `ok_missing`; raises the typed error otherwise."""
        params = {"api-version": self.config.api_version} if url.startswith(self.config.management_endpoint) else None
        sent = {"Authorization": f"Bearer {self.token()}", **(headers or {})}
        try:
            response = self.session.request(method, url, params=params, json=json_body, data=data, headers=sent,
                                            timeout=self.config.request_timeout_s)
        except requests.exceptions.RequestException as exc:
            raise PlatformError(self.cluster, f"{what}: {type(exc).__name__}") from None
        if response.status_code == 404 and ok_missing:
            return None
        if response.status_code >= 300:
            raise arm_error(self.cluster, response, what, secrets)
        return response

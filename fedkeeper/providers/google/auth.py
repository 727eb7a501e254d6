"""Credentials for Google Cloud Functions: one for the admin API, ID tokens for calling function URLs.

The admin API takes OAuth access tokens (cloud-platform scope); function URLs of 2nd gen functions take
Google-signed ID tokens whose audience is the URL. Minting an ID token costs a round trip to Google, and a
round invokes the same few URLs hundreds of times, so tokens are cached per audience until shortly before
they expire. Secrets (private keys, tokens) never reach a message or a log line: errors name the source
(file path, "inline service_account_info", "application default credentials") and the exception type only.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fedkeeper.providers.base import AuthError, PlatformError

if TYPE_CHECKING:
    from fedkeeper.providers.google.config import GcfCluster

CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"

#: lifetime assumed for a token whose `exp` cannot be read (Google issues them for one hour)
DEFAULT_TOKEN_LIFETIME_S = 55 * 60
#: a cached token is replaced this long before it expires, so that no request carries a token that
#: expires in flight
EXPIRY_MARGIN_S = 120.0


def credential_source(config: GcfCluster) -> str:
    """Where the credentials come from, for messages (never the secret itself)."""
    if config.credentials == "anonymous":
        return "anonymous credentials"
    if config.credentials:
        return f"service-account file {config.credentials}"
    if config.service_account_info:
        return "inline service_account_info"
    return "application default credentials"


def admin_credentials(cluster: str, config: GcfCluster) -> Any:
    """google.auth credentials for the admin API, or raise AuthError naming the source."""
    from google.auth import exceptions as gexc

    try:
        if config.credentials == "anonymous":
            from google.auth.credentials import AnonymousCredentials

            return AnonymousCredentials()
        from google.oauth2 import service_account

        if config.credentials:
            return service_account.Credentials.from_service_account_file(
                config.credentials, scopes=[CLOUD_PLATFORM_SCOPE])
        if config.service_account_info:
            return service_account.Credentials.from_service_account_info(
                config.service_account_info, scopes=[CLOUD_PLATFORM_SCOPE])
        import google.auth

        credentials, _project = google.auth.default(scopes=[CLOUD_PLATFORM_SCOPE])
        return credentials
    except (gexc.GoogleAuthError, ValueError, KeyError, OSError) as exc:
        raise AuthError(cluster, f"cannot load {credential_source(config)}: {type(exc).__name__}; "
                                 "set providers.google.<cluster>.credentials to a service-account key file, "
                                 "or run `gcloud auth application-default login`") from None


#: the token endpoint's refusals (RFC 6749, section 5.2): these credentials will not do, retrying cannot help
OAUTH_REFUSALS = frozenset({"invalid_request", "invalid_client", "invalid_grant", "unauthorized_client",
                            "unsupported_grant_type", "invalid_scope", "access_denied"})


def transient(exc: BaseException) -> bool:
    """A google-auth failure that says nothing about the credentials: the token endpoint was not reached
    (`TransportError`: refused, reset, timed out) or did not answer with an OAuth refusal (a 5xx page google-auth
    gave up retrying, or did not retry at all: it retries only 500, 503, 408 and 429). Only a `RefreshError`
    whose body names an RFC 6749 error code (`invalid_grant`: a deleted or wrong key) is a verdict."""
    from google.auth import exceptions as gexc

    if isinstance(exc, gexc.TransportError):
        return True
    if not isinstance(exc, gexc.RefreshError):
        return False
    body = exc.args[1] if len(exc.args) > 1 else None
    code = body.get("error") if isinstance(body, dict) else None
    return bool(exc.retryable) or not (isinstance(code, str) and code in OAUTH_REFUSALS)


def id_token_fetcher(cluster: str, config: GcfCluster) -> Callable[[str], str]:
    """A function audience -> fresh ID token, for the credentials the cluster is configured with."""
    source = credential_source(config)

    def fetch(audience: str) -> str:
        from google.auth import exceptions as gexc
        from google.auth.transport.requests import Request

        if config.credentials == "anonymous":
            raise AuthError(cluster, "anonymous credentials cannot mint ID tokens for function URLs; "
                                     "set id_token: false (emulators, tests) or give a service-account file")
        try:
            request = Request()
            if config.credentials or config.service_account_info:
                from google.oauth2 import service_account

                if config.credentials:
                    creds = service_account.IDTokenCredentials.from_service_account_file(
                        config.credentials, target_audience=audience)
                else:
                    creds = service_account.IDTokenCredentials.from_service_account_info(
                        config.service_account_info, target_audience=audience)
                creds.refresh(request)
                return str(creds.token)
            from google.oauth2 import id_token

            return str(id_token.fetch_id_token(request, audience))
        except AuthError:
            raise
        except (gexc.GoogleAuthError, ValueError, KeyError, OSError) as exc:
            if transient(exc):  # the token endpoint could not be reached or failed: no verdict on the key
                raise PlatformError(cluster, f"cannot mint an ID token for {audience}: the token endpoint failed "
                                             f"({type(exc).__name__}); asked again on the next attempt") from None
            raise AuthError(cluster, f"cannot mint an ID token for {audience} from {source}: {type(exc).__name__}; "
                                     "user credentials from gcloud cannot do this: use a service-account key "
                                     "file (credentials:) or set id_token: false for unauthenticated functions") from None

    return fetch


def token_expiry(token: str, now: float) -> float:
    """The `exp` claim of a JWT (read without verification: we are the bearer, not the audience)."""
    try:
        payload = token.split(".")[1]
        payload += "=" * (-len(payload) % 4)
        exp = json.loads(base64.urlsafe_b64decode(payload.encode()))["exp"]
        return float(exp)
    except (IndexError, ValueError, KeyError, TypeError):
        return now + DEFAULT_TOKEN_LIFETIME_S


class IdTokenCache:
    """ID tokens per audience, reused until `EXPIRY_MARGIN_S` before their expiry; safe across threads.

    One lock per audience, so that a burst of calls to a cold cache fetches one token, not one per thread.
    """

    def __init__(self, fetch: Callable[[str], str], *, clock: Callable[[], float] = time.time,
                 margin_s: float = EXPIRY_MARGIN_S) -> None:
        self._fetch = fetch
        self._clock = clock
        self._margin_s = margin_s
        self._tokens: dict[str, tuple[str, float]] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def get(self, audience: str) -> tuple[str, bool]:
        """(token, fresh): `fresh` is False when it came from the cache (so a 401 may mean it was revoked)."""
        cached = self._valid(audience)
        if cached is not None:
            return cached, False
        with self._guard:
            lock = self._locks.setdefault(audience, threading.Lock())
        with lock:
            cached = self._valid(audience)
            if cached is not None:
                return cached, False
            token = self._fetch(audience)
            self._tokens[audience] = (token, token_expiry(token, self._clock()))
            return token, True

    def invalidate(self, audience: str, token: str | None = None) -> None:
        """Forget the token (only if it is still `token`, when given: another thread may have renewed it)."""
        with self._guard:
            entry = self._tokens.get(audience)
            if entry is not None and (token is None or entry[0] == token):
                del self._tokens[audience]

    def _valid(self, audience: str) -> str | None:
        entry = self._tokens.get(audience)
        if entry is not None and entry[1] - self._margin_s > self._clock():
            return entry[0]
        return None

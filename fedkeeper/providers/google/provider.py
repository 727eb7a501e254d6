"""Google Cloud Functions (2nd gen) through the `functions_v2` admin API and HTTPS calls to function URLs.

Deploy: ask for a signed upload URL, PUT the zip there (no Authorization header: the URL is the credential),
then create or update the function and wait for the long-running operation. The spec digest travels in two
labels (a label value holds at most 63 characters, a digest 64), so a repeated deploy of the same artifact and
settings reads one `get_function` and does nothing else.

Invoke: 2nd gen has no invoke RPC, so `invoke` POSTs the payload to the function URL from a bounded thread
pool (`max_inflight` calls at once) and returns at once; the ID token for the URL is minted once per
audience and reused until shortly before it expires. `poll` reports:

- SUCCEEDED with the function's JSON result; FAILED with the function's own error message (our entry answers
  a raised exception as HTTP 500 `{"error": "<Type>: message"}`); TIMED_OUT on HTTP 504 or a read timeout;
  LOST for an invocation submitted by an earlier process (HTTP calls do not outlive their caller);
- and *raises* the typed errors of platform refusals that call for a different reaction than a retry, as
  `invoke` may: `Throttled` (429, 503: back off, not counted against the client), `FunctionMissing` (404:
  redeploy), `AuthError` (401, 403: stop the run). The tracker handles these from both calls the same way.
- Other platform trouble (a 5xx without our error body, other 4xx, a broken connection) is classified as
  `PlatformError` / `InvocationFailed`; `poll` reports it as FAILED with that reason, because the call is over
  and asking again cannot change it (a `PlatformError` raised by `poll` would mean "could not ask, ask again").

The execution id is the platform's `Function-Execution-Id` response header, or our own id when absent.
Environment variables (which carry the MongoDB URL) go only into `service_config.environment_variables`:
never into logs, labels, URLs or error messages.

Credentials: a service-account key file (`credentials: path`), inline legacy service-account fields
(`service_account_info`, normalised by the config loader), application default credentials (unset), or
`credentials: anonymous` with `id_token: false` for emulators and the tests' fake on 127.0.0.1.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import requests
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from fedkeeper.providers.google import resources as res
from fedkeeper.providers.base import (
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
    Status,
    Throttled,
)
from fedkeeper.providers.google.auth import IdTokenCache, admin_credentials, id_token_fetcher, transient
from fedkeeper.providers.google.http import Target, TokenRejected, classify, post
from fedkeeper.providers.threaded import CallPool, Targets, poll_call, pooled_session

if TYPE_CHECKING:
    from fedkeeper.providers.google.config import GcfCluster

log = logging.getLogger(__name__)

T = TypeVar("T")

#: waiting for a create/update/delete operation (real builds take one to three minutes)
OPERATION_TIMEOUT_S = 900.0
#: per admin API request
API_TIMEOUT_S = 60.0
#: uploading the source zip to the signed URL
UPLOAD_TIMEOUT_S = 300.0
#: fields an update replaces; everything else a user set by hand on the function is left alone
UPDATE_MASK = [
    "build_config.runtime", "build_config.entry_point", "build_config.source",
    "service_config.available_memory", "service_config.available_cpu", "service_config.timeout_seconds",
    "service_config.max_instance_count", "service_config.max_instance_request_concurrency",
    "service_config.environment_variables", "labels",
]
ENTRY_POINT = "entry"


class DeployFailed(InvocationFailed):
    """Cloud Functions rejected or failed a deployment (bad settings, build error): retrying will not help."""


_RETRYABLE = retry_if_exception_type((PlatformError, Throttled))


def _api_retry(fn: Callable[..., T]) -> Callable[..., T]:
    """Admin calls that are safe to repeat: a few attempts with backoff on transient trouble."""
    return retry(retry=_RETRYABLE, stop=stop_after_attempt(4), wait=wait_exponential_jitter(multiplier=0.5, max=8.0),
                 reraise=True)(fn)


def _already_exists(exc: Exception) -> bool:
    """Over REST, api_core picks the exception class from the HTTP status alone (409 → Conflict, which ABORTED
    shares), so ALREADY_EXISTS is read from the error body's `status`."""
    from google.api_core import exceptions as gapi

    if isinstance(exc, gapi.AlreadyExists):
        return True
    response = getattr(exc, "response", None)
    try:
        return bool(response is not None and response.json()["error"]["status"] == "ALREADY_EXISTS")
    except (ValueError, KeyError, TypeError, AttributeError):
        return False


class GcfProvider(Provider):
    """One project/region of Cloud Functions (2nd gen)."""

    kind = "google"
    config: GcfCluster

    def __init__(self, cluster: str, config: GcfCluster, *, workdir: Path) -> None:
        super().__init__(cluster, config, workdir=workdir)
        self.parent = f"projects/{config.project_id}/locations/{config.region}"
        self._client: Any = None
        self._lock = threading.Lock()
        self._targets: Targets[Target] = Targets()
        self._calls = CallPool(cluster, config.max_inflight, f"gcf-{cluster}", closed_error=PlatformError)
        self._session = pooled_session(config.max_inflight)
        self._upload_session = requests.Session()
        self._tokens = IdTokenCache(id_token_fetcher(cluster, config))
        # local emulators and fakes finish operations at once; the real service takes minutes
        self._operation_poll_s = 0.05 if config.is_loopback else 1.0

    # ------------------------------------------------------------------ admin API plumbing

    def _admin(self) -> Any:
        with self._lock:
            if self._client is None:
                from google.api_core.client_options import ClientOptions
                from google.cloud import functions_v2

                options = ClientOptions(api_endpoint=self.config.api_endpoint) if self.config.api_endpoint else None
                self._client = functions_v2.FunctionServiceClient(
                    credentials=admin_credentials(self.cluster, self.config), transport="rest",
                    client_options=options)
            return self._client

    def full_name(self, name: str) -> str:
        return f"{self.parent}/functions/{res.check_function_id(name)}"

    def _error(self, exc: BaseException, what: str, secrets: tuple[str, ...] = ()) -> ProviderError:
        """The typed error an admin API failure means; the API's message is kept, minus any secret."""
        from google.api_core import exceptions as gapi
        from google.auth import exceptions as gauth

        message = getattr(exc, "message", None) or type(exc).__name__
        for secret in secrets:
            if secret:
                message = message.replace(secret, "***")
        message = f"{what}: {message}"[:500]
        if isinstance(exc, gapi.NotFound):
            return FunctionMissing(self.cluster, message)
        if transient(exc):  # the token endpoint failed in transit or answered 5xx: no verdict on the credentials
            return PlatformError(self.cluster, message)
        if isinstance(exc, (gapi.Unauthorized, gapi.Forbidden, gauth.RefreshError, gauth.DefaultCredentialsError)):
            return AuthError(self.cluster, message)
        if isinstance(exc, gapi.TooManyRequests):
            return Throttled(self.cluster, message)
        if isinstance(exc, (gapi.ServerError, gapi.DeadlineExceeded, gapi.RetryError, gauth.TransportError,
                            requests.exceptions.RequestException, TimeoutError)):
            return PlatformError(self.cluster, message)
        if isinstance(exc, gapi.GoogleAPICallError):
            return DeployFailed(self.cluster, message)
        return PlatformError(self.cluster, f"{what}: {type(exc).__name__}")

    def _call(self, what: str, fn: Callable[[], T], secrets: tuple[str, ...] = ()) -> T:
        from google.api_core import exceptions as gapi
        from google.auth import exceptions as gauth

        try:
            return fn()
        except ProviderError:
            raise
        except (gapi.GoogleAPIError, gauth.GoogleAuthError, requests.exceptions.RequestException,
                TimeoutError) as exc:
            raise self._error(exc, what, secrets) from None

    @_api_retry
    def _wait(self, operation: Any, what: str, secrets: tuple[str, ...] = ()) -> Any:
        """The operation's result. A poll that fails in transit is asked again: the operation object keeps its
        name and asks anew on the next `result()`."""
        from google.api_core.future.polling import DEFAULT_POLLING

        polling = DEFAULT_POLLING.with_delay(initial=self._operation_poll_s, maximum=10.0, multiplier=1.5)
        return self._call(what, lambda: operation.result(timeout=OPERATION_TIMEOUT_S, polling=polling), secrets)

    @_api_retry
    def _get(self, name: str) -> Any | None:
        """The Function resource, or None when absent."""
        try:
            return self._call(f"get {name}",
                              lambda: self._admin().get_function(name=self.full_name(name), timeout=API_TIMEOUT_S))
        except FunctionMissing:
            return None

    @_api_retry
    def _upload(self, spec: DeploySpec) -> Any:
        """Upload the zip to a fresh signed URL; returns the StorageSource the build reads it from."""
        response = self._call(f"upload URL for {spec.name}", lambda: self._admin().generate_upload_url(
            request={"parent": self.parent}, timeout=API_TIMEOUT_S))
        try:
            put = self._upload_session.put(response.upload_url, data=spec.artifact,
                                           headers={"Content-Type": "application/zip"}, timeout=UPLOAD_TIMEOUT_S)
        except requests.exceptions.RequestException as exc:
            raise PlatformError(self.cluster, f"upload of the source zip of {spec.name} failed: "
                                              f"{type(exc).__name__}") from None
        if put.status_code >= 400:  # the signed URL is never shown: it is a credential
            raise PlatformError(self.cluster, f"upload of the source zip of {spec.name} failed: HTTP {put.status_code}")
        return response.storage_source

    # ------------------------------------------------------------------ deploy / remove / list

    def _env(self, spec: DeploySpec) -> dict[str, str]:
        parameters = spec.extra.get("parameters") or {}
        return {**self.config.environment, **res.env_from_parameters(parameters), **spec.env}

    def _labels(self, spec: DeploySpec) -> dict[str, str]:
        cpu = res.cpu_field(spec.memory_mb, spec.concurrency)
        extra_env = {**self.config.environment, **res.env_from_parameters(spec.extra.get("parameters") or {})}
        labels = res.sanitize_labels({**self.config.labels, **spec.labels})
        labels.update(res.digest_labels(spec.digest))
        labels[res.LABEL_SETTINGS] = res.settings_digest(self.config.runtime, self.config.max_instances, extra_env,
                                                         res.sanitize_labels(self.config.labels), cpu)
        return labels

    def _function(self, spec: DeploySpec, labels: dict[str, str], source: Any) -> Any:
        from google.cloud import functions_v2

        service = functions_v2.ServiceConfig(
            available_memory=res.memory_field(spec.memory_mb),
            timeout_seconds=res.timeout_field(spec.timeout_s),
            max_instance_request_concurrency=max(1, int(spec.concurrency)),
            environment_variables=self._env(spec),
            all_traffic_on_latest_revision=True,
        )
        cpu = res.cpu_field(spec.memory_mb, spec.concurrency)
        if cpu:
            service.available_cpu = cpu
        if self.config.max_instances:
            service.max_instance_count = self.config.max_instances
        build = functions_v2.BuildConfig(runtime=self.config.runtime, entry_point=ENTRY_POINT,
                                         source=functions_v2.Source(storage_source=source))
        return functions_v2.Function(name=self.full_name(spec.name), build_config=build, service_config=service,
                                     labels=labels, description=f"FedKeeper {spec.function}")

    def deploy(self, spec: DeploySpec) -> DeployResult:
        started = time.perf_counter()
        res.check_function_id(spec.name)
        unsupported = sorted(k for k in ("docker_image", "layers") if spec.extra.get(k))
        if unsupported:
            raise DeployFailed(self.cluster, f"{spec.name}: {', '.join(unsupported)} not supported on Cloud Functions "
                                             f"(functions.{spec.function}.google)")
        labels = self._labels(spec)
        secrets = tuple(spec.env.values())
        current = self._get(spec.name)
        if current is not None and self._unchanged(current, labels):
            self._remember(spec.name, current, spec.timeout_s)
            log.info("%s: %s unchanged (digest %s)", self.cluster, spec.name, spec.digest[:12])
            return DeployResult(spec.name, "unchanged", spec.digest, time.perf_counter() - started)
        source = self._upload(spec)
        function = self._function(spec, labels, source)
        action = "updated" if current is not None else "created"
        operation = None
        if current is None:
            operation = self._create_call(function, spec.name, secrets)
            if operation is None:  # created meanwhile (a concurrent or half-finished deploy): update it
                action = "updated"
        if operation is None:
            operation = self._update_call(function, spec.name, secrets)
        deployed = self._wait(operation, f"{'create' if action == 'created' else 'update'} {spec.name}", secrets)
        self._remember(spec.name, deployed, spec.timeout_s)
        log.info("%s: %s %s (digest %s)", self.cluster, spec.name, action, spec.digest[:12])
        return DeployResult(spec.name, action, spec.digest, time.perf_counter() - started)  # type: ignore[arg-type]

    @_api_retry
    def _create_call(self, function: Any, name: str, secrets: tuple[str, ...]) -> Any | None:
        """The create operation, or None when the function exists already (also when an earlier try of this
        create was carried out but its answer lost: the repeat says ALREADY_EXISTS and the caller updates)."""
        from google.api_core import exceptions as gapi

        def create() -> Any | None:
            try:
                return self._admin().create_function(parent=self.parent, function=function, function_id=name,
                                                      timeout=API_TIMEOUT_S)
            except gapi.Conflict as exc:
                if _already_exists(exc):
                    return None
                raise

        return self._call(f"create {name}", create, secrets)

    @_api_retry
    def _update_call(self, function: Any, name: str, secrets: tuple[str, ...]) -> Any:
        from google.protobuf import field_mask_pb2

        mask = field_mask_pb2.FieldMask(paths=UPDATE_MASK)
        return self._call(f"update {name}", lambda: self._admin().update_function(
            function=function, update_mask=mask, timeout=API_TIMEOUT_S), secrets)

    @staticmethod
    def _unchanged(current: Any, labels: dict[str, str]) -> bool:
        from google.cloud import functions_v2

        have = dict(current.labels)
        return (current.state == functions_v2.Function.State.ACTIVE
                and res.stored_digest(have) == res.stored_digest(labels)
                and have.get(res.LABEL_SETTINGS) == labels[res.LABEL_SETTINGS])

    def _remember(self, name: str, function: Any, timeout_s: float | None = None) -> Target | None:
        url = function.url or function.service_config.uri
        if not url:
            return None
        timeout = timeout_s if timeout_s is not None else float(function.service_config.timeout_seconds or 60)
        return self._targets.put(name, Target(name=name, url=url, timeout_s=timeout))

    def _forget(self, name: str) -> None:
        self._targets.forget(name)

    def remove(self, name: str) -> bool:
        self._forget(name)
        full = self.full_name(name)
        try:
            operation = self._call(f"delete {name}", lambda: self._admin().delete_function(
                name=full, timeout=API_TIMEOUT_S))
            self._wait(operation, f"delete {name}")
        except FunctionMissing:
            return False
        log.info("%s: %s removed", self.cluster, name)
        return True

    def exists(self, name: str) -> bool:
        return self._get(name) is not None

    def _functions(self) -> Iterator[Any]:
        pager = self._call("list functions", lambda: self._admin().list_functions(
            parent=self.parent, timeout=API_TIMEOUT_S))
        iterator = iter(pager)
        while True:  # later pages are fetched while iterating: keep their errors typed too
            item = self._call("list functions", lambda: next(iterator, None))
            if item is None:
                return
            yield item

    @_api_retry
    def list(self, labels: dict[str, str] | None = None) -> list[FunctionInfo]:
        wanted = res.sanitize_labels(labels or {})
        out = []
        for function in self._functions():
            have = dict(function.labels)
            if LABEL_EXPERIMENT not in have:
                continue  # not ours
            if any(have.get(k) != v for k, v in wanted.items()):
                continue
            timeout = function.service_config.timeout_seconds
            out.append(FunctionInfo(
                name=function.name.rsplit("/", 1)[-1], labels=have, digest=res.stored_digest(have),
                memory_mb=res.memory_mb(function.service_config.available_memory),
                timeout_s=float(timeout) if timeout else None))
        return sorted(out, key=lambda info: info.name)

    # ------------------------------------------------------------------ invoke / poll

    def _look_up(self, name: str) -> Target:
        function = self._get(name)
        if function is None:
            raise FunctionMissing(self.cluster, f"{name} is not deployed in {self.parent}")
        target = self._remember(name, function)
        if target is None:
            raise PlatformError(self.cluster, f"{name} has no URL yet (state {function.state.name})")
        return target

    def invoke(self, name: str, payload: dict[str, Any]) -> Invocation:
        target = self._targets.get(name, self._look_up)
        return self._calls.call(name, self._run_call, target, payload)

    def _run_call(self, target: Target, payload: dict[str, Any], activation_id: str) -> Status:
        """One call, on a pool thread. A cached token that is refused (revoked, clock skew) is replaced and the
        call made once more; a freshly minted token that is refused means the caller lacks permission."""
        try:
            token, fresh = self._tokens.get(target.url) if self.config.id_token else (None, True)
            try:
                return post(self._session, self.cluster, target, payload, activation_id=activation_id, token=token)
            except TokenRejected as rejected:
                self._tokens.invalidate(target.url, token)
                if fresh:
                    return classify(self.cluster, target, rejected.response, activation_id=activation_id,
                                    start=rejected.start, end=rejected.end)
            token, _ = self._tokens.get(target.url)
            try:
                return post(self._session, self.cluster, target, payload, activation_id=activation_id, token=token)
            except TokenRejected as rejected:
                self._tokens.invalidate(target.url, token)
                return classify(self.cluster, target, rejected.response, activation_id=activation_id,
                                start=rejected.start, end=rejected.end)
        except FunctionMissing:
            self._forget(target.name)
            raise

    def poll(self, inv: Invocation) -> Status:
        # Throttled, FunctionMissing and AuthError are raised (the tracker backs off, redeploys, or stops the
        # run); other trouble is a failed attempt, retried by the tracker's policy: the call is over
        return poll_call(inv, lost=f"{inv.name}: submitted by an earlier process; an HTTP call to a function URL "
                                   "cannot be resumed")

    def close(self) -> None:
        if not self._calls.close():
            return
        with self._lock:
            client, self._client = self._client, None
        self._session.close()
        self._upload_session.close()
        if client is not None:
            try:
                client.transport.close()
            except Exception:  # closing a session must not mask the caller's own error
                log.debug("%s: closing the admin client failed", self.cluster, exc_info=True)


"""Azure Functions through Azure Resource Manager (function apps) and HTTPS calls with function keys.

One FedKeeper function is one function app, `<function_app>-<name>` (app settings, memory and the host.json
functionTimeout are per app in Azure). Deploy (learn.microsoft.com/en-us/rest/api/appservice/web-apps):

1. `GET .../providers/Microsoft.Web/sites/{app}`: an app whose `fedkeeper-digest` tag equals the spec's digest is
   left alone ("unchanged"; the digest lives on the platform, so a later command sees it);
2. `PUT .../sites/{app}` (Create Or Update): `kind: functionapp,linux`, `siteConfig.linuxFxVersion: Python|3.x`,
   the app settings (FUNCTIONS_WORKER_RUNTIME, AzureWebJobsStorage, SCM_DO_BUILD_DURING_DEPLOYMENT and the
   DeploySpec's environment, which carries the store URL: only ever in this request's body) and the labels as tags;
3. `POST https://{scm host}/api/zipdeploy?isAsync=true` with the zip (plus a host.json that sets
   functionTimeout, and `azure-functions` in requirements.txt), then `GET` the `Location` it answers until the
   deployment is complete (Kudu status 4 = success, 3 = failed);
4. `POST .../sites/{app}/host/default/listkeys`: the function key (`functionKeys.default`) for calls.

Invoke POSTs the payload to `https://{defaultHostName}/api/fk` with `x-functions-key` from a bounded thread pool
and returns at once (HTTP calls block; `poll` reads the future, as for Cloud Functions): SUCCEEDED with the JSON
result; FAILED with our entry's `{"error"}` 500; TIMED_OUT on the host's own 500/502/504 after the function's
timeout, or a read timeout; raised: Throttled (429), FunctionMissing (404), AuthError (a key refused twice).
The activation id is the host's invocation id (`X-FedKeeper-Invocation-Id`, set by our entry) or our own.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import time
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

from fedkeeper.providers.azure import limits as az_limits
from fedkeeper.providers.azure.arm import Arm, DeployFailed, retry_after
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
    State,
    Status,
    Throttled,
)
from fedkeeper.providers.container_platform import parameter_env
from fedkeeper.providers.threaded import CallPool, Targets, poll_call, pooled_session

if TYPE_CHECKING:
    from fedkeeper.providers.azure.config import AzureCluster

log = logging.getLogger(__name__)

ROUTE = "api/fk"
TAG_NAME = "fedkeeper-name"
TAG_MEMORY = "fedkeeper-memory-mb"
TAG_TIMEOUT = "fedkeeper-timeout-s"
#: Kudu deployment status codes (github.com/projectkudu/kudu/wiki/REST-API, DeployStatus)
KUDU_FAILED, KUDU_SUCCESS = 3, 4
DEPLOY_WAIT_S = 900.0
CONNECT_TIMEOUT_S = 10.0
READ_SLACK_S = 10.0


def app_name(prefix: str, name: str) -> str:
    """The function app of a FedKeeper function: lower-case letters, digits and '-', at most 60 characters
    (`Microsoft.Web/sites` naming rules); a long name keeps a hash of the full one."""
    base = re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", f"{prefix}-{name}".lower())).strip("-")
    if len(base) <= 60:
        return base
    return f"{base[:51].rstrip('-')}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def functions_timeout(seconds: float) -> str:
    """host.json `functionTimeout` (hh:mm:ss)."""
    total = max(1, int(round(seconds)))
    return f"{total // 3600:02d}:{total % 3600 // 60:02d}:{total % 60:02d}"


def with_host_files(artifact: bytes, timeout_s: float) -> bytes:
    """The zip as deployed: plus host.json (extension bundle-free HTTP app, the function timeout) and
    `azure-functions` in requirements.txt. Deterministic, like the packager's own zips."""
    host = {"version": "2.0", "functionTimeout": functions_timeout(timeout_s),
            "logging": {"logLevel": {"default": "Information"}}}
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(artifact)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        names = src.namelist()
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "requirements.txt" and b"azure-functions" not in data:
                data = data.rstrip(b"\n") + b"\nazure-functions\n"
            dst.writestr(info, data)
        extra = {"host.json": json.dumps(host, indent=2).encode()}
        if "requirements.txt" not in names:
            extra["requirements.txt"] = b"azure-functions\n"
        for arc, data in sorted(extra.items()):
            info = zipfile.ZipInfo(arc, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            dst.writestr(info, data, zipfile.ZIP_DEFLATED)
    return out.getvalue()


class AzureProvider(Provider):
    """One resource group of Azure Functions (one hosting plan)."""

    kind = "azure"
    config: AzureCluster

    def __init__(self, cluster: str, config: AzureCluster, *, workdir: Path) -> None:
        super().__init__(cluster, config, workdir=workdir)
        self._session = pooled_session(config.max_inflight)
        self._arm = Arm(cluster, config, self._session)
        self._calls = CallPool(cluster, config.max_inflight, f"azure-{cluster}", closed_error=PlatformError)
        #: name -> (function URL, key, timeout s)
        self._targets: Targets[tuple[str, str, float]] = Targets()
        self._scheme = "http" if config.is_loopback else "https"
        self._plan = az_limits.PLANS[config.plan]

    # ------------------------------------------------------------------ deploy / remove / list

    def _site(self, name: str) -> dict[str, Any] | None:
        app = app_name(self.config.function_app, name)
        response = self._arm.request("GET", self._arm.site_url(app), f"get {app}", ok_missing=True)
        return None if response is None else response.json()

    def _memory(self, memory_mb: int) -> int:
        """Flex Consumption takes instance sizes only: round up to the next one."""
        sizes = self._plan.memory_sizes
        return next((s for s in sizes if s >= memory_mb), sizes[-1]) if sizes else memory_mb

    def _settings(self, spec: DeploySpec) -> dict[str, str]:
        settings = {"FUNCTIONS_EXTENSION_VERSION": "~4", "FUNCTIONS_WORKER_RUNTIME": "python",
                    "SCM_DO_BUILD_DURING_DEPLOYMENT": "true", "ENABLE_ORYX_BUILD": "true",
                    **self.config.app_settings, **parameter_env(spec), **spec.env}
        if self.config.storage_secret:
            settings["AzureWebJobsStorage"] = self.config.storage_secret
        return settings

    def _site_body(self, spec: DeploySpec) -> dict[str, Any]:
        from fedkeeper.providers.azure.spec import SPEC

        runtime = SPEC.runtime_kind(self.config)
        kind = runtime.python if runtime is not None else "3.11"
        tags = {**spec.labels, TAG_NAME: spec.name, TAG_MEMORY: str(spec.memory_mb),
                TAG_TIMEOUT: f"{float(spec.timeout_s):g}"}
        properties: dict[str, Any] = {
            "reserved": True, "httpsOnly": True,
            "siteConfig": {"linuxFxVersion": f"Python|{kind}",
                           "appSettings": [{"name": k, "value": v} for k, v in self._settings(spec).items()]}}
        if self.config.plan_id:
            properties["serverFarmId"] = self.config.plan_id
        if self._plan.memory_sizes:
            properties["functionAppConfig"] = {
                "runtime": {"name": "python", "version": kind},
                "scaleAndConcurrency": {"instanceMemoryMB": self._memory(spec.memory_mb)}}
        return {"location": self.config.location, "kind": "functionapp,linux", "tags": tags,
                "properties": properties}

    def _scm_host(self, site: dict[str, Any], app: str) -> str:
        for state in site.get("properties", {}).get("hostNameSslStates") or []:
            if state.get("hostType") == "Repository" and state.get("name"):
                return str(state["name"])
        return f"{app}.scm.azurewebsites.net"

    def _zipdeploy(self, app: str, site: dict[str, Any], data: bytes) -> None:
        url = f"{self._scheme}://{self._scm_host(site, app)}/api/zipdeploy?isAsync=true"
        response = self._arm.request("POST", url, f"zip deploy of {app}", data=data,
                                     headers={"Content-Type": "application/zip"})
        assert response is not None
        location = response.headers.get("Location")
        if response.status_code != 202 or not location:
            return  # a synchronous deployment: done
        deadline = time.monotonic() + DEPLOY_WAIT_S
        pause = 0.05 if self.config.is_loopback else 2.0
        while time.monotonic() < deadline:
            status = self._arm.request("GET", location, f"deployment of {app}")
            assert status is not None
            body = status.json()
            if body.get("complete") or body.get("status") in (KUDU_FAILED, KUDU_SUCCESS):
                if body.get("status") != KUDU_SUCCESS:
                    raise DeployFailed(self.cluster, f"deployment of {app} failed (Kudu status {body.get('status')}"
                                                     f": {str(body.get('status_text') or '')[:200]})")
                return
            time.sleep(pause)
            pause = min(pause * 1.5, 10.0)
        raise PlatformError(self.cluster, f"deployment of {app} not complete after {DEPLOY_WAIT_S:g} s")

    def deploy(self, spec: DeploySpec) -> DeployResult:
        started = time.perf_counter()
        if spec.extra.get("docker_image") or spec.extra.get("layers"):
            raise DeployFailed(self.cluster, f"{spec.name}: docker_image and layers are not Azure Functions settings")
        app = app_name(self.config.function_app, spec.name)
        current = self._site(spec.name)
        if current is not None and (current.get("tags") or {}).get(LABEL_DIGEST) == spec.digest:
            log.info("%s: %s unchanged (digest %s)", self.cluster, spec.name, spec.digest[:12])
            return DeployResult(spec.name, "unchanged", spec.digest, time.perf_counter() - started)
        secrets = tuple(v for v in self._settings(spec).values() if len(v) >= 4)
        body = self._site_body(spec)
        response = self._arm.request("PUT", self._arm.site_url(app), f"create or update {app}", json_body=body,
                                     secrets=secrets)
        assert response is not None
        site = response.json() if response.content else (self._site(spec.name) or {})
        self._zipdeploy(app, site, with_host_files(spec.artifact, spec.timeout_s))
        self._targets.forget(spec.name)
        action = "updated" if current is not None else "created"
        log.info("%s: %s %s as app %s (digest %s)", self.cluster, spec.name, action, app, spec.digest[:12])
        return DeployResult(spec.name, action, spec.digest, time.perf_counter() - started)  # type: ignore[arg-type]

    def remove(self, name: str) -> bool:
        app = app_name(self.config.function_app, name)
        self._targets.forget(name)
        response = self._arm.request("DELETE", self._arm.site_url(app), f"delete {app}", ok_missing=True)
        if response is None or response.status_code == 204:
            return False
        log.info("%s: %s removed (app %s)", self.cluster, name, app)
        return True

    def exists(self, name: str) -> bool:
        return self._site(name) is not None

    def list(self, labels: dict[str, str] | None = None) -> list[FunctionInfo]:
        url: str | None = self._arm.site_url()
        out = []
        while url:
            response = self._arm.request("GET", url, "list function apps")
            assert response is not None
            body = response.json()
            for site in body.get("value") or []:
                tags = site.get("tags") or {}
                if LABEL_EXPERIMENT not in tags or TAG_NAME not in tags:
                    continue
                if any(tags.get(k) != v for k, v in (labels or {}).items()):
                    continue
                labels_of = {k: v for k, v in tags.items() if k not in (TAG_NAME, TAG_MEMORY, TAG_TIMEOUT)}
                out.append(FunctionInfo(name=tags[TAG_NAME], labels=labels_of, digest=tags.get(LABEL_DIGEST),
                                        memory_mb=int(tags[TAG_MEMORY]) if TAG_MEMORY in tags else None,
                                        timeout_s=float(tags[TAG_TIMEOUT]) if TAG_TIMEOUT in tags else None))
            url = body.get("nextLink")
        return sorted(out, key=lambda info: info.name)

    # ------------------------------------------------------------------ invoke / poll

    def _look_up(self, name: str) -> tuple[str, str, float]:
        site = self._site(name)
        if site is None:
            raise FunctionMissing(self.cluster, f"{name} is not deployed (no function app "
                                                f"{app_name(self.config.function_app, name)})")
        app = app_name(self.config.function_app, name)
        host = site.get("properties", {}).get("defaultHostName") or f"{app}.azurewebsites.net"
        keys = self._arm.request("POST", self._arm.site_url(app, "/host/default/listkeys"), f"keys of {app}")
        assert keys is not None
        key = (keys.json().get("functionKeys") or {}).get("default")
        if not key:
            raise PlatformError(self.cluster, f"{app} has no default function key yet")
        timeout = float((site.get("tags") or {}).get(TAG_TIMEOUT) or self._plan.default_timeout_s)
        return f"{self._scheme}://{host}/{ROUTE}", str(key), timeout

    def invoke(self, name: str, payload: dict[str, Any]) -> Invocation:
        target = self._targets.get(name, self._look_up)
        return self._calls.call(name, self._run_call, name, target, payload)

    def _post(self, name: str, target: tuple[str, str, float], payload: dict[str, Any],
              activation_id: str) -> tuple[requests.Response | None, float, float]:
        url, key, timeout_s = target
        start = time.time()
        try:
            response = self._session.post(url, data=json.dumps(payload, separators=(",", ":")),
                                          headers={"Content-Type": "application/json", "x-functions-key": key},
                                          timeout=(CONNECT_TIMEOUT_S, min(timeout_s, az_limits.HTTP_TIMEOUT_S)
                                                   + READ_SLACK_S))
        except requests.exceptions.ReadTimeout:
            return None, start, time.time()
        except requests.exceptions.RequestException as exc:
            raise PlatformError(self.cluster, f"{name}: cannot reach the function app: {type(exc).__name__}") from None
        return response, start, time.time()

    def _run_call(self, name: str, target: tuple[str, str, float], payload: dict[str, Any],
                  activation_id: str) -> Status:
        """One call, on a pool thread. A refused key (rotated) is fetched anew once; refused again: AuthError."""
        response, start, end = self._post(name, target, payload, activation_id)
        if response is not None and response.status_code in (401, 403):
            target = self._targets.get(name, self._look_up, refresh=True)
            response, start, end = self._post(name, target, payload, activation_id)
            if response is not None and response.status_code in (401, 403):
                raise AuthError(self.cluster, f"{name}: HTTP {response.status_code}: the function key was refused")
        if response is None:
            return Status(State.TIMED_OUT, error=f"{name}: no answer within {target[2]:g} s + {READ_SLACK_S:g} s "
                                                 "slack", activation_id=activation_id, start=start, end=end,
                          duration_s=end - start)
        if response.status_code == 404:
            self._targets.forget(name)
        return self._classify(name, target[2], response, activation_id, start, end)

    def _classify(self, name: str, timeout_s: float, response: requests.Response, activation_id: str,
                  start: float, end: float) -> Status:
        code = response.status_code
        cold_header = response.headers.get("X-FedKeeper-Cold")
        common = dict(activation_id=response.headers.get("X-FedKeeper-Invocation-Id") or activation_id,
                      start=start, end=end, duration_s=end - start,
                      cold=None if cold_header is None else cold_header == "1")
        body: Any = None
        if "json" in response.headers.get("Content-Type", ""):
            try:
                body = response.json()
            except ValueError:
                body = None
        if 200 <= code < 300:
            if not isinstance(body, dict):
                return Status(State.FAILED, error=f"{name} answered HTTP {code} without a JSON object", **common)
            return Status(State.SUCCEEDED, result=body, **common)
        if code == 500 and isinstance(body, dict) and isinstance(body.get("error"), str):
            return Status(State.FAILED, error=body["error"], **common)
        if code in (500, 502, 504) and end - start >= min(timeout_s, az_limits.HTTP_TIMEOUT_S) * 0.95:
            return Status(State.TIMED_OUT, error=f"{name}: no answer within the function timeout of {timeout_s:g} s "
                                                 f"(HTTP {code} from the host)", **common)
        if code in (429, 503):
            raise Throttled(self.cluster, f"{name}: HTTP {code}", retry_after(response))
        if code == 404:
            raise FunctionMissing(self.cluster, f"{name}: HTTP 404 from the function app (deleted?)")
        snippet = " ".join(response.text.split())[:200]
        if 400 <= code < 500:
            raise InvocationFailed(self.cluster, f"{name}: HTTP {code}: {snippet}")
        raise PlatformError(self.cluster, f"{name}: HTTP {code} from the platform: {snippet}")

    def poll(self, inv: Invocation) -> Status:
        return poll_call(inv, lost=f"{inv.name}: submitted by an earlier process; an HTTP call to a function app "
                                   "cannot be resumed")

    def close(self) -> None:
        if self._calls.close():
            self._session.close()


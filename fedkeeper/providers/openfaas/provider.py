"""OpenFaaS through the gateway's REST API (no faas-cli).

- deploy: `POST /system/functions` (create; 409 or "already exists" → update) or `PUT /system/functions`
  (update) with a FunctionDeployment: `service`, `image` (the cluster's `image:` with {function} and {code}),
  `namespace`, `labels` (the experiment's labels but the 64-hex digest, too long for a Kubernetes label),
  `annotations` (`fedkeeper-digest` and `fedkeeper-settings`, the digest of what only this provider sees),
  `envVars` (of-watchdog's `exec_timeout`/`read_timeout`/`write_timeout`, `max_inflight`, plain parameters),
  `secrets` and `limits.memory`/`requests.memory`. When both annotations match, nothing is sent.
- secrets: `DeploySpec.env` (the store's URL) goes into an OpenFaaS secret `<name>-env` (`POST|PUT
  /system/secrets`, a JSON object), which the platform mounts into the function's pods and the entry file reads
  (`providers/openfaas/entry.py`); never into `envVars`, which `GET /system/functions` shows to anyone.
- list/remove: `GET /system/functions?namespace=` filtered by our labels (a function without the experiment label
  is never listed, so never removed); `DELETE /system/functions` with `{"functionName"}`, then its secret.
- invoke, `invocation: sync`: `POST /function/<name>[.<namespace>]` from a bounded thread pool; poll reads the
  future (`fedkeeper.providers.http_function`: 200 result, 500 the function's error, 504 timeout, 404 missing,
  429 throttled by of-watchdog's max_inflight). A call does not outlive its process: adopted calls are LOST.
- invoke, `invocation: async`: `POST /async-function/<name>` with `X-Callback-Url` → 202 and `X-Call-Id` (the
  activation id); the queue-worker posts the answer to this provider's receiver (`callbacks.py`), which poll
  reads by call id, on this provider object; after a restart the callback went elsewhere: LOST.
- The gateway does not ask for credentials on /function and /async-function; invoke first reads the function's
  status from /system (once per name, cached), so rejected credentials and a missing function are told before
  a call is queued.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests

from fedkeeper.providers.base import (
    LABEL_DIGEST,
    DeployResult,
    DeploySpec,
    FunctionInfo,
    FunctionMissing,
    Invocation,
    PlatformError,
    Provider,
    ProviderError,
    State,
    Status,
)
from fedkeeper.providers.container_platform import (
    check_owner,
    image_for,
    listed_labels,
    mebibytes,
    parameter_env,
    platform_labels,
)
from fedkeeper.providers.http_function import classify, post
from fedkeeper.providers.openfaas.callbacks import CallbackReceiver
from fedkeeper.providers.openfaas.client import GatewayClient
from fedkeeper.providers.openfaas.config import OpenFaasCluster
from fedkeeper.providers.threaded import CallPool, Targets, poll_call, settle

log = logging.getLogger("fedkeeper.providers.openfaas")

ANNOTATION_SETTINGS = "fedkeeper-settings"
#: the entry reads the secret named here from the mounted secrets folder
ENV_SECRET_VAR = "FK_ENV_SECRET"


def _duration(value: float) -> str:
    return f"{max(1, int(round(value)))}s"


class OpenFaasProvider(Provider):
    """One OpenFaaS gateway (and functions namespace)."""

    kind = "openfaas"
    config: OpenFaasCluster

    def __init__(self, cluster: str, config: OpenFaasCluster, *, workdir: Path) -> None:
        super().__init__(cluster, config, workdir=workdir)
        self.client = GatewayClient(cluster, gateway=config.gateway, username=config.username,
                                    password=config.password or "", verify_tls=config.verify_tls,
                                    request_timeout_s=config.request_timeout_s, pool_maxsize=config.max_inflight)
        self._calls = CallPool(cluster, config.max_inflight, f"openfaas-{cluster}", closed_error=PlatformError)
        self._lock = threading.Lock()
        self._known: Targets[float] = Targets()  # name -> its timeout (s), for names checked through /system
        self._receiver: CallbackReceiver | None = None
        self._submitted: set[str] = set()  # async call ids queued by this object (their callbacks come here)
        self._closed = False

    # ------------------------------------------------------------------ naming

    def _ns_params(self) -> dict[str, str]:
        return {"namespace": self.config.namespace} if self.config.namespace else {}

    def _call_path(self, name: str, prefix: str) -> str:
        qualified = f"{name}.{self.config.namespace}" if self.config.namespace else name
        return f"/{prefix}/{quote(qualified, safe='.')}"

    @staticmethod
    def secret_name(name: str) -> str:
        return f"{name}-env"

    # ------------------------------------------------------------------ deploy

    def _settings_digest(self, image: str, spec: DeploySpec) -> str:
        c = self.config
        blob = json.dumps([image, c.labels, c.annotations, c.environment, spec.extra.get("parameters") or {},
                           c.namespace], sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    def deployment(self, spec: DeploySpec) -> dict[str, Any]:
        """The FunctionDeployment body of the gateway's API."""
        image = image_for(self.config.image, spec.function, spec.artifact)
        timeout = _duration(spec.timeout_s)
        env = {**self.config.environment, **parameter_env(spec),
               "exec_timeout": timeout, "read_timeout": timeout, "write_timeout": timeout,
               "max_inflight": str(max(1, int(spec.concurrency))), ENV_SECRET_VAR: self.secret_name(spec.name)}
        labels = {**self.config.labels, **platform_labels(spec)}
        annotations = {**self.config.annotations, LABEL_DIGEST: spec.digest,
                       ANNOTATION_SETTINGS: self._settings_digest(image, spec)}
        body: dict[str, Any] = {
            "service": spec.name, "image": image, "envProcess": "python index.py", "envVars": env,
            "labels": labels, "annotations": annotations, "secrets": [self.secret_name(spec.name)],
            "limits": {"memory": f"{spec.memory_mb}Mi"}, "requests": {"memory": f"{spec.memory_mb}Mi"},
        }
        if self.config.namespace:
            body["namespace"] = self.config.namespace
        return body

    def _status(self, name: str) -> dict[str, Any] | None:
        path = f"/system/function/{quote(name, safe='')}"
        response = self.client.send("GET", path, params=self._ns_params(), passthrough=(404,))
        if response.status_code == 404:
            return None
        return self._json(response, "GET", path)

    def _put_secret(self, spec: DeploySpec) -> None:
        body: dict[str, Any] = {"name": self.secret_name(spec.name), "value": json.dumps(spec.env, sort_keys=True)}
        if self.config.namespace:
            body["namespace"] = self.config.namespace
        response = self.client.send("POST", "/system/secrets", json=body, ok=(200, 201, 202), passthrough=(409,))
        if response.status_code == 409:
            self.client.send("PUT", "/system/secrets", json=body, ok=(200, 202))

    def deploy(self, spec: DeploySpec) -> DeployResult:
        started = time.monotonic()
        body = self.deployment(spec)
        current = self._status(spec.name)
        if current is not None:
            have = current.get("annotations") or {}
            check_owner(self.cluster, "function", current.get("labels") or {}, spec)
            if have.get(LABEL_DIGEST) == spec.digest and \
                    have.get(ANNOTATION_SETTINGS) == body["annotations"][ANNOTATION_SETTINGS]:
                self._remember(spec.name, spec.timeout_s)
                log.info("%s: %s unchanged (digest %s)", self.cluster, spec.name, spec.digest[:12])
                return DeployResult(spec.name, "unchanged", spec.digest, time.monotonic() - started)
        self._put_secret(spec)
        action = "updated" if current is not None else "created"
        if current is None:
            response = self.client.send("POST", "/system/functions", json=body, ok=(200, 201, 202),
                                        passthrough=(409,))
            if response.status_code == 409:  # created meanwhile (a concurrent or half-finished deploy)
                action = "updated"
        if action == "updated":
            self.client.send("PUT", "/system/functions", json=body, ok=(200, 202))
        self._remember(spec.name, spec.timeout_s)
        log.info("%s: %s %s (image %s, digest %s)", self.cluster, spec.name, action, body["image"], spec.digest[:12])
        return DeployResult(spec.name, action, spec.digest, time.monotonic() - started)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ remove / list

    def remove(self, name: str) -> bool:
        self._forget(name)
        body: dict[str, Any] = {"functionName": name}
        if self.config.namespace:
            body["namespace"] = self.config.namespace
        response = self.client.send("DELETE", "/system/functions", json=body, ok=(200, 202), passthrough=(404,))
        removed = response.status_code != 404
        secret: dict[str, Any] = {"name": self.secret_name(name)}
        if self.config.namespace:
            secret["namespace"] = self.config.namespace
        self.client.send("DELETE", "/system/secrets", json=secret, ok=(200, 202), passthrough=(404,))
        log.info("%s: %s %s", self.cluster, name, "removed" if removed else "already absent")
        return removed

    def exists(self, name: str) -> bool:
        return self._status(name) is not None

    def list(self, labels: dict[str, str] | None = None) -> list[FunctionInfo]:
        wanted = labels or {}
        response = self.client.send("GET", "/system/functions", params=self._ns_params())
        items = self._json(response, "GET", "/system/functions")
        if not isinstance(items, list):
            raise PlatformError(self.cluster, "GET /system/functions: expected a JSON list of functions")
        out = []
        for item in items:
            annotations = item.get("annotations") or {}
            have = listed_labels(item.get("labels"), annotations, wanted)
            if have is None:
                continue
            memory = str((item.get("limits") or {}).get("memory") or "")
            env = item.get("envVars") or {}
            timeout = str(env.get("exec_timeout") or "")
            out.append(FunctionInfo(
                name=str(item.get("name")), labels=have, digest=annotations.get(LABEL_DIGEST),
                memory_mb=mebibytes(memory),
                timeout_s=float(timeout[:-1]) if timeout.endswith("s") and timeout[:-1].isdigit() else None))
        return sorted(out, key=lambda i: i.name)

    # ------------------------------------------------------------------ invoke / poll

    def _remember(self, name: str, timeout_s: float) -> None:
        self._known.put(name, timeout_s)

    def _forget(self, name: str) -> None:
        self._known.forget(name)

    def _look_up_timeout(self, name: str) -> float:
        """The function's timeout; the first call of a name checks through /system that it exists (and that
        the credentials are good: the call paths themselves ask for none)."""
        status = self._status(name)
        if status is None:
            raise FunctionMissing(self.cluster, f"{name} is not deployed on {self.config.gateway}")
        raw = str((status.get("envVars") or {}).get("exec_timeout") or "60s")
        return float(raw[:-1]) if raw.endswith("s") and raw[:-1].replace(".", "", 1).isdigit() else 60.0

    def _callbacks(self) -> CallbackReceiver:
        with self._lock:
            if self._closed:
                raise PlatformError(self.cluster, "provider is closed")
            if self._receiver is None:
                self._receiver = CallbackReceiver(self.cluster, self.config.callback_listen, self.config.callback_url)
            return self._receiver

    def invoke(self, name: str, payload: dict[str, Any]) -> Invocation:
        timeout = self._known.get(name, self._look_up_timeout)
        if self.config.invocation == "async":
            return self._invoke_async(name, payload)
        return self._calls.call(name, self._run_call, name, payload, timeout)

    def _run_call(self, name: str, payload: dict[str, Any], timeout: float, activation_id: str) -> Status:
        try:
            return post(self.client.session, self.cluster, name,
                        self.config.gateway + self._call_path(name, "function"), payload, timeout_s=timeout,
                        activation_id=activation_id, headers={"X-Call-Id": activation_id})
        except FunctionMissing:
            self._forget(name)
            raise

    def _invoke_async(self, name: str, payload: dict[str, Any]) -> Invocation:
        receiver = self._callbacks()
        path = self._call_path(name, "async-function")
        submitted = time.time()
        response = self._post_async(path, payload, receiver.url)
        call_id = response.headers.get("X-Call-Id")
        if not call_id:
            raise PlatformError(self.cluster, f"POST {path} -> {response.status_code}: no X-Call-Id in the answer")
        with self._lock:
            self._submitted.add(call_id)
        return Invocation(cluster=self.cluster, name=name, activation_id=call_id, submitted=submitted)

    def _post_async(self, path: str, payload: dict[str, Any], callback: str) -> requests.Response:
        url = self.config.gateway + path
        try:
            response = self.client.session.post(url, json=payload, headers={"X-Callback-Url": callback},
                                                timeout=self.client.timeout, allow_redirects=False)
        except requests.exceptions.RequestException as exc:
            raise self.client.transport_error("POST", path, exc) from None
        if response.status_code not in (200, 202):
            if response.status_code == 404:
                self._forget(path.rsplit("/", 1)[-1].split(".", 1)[0])
            raise self.client.error_for("POST", path, response)
        return response

    def poll(self, inv: Invocation) -> Status:
        if self.config.invocation == "async":
            return self._poll_async(inv)
        return poll_call(inv, lost=f"{inv.name}: submitted by an earlier process; a synchronous call cannot be "
                                   "resumed")

    def _poll_async(self, inv: Invocation) -> Status:
        receiver = self._receiver
        callback = receiver.take(inv.activation_id) if receiver is not None else None
        if callback is None:
            with self._lock:
                ours = inv.activation_id in self._submitted
            if not ours:
                return Status(State.LOST, activation_id=inv.activation_id,
                              error=f"{inv.name}: queued by an earlier process; its callback went there")
            return Status(State.PENDING, activation_id=inv.activation_id)
        start = inv.submitted
        try:
            seconds = float(callback.headers.get("X-Duration-Seconds") or 0.0)
            start = max(start, callback.received - seconds)
        except ValueError:
            pass
        try:
            return classify(self.cluster, inv.name, callback.status, callback.headers, callback.body,
                            activation_id=inv.activation_id, start=start, end=callback.received)
        except ProviderError as exc:
            if isinstance(exc, FunctionMissing):
                self._forget(inv.name)
            settled = settle(exc, inv.activation_id)
            if settled is None:
                raise
            return settled

    # ------------------------------------------------------------------ helpers

    def _json(self, response: requests.Response, method: str, path: str) -> Any:
        try:
            return response.json()
        except ValueError:
            raise PlatformError(self.cluster, f"{method} {path} -> {response.status_code}: answer is not JSON") \
                from None

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            receiver, self._receiver = self._receiver, None
        self._calls.close()
        if receiver is not None:
            receiver.close()
        self.client.close()

"""Knative Serving through the Kubernetes API (the official `kubernetes` client), calls over each Service's route.

- deploy: a `serving.knative.dev/v1` Service per function (`CustomObjectsApi`): one container (the cluster's
  `image:` with {function} and {code}), `resources.limits.memory`, the revision's `timeoutSeconds` and
  `containerConcurrency`, `autoscaling.knative.dev/min-scale` (0: scale to zero) and `max-scale`. Labels carry the
  experiment's labels but the 64-hex digest (too long for a label value), which is the `fedkeeper-digest`
  annotation beside `fedkeeper-settings` (what only this provider sees); both equal → nothing is sent. An update
  replaces the Service at the resourceVersion it read.
- secrets: `DeploySpec.env` (the store's URL) is a Kubernetes Secret `<name>-env` the container reads through
  `envFrom`; never in the Service, whose spec anyone who may read the namespace sees.
- list/remove: by label selector (`fedkeeper-experiment`, plus the asked labels); delete Service, then Secret.
- invoke: POST to the route (`status.url`, read once per name and cached; with `ingress:` the request goes to
  that address with the route's host in `Host`), from a bounded thread pool; poll reads the future
  (`fedkeeper.providers.http_function`: 200 result, 500 the function's error, 504 the queue-proxy's timeout, 404
  no route, 429/503 overload → Throttled). Scale to zero shows as cold starts: the entry marks the first call
  a new pod serves. A call does not outlive its process: adopted calls are LOST.
- Credentials: a kubeconfig (and context) or `api_server` + `token` (a bearer token only in the client's
  Authorization header); the API's 401/403 are AuthError, also for a call, whose route is looked up first.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fedkeeper.providers.base import (
    LABEL_DIGEST,
    LABEL_EXPERIMENT,
    AuthError,
    DeployResult,
    DeploySpec,
    FunctionInfo,
    FunctionMissing,
    Invocation,
    InvocationFailed,
    PlatformError,
    Provider,
    Status,
    Throttled,
)
from fedkeeper.providers.container_platform import (
    check_owner,
    image_for,
    listed_labels,
    mebibytes,
    parameter_env,
    platform_labels,
)
from fedkeeper.providers.http_function import post
from fedkeeper.providers.knative.config import KnativeCluster
from fedkeeper.providers.threaded import CallPool, Targets, poll_call, pooled_session

log = logging.getLogger("fedkeeper.providers.knative")

GROUP, VERSION, PLURAL = "serving.knative.dev", "v1", "services"
ANNOTATION_SETTINGS = "fedkeeper-settings"
#: the queue-proxy answers 503 when a revision's request queue is full, 429 where a rate limit applies
THROTTLE_STATUSES = (429, 503)


class KnativeProvider(Provider):
    """One namespace of one Knative Serving installation."""

    kind = "knative"
    config: KnativeCluster

    def __init__(self, cluster: str, config: KnativeCluster, *, workdir: Path) -> None:
        super().__init__(cluster, config, workdir=workdir)
        self._api: Any = None
        self._lock = threading.Lock()
        self._routes: Targets[tuple[str, float]] = Targets()  # name -> (route URL, timeout s)
        self._calls = CallPool(cluster, config.max_inflight, f"knative-{cluster}", closed_error=PlatformError)
        self._session = pooled_session(config.max_inflight, minimum=10)
        self._session.verify = config.verify_tls

    # ------------------------------------------------------------------ the Kubernetes API

    def _clients(self) -> tuple[Any, Any]:
        with self._lock:
            if self._api is None:
                try:
                    from kubernetes import client, config as kconfig
                except ImportError:
                    raise PlatformError(self.cluster, "the kubernetes package is missing: pip install "
                                                      "'fedkeeper[knative]'") from None
                configuration = client.Configuration()
                if self.config.kubeconfig:
                    kconfig.load_kube_config(config_file=self.config.kubeconfig, context=self.config.context,
                                             client_configuration=configuration)
                else:
                    configuration.host = self.config.api_server
                    # 'BearerToken' since kubernetes 36, 'authorization' before
                    token = self.config.token or ""
                    configuration.api_key = {"BearerToken": token, "authorization": token}
                    configuration.api_key_prefix = {"BearerToken": "Bearer", "authorization": "Bearer"}
                if self.config.ca_file:
                    configuration.ssl_ca_cert = self.config.ca_file
                configuration.verify_ssl = self.config.verify_tls
                configuration.retries = 2
                api_client = client.ApiClient(configuration)
                self._api = (client.CustomObjectsApi(api_client), client.CoreV1Api(api_client), api_client)
            return self._api[0], self._api[1]

    def _k8s(self, what: str, fn: Any, *, missing_ok: bool = False) -> Any:
        """Call the API; its failures as typed errors (never the token: the client's messages are not copied
        beyond the status's reason and message)."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return fn()
        except ApiException as exc:
            status = int(exc.status or 0)
            if status == 404 and missing_ok:
                return None
            reason = exc.reason or ""
            try:
                reason = json.loads(exc.body or "{}").get("message") or reason
            except (ValueError, AttributeError):
                pass
            message = f"{what} -> {status}: {str(reason)[:300]}"
            if status in (401, 403):
                raise AuthError(self.cluster, f"{message} (check providers.knative.{self.cluster}: token or "
                                              "kubeconfig, and the account's rights in the namespace)") from None
            if status == 404:
                raise FunctionMissing(self.cluster, message) from None
            if status == 429:
                raise Throttled(self.cluster, message) from None
            if status >= 500 or status == 0:
                raise PlatformError(self.cluster, message) from None
            raise InvocationFailed(self.cluster, message) from None
        except (HTTPError, OSError) as exc:
            raise PlatformError(self.cluster, f"{what}: {type(exc).__name__} reaching the Kubernetes API") from None

    def _get(self, name: str) -> dict[str, Any] | None:
        api, _ = self._clients()
        return self._k8s(f"get service {name}", lambda: api.get_namespaced_custom_object(
            GROUP, VERSION, self.config.namespace, PLURAL, name), missing_ok=True)

    # ------------------------------------------------------------------ deploy

    @staticmethod
    def secret_name(name: str) -> str:
        return f"{name}-env"

    def service(self, spec: DeploySpec) -> dict[str, Any]:
        """The Service resource of one function."""
        c = self.config
        image = image_for(c.image, spec.function, spec.artifact)
        env = {**c.environment, **parameter_env(spec)}
        settings = hashlib.sha256(json.dumps([image, c.labels, c.annotations, env, c.min_scale, c.max_scale],
                                             sort_keys=True).encode()).hexdigest()[:32]
        labels = {**c.labels, **platform_labels(spec)}
        template_annotations = {"autoscaling.knative.dev/min-scale": str(c.min_scale)}
        if c.max_scale is not None:
            template_annotations["autoscaling.knative.dev/max-scale"] = str(c.max_scale)
        container: dict[str, Any] = {
            "image": image,
            "env": [{"name": k, "value": v} for k, v in sorted(env.items())],
            "envFrom": [{"secretRef": {"name": self.secret_name(spec.name)}}],
            "resources": {"limits": {"memory": f"{spec.memory_mb}Mi"}, "requests": {"memory": f"{spec.memory_mb}Mi"}},
            "ports": [{"containerPort": 8080}],
        }
        return {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "Service",
            "metadata": {"name": spec.name, "namespace": c.namespace, "labels": labels,
                         "annotations": {**c.annotations, LABEL_DIGEST: spec.digest, ANNOTATION_SETTINGS: settings}},
            "spec": {"template": {
                "metadata": {"labels": labels, "annotations": template_annotations},
                "spec": {"containerConcurrency": max(1, int(spec.concurrency)),
                         "timeoutSeconds": max(1, int(round(spec.timeout_s))), "containers": [container]}}},
        }

    def _put_secret(self, spec: DeploySpec) -> None:
        _, core = self._clients()
        name = self.secret_name(spec.name)
        body = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": name, "namespace": self.config.namespace, "labels": platform_labels(spec)},
                "stringData": dict(spec.env)}
        current = self._k8s(f"get secret {name}", lambda: core.read_namespaced_secret(name, self.config.namespace),
                            missing_ok=True)
        if current is None:
            self._k8s(f"create secret {name}", lambda: core.create_namespaced_secret(self.config.namespace, body))
        else:
            self._k8s(f"replace secret {name}",
                      lambda: core.replace_namespaced_secret(name, self.config.namespace, body))

    def deploy(self, spec: DeploySpec) -> DeployResult:
        started = time.monotonic()
        api, _ = self._clients()
        body = self.service(spec)
        current = self._get(spec.name)
        if current is not None:
            meta = current.get("metadata") or {}
            check_owner(self.cluster, "service", meta.get("labels") or {}, spec)
            have = meta.get("annotations") or {}
            wanted = body["metadata"]["annotations"]
            if have.get(LABEL_DIGEST) == spec.digest and have.get(ANNOTATION_SETTINGS) == wanted[ANNOTATION_SETTINGS]:
                self._remember(spec.name, current, spec.timeout_s)
                log.info("%s: %s unchanged (digest %s)", self.cluster, spec.name, spec.digest[:12])
                return DeployResult(spec.name, "unchanged", spec.digest, time.monotonic() - started)
        self._put_secret(spec)
        ns = self.config.namespace
        if current is None:
            made = self._k8s(f"create service {spec.name}",
                             lambda: api.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body))
            action = "created"
        else:
            body["metadata"]["resourceVersion"] = (current.get("metadata") or {}).get("resourceVersion")
            made = self._k8s(f"replace service {spec.name}", lambda: api.replace_namespaced_custom_object(
                GROUP, VERSION, ns, PLURAL, spec.name, body))
            action = "updated"
        self._routes.forget(spec.name)
        if isinstance(made, dict) and (made.get("status") or {}).get("url"):
            self._remember(spec.name, made, spec.timeout_s)
        log.info("%s: %s %s (image %s, digest %s)", self.cluster, spec.name, action,
                 body["spec"]["template"]["spec"]["containers"][0]["image"], spec.digest[:12])
        return DeployResult(spec.name, action, spec.digest, time.monotonic() - started)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ remove / list

    def remove(self, name: str) -> bool:
        api, core = self._clients()
        self._routes.forget(name)
        ns = self.config.namespace
        gone = self._k8s(f"delete service {name}", lambda: api.delete_namespaced_custom_object(
            GROUP, VERSION, ns, PLURAL, name), missing_ok=True)
        secret = self.secret_name(name)
        self._k8s(f"delete secret {secret}", lambda: core.delete_namespaced_secret(secret, ns), missing_ok=True)
        log.info("%s: %s %s", self.cluster, name, "removed" if gone is not None else "already absent")
        return gone is not None

    def exists(self, name: str) -> bool:
        return self._get(name) is not None

    def list(self, labels: dict[str, str] | None = None) -> list[FunctionInfo]:
        api, _ = self._clients()
        wanted = {k: v for k, v in (labels or {}).items() if k != LABEL_DIGEST}
        selector = ",".join([LABEL_EXPERIMENT] + [f"{k}={v}" for k, v in sorted(wanted.items())])
        found = self._k8s("list services", lambda: api.list_namespaced_custom_object(
            GROUP, VERSION, self.config.namespace, PLURAL, label_selector=selector))
        out = []
        for item in (found or {}).get("items") or []:
            meta = item.get("metadata") or {}
            annotations = meta.get("annotations") or {}
            have = listed_labels(meta.get("labels"), annotations, labels or {})
            if have is None:
                continue
            rev = ((item.get("spec") or {}).get("template") or {}).get("spec") or {}
            containers = rev.get("containers") or [{}]
            memory = str(((containers[0].get("resources") or {}).get("limits") or {}).get("memory") or "")
            out.append(FunctionInfo(
                name=str(meta.get("name")), labels=have, digest=annotations.get(LABEL_DIGEST),
                memory_mb=mebibytes(memory),
                timeout_s=float(rev["timeoutSeconds"]) if rev.get("timeoutSeconds") is not None else None))
        return sorted(out, key=lambda i: i.name)

    # ------------------------------------------------------------------ invoke / poll

    def _remember(self, name: str, service: dict[str, Any], timeout_s: float | None = None) -> tuple[str, float] | None:
        url = (service.get("status") or {}).get("url")
        if not url:
            return None
        if timeout_s is None:
            rev = ((service.get("spec") or {}).get("template") or {}).get("spec") or {}
            timeout_s = float(rev.get("timeoutSeconds") or 300)
        return self._routes.put(name, (str(url), float(timeout_s)))

    def _look_up(self, name: str) -> tuple[str, float]:
        service = self._get(name)
        if service is None:
            raise FunctionMissing(self.cluster, f"service {name} is not deployed in namespace {self.config.namespace}")
        route = self._remember(name, service)
        if route is None:
            raise PlatformError(self.cluster, f"service {name} has no route yet (not Ready)")
        return route

    def invoke(self, name: str, payload: dict[str, Any]) -> Invocation:
        url, timeout = self._routes.get(name, self._look_up)
        return self._calls.call(name, self._run_call, name, url, timeout, payload)

    def _run_call(self, name: str, url: str, timeout: float, payload: dict[str, Any], activation_id: str) -> Status:
        headers = {"K-Request-Id": activation_id}
        target = url
        if self.config.ingress:
            parts = urlsplit(url)
            headers["Host"] = parts.netloc
            target = self.config.ingress + (parts.path or "/")
        try:
            return post(self._session, self.cluster, name, target, payload, timeout_s=timeout,
                        activation_id=activation_id, headers=headers, throttle_statuses=THROTTLE_STATUSES)
        except FunctionMissing:
            self._routes.forget(name)
            raise

    def poll(self, inv: Invocation) -> Status:
        return poll_call(inv, lost=f"{inv.name}: submitted by an earlier process; a call over the route cannot "
                                   "be resumed")

    def close(self) -> None:
        if not self._calls.close():
            return
        self._session.close()
        with self._lock:
            api, self._api = self._api, None
        if api is not None:
            try:
                api[2].close()
            except Exception:  # closing must not mask the caller's own error
                log.debug("%s: closing the API client failed", self.cluster, exc_info=True)

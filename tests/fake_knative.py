"""A fake Knative Serving installation on 127.0.0.1: the Kubernetes API for Services and Secrets, and an ingress
that routes by Host to pods that really run what is deployed, scaled to zero when idle.

The API server speaks what the official `kubernetes` client sends and expects (the Kubernetes API conventions,
https://kubernetes.io/docs/reference/using-api/api-concepts/: `Status` objects for errors with `reason` and `code`,
`resourceVersion` checked on a replace (409 Conflict when stale), 409 AlreadyExists on a create, `labelSelector`
with `key` and `key=value` terms, bearer-token authentication answered 401 Unauthorized):

- `/apis/serving.knative.dev/v1/namespaces/{ns}/services[/{name}]`: GET (one, or a `ServiceList`), POST, PUT,
  DELETE; the Service's status as Knative writes it (https://knative.dev/docs/serving/reference/serving-api/:
  `status.url` `http://{name}.{ns}.{domain}`, the `Ready` condition, `latestReadyRevisionName`
  `{name}-{generation:05d}`), and a new revision at each change of `spec.template`;
- `/api/v1/namespaces/{ns}/secrets[/{name}]`: GET, POST, PUT, DELETE (`stringData` merged into base64 `data`).

The ingress (a second port) plays Kourier/the activator and the queue-proxy
(https://knative.dev/docs/serving/reference/runtime-contract/ and knative/serving `pkg/queue`): a request whose
Host is a Service's route goes to that Service's pod, started on demand when the revision has none (scale from
zero: a cold start, which the entry marks), cut at the revision's `timeoutSeconds` with 504, refused with 503 when
`containerConcurrency` x 10 requests already wait for the pod (the
breaker queues the others until a slot frees) and when `throttle(n)` says so; an unknown Host is 404. A reaper
stops a pod idle for `scale_to_zero_s` (Knative's `scale-to-zero-grace-period` after the stable window). A pod
is the image run as a process (tests/fake_containers.py) with the container's `env` and the `envFrom` Secrets'
data as its environment. `stop()` stops every process it started.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import secrets as pysecrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from fake_containers import (
    Container,
    ContainerFake,
    QuietHandler,
    Recorded,
    forward,
    run_container,
    stop_container,
)

DOMAIN = "example.com"
SERVICES = re.compile(r"/apis/serving\.knative\.dev/v1/namespaces/([^/]+)/services(?:/([^/]+))?")
#: knative/serving pkg/queue: the breaker queues up to 10 requests per allowed concurrent one
QUEUE_DEPTH_FACTOR = 10
SECRETS = re.compile(r"/api/v1/namespaces/([^/]+)/secrets(?:/([^/]+))?")


@dataclass
class Revision:
    name: str
    template: dict[str, Any]
    pod: Container | None = None
    inflight: int = 0
    waiting: int = 0


@dataclass
class FakeKnative(ContainerFake):
    workdir: Path
    token: str = field(default_factory=lambda: pysecrets.token_hex(16))
    image_template: str = "registry.test/fedkeeper/{function}:{code}"
    scale_to_zero_s: float = 30.0
    services: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    secrets: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    revisions: dict[tuple[str, str], Revision] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    cold_starts: int = 0
    throttle_next: int = 0

    def __post_init__(self) -> None:
        from fedkeeper.providers.knative.provider import image_for

        self._prepare("knative", image_for)
        self._stopping = threading.Event()
        self._version = 100

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "FakeKnative":
        super().start()
        self._reaper = threading.Thread(target=self._reap, name="knative-reaper", daemon=True)
        self._reaper.start()
        return self

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self._servers[0].server_address[1]}"

    @property
    def ingress_url(self) -> str:
        return f"http://127.0.0.1:{self._servers[1].server_address[1]}"

    def stop(self) -> None:
        self._stopping.set()
        super().stop()

    def _take_containers(self) -> list[Container]:
        pods = [r.pod for r in self.revisions.values() if r.pod]
        for revision in self.revisions.values():
            revision.pod = None
        return pods

    # ------------------------------------------------------------------ what tests read and control

    def _is_invocation(self, path: str) -> bool:
        return path == "ingress"

    def scale_to_zero(self) -> int:
        """Stop every idle pod now (as the autoscaler does after the grace period); how many were stopped."""
        return self._reap_once(0.0)

    # ------------------------------------------------------------------ the API

    def _next_version(self) -> str:
        self._version += 1
        return str(self._version)

    def _status(self, ns: str, name: str, service: dict[str, Any]) -> None:
        generation = int(service["metadata"].get("generation", 1))
        revision = f"{name}-{generation:05d}"
        service["status"] = {
            "observedGeneration": generation, "url": f"http://{name}.{ns}.{DOMAIN}",
            "address": {"url": f"http://{name}.{ns}.svc.cluster.local"},
            "latestCreatedRevisionName": revision, "latestReadyRevisionName": revision,
            "traffic": [{"revisionName": revision, "percent": 100, "latestRevision": True}],
            "conditions": [{"type": t, "status": "True", "lastTransitionTime": "2024-01-01T00:00:00Z"}
                           for t in ("ConfigurationsReady", "Ready", "RoutesReady")]}

    def create_service(self, ns: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        name = str((body.get("metadata") or {}).get("name") or "")
        problem = _invalid(body, name)
        if problem:
            return 422, _status(422, "Invalid", problem)
        with self._lock:
            if (ns, name) in self.services:
                return 409, _status(409, "AlreadyExists", f'services.serving.knative.dev "{name}" already exists')
            service = copy.deepcopy(body)
            meta = service.setdefault("metadata", {})
            meta.update({"namespace": ns, "generation": 1, "uid": pysecrets.token_hex(8),
                         "resourceVersion": self._next_version(), "creationTimestamp": "2024-01-01T00:00:00Z"})
            self._status(ns, name, service)
            self.services[(ns, name)] = service
            self._new_revision(ns, name, service)
            return 201, copy.deepcopy(service)

    def replace_service(self, ns: str, name: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        problem = _invalid(body, name)
        if problem:
            return 422, _status(422, "Invalid", problem)
        with self._lock:
            current = self.services.get((ns, name))
            if current is None:
                return 404, _status(404, "NotFound", f'services.serving.knative.dev "{name}" not found')
            asked = (body.get("metadata") or {}).get("resourceVersion")
            if asked != current["metadata"]["resourceVersion"]:
                return 409, _status(409, "Conflict", f'Operation cannot be fulfilled on services.serving.knative.dev '
                                                     f'"{name}": the object has been modified')
            service = copy.deepcopy(body)
            meta = service.setdefault("metadata", {})
            changed = service.get("spec") != current.get("spec")
            meta.update({"namespace": ns, "uid": current["metadata"]["uid"],
                         "generation": current["metadata"]["generation"] + (1 if changed else 0),
                         "resourceVersion": self._next_version(),
                         "creationTimestamp": current["metadata"]["creationTimestamp"]})
            self._status(ns, name, service)
            self.services[(ns, name)] = service
            if changed:
                self._new_revision(ns, name, service)
            return 200, copy.deepcopy(service)

    def _new_revision(self, ns: str, name: str, service: dict[str, Any]) -> None:
        old = self.revisions.pop((ns, name), None)
        self.revisions[(ns, name)] = Revision(service["status"]["latestReadyRevisionName"],
                                              copy.deepcopy(service["spec"]["template"]))
        if old is not None and old.pod is not None:
            threading.Thread(target=stop_container, args=(old.pod,), daemon=True).start()

    def delete_service(self, ns: str, name: str) -> bool:
        with self._lock:
            found = self.services.pop((ns, name), None)
            revision = self.revisions.pop((ns, name), None)
        if revision is not None and revision.pod is not None:
            stop_container(revision.pod)
        return found is not None

    def put_secret(self, ns: str, name: str | None, body: dict[str, Any], *, create: bool
                   ) -> tuple[int, dict[str, Any]]:
        name = name or str((body.get("metadata") or {}).get("name") or "")
        with self._lock:
            exists = (ns, name) in self.secrets
            if create and exists:
                return 409, _status(409, "AlreadyExists", f'secrets "{name}" already exists')
            if not create and not exists:
                return 404, _status(404, "NotFound", f'secrets "{name}" not found')
            secret = copy.deepcopy(body)
            data = dict(secret.get("data") or {})
            for key, value in (secret.pop("stringData", None) or {}).items():
                data[key] = base64.b64encode(str(value).encode()).decode()
            secret["data"] = data
            secret.setdefault("metadata", {}).update({"namespace": ns, "name": name,
                                                      "resourceVersion": self._next_version()})
            self.secrets[(ns, name)] = secret
            return (201 if create else 200), copy.deepcopy(secret)

    # ------------------------------------------------------------------ the ingress and the pods

    def route(self, host: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        text = {"Content-Type": "text/plain; charset=utf-8"}
        host = host.split(":", 1)[0]
        match = re.fullmatch(rf"([a-z0-9-]+)\.([a-z0-9-]+)\.{re.escape(DOMAIN)}", host)
        with self._lock:
            revision = self.revisions.get((match.group(2), match.group(1))) if match else None
            if revision is None:
                return 404, text, b""
            if self.throttle_next > 0:
                self.throttle_next -= 1
                return 503, text, b"overload\n"
            spec = revision.template.get("spec") or {}
            limit = int(spec.get("containerConcurrency") or 0)
            name, ns = match.group(1), match.group(2)  # type: ignore[union-attr]
            revision.waiting += 1
        try:  # the queue-proxy's breaker: wait for a slot, refuse (503) only beyond its queue (10 x concurrency)
            while True:
                with self._lock:
                    if not limit or revision.inflight < limit:
                        revision.inflight += 1
                        break
                    if revision.waiting > QUEUE_DEPTH_FACTOR * limit:
                        return 503, text, b"pending request queue full\n"
                time.sleep(0.005)
        finally:
            with self._lock:
                revision.waiting -= 1
        try:
            pod = self._pod(ns, name, revision)
            if pod is None:
                return 502, text, b"image pull failed\n"
            answer = forward(pod, body, headers, float(spec.get("timeoutSeconds") or 300))
        finally:
            with self._lock:
                revision.inflight -= 1
                if revision.pod is not None:
                    revision.pod.last_used = time.monotonic()
        if answer is None:
            return 504, text, b"activator request timeout\n"
        return answer

    def _pod(self, ns: str, name: str, revision: Revision) -> Container | None:
        """The revision's pod, started when it has none (scale from zero); one pod per revision."""
        with self._lock:
            if revision.pod is not None and revision.pod.process.poll() is None:
                return revision.pod
            container = revision.template["spec"]["containers"][0]
            env = {e["name"]: str(e.get("value", "")) for e in container.get("env") or []}
            for source in container.get("envFrom") or []:
                secret = self.secrets.get((ns, (source.get("secretRef") or {}).get("name", "")))
                if secret is None:
                    return None  # CreateContainerConfigError: the pod never starts
                env.update({k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()})
            self._counter += 1
            directory = self.workdir / f"{revision.name}-pod{self._counter}"
            image = self.registry.pull(str(container.get("image")))
            if image is None:
                return None
            env.update({"K_SERVICE": name, "K_REVISION": revision.name, "K_CONFIGURATION": name})
            pod = run_container(image, "server.py", directory, env)
            revision.pod = pod
            self.cold_starts += 1
            return pod

    def _reap_once(self, idle_s: float) -> int:
        now = time.monotonic()
        stopped = []
        with self._lock:
            for revision in self.revisions.values():
                pod = revision.pod
                if pod is not None and revision.inflight == 0 and now - pod.last_used >= idle_s:
                    revision.pod = None
                    stopped.append(pod)
        for pod in stopped:
            stop_container(pod)
        return len(stopped)

    def _reap(self) -> None:
        while not self._stopping.wait(0.2):
            self._reap_once(self.scale_to_zero_s)


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}


def _invalid(body: dict[str, Any], name: str) -> str | None:
    """What the Knative webhook refuses (names, label values, the revision's timeout and concurrency)."""
    if not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) or len(name) > 63:
        return f"metadata.name: Invalid value: {name!r}: a DNS-1035 label"
    for key, value in ((body.get("metadata") or {}).get("labels") or {}).items():
        if len(str(value)) > 63:
            return f"metadata.labels: Invalid value: {key}: must be no more than 63 characters"
    spec = ((body.get("spec") or {}).get("template") or {}).get("spec") or {}
    if int(spec.get("timeoutSeconds") or 0) > 600:
        return "spec.template.spec.timeoutSeconds: expected 0 <= 601 <= 600"
    if int(spec.get("containerConcurrency") or 0) > 1000:
        return "spec.template.spec.containerConcurrency: expected 0 <= x <= 1000"
    if len(spec.get("containers") or []) != 1:
        return "spec.template.spec.containers: exactly one container is expected"
    return None


def _selected(labels: dict[str, str], selector: str) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        key, eq, value = term.partition("=")
        key = key.rstrip("!")
        if eq:
            if labels.get(key) != value.lstrip("="):
                return False
        elif key not in labels:
            return False
    return True


class _Base(QuietHandler):
    fake: FakeKnative


class _ApiHandler(_Base):
    def _dispatch(self) -> None:
        body, headers = self._read()
        parts = urlsplit(self.path)
        path, query = unquote(parts.path), parse_qs(parts.query)
        fake = self.fake
        with fake._lock:
            fake.requests.append(Recorded(self.command, path, headers, body, self.path))
        if headers.get("Authorization") != f"Bearer {fake.token}":
            self._json(401, _status(401, "Unauthorized", "Unauthorized"))
            return
        try:
            data = json.loads(body) if body.strip() else {}
        except ValueError:
            self._json(400, _status(400, "BadRequest", "invalid JSON"))
            return
        method = self.command
        match = SERVICES.fullmatch(path)
        if match:
            ns, name = match.group(1), match.group(2)
            if name is None and method == "GET":
                selector = (query.get("labelSelector") or [""])[0]
                with fake._lock:
                    items = [copy.deepcopy(s) for (n, _), s in sorted(fake.services.items())
                             if n == ns and _selected((s["metadata"].get("labels") or {}), selector)]
                self._json(200, {"apiVersion": "serving.knative.dev/v1", "kind": "ServiceList", "items": items,
                                 "metadata": {"resourceVersion": str(fake._version)}})
            elif name is None and method == "POST":
                self._json(*fake.create_service(ns, data))
            elif name and method == "GET":
                with fake._lock:
                    service = copy.deepcopy(fake.services.get((ns, name)))
                self._json(200, service) if service else self._json(
                    404, _status(404, "NotFound", f'services.serving.knative.dev "{name}" not found'))
            elif name and method == "PUT":
                self._json(*fake.replace_service(ns, name, data))
            elif name and method == "DELETE":
                if fake.delete_service(ns, name):
                    self._json(200, {"kind": "Status", "apiVersion": "v1", "status": "Success",
                                     "details": {"name": name, "group": "serving.knative.dev", "kind": "services"}})
                else:
                    self._json(404, _status(404, "NotFound", f'services.serving.knative.dev "{name}" not found'))
            else:
                self._json(405, _status(405, "MethodNotAllowed", "method not allowed"))
            return
        match = SECRETS.fullmatch(path)
        if match:
            ns, name = match.group(1), match.group(2)
            if method == "POST" and name is None:
                self._json(*fake.put_secret(ns, None, data, create=True))
            elif method == "PUT" and name:
                self._json(*fake.put_secret(ns, name, data, create=False))
            elif method == "GET" and name:
                with fake._lock:
                    secret = copy.deepcopy(fake.secrets.get((ns, name)))
                self._json(200, secret) if secret else self._json(
                    404, _status(404, "NotFound", f'secrets "{name}" not found'))
            elif method == "DELETE" and name:
                with fake._lock:
                    gone = fake.secrets.pop((ns, name), None)
                self._json(200, {"kind": "Status", "status": "Success"}) if gone else self._json(
                    404, _status(404, "NotFound", f'secrets "{name}" not found'))
            else:
                self._json(405, _status(405, "MethodNotAllowed", "method not allowed"))
            return
        self._json(404, _status(404, "NotFound", "the server could not find the requested resource"))

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _dispatch


class _IngressHandler(_Base):
    def _dispatch(self) -> None:
        body, headers = self._read()
        fake = self.fake
        with fake._lock:
            fake.requests.append(Recorded(self.command, "ingress", headers, body, self.path))
        status, kept, data = fake.route(headers.get("Host", ""), body, headers)
        self._send(status, data, kept)

    do_GET = do_POST = _dispatch


FakeKnative.handlers = (_ApiHandler, _IngressHandler)  # api_url is the first server's, ingress_url the second's


@pytest.fixture
def fake_knative(tmp_path: Path) -> Iterator[FakeKnative]:
    with FakeKnative(tmp_path / "fake-knative") as fake:
        yield fake

"""A fake OpenFaaS gateway (Community Edition, faas-netes) on 127.0.0.1 that really runs what is deployed.

It speaks the routes and JSON shapes of the gateway's REST API, as documented in
https://docs.openfaas.com/reference/rest-api/ and the gateway's OpenAPI file (openfaas/faas,
`api-docs/spec.openapi.yml`), with the types of openfaas/faas-provider (`types/function_deployment.go`
FunctionDeployment, `types/requests.go` FunctionStatus / DeleteFunctionRequest, `types/secret.go` Secret):

- `GET /system/functions?namespace=` → [FunctionStatus]; `GET /system/function/{name}` → FunctionStatus or 404;
- `POST /system/functions` (create; 409 when it exists), `PUT /system/functions` (update; 404 when absent),
  `DELETE /system/functions` with `{"functionName"}` (202; 404 when absent);
- `GET|POST|PUT|DELETE /system/secrets` (name, namespace, value);
- every `/system/*` route needs HTTP basic auth (401 otherwise), the invocation routes do not (as a stock gateway);
- `POST /function/{name}[.{namespace}]`: forwarded to the function's replica as of-watchdog does in `http` mode,
  cut at the function's `exec_timeout` (or the gateway's `upstream_timeout`, 60 s) with 504, refused with 429 when
  the replica already runs `max_inflight` calls (https://github.com/openfaas/of-watchdog#configuration), 404 for
  an unknown function; `X-Call-Id` and `X-Duration-Seconds` on the answer;
- `POST /async-function/{name}` with `X-Callback-Url`: 202 and `X-Call-Id`; a queue-worker thread makes the call
  and POSTs the answer to the callback URL with `X-Call-Id`, `X-Function-Status`, `X-Function-Name` and
  `X-Duration-Seconds` (https://docs.openfaas.com/reference/async/).

Each function's replica is its image run as a process (tests/fake_containers.py): the packaged `index.py` entry
and handler, with the function's `envVars` as its environment and its `secrets` mounted as files in
`<replica>/var/openfaas/secrets/<name>` (the entry is pointed there with FK_SECRETS_DIR, the only difference from
a pod). `stop()` stops every process it started.
"""

from __future__ import annotations

import base64
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
import requests

from fake_containers import (
    Container,
    ContainerFake,
    QuietHandler,
    Recorded,
    forward,
    run_container,
    stop_container,
)

DEFAULT_NAMESPACE = "openfaas-fn"
#: faas-netes chart values.yaml: gateway.upstreamTimeout
UPSTREAM_TIMEOUT_S = 60.0


@dataclass
class Function:
    deployment: dict[str, Any]
    container: Container | None = None
    image_error: str | None = None
    inflight: int = 0
    invocations: int = 0
    revision: int = 0


def _seconds(value: str | None, default: float) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)?", (value or "").strip())
    if not match:
        return default
    number, unit = float(match.group(1)), match.group(2) or "s"
    return number / 1000.0 if unit == "ms" else number * 60.0 if unit == "m" else number


@dataclass
class FakeOpenFaaS(ContainerFake):
    workdir: Path
    username: str = "admin"
    password: str = field(default_factory=lambda: pysecrets.token_hex(12))
    image_template: str = "registry.test/fedkeeper/{function}:{code}"
    functions: dict[tuple[str, str], Function] = field(default_factory=dict)
    secrets: dict[tuple[str, str], str] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    throttle_next: int = 0

    def __post_init__(self) -> None:
        from fedkeeper.providers.openfaas.provider import image_for

        self._prepare("openfaas", image_for)

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._servers[0].server_address[1]}"

    def _take_containers(self) -> list[Container]:
        containers = [f.container for f in self.functions.values() if f.container]
        for function in self.functions.values():
            function.container = None
        return containers

    # ------------------------------------------------------------------ what tests read and control

    def _is_invocation(self, path: str) -> bool:
        return path.startswith(("/function/", "/async-function/"))

    def delete_behind(self, name: str, namespace: str = DEFAULT_NAMESPACE) -> None:
        with self._lock:
            function = self.functions.pop((namespace, name), None)
        if function and function.container:
            stop_container(function.container)

    # ------------------------------------------------------------------ system API

    def _status(self, ns: str, name: str, function: Function) -> dict[str, Any]:
        d = function.deployment
        ready = 1 if function.container is not None else 0
        return {"name": name, "image": d.get("image"), "namespace": ns, "envProcess": d.get("envProcess", ""),
                "envVars": d.get("envVars") or {}, "labels": d.get("labels") or {},
                "annotations": d.get("annotations") or {}, "secrets": d.get("secrets") or [],
                "limits": d.get("limits"), "requests": d.get("requests"), "replicas": 1,
                "availableReplicas": ready, "invocationCount": function.invocations,
                "createdAt": "2024-01-01T00:00:00Z"}

    def list_functions(self, ns: str) -> list[dict[str, Any]]:
        with self._lock:
            return [self._status(n, name, f) for (n, name), f in sorted(self.functions.items()) if n == ns]

    def get_function(self, ns: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            function = self.functions.get((ns, name))
            return self._status(ns, name, function) if function else None

    def deploy(self, body: dict[str, Any], *, create: bool) -> tuple[int, str]:
        name, ns = str(body.get("service") or ""), str(body.get("namespace") or DEFAULT_NAMESPACE)
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name) or len(name) > 63:
            return 400, f"invalid function name {name!r}"
        if not body.get("image"):
            return 400, "image is required"
        for key, value in (body.get("labels") or {}).items():
            if len(str(value)) > 63 or not re.fullmatch(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]?", str(value)):
                return 400, f"label {key}: invalid value: a Kubernetes label value has at most 63 characters"
        with self._lock:
            existing = self.functions.get((ns, name))
            if create and existing is not None:
                return 409, f"function {name} already exists"
            if not create and existing is None:
                return 404, f"function {name} not found"
            missing = [s for s in body.get("secrets") or [] if (ns, s) not in self.secrets]
            if missing:
                return 400, f"secrets not found: {', '.join(missing)}"
            function = existing or Function(body)
            function.deployment = body
            function.revision += 1
            self.functions[(ns, name)] = function
            old, function.container = function.container, None
            revision = function.revision
        if old is not None:
            stop_container(old)
        self._start_replica(ns, name, body, revision)
        return 202, ""

    def _start_replica(self, ns: str, name: str, body: dict[str, Any], revision: int) -> None:
        image = self.registry.pull(str(body["image"]))
        if image is None:
            with self._lock:
                function = self.functions.get((ns, name))
                if function is not None:
                    function.image_error = f"failed to pull image {body['image']}: not found"
            return
        with self._lock:
            files = {f"var/openfaas/secrets/{s}": self.secrets[(ns, s)].encode()
                     for s in body.get("secrets") or [] if (ns, s) in self.secrets}
            self._counter += 1
            directory = self.workdir / f"{name}-r{revision}-{self._counter}"
        env = {str(k): str(v) for k, v in (body.get("envVars") or {}).items()}
        env["FK_SECRETS_DIR"] = str(directory / "var" / "openfaas" / "secrets")
        container = run_container(image, "index.py", directory, env, files)
        with self._lock:
            function = self.functions.get((ns, name))
            if function is None or function.revision != revision:
                stale = True
            else:
                stale = False
                function.container, function.image_error = container, None
        if stale:
            stop_container(container)

    def delete(self, ns: str, name: str) -> bool:
        with self._lock:
            function = self.functions.pop((ns, name), None)
        if function is None:
            return False
        if function.container is not None:
            stop_container(function.container)
        return True

    # ------------------------------------------------------------------ invocations

    def call(self, ns: str, name: str, body: bytes, headers: dict[str, str]
             ) -> tuple[int, dict[str, str], bytes]:
        text = {"Content-Type": "text/plain; charset=utf-8"}
        started = time.monotonic()
        with self._lock:
            function = self.functions.get((ns, name))
            if function is None:
                return 404, text, f"error finding function {name}.{ns}: server returned non-200 status code\n".encode()
            if self.throttle_next > 0:
                self.throttle_next -= 1
                return 429, text, b"Concurrent request limit exceeded. Max concurrent requests: 1\n"
            env = function.deployment.get("envVars") or {}
            max_inflight = int(env.get("max_inflight") or 0)
            if function.container is None:
                return 502, text, (function.image_error or "no replicas available").encode()
            if max_inflight and function.inflight >= max_inflight:
                return 429, text, f"Concurrent request limit exceeded. Max concurrent requests: {max_inflight}\n".encode()
            function.inflight += 1
            function.invocations += 1
            container = function.container
            timeout = min(_seconds(env.get("exec_timeout"), 10.0), UPSTREAM_TIMEOUT_S)
        try:
            answer = forward(container, body, headers, timeout)
        finally:
            with self._lock:
                function.inflight -= 1
        seconds = f"{time.monotonic() - started:.6f}"
        if answer is None:  # of-watchdog: the exec_timeout context ends the request with 504
            return 504, {**text, "X-Duration-Seconds": seconds}, b"Function timed out\n"
        status, kept, data = answer
        return status, {**kept, "X-Duration-Seconds": seconds}, data

    def queue(self, ns: str, name: str, body: bytes, headers: dict[str, str], call_id: str) -> None:
        """The queue-worker: make the call, then POST its answer to the callback URL."""
        callback = headers.get("X-Callback-Url")

        def work() -> None:
            status, kept, data = self.call(ns, name, body, headers)
            if not callback:
                return
            try:
                requests.post(callback, data=data, timeout=10, headers={
                    **{k: v for k, v in kept.items() if k.lower() != "content-length"},
                    "X-Call-Id": call_id, "X-Function-Status": str(status), "X-Function-Name": name,
                    "X-Duration-Seconds": kept.get("X-Duration-Seconds", "0")})
            except requests.exceptions.RequestException:
                pass  # the queue-worker logs a failed callback and moves on

        thread = threading.Thread(target=work, name=f"queue-worker-{call_id[:8]}", daemon=True)
        thread.start()


class _Handler(QuietHandler):
    fake: FakeOpenFaaS

    def _text(self, code: int, text: str) -> None:
        self._send(code, (text + "\n").encode(), {"Content-Type": "text/plain; charset=utf-8"})

    def _authorized(self) -> bool:
        header = self.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return False
        return (user, password) == (self.fake.username, self.fake.password)

    def _dispatch(self) -> None:
        body, headers = self._read()
        parts = urlsplit(self.path)
        path, query = unquote(parts.path), parse_qs(parts.query)
        with self.fake._lock:
            self.fake.requests.append(Recorded(self.command, path, headers, body, self.path))
        ns = (query.get("namespace") or [DEFAULT_NAMESPACE])[0]
        if path.startswith(("/function/", "/async-function/")):
            self._invoke(path, body, headers)
            return
        if not path.startswith("/system/"):
            self._text(404, "404 page not found")
            return
        if not self._authorized():
            self._send(401, b"Unauthorized\n", {"WWW-Authenticate": 'Basic realm="Restricted"',
                                                "Content-Type": "text/plain"})
            return
        try:
            data = json.loads(body) if body.strip() else {}
        except ValueError:
            self._text(400, "invalid JSON body")
            return
        self._system(self.command, path, ns, data)

    def _system(self, method: str, path: str, ns: str, data: Any) -> None:
        fake = self.fake
        if path == "/system/functions":
            if method == "GET":
                self._json(200, fake.list_functions(ns))
            elif method in ("POST", "PUT"):
                code, text = fake.deploy(data, create=method == "POST")
                self._text(code, text) if text else self._send(code)
            elif method == "DELETE":
                name = str(data.get("functionName") or "")
                ok = fake.delete(str(data.get("namespace") or ns), name)
                self._send(202) if ok else self._text(404, f"function {name} not found")
            else:
                self._text(405, "method not allowed")
            return
        match = re.fullmatch(r"/system/function/([^/]+)", path)
        if match and method == "GET":
            status = fake.get_function(ns, match.group(1))
            self._json(200, status) if status else self._text(404, f"function {match.group(1)} not found")
            return
        if path == "/system/secrets":
            secret_ns = str((data or {}).get("namespace") or ns) if isinstance(data, dict) else ns
            key = (secret_ns, str((data or {}).get("name") or "")) if isinstance(data, dict) else (ns, "")
            with fake._lock:
                if method == "GET":
                    self._json(200, [{"name": n, "namespace": s} for (s, n) in sorted(fake.secrets) if s == ns])
                elif method == "POST":
                    if key in fake.secrets:
                        self._text(409, f"secret {key[1]} already exists")
                    else:
                        fake.secrets[key] = str(data.get("value") or "")
                        self._send(201)
                elif method == "PUT":
                    if key not in fake.secrets:
                        self._text(404, f"secret {key[1]} not found")
                    else:
                        fake.secrets[key] = str(data.get("value") or "")
                        self._send(202)
                elif method == "DELETE":
                    if fake.secrets.pop(key, None) is None:
                        self._text(404, f"secret {key[1]} not found")
                    else:
                        self._send(202)
                else:
                    self._text(405, "method not allowed")
            return
        self._text(404, "404 page not found")

    def _invoke(self, path: str, body: bytes, headers: dict[str, str]) -> None:
        prefix, _, target = path.lstrip("/").partition("/")
        name, _, ns = target.partition(".")
        ns = ns or DEFAULT_NAMESPACE
        if self.command != "POST" and prefix == "async-function":
            self._text(405, "method not allowed")
            return
        call_id = headers.get("X-Call-Id") or pysecrets.token_hex(16)
        if prefix == "async-function":
            if self.fake.get_function(ns, name) is None:
                self._text(404, f"error finding function {name}.{ns}")
                return
            self.fake.queue(ns, name, body, headers, call_id)
            self._send(202, b"", {"X-Call-Id": call_id})
            return
        status, kept, data = self.fake.call(ns, name, body, headers)
        self._send(status, data, {**kept, "X-Call-Id": call_id})

    do_GET = do_POST = do_PUT = do_DELETE = _dispatch


FakeOpenFaaS.handlers = (_Handler,)


@pytest.fixture
def fake_openfaas(tmp_path: Path) -> Iterator[FakeOpenFaaS]:
    with FakeOpenFaaS(tmp_path / "fake-openfaas") as fake:
        yield fake

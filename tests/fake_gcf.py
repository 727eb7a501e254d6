"""A fake of the Cloud Functions v2 admin REST API on 127.0.0.1 that really runs what is deployed.

No emulator exists for the admin API, so the tests talk to this server with the real `FunctionServiceClient`
(REST transport). It speaks the routes and JSON shapes of `cloudfunctions.googleapis.com/v2`:

- `POST /v2/{parent}/functions:generateUploadUrl` → a signed-looking upload URL on this server + storageSource
- `PUT  /upload/{token}` (the "signed URL": content-type application/zip, no Authorization needed)
- `POST /v2/{parent}/functions?functionId=` → a long-running operation (pending for `pending_polls` GETs)
- `GET|PATCH|DELETE /v2/{parent}/functions/{id}`, `GET /v2/{parent}/functions` (paged), `GET /v2/{operation}`

Deploying unpacks the uploaded zip and starts the real GCF Python runtime (`python -m functions_framework
--target=entry --source=main.py`) on a free port of 127.0.0.1, with the function's environment variables.
The function URL points back at this server (`/fn/{id}`), which forwards to that process the way Google's front
end does, so tests can switch on throttling (429), remove a function behind the client's back (404), demand an ID
token (401/403) and read what every request carried; `chaos` (tests/chaos.py) answers any request at random
with 5xx, 429, a reset, a lost answer (carried out, then reset) or a late answer. Every process it starts is
stopped by `close()`.

Sources it follows: the Cloud Functions v2 REST reference (https://cloud.google.com/functions/docs/reference/
rest/v2/projects.locations.functions: `generateUploadUrl`, `create`, `patch`, `get`, `list`, `delete`, and the
long-running `Operation` whose `response` carries `@type` ...v2.Function); the functions-framework runtime from
the package index (GoogleCloudPlatform/functions-framework-python: `--target`, `--source`, the HTTP signature);
the 2nd gen environment (K_SERVICE, K_REVISION, FUNCTION_TARGET, PORT) of the runtime contract
(https://cloud.google.com/functions/docs/configuring/env-var); and its limits (quotas page: memory
128 MiB–32 GiB, timeout 3600 s for HTTP functions), which validation enforces from the table in
fedkeeper/providers/google/limits.py before any request reaches this fake.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests
from requests.structures import CaseInsensitiveDict

import chaos

FUNCTION_TYPE = "type.googleapis.com/google.cloud.functions.v2.Function"
METADATA_TYPE = "type.googleapis.com/google.cloud.functions.v2.OperationMetadata"
EMPTY_TYPE = "type.googleapis.com/google.protobuf.Empty"
STARTUP_TIMEOUT_S = 60.0


@dataclass
class Recorded:
    """One request as the fake received it."""

    method: str
    path: str
    query: str
    headers: CaseInsensitiveDict[str]
    body: bytes

    @property
    def url(self) -> str:
        return f"{self.path}?{self.query}" if self.query else self.path


@dataclass
class Runtime:
    """A functions-framework process serving one deployed revision."""

    process: subprocess.Popen[bytes]
    port: int
    directory: Path
    log_path: Path

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


@dataclass
class Operation:
    name: str
    verb: str
    target: str
    polls: int = 0
    pending_polls: int = 1
    response: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    on_done: Any = None


class ApiError(Exception):
    def __init__(self, code: int, status: str, message: str) -> None:
        super().__init__(message)
        self.code, self.status, self.message = code, status, message


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


_ENUMS = {"state": {"STATE_UNSPECIFIED": 0, "ACTIVE": 1, "FAILED": 2, "DEPLOYING": 3, "DELETING": 4, "UNKNOWN": 5},
          "environment": {"ENVIRONMENT_UNSPECIFIED": 0, "GEN_1": 1, "GEN_2": 2}}


def _enums_as_int(node: Any) -> Any:
    """What `$alt=json;enum-encoding=int` asks for: enum values as numbers."""
    if isinstance(node, dict):
        return {k: (_ENUMS[k].get(v, v) if k in _ENUMS and isinstance(v, str) else _enums_as_int(v))
                for k, v in node.items()}
    if isinstance(node, list):
        return [_enums_as_int(v) for v in node]
    return node


def _camel(segment: str) -> str:
    head, *rest = segment.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


@dataclass
class FakeGcf:
    """The fake service; use as a context manager (or call start/close)."""

    workdir: Path
    pending_polls: int = 1           # operation GETs answered `done: false` before completion
    page_size: int = 2               # small, so that list paging is exercised
    python: str = sys.executable
    received: list[Recorded] = field(default_factory=list)
    invocations: list[Recorded] = field(default_factory=list)
    uploads: dict[str, bytes] = field(default_factory=dict)
    functions: dict[str, dict[str, Any]] = field(default_factory=dict)
    runtimes: dict[str, Runtime] = field(default_factory=dict)
    operations: dict[str, Operation] = field(default_factory=dict)
    throttle_next: int = 0           # answer the next N invocations with 429
    platform_errors_next: list[int] = field(default_factory=list)  # answer the next calls with these codes (HTML)
    require_id_token: bool = False   # invocations need an ID token this fake minted for the function's URL
    require_access_token: bool = False  # admin requests need an access token this fake minted
    id_tokens: dict[str, str] = field(default_factory=dict)     # ID token -> audience
    access_tokens: set[str] = field(default_factory=set)
    token_requests: list[dict[str, Any]] = field(default_factory=list)  # claims of every token request
    service_accounts: dict[str, bytes] = field(default_factory=dict)  # client_email -> public key PEM
    fail_next_deploy: str | None = None  # the next create/update operation ends with this build error
    chaos: Any = None  # tests/chaos.py `Chaos`: random 5xx, 429, resets, lost and slow answers on any request

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        self._lock = threading.RLock()
        self._op_counter = 0
        self._revision = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stoppers: list[threading.Thread] = []

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "FakeGcf":
        fake = self

        class Handler(_Handler):
            pass

        Handler.fake = fake
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-gcf", daemon=True)
        self._thread.start()
        return self

    @property
    def endpoint(self) -> str:
        assert self._server is not None, "not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        with self._lock:
            runtimes = list(self.runtimes.values())
            self.runtimes.clear()
        for runtime in runtimes:
            self._retire(runtime)
        with self._lock:
            stoppers, self._stoppers = self._stoppers, []
        for thread in stoppers:  # every runtime process is gone when close returns
            thread.join()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "FakeGcf":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ test controls

    def function_id(self, full_name: str) -> str:
        return full_name.rsplit("/", 1)[-1]

    def full_name(self, function_id: str) -> str | None:
        with self._lock:
            for name in self.functions:
                if self.function_id(name) == function_id:
                    return name
        return None

    def delete_behind(self, function_id: str) -> None:
        """Delete a function out of band (another user, a console click): its URL answers 404 from now on."""
        with self._lock:
            name = self.full_name(function_id)
            if name is None:
                raise KeyError(function_id)
            del self.functions[name]
            runtime = self.runtimes.pop(name, None)
        if runtime:
            _stop(runtime)

    def add_foreign(self, parent: str, function_id: str, labels: dict[str, str]) -> str:
        """A function that no deploy made (an orphan of a crashed run, or someone else's); it is not served."""
        name = f"{parent}/functions/{function_id}"
        with self._lock:
            self.functions[name] = {"name": name, "state": "ACTIVE", "labels": dict(labels),
                                    "buildConfig": {"runtime": "python311", "entryPoint": "entry"},
                                    "serviceConfig": {"availableMemory": "256M", "timeoutSeconds": 60},
                                    "url": f"{self.endpoint}/fn/{function_id}", "environment": "GEN_2",
                                    "createTime": _now(), "updateTime": _now()}
        return name

    def mint_id_token(self, audience: str, lifetime_s: float = 3600.0) -> str:
        """A JWT-shaped ID token for `audience`, as Google's token endpoint would issue (unsigned here)."""
        now = int(time.time())
        claims = {"aud": audience, "iat": now, "exp": now + int(lifetime_s), "iss": "https://accounts.google.com",
                  "nonce": secrets.token_hex(4)}
        token = ".".join(_b64(json.dumps(part).encode()) for part in ({"alg": "RS256", "typ": "JWT"}, claims))
        token += "." + _b64(secrets.token_bytes(16))
        with self._lock:
            self.id_tokens[token] = audience
        return token

    def revoke_id_tokens(self) -> None:
        with self._lock:
            self.id_tokens.clear()

    def token(self, form: dict[str, str]) -> dict[str, Any]:
        """Google's OAuth token endpoint for service accounts (JWT bearer grant): an access token, or an ID
        token when the assertion asks for a `target_audience`."""
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer" or "assertion" not in form:
            raise ApiError(400, "INVALID_ARGUMENT", "invalid_grant")
        try:
            payload = form["assertion"].split(".")[1]
            claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        except (IndexError, ValueError) as exc:
            raise ApiError(400, "INVALID_ARGUMENT", f"bad assertion: {type(exc).__name__}") from None
        with self._lock:
            self.token_requests.append(claims)
        if claims.get("target_audience"):
            return {"id_token": self.mint_id_token(claims["target_audience"])}
        access = f"ya29.fake-{secrets.token_hex(8)}"
        with self._lock:
            self.access_tokens.add(access)
        return {"access_token": access, "expires_in": 3600, "token_type": "Bearer"}

    def service_account(self, path: Path, project_id: str) -> dict[str, Any]:
        """Write a service-account key file whose token endpoint is this fake; returns its content."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode()
        public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
        email = f"fedkeeper-test@{project_id}.iam.gserviceaccount.com"
        info = {"type": "service_account", "project_id": project_id, "private_key_id": secrets.token_hex(20),
                "private_key": private, "client_email": email, "client_id": "1234567890",
                "token_uri": f"{self.endpoint}/token"}
        Path(path).write_text(json.dumps(info))
        with self._lock:
            self.service_accounts[email] = public
        return info

    def _admin_authorized(self, auth: str) -> bool:
        """An access token this fake minted, or a JWT self-signed by a registered service account (what the
        Google client libraries send for service accounts instead of asking the token endpoint)."""
        if not auth.startswith("Bearer "):
            return False
        token = auth[len("Bearer "):]
        with self._lock:
            if token in self.access_tokens:
                return True
            keys = dict(self.service_accounts)
        from google.auth import jwt

        try:
            claims = jwt.decode(token, verify=False)
            public = keys.get(claims.get("iss", ""))
            return public is not None and bool(jwt.decode(token, certs=public.decode(), verify=True,
                                                          audience=None))
        except ValueError:
            return False

    def admin_requests(self) -> list[Recorded]:
        return [r for r in self.received if r.path.startswith("/v2/")]

    def runtime_log(self, function_id: str) -> str:
        name = self.full_name(function_id)
        runtime = self.runtimes.get(name) if name else None
        return runtime.log() if runtime else ""

    # ------------------------------------------------------------------ admin API

    def generate_upload_url(self, parent: str) -> dict[str, Any]:
        token = secrets.token_hex(8)
        obj = f"{parent.replace('/', '-')}/{token}.zip"
        with self._lock:
            self.uploads.setdefault(obj, b"")
        signature = secrets.token_hex(16)
        return {"uploadUrl": f"{self.endpoint}/upload/{obj}?X-Goog-Signature={signature}",
                "storageSource": {"bucket": "gcf-v2-uploads-fake", "object": obj}}

    def put_upload(self, obj: str, content_type: str, data: bytes) -> None:
        if content_type != "application/zip":
            raise ApiError(400, "INVALID_ARGUMENT", f"upload content-type must be application/zip, not {content_type}")
        with self._lock:
            if obj not in self.uploads:
                raise ApiError(403, "PERMISSION_DENIED", "no such signed upload URL")
            self.uploads[obj] = data

    @staticmethod
    def _check_limits(resource: dict[str, Any]) -> None:
        """The quotas of 2nd gen HTTP functions (the table in fedkeeper/providers/google/limits.py): the API
        answers 400 INVALID_ARGUMENT for memory or a timeout outside them."""
        from fedkeeper.providers.google import limits as gcf_limits
        from fedkeeper.providers.google.resources import memory_mb

        service = resource.get("serviceConfig") or {}
        memory = memory_mb(service.get("availableMemory"))
        lo, hi = gcf_limits.MEMORY_MB
        if memory is not None and not lo <= memory <= hi:
            raise ApiError(400, "INVALID_ARGUMENT", f"Invalid value for available_memory: {memory}Mi is outside "
                                                    f"[{lo}Mi, {hi}Mi]")
        timeout = service.get("timeoutSeconds")
        if timeout is not None and not 1 <= int(timeout) <= gcf_limits.TIMEOUT_S:
            raise ApiError(400, "INVALID_ARGUMENT", f"The timeout for an HTTP function must be between 1 and "
                                                    f"{gcf_limits.TIMEOUT_S} seconds")

    def create(self, parent: str, function_id: str, body: dict[str, Any]) -> dict[str, Any]:
        name = f"{parent}/functions/{function_id}"
        self._check_limits(body)
        with self._lock:
            if name in self.functions:
                raise ApiError(409, "ALREADY_EXISTS", f"Function {function_id} in region already exists")
            resource = dict(body)
            resource.update(name=name, state="DEPLOYING", environment="GEN_2", createTime=_now(), updateTime=_now(),
                            url=f"{self.endpoint}/fn/{function_id}")
            self.functions[name] = resource
        return self._deploy_operation(name, "create")

    def update(self, name: str, body: dict[str, Any], mask: list[str]) -> dict[str, Any]:
        with self._lock:
            current = self.functions.get(name)
            if current is None:
                raise ApiError(404, "NOT_FOUND", f"Function {self.function_id(name)} does not exist")
            updated = json.loads(json.dumps(current))
            for path in mask or ["buildConfig", "serviceConfig", "labels"]:
                keys = [_camel(p) for p in path.split(".")]
                src: Any = body
                for key in keys:
                    src = src.get(key) if isinstance(src, dict) else None
                dst = updated
                for key in keys[:-1]:
                    dst = dst.setdefault(key, {})
                if src is None:
                    dst.pop(keys[-1], None)
                else:
                    dst[keys[-1]] = src
            self._check_limits(updated)
            updated.update(state="DEPLOYING", updateTime=_now())
            self.functions[name] = updated
        return self._deploy_operation(name, "update")

    def _deploy_operation(self, name: str, verb: str) -> dict[str, Any]:
        """Start the new revision now; the operation reports done after `pending_polls` GETs."""
        with self._lock:
            failure, self.fail_next_deploy = self.fail_next_deploy, None
            resource = self.functions[name]
        error = None
        if failure is None:
            try:
                self._serve(name, resource)
            except RuntimeError as exc:
                failure = str(exc)
        if failure is not None:
            error = {"code": 3, "message": f"Build failed: {failure}"}

        def finish() -> dict[str, Any] | None:
            with self._lock:
                current = self.functions.get(name)
                if current is None:
                    return None
                current["state"] = "FAILED" if error else "ACTIVE"
                return json.loads(json.dumps(current))

        return self._operation(name, verb, on_done=finish, error=error)

    def delete(self, name: str) -> dict[str, Any]:
        with self._lock:
            if name not in self.functions:
                raise ApiError(404, "NOT_FOUND", f"Function {self.function_id(name)} does not exist")
            self.functions[name]["state"] = "DELETING"

        def finish() -> None:
            with self._lock:
                self.functions.pop(name, None)
                runtime = self.runtimes.pop(name, None)
            if runtime:
                self._retire(runtime)
            return None

        return self._operation(name, "delete", on_done=finish)

    def _operation(self, target: str, verb: str, *, on_done: Any, error: dict[str, Any] | None = None) -> dict[str, Any]:
        with self._lock:
            self._op_counter += 1
            parent = target.split("/functions/")[0]
            op = Operation(name=f"{parent}/operations/operation-{self._op_counter}", verb=verb, target=target,
                           pending_polls=self.pending_polls, error=error, on_done=on_done)
            self.operations[op.name] = op
            if op.pending_polls <= 0:
                self._complete(op)
            return self._operation_json(op)

    def _complete(self, op: Operation) -> None:
        result = op.on_done()
        op.on_done = None
        if op.verb == "delete":
            op.response = {"@type": EMPTY_TYPE}
        elif result is not None:
            op.response = {"@type": FUNCTION_TYPE, **result}

    def get_operation(self, name: str) -> dict[str, Any]:
        with self._lock:
            op = self.operations.get(name)
            if op is None:
                raise ApiError(404, "NOT_FOUND", f"operation {name} not found")
            op.polls += 1
            if op.on_done is not None and op.polls > op.pending_polls:
                self._complete(op)
            return self._operation_json(op)

    def _operation_json(self, op: Operation) -> dict[str, Any]:
        out: dict[str, Any] = {"name": op.name, "metadata": {"@type": METADATA_TYPE, "target": op.target,
                                                              "verb": op.verb, "createTime": _now()}}
        if op.on_done is None:
            out["done"] = True
            if op.error:
                out["error"] = op.error
            elif op.response is not None:
                out["response"] = op.response
        else:
            out["done"] = False
        return out

    def get(self, name: str) -> dict[str, Any]:
        with self._lock:
            current = self.functions.get(name)
            if current is None:
                raise ApiError(404, "NOT_FOUND", f"Function {self.function_id(name)} does not exist")
            return json.loads(json.dumps(current))

    def list(self, parent: str, page_size: int, page_token: str) -> dict[str, Any]:
        with self._lock:
            names = sorted(n for n in self.functions if n.startswith(f"{parent}/functions/"))
            start = int(page_token or 0)
            page = [json.loads(json.dumps(self.functions[n])) for n in names[start:start + page_size]]
        out: dict[str, Any] = {"functions": page}
        if start + page_size < len(names):
            out["nextPageToken"] = str(start + page_size)
        return out

    # ------------------------------------------------------------------ runtime processes

    def _serve(self, name: str, resource: dict[str, Any]) -> None:
        source = resource.get("buildConfig", {}).get("source", {}).get("storageSource", {})
        with self._lock:
            data = self.uploads.get(source.get("object", ""))
            self._revision += 1
            revision = self._revision
        if not data:
            raise RuntimeError(f"no uploaded source at {source!r}")
        function_id = self.function_id(name)
        directory = self.workdir / f"{function_id}-r{revision}"
        directory.mkdir(parents=True)
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            archive.extractall(directory)
        if not (directory / "main.py").is_file() or not (directory / "requirements.txt").is_file():
            raise RuntimeError("the source must hold main.py and requirements.txt at its root")
        port = _free_port()
        service = resource.get("serviceConfig", {})
        env = {"PATH": os.environ.get("PATH", ""), "HOME": str(directory), "LANG": "C.UTF-8",
               "PYTHONPATH": str(directory), "PYTHONDONTWRITEBYTECODE": "1", "PORT": str(port),
               "K_SERVICE": function_id, "K_REVISION": f"{function_id}-{revision:05d}",
               "FUNCTION_TARGET": resource.get("buildConfig", {}).get("entryPoint", "entry"),
               "FUNCTION_SIGNATURE_TYPE": "http", "WORKERS": "1", "THREADS": "8"}
        env.update(service.get("environmentVariables", {}))
        log_path = directory.parent / f"{directory.name}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [self.python, "-m", "functions_framework", f"--target={env['FUNCTION_TARGET']}", "--source=main.py",
                 "--host=127.0.0.1", f"--port={port}"],
                cwd=directory, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        runtime = Runtime(process, port, directory, log_path)
        try:
            _wait_ready(runtime)
        except RuntimeError:
            _stop(runtime)
            raise
        with self._lock:
            old = self.runtimes.pop(name, None)
            self.runtimes[name] = runtime
        if old:
            self._retire(old)

    def _retire(self, runtime: Runtime) -> None:
        """Stop a replaced or deleted revision's runtime in the background, as Cloud Run drains an old revision
        while the API has already answered; `close` waits for all of them. (A graceful stop takes ~0.5 s.)"""
        thread = threading.Thread(target=_stop, args=(runtime,), name=f"stop-{runtime.port}", daemon=True)
        thread.start()
        with self._lock:
            self._stoppers = [t for t in self._stoppers if t.is_alive()] + [thread]

    def forward(self, function_id: str, record: Recorded) -> tuple[int, dict[str, str], bytes]:
        """What Google's front end does with a call to a function URL."""
        html = {"Content-Type": "text/html; charset=UTF-8"}
        with self._lock:
            self.invocations.append(record)
            name = self.full_name(function_id)
            runtime = self.runtimes.get(name) if name else None
            resource = self.functions.get(name) if name else None
        if resource is None or runtime is None:
            return 404, html, b"<html><body>404 Page not found</body></html>"
        if self.require_id_token:
            auth = record.headers.get("Authorization", "")
            if not auth.startswith("Bearer "):  # as Cloud Run: no token 403, a token it rejects 401
                return 403, html, b"<html><body>403 Forbidden</body></html>"
            with self._lock:
                audience = self.id_tokens.get(auth[len("Bearer "):])
            if audience != resource.get("url"):
                return 401, html, b"<html><body>401 Unauthorized</body></html>"
        execution_id = secrets.token_hex(6)
        with self._lock:
            throttled = self.throttle_next > 0
            if throttled:
                self.throttle_next -= 1
            injected = self.platform_errors_next.pop(0) if self.platform_errors_next and not throttled else None
        if throttled:
            return 429, {**html, "Function-Execution-Id": execution_id}, b"Rate exceeded."
        if injected is not None:
            return injected, {**html, "Function-Execution-Id": execution_id}, \
                f"<html><body>Error: Server Error {injected}</body></html>".encode()
        timeout = float(resource.get("serviceConfig", {}).get("timeoutSeconds", 60))
        try:
            upstream = requests.request(
                record.method, f"http://127.0.0.1:{runtime.port}/", data=record.body, timeout=(5, timeout),
                headers={"Content-Type": record.headers.get("Content-Type", "application/json"),
                         "Function-Execution-Id": execution_id})
        except requests.exceptions.ReadTimeout:
            return 504, {**html, "Function-Execution-Id": execution_id}, b"upstream request timeout"
        except requests.exceptions.ConnectionError:
            return 503, {**html, "Function-Execution-Id": execution_id}, b"Service Unavailable"
        headers = {k: v for k, v in upstream.headers.items()
                   if k.lower() in ("content-type", "x-fedkeeper-cold", "x-fedkeeper-duration-ms")}
        headers["Function-Execution-Id"] = execution_id
        return upstream.status_code, headers, upstream.content


@contextlib.contextmanager
def loopback_only() -> Iterator[None]:
    """Within this block every name lookup except 127.0.0.1/localhost fails, so a test cannot reach the internet
    by accident. google-auth would also look up a service account's regional access boundary at
    iamcredentials.googleapis.com in the background: that lookup is switched off here."""
    import pytest

    real = socket.getaddrinfo

    def guarded(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in ("127.0.0.1", "localhost", "::1", None):
            raise socket.gaierror(f"a test tried to reach {host}; only 127.0.0.1 is allowed")
        return real(host, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket, "getaddrinfo", guarded)
        from google.auth import credentials as gcreds

        boundary = getattr(gcreds, "CredentialsWithRegionalAccessBoundary", None)
        if boundary is not None:
            mp.setattr(boundary, "_is_regional_access_boundary_lookup_required", lambda self: False)
        yield


def _wait_ready(runtime: Runtime) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if runtime.process.poll() is not None:
            raise RuntimeError(f"the function runtime exited with {runtime.process.returncode}: {runtime.log()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", runtime.port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"the function runtime did not listen within {STARTUP_TIMEOUT_S:g} s")


def _stop(runtime: Runtime) -> None:
    process = runtime.process
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout=2)  # an instance busy with a long request is not waited for
        except subprocess.TimeoutExpired:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait(timeout=10)
    shutil.rmtree(runtime.directory, ignore_errors=True)


class _Handler(BaseHTTPRequestHandler):
    fake: FakeGcf
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body as one segment: no 40 ms delayed-ACK stalls
    wbufsize = 1 << 16

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
        pass

    def _record(self) -> Recorded:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        headers = CaseInsensitiveDict(self.headers.items())  # clients differ: "authorization" vs "Authorization"
        record = Recorded(self.command, parts.path, parts.query, headers, body)
        with self.fake._lock:
            self.fake.received.append(record)
        return record

    def _send(self, code: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(code)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    _enum_int = False

    def _json(self, code: int, payload: dict[str, Any]) -> None:
        if self._enum_int:
            payload = _enums_as_int(payload)
        self._send(code, {"Content-Type": "application/json; charset=UTF-8"}, json.dumps(payload).encode())

    def _dispatch(self) -> None:
        self._enum_int = False
        record = self._record()
        fake = self.fake
        fault = fake.chaos.draw(record.method, record.path) if fake.chaos is not None else None
        if fault is not None and fault.kind in ("reset", "lost"):
            if fault.kind == "lost":  # carried out; the answer never arrives
                real, self.wfile = self.wfile, io.BytesIO()
                try:
                    self._route(record)
                finally:
                    self.wfile = real
            chaos.abort(self.connection)
            self.close_connection = True
            return
        if fault is not None and fault.kind == "slow":
            fault.pause()
        if fault is not None and fault.kind in ("error", "throttle"):
            code = fault.status if fault.kind == "error" else 429
            if record.path.startswith("/fn/"):  # Google's front end answers in HTML
                self._send(code, {"Content-Type": "text/html; charset=UTF-8",
                                  **({"Retry-After": f"{fake.chaos.retry_after_s:g}"} if code == 429 else {})},
                           f"<html><body>Error: Server Error {code} (chaos)</body></html>".encode())
            else:
                status = {429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 502: "UNAVAILABLE", 503: "UNAVAILABLE"}[code]
                self._json(code, {"error": {"code": code, "message": "injected (chaos)", "status": status}})
            return
        self._route(record)

    def _route(self, record: Recorded) -> None:
        fake = self.fake
        path = record.path
        query = {k: v[-1] for k, v in parse_qs(record.query).items()}
        try:
            if path.startswith("/fn/"):
                self._send(*fake.forward(path[len("/fn/"):], record))
                return
            if path.startswith("/upload/") and record.method == "PUT":
                fake.put_upload(path[len("/upload/"):], record.headers.get("Content-Type", ""), record.body)
                self._send(200, {}, b"")
                return
            if path == "/token" and record.method == "POST":
                form = {k: v[-1] for k, v in parse_qs(record.body.decode()).items()}
                self._json(200, fake.token(form))
                return
            if not path.startswith("/v2/"):
                raise ApiError(404, "NOT_FOUND", f"no route {path}")
            if fake.require_access_token:
                if not fake._admin_authorized(record.headers.get("Authorization", "")):
                    raise ApiError(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
            if "enum-encoding=int" in query.get("$alt", ""):
                self._enum_int = True
            resource = path[len("/v2/"):]
            body = json.loads(record.body) if record.body else {}
            if record.method == "POST" and resource.endswith("/functions:generateUploadUrl"):
                self._json(200, fake.generate_upload_url(resource[: -len("/functions:generateUploadUrl")]))
            elif record.method == "POST" and resource.endswith("/functions"):
                if "functionId" not in query:
                    raise ApiError(400, "INVALID_ARGUMENT", "functionId is required")
                self._json(200, fake.create(resource[: -len("/functions")], query["functionId"], body))
            elif record.method == "GET" and resource.endswith("/functions"):
                size = int(query.get("pageSize") or fake.page_size)
                self._json(200, fake.list(resource[: -len("/functions")], size, query.get("pageToken", "")))
            elif record.method == "GET" and "/operations/" in resource:
                self._json(200, fake.get_operation(resource))
            elif "/functions/" in resource and record.method == "GET":
                self._json(200, fake.get(resource))
            elif "/functions/" in resource and record.method == "PATCH":
                mask = [p for p in query.get("updateMask", "").split(",") if p]
                self._json(200, fake.update(resource, body, mask))
            elif "/functions/" in resource and record.method == "DELETE":
                self._json(200, fake.delete(resource))
            else:
                raise ApiError(404, "NOT_FOUND", f"no route {record.method} {path}")
        except ApiError as exc:
            self._json(exc.code, {"error": {"code": exc.code, "message": exc.message, "status": exc.status}})

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch

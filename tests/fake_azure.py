"""A fake of Azure Functions on 127.0.0.1: Entra ID's token endpoint, the ARM routes of `Microsoft.Web/sites`,
each app's Kudu (SCM) zip deployment and its Functions host, which runs the deployed Python v2 app in this process.

Routes and shapes it follows:
- `POST /{tenant}/oauth2/v2.0/token` (client credentials grant; a wrong secret is HTTP 401 `invalid_client`):
  learn.microsoft.com/en-us/entra/identity-platform/v2-oauth2-client-creds-grant-flow
- `GET|PUT|DELETE /subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.Web/sites/{app}?api-version=`,
  `GET .../sites` (list, `value` + `nextLink`), `POST .../sites/{app}/host/default/listkeys`
  (`functionKeys.default`, `masterKey`): learn.microsoft.com/en-us/rest/api/appservice/web-apps (Create Or
  Update, Get, Delete: 200 deleted / 204 absent, List By Resource Group, List Host Keys); errors as
  `{"error": {"code", "message"}}`, 401 without a valid bearer token
- `POST https://{scm}/api/zipdeploy?isAsync=true` → 202 + `Location: .../api/deployments/latest`, whose JSON says
  `status` 4 (success) / 3 (failed) and `complete`: learn.microsoft.com/en-us/azure/app-service/deploy-zip,
  github.com/projectkudu/kudu/wiki/REST-API
- the Functions host: `POST /api/{route}` with `x-functions-key` (or `?code=`; 401 without a valid key;
  learn.microsoft.com/en-us/azure/azure-functions/function-keys-how-to), host.json `functionTimeout` (a call
  running longer is answered 500 by the host, "Timeout value of hh:mm:ss was exceeded by function"),
  `app_settings` as environment variables.

Each app gets its own server on a free port of 127.0.0.1 (its default host and its SCM host). Deployed code is
loaded in this process (`function_app.py` with `azure.functions`' own `FunctionApp`, `HttpRequest` and
`HttpResponse` types) and called on a thread; the handler's imports of `fedkeeper.runtime` resolve to the
installed copy, which is the same code the zip carries. App settings are applied to `os.environ` while the fake
runs and restored by `stop()`.
"""

from __future__ import annotations

import importlib.util
import io
import json
import logging
import os
import re
import secrets
import sys
import threading
import time
import types
import uuid
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

SITE = re.compile(r"^/subscriptions/([^/]+)/resourceGroups/([^/]+)/providers/Microsoft\.Web/sites(?:/([^/]+))?"
                  r"(/host/default/listkeys)?$")
_load_lock = threading.Lock()


@dataclass
class Recorded:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes


@dataclass
class App:
    name: str
    resource: dict[str, Any]
    server: ThreadingHTTPServer | None = None
    key: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    master: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    function: Any = None  # (route, user function)
    timeout_s: float = 300.0
    deleted: bool = False
    seq: int = 0


class _Capture(logging.Handler):
    def __init__(self, sink: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(self.format(record))


class FakeAzure:
    def __init__(self, workdir: Path, *, tenant: str, client_id: str, client_secret: str) -> None:
        self.workdir = Path(workdir)
        self.tenant, self.client_id, self.client_secret = tenant, client_id, client_secret
        self.tokens: set[str] = set()
        self.apps: dict[str, App] = {}
        self.requests: list[Recorded] = []
        self.invocations: list[Recorded] = []
        self.logs: list[str] = []
        self.throttle_next = 0
        self._lock = threading.RLock()
        self._environ = dict(os.environ)
        self._server: ThreadingHTTPServer | None = None
        self._capture = _Capture(self.logs)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "FakeAzure":
        self._server = self._serve(self._handle_main)
        logging.getLogger("fk.function").addHandler(self._capture)
        return self

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        logging.getLogger("fk.function").removeHandler(self._capture)
        servers = [self._server] + [a.server for a in self.apps.values()]
        for server in servers:
            if server is not None:
                server.shutdown()
                server.server_close()
        os.environ.clear()
        os.environ.update(self._environ)

    def _serve(self, handle: Any) -> ThreadingHTTPServer:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                record = Recorded(self.command, self.path, dict(self.headers.items()), self.rfile.read(length))
                with fake._lock:
                    fake.requests.append(record)
                code, headers, body = handle(record, self.server)
                self.send_response(code)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_PUT = do_POST = do_DELETE = _any

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    @staticmethod
    def _json(code: int, body: Any, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        return code, {"Content-Type": "application/json; charset=utf-8", **(headers or {})}, json.dumps(body).encode()

    def _error(self, code: int, error: str, message: str) -> tuple[int, dict[str, str], bytes]:
        return self._json(code, {"error": {"code": error, "message": message}})

    # ------------------------------------------------------------------ token + ARM

    def _handle_main(self, record: Recorded, server: Any) -> tuple[int, dict[str, str], bytes]:
        path = urlsplit(record.url).path
        if path == f"/{self.tenant}/oauth2/v2.0/token" and record.method == "POST":
            form = {k: v[0] for k, v in parse_qs(record.body.decode()).items()}
            if form.get("grant_type") != "client_credentials" or form.get("client_id") != self.client_id \
                    or form.get("client_secret") != self.client_secret:
                return self._json(401, {"error": "invalid_client",
                                        "error_description": "AADSTS7000215: Invalid client secret provided."})
            token = secrets.token_urlsafe(32)
            with self._lock:
                self.tokens.add(token)
            return self._json(200, {"token_type": "Bearer", "expires_in": 3599, "access_token": token})
        if not self._bearer_ok(record):
            return self._error(401, "InvalidAuthenticationToken", "The access token is invalid.")
        match = SITE.match(path)
        if match is None or "api-version" not in (urlsplit(record.url).query or ""):
            return self._error(404, "NotFound", f"no route {record.method} {path}")
        app, keys = match.group(3), match.group(4)
        with self._lock:
            if app is None:
                return self._json(200, {"value": [a.resource for a in self.apps.values() if not a.deleted]})
            current = self.apps.get(app)
            if current is not None and current.deleted:
                current = None
            if keys:
                if current is None:
                    return self._error(404, "ResourceNotFound", f"site {app} not found")
                return self._json(200, {"masterKey": current.master, "functionKeys": {"default": current.key},
                                        "systemKeys": {}})
            if record.method == "GET":
                return self._json(200, current.resource) if current else \
                    self._error(404, "ResourceNotFound", f"The Resource 'Microsoft.Web/sites/{app}' was not found.")
            if record.method == "DELETE":
                if current is None:
                    return 204, {}, b""
                current.deleted = True
                return 200, {}, b""
            if record.method == "PUT":
                return self._put_site(app, current, json.loads(record.body), path)
        return self._error(405, "MethodNotAllowed", record.method)

    def _bearer_ok(self, record: Recorded) -> bool:
        auth = {k.lower(): v for k, v in record.headers.items()}.get("authorization", "")
        with self._lock:
            return auth.startswith("Bearer ") and auth[7:] in self.tokens

    def _put_site(self, name: str, current: App | None, body: dict[str, Any], path: str) -> tuple[int, dict, bytes]:
        if body.get("kind") != "functionapp,linux" or not body.get("location"):
            return self._error(400, "BadRequest", "kind functionapp,linux and location are required")
        if current is None:
            old = self.apps.get(name)
            if old is not None and old.server is not None:  # a deleted app's host is answered 404 until reused
                old.server.shutdown()
                old.server.server_close()
            current = App(name, {})
            current.server = self._serve(lambda record, server, app=current: self._handle_app(app, record))
            self.apps[name] = current
            code = 201
        else:
            code = 200
        host = f"127.0.0.1:{current.server.server_address[1]}"
        props = dict(body.get("properties") or {})
        props.update({"defaultHostName": host, "state": "Running",
                      "hostNameSslStates": [{"name": host, "hostType": "Standard"},
                                            {"name": host, "hostType": "Repository"}]})
        current.resource = {"id": path, "name": name, "type": "Microsoft.Web/sites", "kind": body["kind"],
                            "location": body["location"], "tags": dict(body.get("tags") or {}), "properties": props}
        settings = {s["name"]: s["value"] for s in (props.get("siteConfig") or {}).get("appSettings") or []}
        os.environ.update(settings)
        public = json.loads(json.dumps(current.resource))
        public["properties"]["siteConfig"]["appSettings"] = None  # ARM does not echo app settings
        current.resource = public
        return self._json(code, public)

    # ------------------------------------------------------------------ an app's SCM site and Functions host

    def _handle_app(self, app: App, record: Recorded) -> tuple[int, dict[str, str], bytes]:
        parts = urlsplit(record.url)
        if app.deleted:
            return 404, {"Content-Type": "text/html"}, b"<h1>404 Web Site not found.</h1>"
        if parts.path == "/api/zipdeploy" and record.method == "POST":
            if not self._bearer_ok(record):
                return 401, {}, b""
            self._load(app, record.body)
            return 202, {"Location": f"http://{app.resource['properties']['defaultHostName']}"
                                     "/api/deployments/latest"}, b""
        if parts.path == "/api/deployments/latest":
            return self._json(200, {"status": 4, "complete": True, "status_text": ""})
        headers = {k.lower(): v for k, v in record.headers.items()}
        code = headers.get("x-functions-key") or (parse_qs(parts.query).get("code") or [""])[0]
        with self._lock:
            self.invocations.append(record)
            throttled = self.throttle_next > 0
            self.throttle_next -= 1 if throttled else 0
        if code not in (app.key, app.master):
            return 401, {}, b""
        if throttled:
            return 429, {"Retry-After": "1"}, b""
        if app.function is None or parts.path != f"/api/{app.function[0]}":
            return 404, {}, b""
        return self._call(app, record)

    def _load(self, app: App, data: bytes) -> None:
        root = self.workdir / app.name / f"v{app.seq + 1}"
        root.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            zf.extractall(root)
        host = json.loads((root / "host.json").read_text())
        h, m, s = (int(x) for x in host.get("functionTimeout", "00:05:00").split(":"))
        with _load_lock:  # the zip's handler.py is imported as `handler`: one load at a time
            saved = sys.modules.pop("handler", None)
            sys.path.insert(0, str(root))
            try:
                spec = importlib.util.spec_from_file_location(f"fk_azure_app_{uuid.uuid4().hex}",
                                                              root / "function_app.py")
                assert spec is not None and spec.loader is not None
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
            finally:
                sys.path.remove(str(root))
                sys.modules.pop("handler", None)
                if saved is not None:
                    sys.modules["handler"] = saved
        function = module.app.get_functions()[0]
        app.function = (function.get_trigger().route, function.get_user_function())
        app.timeout_s = h * 3600 + m * 60 + s
        app.seq += 1

    def _call(self, app: App, record: Recorded) -> tuple[int, dict[str, str], bytes]:
        import azure.functions as func

        route, user_function = app.function
        invocation_id = str(uuid.uuid4())
        request = func.HttpRequest("POST", f"http://{app.resource['properties']['defaultHostName']}/api/{route}",
                                   headers=record.headers, body=record.body)
        context = types.SimpleNamespace(invocation_id=invocation_id, function_name="entry")
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["response"] = user_function(request, context)
            except BaseException as exc:  # the host answers 500 for an exception that escapes the function
                box["error"] = exc

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        worker.join(app.timeout_s)
        if worker.is_alive():
            total = int(app.timeout_s)
            return 500, {"Content-Type": "text/plain"}, (
                f"Timeout value of {total // 3600:02d}:{total % 3600 // 60:02d}:{total % 60:02d} was exceeded by "
                f"function: Functions.entry").encode()
        if "error" in box:
            return 500, {}, b""
        response = box["response"]
        headers = dict(response.headers)
        headers["Content-Type"] = response.mimetype or "text/plain"
        return response.status_code, headers, response.get_body()

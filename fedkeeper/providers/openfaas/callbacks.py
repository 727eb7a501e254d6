"""The receiver of OpenFaaS's asynchronous-call callbacks: a small HTTP server in the orchestrator.

`POST /async-function/<name>` with `X-Callback-Url` queues the call (202 and an `X-Call-Id`); the queue-worker
runs it and POSTs the function's answer to the callback URL with `X-Call-Id`, `X-Function-Status` (the
function's HTTP status) and `X-Duration-Seconds` (https://docs.openfaas.com/reference/async/). Each receiver
listens on one path with a random token, so that only the gateway this provider handed the URL to can post
results; results are kept by call id until `poll` takes them. A call whose callback goes to another process
(an orchestrator that restarted) cannot be looked up: OpenFaaS keeps no results.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger("fedkeeper.providers.openfaas")

MAX_BODY_BYTES = 64 * 2**20


@dataclass(frozen=True)
class Callback:
    """One finished asynchronous call, as the queue-worker reported it."""

    call_id: str
    status: int
    headers: dict[str, str]
    body: bytes
    received: float


class CallbackReceiver:
    """Listens on `listen` (host:port); `url` is what the gateway is told (`public_url` or the bound address)."""

    def __init__(self, cluster: str, listen: str, public_url: str | None) -> None:
        self.cluster = cluster
        self._token = secrets.token_urlsafe(18)
        self._results: dict[str, Callback] = {}
        self._lock = threading.Lock()
        host, port = listen.rsplit(":", 1)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(min(length, MAX_BODY_BYTES)) if length else b""
                accepted = self.path.split("?", 1)[0].rstrip("/") == f"/{receiver._token}"
                call_id = self.headers.get("X-Call-Id", "")
                if accepted and call_id:
                    try:
                        status = int(self.headers.get("X-Function-Status") or 0)
                    except ValueError:
                        status = 0
                    receiver._put(Callback(call_id, status, {k: v for k, v in self.headers.items()}, body,
                                           time.time()))
                self.send_response(202 if accepted and call_id else 404)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self._server = ThreadingHTTPServer((host, int(port)), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name=f"openfaas-callbacks-{cluster}", daemon=True)
        self._thread.start()
        bound_host, bound_port = self._server.server_address[:2]
        base = public_url.rstrip("/") if public_url else f"http://{bound_host}:{bound_port}"
        #: the callback URL holds the token: it is as secret as the results it receives (never logged)
        self.url = f"{base}/{self._token}"
        log.debug("%s: callback receiver on %s:%s", cluster, bound_host, bound_port)

    def _put(self, callback: Callback) -> None:
        with self._lock:
            self._results[callback.call_id] = callback

    def take(self, call_id: str) -> Callback | None:
        with self._lock:
            return self._results.get(call_id)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

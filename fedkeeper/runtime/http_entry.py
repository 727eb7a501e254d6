"""A JSON-over-HTTP server around a function's `handle(params)`, for platforms that run one container per function.

Container platforms (a watchdog or a sidecar proxy in front of the function's own process) forward each call to a
process listening on `127.0.0.1:$PORT` and pass its answer back. This server is that process:

- `POST` (any path): the JSON object body is `params`; the answer is HTTP 200 with the handler's dict as JSON;
  a handler that raises answers HTTP 500 `{"error": "<Type>: <message>"}` (every secret-looking `FK_*` value
  masked, the traceback masked on stderr, i.e. the container's log); a body that is not a JSON object answers 400;
- `GET /_/health` answers 200 (readiness probes);
- headers `X-FedKeeper-Cold: 1` on the first call this process serves (a new container: a cold start, what
  scale-from-zero costs), `X-FedKeeper-Duration-Ms` (the handler's own time) and `X-FedKeeper-Instance`.

Settings that may be secret reach the process as environment variables, or as files of a mounted secret
(`load_secret_env`: a JSON object of settings), never in a request. Standard library only: an entry must answer
(with a hint) even when numpy or pymongo cannot be imported.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

from fedkeeper.runtime.entry_support import describe, mask_settings

HEALTH_PATH = "/_/health"
MAX_BODY_BYTES = 64 * 2**20


def load_secret_env(directory: str | os.PathLike[str], name: str) -> list[str]:
    """Move the settings of the mounted secret `directory/name` (a JSON object) into os.environ; the keys moved.

    A platform that mounts secrets as files (OpenFaaS: /var/openfaas/secrets/<name>) keeps them out of the
    function's visible environment settings; an absent file moves nothing (the settings may be plain env vars).
    """
    path = Path(directory) / name
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if not isinstance(data, dict):
        return []
    for key, value in data.items():
        os.environ[str(key)] = value if isinstance(value, str) else json.dumps(value)
    return sorted(str(k) for k in data)


class _State:
    def __init__(self, handler: ModuleType | None, load_error: str) -> None:
        self.handler = handler
        self.load_error = load_error
        self.cold = True
        self.lock = threading.Lock()
        self.instance = f"{socket.gethostname()}-{os.getpid()}"

    def first_call(self) -> bool:
        with self.lock:
            cold, self.cold = self.cold, False
        return cold


def make_server(handler: ModuleType | None, load_error: str, host: str, port: int) -> ThreadingHTTPServer:
    """The server (not yet serving): `handler` is the function's module, `load_error` why it could not load."""
    state = _State(handler, load_error)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:  # the platform logs requests itself
            pass

        def _answer(self, status: int, body: dict[str, Any], cold: bool, started: float) -> None:
            data = json.dumps(body, separators=(",", ":"), allow_nan=False).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("X-FedKeeper-Cold", "1" if cold else "0")
            self.send_header("X-FedKeeper-Duration-Ms", f"{(time.perf_counter() - started) * 1000:.1f}")
            self.send_header("X-FedKeeper-Instance", state.instance)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            data = b"OK"
            self.send_response(200 if self.path.split("?", 1)[0] == HEALTH_PATH else 404)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(min(length, MAX_BODY_BYTES)) if length else b""
            cold = state.first_call()
            started = time.perf_counter()
            if state.handler is None:
                self._answer(500, {"error": mask_settings(state.load_error)}, cold, started)
                return
            try:
                params = json.loads(raw) if raw.strip() else {}
            except ValueError:
                params = None
            if not isinstance(params, dict):
                self._answer(400, {"error": "the request body must be a JSON object"}, cold, started)
                return
            try:
                result = state.handler.handle(params)
                if not isinstance(result, dict):
                    raise TypeError(f"the handler returned {type(result).__name__}, not a dict")
            except Exception as exc:
                print(mask_settings(traceback.format_exc()), file=sys.stderr, flush=True)
                self._answer(500, {"error": mask_settings(describe(exc))}, cold, started)
                return
            self._answer(200, result, cold, started)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def serve(handler: ModuleType | None, load_error: str, *, default_port: int) -> None:
    """Serve on $HOST:$PORT (127.0.0.1 and `default_port` unless set) until the process is stopped."""
    host = os.environ.get("FK_LISTEN_HOST", "127.0.0.1")
    port = int(os.environ.get("PORT") or default_port)
    server = make_server(handler, load_error, host, port)
    print(f"listening on {host}:{port}", file=sys.stderr, flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()

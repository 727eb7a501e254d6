"""An OpenWhisk Python action container on 127.0.0.1: the `/init` and `/run` protocol the invoker speaks.

OpenWhisk's Python runtime images are not on any package index (they are Docker images), so this follows their
code, checked in the repositories: the action-loop proxy of apache/openwhisk-runtime-go (`initHandler.go`,
`runHandler.go`, `executor.go`) and the launcher of apache/openwhisk-runtime-python (`core/python3ActionLoop/
lib/launcher.py`, with `bin/compile` renaming `__main__.py` to `main__.py`):

- `POST /init` `{"value": {"name", "main", "code", "binary", "env"}}`: a second init is 403 ("Cannot initialize
  the action more than once."), no code 403, a `code` that is not base64 400; the zip is unpacked, `value.env`
  (the `__OW_*` settings of the activation's action) is added to the process environment, and the launcher is
  started with the action folder as working directory. It imports `main` from `main__`, then acknowledges on
  file descriptor 3. An import that fails makes the process exit: 502 "Cannot start action. Check logs for
  details." (OW_LOG_INIT_ERROR is set in the images). Success: 200 `{"ok":true}`.
- `POST /run` `{"value": {...}, "namespace", "action_name", "action_version", "activation_id",
  "transaction_id", "deadline"}`: newlines are removed and the body goes to the launcher as one line; the
  launcher sets `__OW_<KEY>` for every key but `value` and calls `main(value)`, an exception becoming
  `{"error": str(ex)}`; the answer line from fd 3 is returned as is when it is a JSON object or array (502 "The
  action did not return a dictionary or array." otherwise; 400 "command exited" when the process died).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import select
import subprocess
import sys
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

#: the launcher's logic (launcher.py): import main, ack on fd 3, one JSON line in, one JSON line out
LAUNCHER = r'''
import json, os, sys, traceback
from main__ import main as main
out = os.fdopen(3, "wb")
if os.getenv("__OW_WAIT_FOR_ACK", "") != "":
    out.write(json.dumps({"ok": True}, ensure_ascii=False).encode("utf-8"))
    out.write(b"\n")
    out.flush()
env = os.environ
while True:
    line = sys.stdin.readline()
    if not line:
        break
    args = json.loads(line)
    payload = {}
    for key in args:
        if key == "value":
            payload = args["value"]
        else:
            env["__OW_%s" % key.upper()] = args[key]
    res = {}
    try:
        res = main(payload)
    except Exception as ex:
        print(traceback.format_exc(), file=sys.stderr)
        res = {"error": str(ex)}
    out.write(json.dumps(res, ensure_ascii=False).encode("utf-8"))
    out.write(b"\n")
    sys.stdout.flush()
    sys.stderr.flush()
    out.flush()
'''


class ActionContainer:
    """One container: the proxy's HTTP server, and once initialised the launcher process behind it."""

    def __init__(self, workdir: Path, python: str = sys.executable, base_env: dict[str, str] | None = None) -> None:
        self.workdir = Path(workdir)
        self.python = python
        self.base_env = dict(base_env or {})
        self.process: subprocess.Popen[bytes] | None = None
        self._read_fd: int | None = None
        self._buffer = b""
        self._lock = threading.Lock()
        self.initialized = False
        self.log_path = self.workdir / "action.log"
        container = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path == "/init":
                    status, answer = container.init(body)
                elif self.path == "/run":
                    status, answer = container.run(body)
                else:
                    status, answer = 404, b'{"error":"not found"}\n'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()

    @staticmethod
    def _error(status: int, message: str) -> tuple[int, bytes]:
        return status, json.dumps({"error": message}).encode() + b"\n"

    def init(self, body: bytes) -> tuple[int, bytes]:
        with self._lock:
            if self.initialized:
                return self._error(403, "Cannot initialize the action more than once.")
            try:
                value = json.loads(body).get("value") or {}
            except (ValueError, AttributeError) as exc:
                return self._error(400, f"Error unmarshaling request: {exc}")
            if not value.get("code"):
                return self._error(403, "Missing main/no code to execute.")
            try:
                code = base64.b64decode(value["code"], validate=True) if value.get("binary") else value["code"]
            except binascii.Error as exc:
                return self._error(400, f"cannot decode the request: {exc}")
            action_dir = self.workdir / "action"
            action_dir.mkdir(parents=True)
            if isinstance(code, bytes):
                with zipfile.ZipFile(io.BytesIO(code)) as zf:
                    zf.extractall(action_dir)
            else:
                (action_dir / "__main__.py").write_text(code)
            if not (action_dir / "__main__.py").exists():
                return self._error(502, "The action failed to generate or locate a binary. See logs for details.")
            os.rename(action_dir / "__main__.py", action_dir / "main__.py")
            (action_dir / "exec__.py").write_text(LAUNCHER)
            env = {**self.base_env, "__OW_WAIT_FOR_ACK": "1",
                   **{k: str(v) for k, v in (value.get("env") or {}).items()}}
            read_fd, write_fd = os.pipe()
            log = open(self.log_path, "ab")
            self.process = subprocess.Popen(
                [self.python, "exec__.py"], cwd=action_dir, stdin=subprocess.PIPE, stdout=log, stderr=log, env=env,
                pass_fds=tuple({write_fd, 3}), preexec_fn=lambda: os.dup2(write_fd, 3), start_new_session=True)
            os.close(write_fd)
            log.close()
            self._read_fd = read_fd
            ack = self._read_line(time.monotonic() + 60)
            if not isinstance(ack, dict) or not ack.get("ok"):
                return self._error(502, "Cannot start action. Check logs for details.")
            self.initialized = True
            return 200, b'{"ok":true}\n'

    def run(self, body: bytes) -> tuple[int, bytes]:
        with self._lock:
            if self.process is None:
                return self._error(500, "no action defined yet")
            if self.process.poll() is not None:
                return self._error(500, "command exited")
            line = body.replace(b"\n", b"") + b"\n"
            try:
                assert self.process.stdin is not None
                self.process.stdin.write(line)
                self.process.stdin.flush()
            except OSError:
                return self._error(400, "command exited")
            answer = self._read_line(time.monotonic() + 300, raw=True)
            if answer is None:
                return self._error(400, "command exited")
            try:
                parsed = json.loads(answer)
            except ValueError:
                parsed = None
            if not isinstance(parsed, (dict, list)):
                return self._error(502, "The action did not return a dictionary or array.")
            return 200, answer

    def _read_line(self, deadline: float, raw: bool = False) -> Any:
        assert self._read_fd is not None
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ready, _, _ = select.select([self._read_fd], [], [], min(remaining, 0.5))
            if ready:
                chunk = os.read(self._read_fd, 65536)
                if not chunk:
                    return None
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        if raw:
            return line
        try:
            return json.loads(line)
        except ValueError:
            return None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        if self.process is not None and self.process.stdin is not None:
            self.process.stdin.close()
        if self._read_fd is not None:
            os.close(self._read_fd)
            self._read_fd = None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> "ActionContainer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

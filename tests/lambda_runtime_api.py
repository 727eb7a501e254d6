"""The Lambda Runtime API on 127.0.0.1, for running a packaged zip under AWS's own runtime interface client.

`awslambdaric` (from the package index; what Lambda's Python base images run as their bootstrap) polls this
server for events exactly as it polls the real Lambda service inside an execution environment. The routes and
headers follow the Runtime API reference (https://docs.aws.amazon.com/lambda/latest/dg/runtimes-api.html,
version 2018-06-01):

  GET  /2018-06-01/runtime/invocation/next           the next event; headers Lambda-Runtime-Aws-Request-Id,
                                                       -Deadline-Ms, -Invoked-Function-Arn, -Trace-Id
  POST /2018-06-01/runtime/invocation/{id}/response  the handler's result → 202
  POST /2018-06-01/runtime/invocation/{id}/error     {"errorMessage", "errorType", "stackTrace"} → 202
  POST /2018-06-01/runtime/init/error                the handler could not be loaded → 202

`LambdaRuntime` starts `python -m awslambdaric lambda_function.handler` in an unpacked zip (the task root) with
the environment Lambda sets, and `invoke(event)` hands it one event and waits for the outcome.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

PREFIX = "/2018-06-01/runtime"
ACCOUNT = "123456789012"


@dataclass
class Outcome:
    """What the runtime posted for one invocation: its result, or its error (type from the header)."""

    request_id: str
    result: Any = None
    error: dict[str, Any] | None = None
    error_type: str | None = None


class RuntimeApi:
    """One execution environment's Runtime API: events go in through `invoke`, the runtime takes them."""

    def __init__(self, function_name: str, timeout_s: float = 60.0) -> None:
        self.function_name = function_name
        self.timeout_s = timeout_s
        self._events: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self._outcomes: dict[str, Outcome] = {}
        self._done = threading.Condition()
        self.init_error: dict[str, Any] | None = None
        self._stopping = False
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for key, value in {"Content-Type": "application/json", **(headers or {})}.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path != f"{PREFIX}/invocation/next":
                    return self._reply(404, b'{"errorMessage": "not found"}')
                while not api._stopping:
                    try:
                        request_id, body = api._events.get(timeout=0.2)
                    except queue.Empty:
                        continue
                    deadline = int((time.time() + api.timeout_s) * 1000)
                    return self._reply(200, body, {
                        "Lambda-Runtime-Aws-Request-Id": request_id,
                        "Lambda-Runtime-Deadline-Ms": str(deadline),
                        "Lambda-Runtime-Invoked-Function-Arn":
                            f"arn:aws:lambda:eu-west-1:{ACCOUNT}:function:{api.function_name}",
                        "Lambda-Runtime-Trace-Id": f"Root=1-{uuid.uuid4().hex[:8]}-{uuid.uuid4().hex[:24]}"})
                self.close_connection = True

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                parts = self.path.removeprefix(PREFIX).strip("/").split("/")
                if parts == ["init", "error"]:
                    api.init_error = json.loads(body or b"{}")
                    with api._done:
                        api._done.notify_all()
                    return self._reply(202, b'{"status": "OK"}')
                if len(parts) == 3 and parts[0] == "invocation" and parts[2] in ("response", "error"):
                    outcome = Outcome(parts[1])
                    if parts[2] == "response":
                        outcome.result = json.loads(body) if body else None
                    else:
                        outcome.error = json.loads(body or b"{}")
                        outcome.error_type = self.headers.get("Lambda-Runtime-Function-Error-Type")
                    with api._done:
                        api._outcomes[parts[1]] = outcome
                        api._done.notify_all()
                    return self._reply(202, b'{"status": "OK"}')
                return self._reply(404, b'{"errorMessage": "not found"}')

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                if not isinstance(sys.exc_info()[1], ConnectionError):  # the runtime was stopped mid-poll
                    super().handle_error(request, client_address)

        self._server = Server(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.address = f"127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()

    def invoke(self, event: Any, *, wait_s: float = 120.0) -> Outcome:
        request_id = str(uuid.uuid4())
        self._events.put((request_id, json.dumps(event).encode()))
        deadline = time.monotonic() + wait_s
        with self._done:
            while request_id not in self._outcomes and self.init_error is None:
                if not self._done.wait(max(0.0, deadline - time.monotonic())):
                    raise TimeoutError(f"no outcome for {request_id} within {wait_s} s")
            if request_id not in self._outcomes:
                raise RuntimeError(f"the runtime failed to initialise: {self.init_error}")
            return self._outcomes.pop(request_id)

    def stop(self) -> None:
        self._stopping = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


class LambdaRuntime:
    """`python -m awslambdaric lambda_function.handler` on an unpacked zip, against a `RuntimeApi`."""

    def __init__(self, task_root: Path, env: dict[str, str], function_name: str = "fk-exp-fn",
                 memory_mb: int = 512) -> None:
        self.api = RuntimeApi(function_name)
        base = {k: v for k, v in os.environ.items() if not k.startswith(("FK_", "AWS_", "PYTHONHOME"))}
        pythonpath = os.pathsep.join(filter(None, [str(task_root), os.environ.get("PYTHONPATH", "")]))
        self.log_path = task_root.parent / f"{task_root.name}.log"
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "awslambdaric", "lambda_function.handler"], cwd=task_root,
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**base, **env, "PYTHONPATH": pythonpath, "AWS_LAMBDA_RUNTIME_API": self.api.address,
                 "LAMBDA_TASK_ROOT": str(task_root), "_HANDLER": "lambda_function.handler",
                 "AWS_LAMBDA_FUNCTION_NAME": function_name, "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
                 "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(memory_mb), "AWS_REGION": "eu-west-1",
                 "AWS_EXECUTION_ENV": f"AWS_Lambda_python{sys.version_info[0]}.{sys.version_info[1]}"})

    def invoke(self, event: Any) -> Outcome:
        if self.process.poll() is not None:
            raise RuntimeError(f"the runtime exited ({self.process.returncode}): {self.log()}")
        return self.api.invoke(event)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.api.stop()
        self._log.close()

    def __enter__(self) -> "LambdaRuntime":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

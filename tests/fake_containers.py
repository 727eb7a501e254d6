"""What the container-platform fakes (tests/fake_openfaas.py, tests/fake_knative.py) share: an image registry that
holds FedKeeper's function images, and function "containers" run as processes on 127.0.0.1.

OpenFaaS and Knative run container images. FedKeeper's image of a function is its zip (`fedkeeper package`) on a
Python image with numpy and pymongo, run as `python <entry>` (docs/platforms.md, "Building the function
images"). Here an image is that zip, unpacked into a folder and run with this interpreter (which has numpy and
pymongo): the process is the real packaged entry and handler, listening on 127.0.0.1:$PORT as in a pod.

`RecipeRegistry` plays `docker build` + `docker push` of the recipe: asked for an image reference, it packages each
known function for the platform and answers the zip whose `image_for(template, function, zip)` is that reference
(so an image exists exactly when the recipe would have built and pushed it); `push` adds one by hand.

`ContainerFake` is the fakes' common frame (servers on 127.0.0.1, recorded requests, throttling, logs, stopping
every container), `QuietHandler` their HTTP handlers' base.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

import requests
from requests.structures import CaseInsensitiveDict

STARTUP_TIMEOUT_S = 60.0
NETGUARD = Path(__file__).resolve().parent / "netguard"
TEST_FUNCTIONS = Path(__file__).resolve().parent / "functions"


@dataclass
class Recorded:
    """One request a fake received, as sent (`url` with its query)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    url: str = ""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RecipeRegistry:
    """Images built by the recipe from FedKeeper's functions (and the tests' probe functions), on demand."""

    def __init__(self, kind: str, template: Callable[[], str], image_for: Callable[[str, str, bytes], str]) -> None:
        self.kind = kind
        self._template = template
        self._image_for = image_for
        self._pushed: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def push(self, ref: str, data: bytes) -> None:
        with self._lock:
            self._pushed[ref] = data

    def pull(self, ref: str) -> bytes | None:
        with self._lock:
            if ref in self._pushed:
                return self._pushed[ref]
        from fedkeeper import packaging
        from fedkeeper.providers.base import PackagingOptions

        folders = [p for p in sorted(packaging.FUNCTIONS_DIR.iterdir()) if (p / "handler.py").is_file()]
        folders += [p for p in sorted(TEST_FUNCTIONS.iterdir()) if (p / "handler.py").is_file()]
        for folder in folders:
            artifact = packaging.build(folder, self.kind, PackagingOptions())
            if self._image_for(self._template(), artifact.function, artifact.data) == ref:
                self.push(ref, artifact.data)
                return artifact.data
        return None


@dataclass
class Container:
    """One running instance of an image: `python <entry>` in the unpacked image, serving on `port`."""

    process: subprocess.Popen[bytes]
    port: int
    directory: Path
    log_path: Path
    started: float = field(default_factory=time.monotonic)
    last_used: float = field(default_factory=time.monotonic)
    busy: int = 0

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def run_container(image: bytes, entry: str, directory: Path, env: dict[str, str],
                  files: dict[str, bytes] | None = None) -> Container:
    """Unpack `image`, write `files` (mounted secrets: relative path → bytes), start the entry; wait until it
    listens. The log (stdout and stderr) is kept beside the folder, for the tests to read after it stopped."""
    directory.mkdir(parents=True)
    with zipfile.ZipFile(io.BytesIO(image)) as archive:
        archive.extractall(directory)
    for rel, data in (files or {}).items():
        target = directory / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    port = free_port()
    path = [str(directory)]
    if os.environ.get("FK_NETGUARD"):
        path.append(str(NETGUARD))
    full_env = {"PATH": os.environ.get("PATH", ""), "HOME": str(directory), "LANG": "C.UTF-8",
                "PYTHONPATH": os.pathsep.join(path), "PYTHONDONTWRITEBYTECODE": "1", **env, "PORT": str(port),
                "FK_LISTEN_HOST": "127.0.0.1"}
    if os.environ.get("FK_NETGUARD"):
        full_env["FK_NETGUARD"] = os.environ["FK_NETGUARD"]
    log_path = directory.parent / f"{directory.name}.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen([sys.executable, entry], cwd=directory, env=full_env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    container = Container(process, port, directory, log_path)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            stop_container(container)
            raise RuntimeError(f"the container exited with {process.returncode}: {container.log()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return container
        except OSError:
            time.sleep(0.03)
    stop_container(container)
    raise RuntimeError(f"the container did not listen within {STARTUP_TIMEOUT_S:g} s")


def stop_container(container: Container) -> None:
    process = container.process
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait(timeout=10)
    shutil.rmtree(container.directory, ignore_errors=True)


def forward(container: Container, body: bytes, headers: dict[str, str], timeout_s: float
            ) -> tuple[int, dict[str, str], bytes] | None:
    """The call as the platform's proxy makes it to the container; None when it took longer than `timeout_s`."""
    try:
        answer = requests.post(f"http://127.0.0.1:{container.port}/", data=body, timeout=(5, timeout_s),
                               headers={"Content-Type": headers.get("Content-Type", "application/json")})
    except requests.exceptions.ReadTimeout:
        return None
    except requests.exceptions.ConnectionError:
        return 502, {"Content-Type": "text/plain"}, b"upstream connection refused"
    kept = {k: v for k, v in answer.headers.items() if k.lower().startswith(("content-type", "x-fedkeeper-"))}
    return answer.status_code, kept, answer.content


class ContainerFake:
    """The servers' lifecycle and what the tests read and control, on either fake. The fake (a dataclass) has
    `workdir`, `image_template`, `requests` and `throttle_next`, calls `_prepare` after its init, names its
    `handlers`, and says which recorded paths are invocations and how to take its containers from their owners."""

    handlers: tuple[type[BaseHTTPRequestHandler], ...]
    workdir: Path
    image_template: str
    requests: list[Recorded]
    throttle_next: int

    def _prepare(self, kind: str, image_for: Callable[[str, str, bytes], str]) -> None:
        """The working folder, the registry of `kind`'s images (named by the provider's `image_for`), the lock;
        for the fake's `__post_init__`."""
        self.workdir = Path(self.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.registry = RecipeRegistry(kind, lambda: self.image_template, image_for)
        self._lock = threading.RLock()
        self._servers: list[ThreadingHTTPServer] = []
        self._counter = 0

    def _is_invocation(self, path: str) -> bool:
        raise NotImplementedError

    def _take_containers(self) -> list[Container]:
        """Every running container, detached from its owner (called with `_lock` held)."""
        raise NotImplementedError

    def start(self) -> Self:
        self._servers += [serve(handler, self) for handler in self.handlers]
        return self

    def stop(self) -> None:
        """Stop the servers, then every container started."""
        for server in self._servers:
            shut(server)
        self._servers.clear()
        with self._lock:
            containers = self._take_containers()
        for container in containers:
            stop_container(container)

    def invocation_requests(self) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if self._is_invocation(r.path)]

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def throttle(self, n: int) -> None:
        """The platform refuses the next `n` invocations for load."""
        with self._lock:
            self.throttle_next = n

    def logs(self) -> str:
        """What every container wrote, the stopped ones included."""
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.workdir.glob("*.log")))


class QuietHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 without access logs; `_read` and `_send` with the body's length handled."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, code: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for key, value in (headers or {}).items():
            if key.lower() not in ("content-length", "transfer-encoding", "connection"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, code: int, value: Any) -> None:
        self._send(code, json.dumps(value).encode(), {"Content-Type": "application/json"})

    def _read(self) -> tuple[bytes, CaseInsensitiveDict[str]]:
        length = int(self.headers.get("Content-Length") or 0)
        return (self.rfile.read(length) if length else b""), CaseInsensitiveDict(self.headers.items())


def serve(handler: type[BaseHTTPRequestHandler], fake: object) -> ThreadingHTTPServer:
    """`handler` (with `fake` as its class attribute) on a free port of 127.0.0.1, served by a daemon thread."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), type(handler.__name__, (handler,), {"fake": fake}))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    return server


def shut(server: ThreadingHTTPServer) -> None:
    server.shutdown()
    server.server_close()

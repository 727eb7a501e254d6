"""A fake Apache OpenWhisk controller on 127.0.0.1 that really runs the uploaded actions.

No OpenWhisk can be installed here (the standalone server needs Docker), so this speaks the controller's
documented REST shapes and runs each action's zip the way the Python action-loop runtime does: the zip is
unpacked, `__main__.py` is renamed `main__.py`, a launcher (`exec__.py`, same logic as the runtime's
`launcher.py`) imports `main` from it with the action folder first on `sys.path` and the folder as working
directory, then reads one JSON line per activation (`{"value": args, "activation_id": ..., ...}`), sets the
`__OW_*` environment variables, calls `main(args)` and answers with the JSON result (an exception becomes
`{"error": str(ex)}`). The interpreter is `sys.executable`, so numpy and pymongo are there as on a custom image.

By default it behaves like a stock installation; each rule names the source it follows (apache/openwhisk,
checked in its repository; ../shared/reference/providers.md, "What a stock installation enforces"):
- limits (`common/scala/src/main/resources/application.conf`): memory 128–512 MB, timeout 100–300000 ms,
  concurrency 1–1, checked on PUT with the controller's 400 messages (`ErrorResponse.scala`,
  `Messages.sizeExceedsAllowedThreshold` ...); `limits_from` = the table in fedkeeper/providers/openwhisk/
  limits.py, which these same numbers feed. An update keeps the limits and parameters it does not name
  (`Actions.scala`, `update`).
- kinds: those of the stock `ansible/files/runtimes.json` (`python:3.10` = `python:default`, `python:3.11`)
  plus `blackbox`; anything else is 400 `Messages.invalidRuntimeError`. `kinds=` extends the list.
- parameters (`Actions.scala`, `activate`; `WhiskAction.scala`, `immutableParameters`): an invocation's
  payload is merged over the bound parameters; when the action is annotated `final: true`, a payload naming a
  bound parameter is refused with 400 "Request defines parameters that are not allowed (e.g., reserved
  properties)."
- annotations (`Actions.scala`, `update`): an update merges the new annotations into the old ones
  (`old ++ new`), after removing those named in `delAnnotations`; `exec` is the controller's own.
- listings (`Actions.scala`, `list`; `Collection.scala`, `whisk.query-limit`): newest first, `limit` 0–200
  (default 30; 400 beyond), `skip` >= 0, and the actions inside packages are included (their `namespace` is
  `ns/package`). Packages: `PUT packages/{pkg}`; an action `actions/{pkg}/{name}` needs its package.
- activation listings (`Activations.scala`, `list`; `WhiskActivation.listActivationsMatchingName`): `name`
  (`action` or `package/action`) filters by action, `since`/`upto` (ms epoch, inclusive) bound the record's
  `start`, newest first, `limit`/`skip` as for actions, `docs=true` whole records (else summaries),
  `count=true` `{"activations": n}` (400 with `docs`). A record is listed only once written (when the
  activation ends); `list_lag_s` hides records younger than that, as the controller's `stale=update_after`
  view read can.
- the invoker's `/run` message (`ContainerProxy.scala`): `value` (bound parameters ∪ payload), `namespace`,
  `action_name`, `action_version`, `activation_id`, `transaction_id`, `deadline`, and `api_key` only without
  `provide-api-key: false`.

Routes (under /api/v1/namespaces/{ns}, `_` = the key's own namespace):
  PUT    actions/[{pkg}/]{name}?overwrite=  create (409 if it exists and overwrite is not true) or update
  GET    actions/[{pkg}/]{name}?code=       the action (without exec.code when code=false)
  DELETE actions/[{pkg}/]{name}             200 with the action, 404 if absent
  GET    actions?limit=&skip=               summaries incl. annotations and limits, newest first
  POST   actions/[{pkg}/]{name}?blocking=   202 {"activationId"} (non-blocking); blocking waits like the real one
  GET    activations?name=&since=&upto=&limit=&skip=&docs=&count=   records, newest first (see above)
  GET    activations/{id}                   404 until the record is written, then the record
  PUT    packages/{pkg}                     create a package (for packaged actions)
Errors are `{"error": ..., "code": <transaction id>}`: 401 wrong/missing key, 403 other namespace,
404 absent, 409 exists, 400 malformed/limits/final, 413 payload over 1 MB, 429 throttled (switchable).

Activation records follow the platform: `response.status` "success" | "application error" (result has
"error") | "action developer error" (time limit: "The action exceeded its time limits of N milliseconds.",
crash, non-dict result, failed init); `start`/`end` ms epoch, `duration` ms, annotations `waitTime` and, on a
cold start (a new process), `initTime`. Warm processes are reused per action version (one activation at a
time each, like `limits.concurrency: 1`); `warm=False` starts a process per activation.

Every request is recorded (method, full URL, all headers, body) so tests can check that no credential ever
appears in a URL. `chaos` (a tests/chaos.py `Chaos`) answers requests at random with 5xx, 429, a reset
connection, a lost answer (carried out, then reset) or a late answer. Use as a context manager or through the `fake_openwhisk` pytest fixture; `python
tests/fake_openwhisk.py --port 3233` serves one by hand.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import secrets
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

try:
    import pytest
except ImportError:  # usable by hand without pytest
    pytest = None  # type: ignore[assignment]

from fedkeeper.providers.openwhisk import limits as ow_limits  # noqa: E402 - the table these defaults come from
import chaos  # noqa: E402 - tests/chaos.py, beside this file

#: the stock ansible runtimes.json python kinds, and docker actions
KINDS = ("python:3.10", "python:3.11", "python:default", "blackbox")
MAX_PAYLOAD = 1024 * 1024
#: `whisk.query-limit`: default and largest `limit` of a listing
LIST_DEFAULT, LIST_MAX = 30, 200
#: `Messages.parametersNotAllowed`
PARAMETERS_NOT_ALLOWED = "Request defines parameters that are not allowed (e.g., reserved properties)."
TIME_LIMIT_MESSAGE = "The action exceeded its time limits of {ms} milliseconds."
CRASH_MESSAGE = "The action did not produce a valid response and exited unexpectedly."
NOT_A_DICT_MESSAGE = "The action did not return a dictionary."

LAUNCHER = r'''
import json, os, sys, traceback
out = os.fdopen(int(os.environ.pop("FAKE_OW_RESULT_FD")), "wb")
try:
    from main__ import main
except BaseException as ex:
    traceback.print_exc()
    sys.stderr.flush()
    out.write(json.dumps({"init_error": "%s: %s" % (type(ex).__name__, ex)}).encode() + b"\n")
    out.flush()
    sys.exit(1)
out.write(b'{"ok": true}\n')
out.flush()
env = os.environ
while True:
    line = sys.stdin.readline()
    if not line:
        break
    args = json.loads(line)
    payload = args.pop("value", {})
    for key, value in args.items():
        env["__OW_%s" % key.upper()] = str(value)
    try:
        res = main(payload)
    except Exception as ex:
        traceback.print_exc()
        res = {"error": str(ex)}
    sys.stdout.flush()
    sys.stderr.flush()
    out.write(json.dumps(res, ensure_ascii=False).encode("utf-8") + b"\n")
    out.flush()
'''


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    url: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


class _HttpError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


@dataclass
class _Action:
    namespace: str
    name: str
    version: str
    exec: dict[str, Any]
    limits: dict[str, int]
    parameters: list[dict[str, Any]]
    annotations: list[dict[str, Any]]
    updated: int
    serial: int  # changes on every update: warm processes of older serials are discarded

    def doc(self, code: bool = True) -> dict[str, Any]:
        exec_ = dict(self.exec) if code else {k: v for k, v in self.exec.items() if k != "code"}
        return {"namespace": self.namespace, "name": self.name, "version": self.version, "publish": False,
                "exec": exec_, "limits": dict(self.limits), "parameters": [dict(p) for p in self.parameters],
                "annotations": [dict(a) for a in self.annotations], "updated": self.updated}

    def summary(self) -> dict[str, Any]:
        return {"namespace": self.namespace, "name": self.name, "version": self.version, "publish": False,
                "exec": {"binary": bool(self.exec.get("binary"))}, "limits": dict(self.limits),
                "annotations": [dict(a) for a in self.annotations], "updated": self.updated}

    @property
    def key(self) -> str:
        """The action's name in the controller's paths: `name`, or `package/name` inside a package."""
        package = self.namespace.split("/", 1)[1] if "/" in self.namespace else ""
        return f"{package}/{self.name}" if package else self.name

    def annotation(self, key: str, default: Any = None) -> Any:
        return next((a.get("value") for a in self.annotations if a.get("key") == key), default)


def immutable_parameters(action: _Action) -> set[str]:
    """The bound parameters an invocation may not name: all of them when the action is `final: true`
    (`WhiskActionLike.immutableParameters`), none otherwise."""
    return {p["key"] for p in action.parameters} if action.annotation("final") is True else set()


def merge_parameters(action: _Action, payload: dict[str, Any]) -> dict[str, Any]:
    """The activation's `value`: the payload merged over the bound parameters (the controller refuses a payload
    that names an immutable one before this is reached)."""
    args = {p["key"]: p.get("value") for p in action.parameters}
    args.update(payload)
    return args


class _Container:
    """One action process (like one runtime container): init once, then one activation at a time."""

    def __init__(self, action_dir: Path, python: str, env: dict[str, str], log_path: Path) -> None:
        self.action_dir = action_dir
        self.log_path = log_path
        self._log = open(log_path, "ab")
        read_fd, write_fd = os.pipe()
        self._read_fd = read_fd
        self._buffer = b""
        try:
            self.proc = subprocess.Popen(
                [python, "exec__.py"], cwd=action_dir, stdin=subprocess.PIPE, stdout=self._log,
                stderr=subprocess.STDOUT, pass_fds=(write_fd,),
                env={**env, "FAKE_OW_RESULT_FD": str(write_fd)}, start_new_session=True)
        finally:
            os.close(write_fd)

    def read_line(self, deadline: float) -> dict[str, Any] | None | str:
        """Next JSON line from the process; None on EOF (it died), "timeout" when the deadline passes."""
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timeout"
            ready, _, _ = select.select([self._read_fd], [], [], min(remaining, 0.5))
            if not ready:
                continue
            chunk = os.read(self._read_fd, 65536)
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        try:
            return json.loads(line)
        except ValueError:
            return None

    def send(self, message: dict[str, Any]) -> bool:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps(message).encode() + b"\n")
            self.proc.stdin.flush()
            return True
        except (BrokenPipeError, OSError):
            return False

    def log_offset(self) -> int:
        self._log.flush()
        return self.log_path.stat().st_size

    def logs_since(self, offset: int) -> list[str]:
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            text = f.read().decode("utf-8", "replace")
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        return [f"{stamp}Z stdout: {line}" for line in text.splitlines()]

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self) -> None:
        """SIGKILL the process group only; the thread that owns this container sees EOF and closes it."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, 9)
            except (ProcessLookupError, PermissionError):
                self.proc.kill()

    def kill(self) -> None:
        """Kill and release pipes and files (only from the owning thread, or for idle containers)."""
        self.signal()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        for closer in (lambda: self.proc.stdin and self.proc.stdin.close(), self._log.close,
                       lambda: os.close(self._read_fd)):
            try:
                closer()
            except OSError:
                pass


@dataclass
class FakeOpenWhisk:
    """The fake controller. `start()` / `stop()` or `with FakeOpenWhisk() as ow:`."""

    auth: str = field(default_factory=lambda: f"{uuid.uuid4()}:{secrets.token_urlsafe(48)}")
    namespace: str = "guest"
    warm: bool = True
    python: str = sys.executable
    memory_mb: tuple[int, int] = ow_limits.STOCK.memory_mb  # type: ignore[assignment]
    timeout_ms: tuple[int, int] = tuple(int(t * 1000) for t in ow_limits.STOCK.timeout_s)  # type: ignore[assignment,union-attr]
    concurrency: tuple[int, int] = ow_limits.STOCK.concurrency  # type: ignore[assignment]
    kinds: tuple[str, ...] = KINDS
    concurrent_limit: int | None = None
    max_idle_per_action: int = 4
    workdir: Path | None = None
    port: int = 0
    #: tests/chaos.py `Chaos`: random 5xx, 429, resets, lost answers and slow answers on any request
    chaos: Any = None
    #: records written less than this many seconds ago are missing from activation listings (a stale view)
    list_lag_s: float = 0.0

    def __post_init__(self) -> None:
        self.url = ""
        self.requests: list[RecordedRequest] = []
        self.actions: dict[str, _Action] = {}  # by name, "package/name" inside a package
        self.packages: set[str] = set()
        self.activations: dict[str, dict[str, Any]] = {}
        #: activation id -> (action key, when its record was written): what the activation listing filters on
        self._written: dict[str, tuple[str, float]] = {}
        self._lock = threading.RLock()
        self._unpack_lock = threading.Lock()
        self._done = threading.Condition(self._lock)
        self._throttle_left = 0
        self._throttle_retry_after: float | None = None
        self._fail_left = 0
        self._fail_status = 503
        self._serial = 0
        self._inflight = 0
        self._idle: dict[tuple[str, int], list[_Container]] = {}
        self._busy: set[_Container] = set()
        self._dirs: dict[tuple[str, int], Path] = {}
        self._threads: list[threading.Thread] = []
        self._server: ThreadingHTTPServer | None = None
        self._own_tmp: tempfile.TemporaryDirectory[str] | None = None
        self._stopping = False

    # ------------------------------------------------------------------ lifecycle and switches

    def start(self) -> "FakeOpenWhisk":
        if self.workdir is None:
            self._own_tmp = tempfile.TemporaryDirectory(prefix="fake-openwhisk-")
            self.workdir = Path(self._own_tmp.name)
        self.workdir.mkdir(parents=True, exist_ok=True)
        fake = self

        class Handler(_Handler):
            controller = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                  name="fake-openwhisk", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop serving, kill every action process, wait for activation threads, delete the temp dir."""
        self._stopping = True
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:
            idle = [c for pool in self._idle.values() for c in pool]
            busy = list(self._busy)
            self._idle.clear()
        for container in idle:
            container.kill()
        for container in busy:  # their activation threads see EOF, record a crash and close the pipes
            container.signal()
        for thread in self._threads:
            thread.join(timeout=15)
        if self._own_tmp is not None:
            self._own_tmp.cleanup()
            self._own_tmp = None

    def __enter__(self) -> "FakeOpenWhisk":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def throttle(self, n: int, retry_after: float | None = None) -> None:
        """Answer the next `n` invocations with 429 (and `Retry-After` if given)."""
        with self._lock:
            self._throttle_left = n
            self._throttle_retry_after = retry_after

    def fail_next(self, n: int, status: int = 503) -> None:
        """Answer the next `n` requests of any kind with `status` (after the auth check)."""
        with self._lock:
            self._fail_left = n
            self._fail_status = status

    # ------------------------------------------------------------------ views for tests

    def requests_to(self, method: str | None = None, contains: str = "") -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if (method is None or r.method == method) and contains in r.path]

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Block until no activation is running (for teardown and tests that count processes)."""
        deadline = time.monotonic() + timeout
        with self._done:
            while self._inflight:
                if not self._done.wait(max(0.0, deadline - time.monotonic())):
                    return False
        return True

    def process_count(self) -> int:
        with self._lock:
            return sum(1 for pool in self._idle.values() for c in pool if c.alive) + \
                sum(1 for c in self._busy if c.alive)

    # ------------------------------------------------------------------ controller logic

    def handle(self, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str],
               body: bytes) -> tuple[int, Any, dict[str, str]]:
        self._check_auth(headers.get("authorization", ""))
        with self._lock:
            if self._fail_left > 0:
                self._fail_left -= 1
                raise _HttpError(self._fail_status, "injected failure")
        parts = [unquote(p) for p in path.split("/") if p]
        if len(parts) < 5 or parts[:3] != ["api", "v1", "namespaces"]:
            raise _HttpError(404, "The requested resource does not exist.")
        ns = parts[3]
        if ns not in ("_", self.namespace):
            raise _HttpError(403, f"The supplied authentication is not authorized to access '{ns}'.")
        collection, rest = parts[4], parts[5:]
        q = {k: v[-1] for k, v in query.items()}
        if collection == "actions" and not rest and method == "GET":
            return 200, self._list(q.get("limit"), q.get("skip")), {}
        if collection == "packages" and len(rest) == 1 and method == "PUT":
            with self._lock:
                self.packages.add(rest[0])
            return 200, {"namespace": self.namespace, "name": rest[0], "version": "0.0.1", "publish": False,
                         "binding": {}, "parameters": [], "annotations": []}, {}
        if collection == "actions" and len(rest) in (1, 2):
            name = "/".join(rest)
            if method == "PUT":
                return 200, self._put(name, body, q.get("overwrite", "false") == "true"), {}
            if method == "GET":
                return 200, self._action(name).doc(code=q.get("code", "true") != "false"), {}
            if method == "DELETE":
                return 200, self._delete(name), {}
            if method == "POST":
                return self._invoke(name, body, q.get("blocking") == "true", q.get("result") == "true")
        if collection == "activations" and not rest and method == "GET":
            return 200, self._list_activations(q), {}
        if collection == "activations" and len(rest) == 1 and method == "GET":
            with self._lock:
                record = self.activations.get(rest[0])
            if record is None:
                raise _HttpError(404, "The requested resource does not exist.")
            return 200, record, {}
        raise _HttpError(404 if method in ("GET", "DELETE") else 405, "The requested resource does not exist.")

    def _check_auth(self, header: str) -> None:
        if not header.startswith("Basic "):
            raise _HttpError(401, "The resource requires authentication, which was not supplied with the request")
        try:
            given = base64.b64decode(header[6:], validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise _HttpError(401, "The supplied authentication is invalid") from None
        if not secrets.compare_digest(given, self.auth):
            raise _HttpError(401, "The supplied authentication is invalid")

    def _action(self, name: str) -> _Action:
        with self._lock:
            action = self.actions.get(name)
        if action is None:
            raise _HttpError(404, "The requested resource does not exist.")
        return action

    @staticmethod
    def _page(limit_text: str | None, skip_text: str | None, collection: str) -> tuple[int, int]:
        """(limit, skip) of a listing (`RestApiCommons.stringToListLimit/Skip`); `limit` 0 means the maximum."""
        try:
            limit = LIST_DEFAULT if limit_text in (None, "") else int(limit_text)  # type: ignore[arg-type]
            skip = 0 if skip_text in (None, "") else int(skip_text)  # type: ignore[arg-type]
        except ValueError:
            raise _HttpError(400, f"The value '{limit_text or skip_text}' is not an integer for {collection}.") \
                from None
        if not 0 <= limit <= LIST_MAX:
            raise _HttpError(400, f"The value '{limit}' is not in the range of 0 to {LIST_MAX} for {collection}.")
        if skip < 0:
            raise _HttpError(400, f"The value '{skip}' is not greater than or equal to 0 for {collection}.")
        return limit or LIST_MAX, skip

    def _list_activations(self, q: dict[str, str]) -> Any:
        """Written records, newest first by `start`, filtered by action name and `since`/`upto` (inclusive)."""
        limit, skip = self._page(q.get("limit"), q.get("skip"), "activations")
        name = (q.get("name") or "").strip().strip("/")
        if name.count("/") > 1:
            raise _HttpError(400, f"The name '{name}' is not a valid action or package/action name.")
        bounds = []
        for key in ("since", "upto"):
            try:
                bounds.append(int(q[key]) if q.get(key) not in (None, "") else None)
            except ValueError:
                raise _HttpError(400, f"Parameter is not a valid value for epoch seconds: {q[key]}") from None
        since, upto = bounds
        docs, count = q.get("docs") == "true", q.get("count") == "true"
        if docs and count:
            raise _HttpError(400, "The parameter 'docs' is not permitted with 'count'.")
        now = time.time()
        with self._lock:
            rows = [self.activations[aid] for aid, (key, written) in self._written.items()
                    if now - written >= self.list_lag_s and (not name or key == name)]
        rows = [r for r in rows if (since is None or r["start"] >= since) and (upto is None or r["start"] <= upto)]
        if count:
            return {"activations": max(0, len(rows) - skip)}
        rows.sort(key=lambda r: -r["start"])
        rows = rows[skip:skip + limit]
        if docs:
            return rows
        return [{k: r[k] for k in ("activationId", "namespace", "name", "version", "publish", "annotations",
                                   "start", "end", "duration")} | {"statusCode": r["response"]["statusCode"]}
                for r in rows]

    def _list(self, limit_text: str | None, skip_text: str | None) -> list[dict[str, Any]]:
        """Newest first (`updated`), packaged actions included; `limit` 0 means the maximum."""
        limit, skip = self._page(limit_text, skip_text, "actions")
        with self._lock:
            ordered = sorted(self.actions.values(), key=lambda a: (-a.updated, -a.serial))
        return [a.summary() for a in ordered[skip:skip + limit]]

    def _limits(self, requested: dict[str, Any], old: dict[str, int] | None) -> dict[str, int]:
        """The stored limits: what the PUT names, else the old action's, else the defaults; 400 outside the
        installation's ranges with the controller's messages."""
        limits = dict(old) if old else {"timeout": 60000, "memory": 256, "concurrency": 1, "logs": 10}
        try:
            limits.update({k: int(v) for k, v in (requested or {}).items()})
        except (TypeError, ValueError):
            raise _HttpError(400, "The request content was malformed:\nlimits must be whole numbers") from None
        lo, hi = self.memory_mb
        if limits["memory"] > hi:
            raise _HttpError(400, f"memory size {limits['memory']} MB exceeds allowed threshold of {hi} MB")
        if limits["memory"] < lo:
            raise _HttpError(400, f"memory size {limits['memory']} MB below allowed threshold of {lo} MB")
        lo, hi = self.timeout_ms
        if limits["timeout"] > hi:
            raise _HttpError(400, f"duration {limits['timeout']} milliseconds exceeds allowed threshold of {hi} "
                                  "milliseconds")
        if limits["timeout"] < lo:
            raise _HttpError(400, f"duration {limits['timeout']} milliseconds below allowed threshold of {lo} "
                                  "milliseconds")
        lo, hi = self.concurrency
        if limits["concurrency"] > hi:
            raise _HttpError(400, f"concurrency {limits['concurrency']} exceeds allowed threshold of {hi}")
        if limits["concurrency"] < lo:
            raise _HttpError(400, f"concurrency {limits['concurrency']} below allowed threshold of {lo}")
        return limits

    def _put(self, name: str, body: bytes, overwrite: bool) -> dict[str, Any]:
        try:
            doc = json.loads(body or b"{}")
        except ValueError:
            raise _HttpError(400, "The request content was malformed:\nnot JSON") from None
        exec_ = doc.get("exec")
        if not isinstance(exec_, dict) or "kind" not in exec_:
            raise _HttpError(400, "The request content was malformed:\nexec.kind is required")
        if exec_["kind"] not in self.kinds:
            valid = "', '".join(k for k in self.kinds if k != "blackbox")
            raise _HttpError(400, f"The specified runtime '{exec_['kind']}' is not supported by this platform. "
                                  f"Valid values are: '{valid}'.")
        if exec_["kind"] == "blackbox" and not exec_.get("image"):
            raise _HttpError(400, "The request content was malformed:\nimage is required for blackbox")
        if exec_.get("code") is not None:
            try:
                base64.b64decode(exec_["code"], validate=True) if exec_.get("binary") else None
            except binascii.Error:
                raise _HttpError(400, "The request content was malformed:\ncode is not base64") from None
        elif exec_["kind"] != "blackbox":
            raise _HttpError(400, "The request content was malformed:\nexec.code is required")
        for key in ("parameters", "annotations"):
            items = doc.get(key) or []
            if not isinstance(items, list) or any(not isinstance(i, dict) or "key" not in i for i in items):
                raise _HttpError(400, f"The request content was malformed:\n{key} must be a list of key/value")
        if "/" in name and name.split("/", 1)[0] not in self.packages:
            raise _HttpError(404, "The requested resource does not exist.")
        with self._lock:
            old = self.actions.get(name)
            if old is not None and not overwrite:
                raise _HttpError(409, "resource already exists")
            limits = self._limits(doc.get("limits") or {}, old.limits if old is not None else None)
            if old is not None and "parameters" not in doc:
                parameters = [dict(p) for p in old.parameters]
            else:
                parameters = list(doc.get("parameters") or [])
            merged: dict[str, Any] = {}
            if old is not None:  # an update merges annotations: old ++ new, minus delAnnotations
                merged = {a["key"]: a.get("value") for a in old.annotations}
                for key in doc.get("delAnnotations") or []:
                    merged.pop(key, None)
            merged.update({a["key"]: a.get("value") for a in doc.get("annotations") or []})
            merged["exec"] = exec_["kind"].split(":")[0]
            annotations = [{"key": k, "value": v} for k, v in merged.items()]
            self._serial += 1
            version = "0.0.1"
            if old is not None:
                major, minor, patch = (int(x) for x in old.version.split("."))
                version = f"{major}.{minor}.{patch + 1}"
            namespace = self.namespace + (f"/{name.split('/', 1)[0]}" if "/" in name else "")
            action = _Action(namespace, name.rsplit("/", 1)[-1], version, dict(exec_), limits, parameters,
                             annotations, int(time.time() * 1000), self._serial)
            self.actions[name] = action
            stale = self._drop_containers(name)
        for container in stale:
            container.kill()
        return action.doc(code=False)

    def _delete(self, name: str) -> dict[str, Any]:
        with self._lock:
            action = self.actions.pop(name, None)
            if action is None:
                raise _HttpError(404, "The requested resource does not exist.")
            stale = self._drop_containers(name)
        for container in stale:
            container.kill()
        return action.doc(code=False)

    def _drop_containers(self, name: str) -> list[_Container]:
        stale: list[_Container] = []
        for key in [k for k in self._idle if k[0] == name]:
            stale.extend(self._idle.pop(key))
        return stale

    def _invoke(self, name: str, body: bytes, blocking: bool, result_only: bool) -> tuple[int, Any, dict[str, str]]:
        action = self._action(name)
        if len(body) > MAX_PAYLOAD:
            raise _HttpError(413, f"The request content was too large ({len(body)} B, allowed {MAX_PAYLOAD} B).")
        try:
            payload = json.loads(body) if body else {}
        except ValueError:
            raise _HttpError(400, "The request content was malformed:\nnot JSON") from None
        if not isinstance(payload, dict):
            raise _HttpError(400, "The request content was malformed:\nthe payload must be a JSON object")
        if set(payload) & immutable_parameters(action):
            raise _HttpError(400, PARAMETERS_NOT_ALLOWED)
        activation_id = uuid.uuid4().hex
        with self._lock:
            if self._throttle_left > 0:
                self._throttle_left -= 1
                after = self._throttle_retry_after
                extra = {"Retry-After": f"{after:g}"} if after is not None else {}
                raise _HttpError(429, "Too many requests in the last minute (count: 61, allowed: 60).", extra)
            if self.concurrent_limit is not None and self._inflight >= self.concurrent_limit:
                raise _HttpError(429, f"Too many concurrent requests in flight (count: {self._inflight}, "
                                      f"allowed: {self.concurrent_limit}).")
            self._inflight += 1
        accepted = time.time()
        thread = threading.Thread(target=self._run_activation, args=(action, payload, activation_id, accepted),
                                  name=f"activation-{activation_id[:8]}", daemon=True)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()
        headers = {"x-openwhisk-activation-id": activation_id}
        if not blocking:
            return 202, {"activationId": activation_id}, headers
        deadline = time.monotonic() + min(60.0, action.limits["timeout"] / 1000.0 + 5.0)
        with self._done:
            while activation_id not in self.activations and time.monotonic() < deadline:
                self._done.wait(max(0.0, deadline - time.monotonic()))
            record = self.activations.get(activation_id)
        if record is None:
            return 202, {"activationId": activation_id}, headers
        status = 200 if record["response"]["success"] else 502
        return status, (record["response"]["result"] if result_only else record), headers

    # ------------------------------------------------------------------ running actions

    def _action_dir(self, action: _Action) -> Path:
        with self._unpack_lock:  # concurrent cold starts of one action unpack it once
            return self._unpack(action)

    def _unpack(self, action: _Action) -> Path:
        key = (action.key, action.serial)
        with self._lock:
            if key in self._dirs:
                return self._dirs[key]
        assert self.workdir is not None
        target = self.workdir / "actions" / f"{action.key.replace('/', '--')}-{action.serial}"
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        code = action.exec.get("code")
        if code is None:
            raise RuntimeError(f"image {action.exec.get('image')!r} cannot be pulled by the fake "
                               "(send the zip as code)")
        if action.exec.get("binary"):
            with zipfile.ZipFile(io.BytesIO(base64.b64decode(code))) as zf:
                for info in zf.infolist():
                    dest = (target / info.filename).resolve()
                    if not str(dest).startswith(str(target.resolve()) + os.sep):
                        raise RuntimeError(f"zip entry {info.filename!r} escapes the action folder")
                zf.extractall(target)
        else:
            (target / "__main__.py").write_text(code, encoding="utf-8")
        if not (target / "__main__.py").exists():
            raise RuntimeError("Zip file does not include __main__.py")
        os.rename(target / "__main__.py", target / "main__.py")
        (target / "exec__.py").write_text(LAUNCHER, encoding="utf-8")
        with self._lock:
            self._dirs[key] = target
        return target

    def _container_env(self) -> dict[str, str]:
        # A runtime container does not inherit the controller host's environment (no test secrets, no PYTHONPATH).
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "PYTHONIOENCODING": "UTF-8",
                "PYTHONDONTWRITEBYTECODE": "1", "__OW_API_HOST": self.url}

    def _acquire(self, action: _Action) -> tuple[_Container, float | None, str | None]:
        """A warm process for this action version, or a new one: (container, init ms if cold, init error)."""
        key = (action.key, action.serial)
        with self._lock:
            pool = self._idle.get(key, [])
            while pool:
                container = pool.pop()
                if container.alive:
                    self._busy.add(container)
                    return container, None, None
                container.kill()
        started = time.monotonic()
        action_dir = self._action_dir(action)
        assert self.workdir is not None
        log_path = self.workdir / "logs" / f"{action.key.replace('/', '--')}-{uuid.uuid4().hex[:8]}.log"
        log_path.parent.mkdir(exist_ok=True)
        with self._lock:
            if self._stopping:
                raise RuntimeError("the controller is shutting down")
            container = _Container(action_dir, self.python, self._container_env(), log_path)
            self._busy.add(container)
        ack = container.read_line(time.monotonic() + action.limits["timeout"] / 1000.0)
        init_ms = (time.monotonic() - started) * 1000.0
        if isinstance(ack, dict) and ack.get("ok"):
            return container, init_ms, None
        if isinstance(ack, dict) and ack.get("init_error"):
            return container, init_ms, f"Initialization has failed due to: {ack['init_error']}"
        if ack == "timeout":
            return container, init_ms, TIME_LIMIT_MESSAGE.format(ms=action.limits["timeout"])
        return container, init_ms, CRASH_MESSAGE

    def _release(self, action: _Action, container: _Container, reusable: bool) -> None:
        with self._lock:
            self._busy.discard(container)
            current = self.actions.get(action.key)
            keep = (reusable and self.warm and not self._stopping and container.alive
                    and current is not None and current.serial == action.serial)
            pool = self._idle.setdefault((action.key, action.serial), [])
            if keep and len(pool) < self.max_idle_per_action:
                pool.append(container)
                return
        container.kill()

    def _run_activation(self, action: _Action, payload: dict[str, Any], activation_id: str, accepted: float) -> None:
        start = time.time()
        status, result, logs, init_ms = "whisk internal error", {"error": "the fake controller failed"}, [], None
        container: _Container | None = None
        reusable = False
        try:
            try:
                container, init_ms, init_error = self._acquire(action)
            except (RuntimeError, zipfile.BadZipFile, OSError) as exc:
                status, result = "action developer error", {"error": f"Initialization has failed due to: {exc}"}
                return
            offset = container.log_offset()
            if init_error:
                status, result = "action developer error", {"error": init_error}
                logs = container.logs_since(0)
                return
            args = merge_parameters(action, payload)
            timeout_ms = action.limits["timeout"]
            deadline_ms = int(time.time() * 1000) + timeout_ms
            message = {"value": args, "activation_id": activation_id, "transaction_id": uuid.uuid4().hex,
                       "action_name": f"/{action.namespace}/{action.name}", "action_version": action.version,
                       "namespace": self.namespace, "deadline": str(deadline_ms)}
            if action.annotation("provide-api-key", True) is not False:
                message["api_key"] = self.auth
            run_started = time.monotonic()
            answer = container.read_line(run_started + timeout_ms / 1000.0) if container.send(message) else None
            logs = container.logs_since(offset)
            if answer == "timeout":
                status, result = "action developer error", {"error": TIME_LIMIT_MESSAGE.format(ms=timeout_ms)}
            elif answer is None:
                status, result = "action developer error", {"error": CRASH_MESSAGE}
            elif not isinstance(answer, dict):
                status, result = "action developer error", {"error": NOT_A_DICT_MESSAGE}
                reusable = True
            elif "error" in answer:
                status, result = "application error", answer
                reusable = True
            else:
                status, result = "success", answer
                reusable = True
        finally:
            if container is not None:
                self._release(action, container, reusable)
            end = time.time()
            annotations = [{"key": "path", "value": f"{action.namespace}/{action.name}"},
                           {"key": "kind", "value": action.exec.get("kind")},
                           {"key": "limits", "value": dict(action.limits)},
                           {"key": "waitTime", "value": int((start - accepted) * 1000)}]
            if init_ms is not None:
                annotations.append({"key": "initTime", "value": int(init_ms)})
            code = {"success": 0, "application error": 1, "action developer error": 2}.get(status, 3)
            record = {
                "activationId": activation_id, "namespace": self.namespace, "name": action.name,
                "version": action.version, "subject": self.auth.split(":", 1)[0], "publish": False,
                "start": int(start * 1000), "end": int(end * 1000), "duration": int((end - start) * 1000),
                "response": {"status": status, "statusCode": code, "success": status == "success", "result": result},
                "logs": logs, "annotations": annotations,
            }
            with self._done:
                self.activations[activation_id] = record
                self._written[activation_id] = (action.key, time.time())
                self._inflight -= 1
                self._done.notify_all()


class _Handler(BaseHTTPRequestHandler):
    controller: FakeOpenWhisk
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # one write per response, no 40 ms delayed-ACK stalls on keep-alive
    wbufsize = -1

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        query = parse_qs(parts.query, keep_blank_values=True)
        headers = {k.lower(): v for k, v in self.headers.items()}
        fake = self.controller
        with fake._lock:
            fake.requests.append(RecordedRequest(self.command, fake.url + self.path, parts.path, query,
                                                 dict(self.headers.items()), body))
        extra: dict[str, str] = {}
        fault = fake.chaos.draw(self.command, parts.path) if fake.chaos is not None else None
        try:
            if fault is not None and fault.kind == "reset":
                chaos.abort(self.connection)
                self.close_connection = True
                return
            if fault is not None and fault.kind == "error":
                raise _HttpError(fault.status, "injected platform error (chaos)")
            if fault is not None and fault.kind == "throttle":
                raise _HttpError(429, "Too many requests in the last minute (chaos).",
                                 {"Retry-After": f"{fake.chaos.retry_after_s:g}"})
            status, answer, extra = fake.handle(self.command, parts.path, query, headers, body)
        except _HttpError as exc:
            status, answer, extra = exc.status, {"error": exc.message, "code": uuid.uuid4().hex}, exc.headers
        if fault is not None and fault.kind == "lost":  # carried out; the answer never arrives
            chaos.abort(self.connection)
            self.close_connection = True
            return
        if fault is not None and fault.kind == "slow":
            fault.pause()
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in extra.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = _serve


if pytest is not None:
    @pytest.fixture
    def fake_openwhisk(tmp_path: Path) -> Iterator[FakeOpenWhisk]:
        """A running fake controller (attributes url, auth, namespace, requests; throttle(n), fail_next(n))."""
        fake = FakeOpenWhisk(workdir=tmp_path / "fake-openwhisk")
        fake.start()
        try:
            yield fake
        finally:
            fake.stop()


def _serve_by_hand() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="fake OpenWhisk controller on 127.0.0.1")
    parser.add_argument("--auth", default=None, help="uuid:key (default: random, printed)")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    fake = FakeOpenWhisk(**({"auth": args.auth} if args.auth else {}),
                         workdir=Path(args.workdir) if args.workdir else None, port=args.port)
    import signal

    def on_term(*_: object) -> None:
        raise KeyboardInterrupt  # same clean stop as Ctrl-C: action processes are killed too

    signal.signal(signal.SIGTERM, on_term)
    fake.start()
    print(f"api_host: {fake.url}\nnamespace: {fake.namespace}\nauth: {'(as given)' if args.auth else fake.auth}",
          flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()


if __name__ == "__main__":
    _serve_by_hand()

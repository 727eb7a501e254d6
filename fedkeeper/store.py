"""MongoDB state store of the orchestrator, and the embedded nx-27017 server that is its default.

``open_store(mongo, workdir=...)`` gives a ``Store``: typed accessors for runs and activations, ``Store.blobs``
(``runtime.blobstore.BlobStore``) for models and updates, indexes, and bounded retries of transient network
errors. With ``mongo_config.url: embedded`` it first starts (or joins) an nx-27017 server that keeps its data
under ``<workdir>/.fedkeeper/``.

Embedded server, shared by every fedkeeper command on the same working directory:

- ``.fedkeeper/store/<db>.db``  SQLite data, one file per logical database (``--data-dir``; see below)
- ``.fedkeeper/store.json``     pid, process start time and port of the running server
- ``.fedkeeper/store.lock``     ``flock``-ed while a command starts, joins or leaves the server
- ``.fedkeeper/leases/*.lease`` one per live user (pid + process start time)
- ``.fedkeeper/nx.log``, ``nx.pid``, ``nx.out``  the server's log, pid file and stdout/stderr

Decision for two commands at once: the second *joins* the running server (same port, same data) instead of
opening the same SQLite files from a second server. Every command holds a lease; whoever leaves last stops
the server. The server itself watches the leases and stops when no live process holds one for a few seconds,
so a user killed with SIGKILL cannot leave it behind either.

nx-27017 0.8.1 gaps worked around here and in ``runtime/blobstore.py`` (the store keeps to plain pymongo):

- single-file mode (``--db FILE``) shares collections between logical databases and ``drop_database`` empties
  all of them, so the server runs with ``--data-dir`` (one SQLite file per database);
- it logs every command at INFO: the server runs with its loggers at WARNING (``FK_NX_LOG_LEVEL`` overrides);
- ``python -m nx_27017`` does not exist, so the server runs nx-27017's ``main`` through
  ``python -m fedkeeper.nxserve``, which adds the lease watchdog;
- datetimes come back as strings and nested exclusion projections are ignored: times are unix floats and
  listings exclude whole fields; ``$inc`` with a dotted path in an upsert creates a literal dotted key, so
  counters are only ``$inc``-ed on documents that exist; ``replace_one`` is never used.
"""

from __future__ import annotations

import atexit
import contextlib
import enum
import errno
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import parse_qsl, quote_plus, unquote_plus, urlencode, urlsplit, urlunsplit

import psutil
import pymongo
from pymongo.database import Database
from pymongo.errors import AutoReconnect, BulkWriteError, ConfigurationError, DuplicateKeyError, OperationFailure
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from fedkeeper.nxserve import create_time as _create_time
from fedkeeper.nxserve import live_leases as _live_leases
from fedkeeper.nxserve import same_process as _same_process
from fedkeeper.runtime.blobstore import INLINE_LIMIT, BlobStore

log = logging.getLogger(__name__)
T = TypeVar("T")

HOME = ".fedkeeper"
EMBEDDED = "embedded"
RUNS, ACTIVATIONS = "runs", "activations"


# ------------------------------------------------------------------------------------------------------ errors


class StoreError(Exception):
    """Base of the store's typed errors."""


class StoreConfigError(StoreError):
    """The mongo_config cannot be turned into a connection (bad URL, unset ${ENV})."""


class StoreUnavailable(StoreError):
    """The store cannot be reached: one line naming the host, never the password. The CLI exits with 1."""

    exit_code = 1


class StoreAuthError(StoreUnavailable):
    """The server rejected the credentials."""


class EmbeddedServerError(StoreUnavailable):
    """The embedded nx-27017 server did not start; the message ends with the tail of its log."""


class RunMissing(StoreError, KeyError):
    def __init__(self, run_id: str) -> None:
        super().__init__(run_id)
        self.run_id = run_id

    def __str__(self) -> str:
        return f"run {self.run_id} does not exist"


class ActivationMissing(StoreError, KeyError):
    def __init__(self, activation_id: str) -> None:
        super().__init__(activation_id)
        self.activation_id = activation_id

    def __str__(self) -> str:
        return f"activation {self.activation_id} does not exist"


class ActivationConflict(StoreError):
    """Another activation already records this (run, round, client, attempt)."""

    def __init__(self, run_id: str, round: Any, client_id: Any, attempt: Any) -> None:
        super().__init__(f"run {run_id} round {round} client {client_id} attempt {attempt} is already recorded")
        self.run_id, self.round, self.client_id, self.attempt = run_id, round, client_id, attempt


# ------------------------------------------------------------------------------------------------------ config


class MongoSettings(Protocol):
    """What open_store reads from ``config.MongoConfig`` (duck-typed so the store does not depend on config)."""

    url: str
    db: str
    username: str | None
    password: Any  # str, or a SecretStr-like object with get_secret_value()
    auth_source: str | None
    tls: bool | None
    tls_ca_file: str | None
    tls_allow_invalid_certificates: bool
    connect_timeout_ms: int
    server_selection_timeout_ms: int
    keep_models: int


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_SECRET_QUERY_KEYS = {"authmechanismproperties", "tlscertificatekeyfilepassword"}


def _secret(value: Any) -> str | None:
    if value is None:
        return None
    getter = getattr(value, "get_secret_value", None)
    return str(getter() if callable(getter) else value)


def _expand_env(text: str, key: str) -> str:
    """Resolve ${NAME} / ${NAME:-default} left in a value (config.py normally did it already)."""

    def sub(m: re.Match[str]) -> str:
        value = os.environ.get(m.group(1))
        if value is None:
            if m.group(2) is None:
                raise StoreConfigError(f"{key} refers to ${{{m.group(1)}}}, which is not set")
            return m.group(2)
        return value

    return _ENV_REF.sub(sub, text)


def _split_netloc(netloc: str) -> tuple[str | None, str | None, str]:
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        return None, None, netloc
    user, colon, password = userinfo.partition(":")
    return unquote_plus(user), (unquote_plus(password) if colon else None), hosts  # as pymongo parses it


def hosts_of(url: str) -> str:
    """``host:port[,host:port]`` of a MongoDB URL: what error messages may name."""
    return _split_netloc(urlsplit(url).netloc)[2] or "?"


def display_url(url: str) -> str:
    """The URL with its password and secret options replaced by ``***`` (safe for logs and messages)."""
    parts = urlsplit(url)
    user, password, hosts = _split_netloc(parts.netloc)
    netloc = hosts
    if user is not None:
        netloc = f"{quote_plus(user)}{':***' if password is not None else ''}@{hosts}"
    query = [(k, "***" if k.lower() in _SECRET_QUERY_KEYS else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query, safe="*,:/"), ""))


@dataclass(frozen=True)
class Connection:
    """A resolved connection: the full URL (may hold a password) and the client-only options."""

    url: str
    options: dict[str, Any]
    secrets: tuple[str, ...] = ()

    @property
    def hosts(self) -> str:
        return hosts_of(self.url)

    @property
    def display_url(self) -> str:
        return display_url(self.url)


def resolve(mongo: MongoSettings, embedded_url: str | None = None) -> Connection:
    """Turn mongo_config into one URL that functions can use as is (``FK_MONGO_URL``) plus client timeouts.

    Credentials, authSource and TLS settings from separate keys are folded into the URL; options already in the
    URL win over the config's defaults.
    """
    timeouts = {
        "connectTimeoutMS": int(getattr(mongo, "connect_timeout_ms", 5000)),
        "serverSelectionTimeoutMS": int(getattr(mongo, "server_selection_timeout_ms", 5000)),
    }
    if embedded_url is not None:
        return Connection(embedded_url, timeouts)
    raw = _expand_env(str(mongo.url), "mongo_config.url")
    parts = urlsplit(raw)
    if parts.scheme not in ("mongodb", "mongodb+srv") or not parts.netloc:
        raise StoreConfigError(f"mongo_config.url must be 'embedded' or a mongodb:// URL, got {display_url(raw)!r}")
    user, password, hosts = _split_netloc(parts.netloc)
    if mongo.username:
        user = _expand_env(mongo.username, "mongo_config.username")
    cfg_password = _secret(getattr(mongo, "password", None))
    if cfg_password:
        password = _expand_env(cfg_password, "mongo_config.password")
    if password and not user:
        raise StoreConfigError("mongo_config has a password but no username")
    netloc = hosts
    if user:
        netloc = f"{quote_plus(user)}{':' + quote_plus(password) if password else ''}@{hosts}"
    query = parse_qsl(parts.query, keep_blank_values=True)
    present = {k.lower() for k, _ in query}

    def add(key: str, value: Any) -> None:
        if value is not None and key.lower() not in present:
            query.append((key, value))

    add("authSource", getattr(mongo, "auth_source", None))
    tls = getattr(mongo, "tls", None)
    add("tls", None if tls is None else str(bool(tls)).lower())
    add("tlsCAFile", getattr(mongo, "tls_ca_file", None))
    if getattr(mongo, "tls_allow_invalid_certificates", False):
        add("tlsAllowInvalidCertificates", "true")
    url = urlunsplit((parts.scheme, netloc, parts.path or "/", urlencode(query), ""))
    options = {k: v for k, v in timeouts.items() if k.lower() not in present}
    secrets = tuple(s for s in {password, quote_plus(password) if password else None} if s)
    return Connection(url, options, secrets)


def _one_line(exc: BaseException, secrets: Iterable[str] = ()) -> str:
    """A short, single-line reason from a pymongo error, with any secret removed."""
    text = str(exc).split(", Timeout:")[0].split(", full error:")[0]
    text = " ".join(text.split())
    for s in secrets:
        text = text.replace(s, "***")
    return text[:300] or type(exc).__name__


# --------------------------------------------------------------------------------------------- embedded server


def _free_port(host: str = "127.0.0.1", preferred: int | None = None) -> int:
    """`preferred` if it can be bound now, else any free port."""
    if preferred:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, preferred))
                return preferred
            except OSError:
                pass
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _tail(path: Path, lines: int = 6) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    kept = [ln.strip() for ln in text.splitlines() if ln.strip()][-lines:]
    return " | ".join(kept)[-800:]


@dataclass
class NxServer:
    """One nx-27017 process on 127.0.0.1: start (free port, wait until it answers) and stop (terminate, wait, kill).

    Started in its own session, so a Ctrl-C in the terminal reaches only the orchestrator, which stops it.
    """

    data_dir: Path
    log_file: Path
    pid_file: Path
    out_file: Path
    lease_dir: Path | None = None
    lease_grace_s: float = 5.0
    host: str = "127.0.0.1"
    port: int = 0
    preferred_port: int | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    startup_s: float | None = field(default=None, init=False)

    @classmethod
    def in_dir(cls, home: Path, **kw: Any) -> NxServer:
        """Data, log, pid and output files under ``home``."""
        return cls(home / "store", home / "nx.log", home / "nx.pid", home / "nx.out", **kw)

    @property
    def url(self) -> str:
        return f"mongodb://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def _spawn(self, port: int) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        # The child runs in the data directory: if this fedkeeper was found through a relative sys.path entry (a
        # source checkout run from its folder), point the child at it explicitly.
        package_root = str(Path(__file__).resolve().parent.parent)
        if package_root not in {p for p in sys.path if os.path.isabs(p)}:
            env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        if self.lease_dir is not None:
            env["FK_NX_LEASE_DIR"] = str(self.lease_dir)
            env["FK_NX_LEASE_GRACE_S"] = str(self.lease_grace_s)
        cmd = [
            sys.executable, "-m", "fedkeeper.nxserve", "--host", self.host, "-p", str(port),
            "--data-dir", str(self.data_dir), "--log-file", str(self.log_file), "--pid-file", str(self.pid_file),
        ]
        with open(self.out_file, "wb") as out:  # the child keeps its own descriptor
            return subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, env=env, cwd=str(self.data_dir),
            )

    def _diagnosis(self) -> str:
        return _tail(self.out_file) or _tail(self.log_file) or "no output"

    def start(self, timeout_s: float = 30.0) -> str:
        """Start and wait until a ping answers; returns the URL. Raises EmbeddedServerError with the log tail."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.log_file.exists() and self.log_file.stat().st_size > 10 * 1024 * 1024:
            self.log_file.replace(self.log_file.with_suffix(".log.1"))
        t0 = time.perf_counter()
        for attempt in range(3):
            port = self.port or _free_port(self.host, self.preferred_port if attempt == 0 else None)
            self.proc = self._spawn(port)
            try:
                ready = self._wait_ready(port, t0 + timeout_s, timeout_s)
            except BaseException:
                self.stop()
                raise
            if ready:
                self.port, self.startup_s = port, time.perf_counter() - t0
                return self.url
            # The process exited: retry on another port only if ours was taken meanwhile.
            diag = self._diagnosis()
            self.proc = None
            if self.port or "address already in use" not in diag.lower():
                raise EmbeddedServerError(f"embedded nx-27017 on {self.host}:{port} exited at start-up: {diag}")
        raise EmbeddedServerError(f"embedded nx-27017 found no free port on {self.host}: {self._diagnosis()}")

    def _wait_ready(self, port: int, deadline: float, timeout_s: float) -> bool:
        client = pymongo.MongoClient(
            self.host, port, serverSelectionTimeoutMS=250, connectTimeoutMS=250, directConnection=True
        )
        try:
            while True:
                if self.proc is not None and self.proc.poll() is not None:
                    return False
                try:
                    client.admin.command("ping")
                    return True
                except AutoReconnect:
                    pass
                if time.perf_counter() > deadline:
                    self.stop()
                    raise EmbeddedServerError(
                        f"embedded nx-27017 on {self.host}:{port} did not answer within "
                        f"{timeout_s:g}s: {self._diagnosis()}"
                    )
                time.sleep(0.05)
        finally:
            client.close()

    def stop(self, timeout_s: float = 5.0) -> int | None:
        """Terminate, wait, kill if needed, and reap. Idempotent; returns the exit code."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        try:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        except BaseException:  # a second Ctrl-C while stopping: do not leave the process behind
            proc.kill()
            proc.wait()
            raise
        return proc.returncode


def _stop_pid(pid: int, create_time: float, timeout_s: float = 5.0) -> None:
    """Stop a server started by another fedkeeper process (not our child: its parent or init reaps it)."""
    if not _same_process(pid, create_time):
        return
    try:
        p = psutil.Process(pid)
        p.terminate()
        _, alive = psutil.wait_procs([p], timeout=timeout_s)
        for q in alive:
            q.kill()
        psutil.wait_procs(alive, timeout=timeout_s)
    except psutil.NoSuchProcess:
        pass


class EmbeddedServer:
    """The per-workdir shared nx-27017 server: start or join on enter, leave (and stop if last) on exit."""

    def __init__(self, workdir: Path, *, start_timeout_s: float = 30.0, lease_grace_s: float = 5.0,
                 lock_timeout_s: float = 60.0) -> None:
        self.home = Path(workdir).resolve() / HOME
        self.state_file = self.home / "store.json"
        self.lock_file = self.home / "store.lock"
        self.lease_dir = self.home / "leases"
        self.start_timeout_s = start_timeout_s
        self.lease_grace_s = lease_grace_s
        self.lock_timeout_s = lock_timeout_s
        self.server: NxServer | None = None  # set when this object started the process
        self.port: int | None = None
        self.reused = False
        self.startup_s: float | None = None
        self._lease: Path | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("embedded server is not open")
        return f"mongodb://127.0.0.1:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self.home / "store"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        import fcntl

        with open(self.lock_file, "a+") as fh:
            deadline = time.monotonic() + self.lock_timeout_s
            while True:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                        raise EmbeddedServerError(
                            f"embedded store in {self.home} is locked by another fedkeeper command"
                        ) from exc
                    time.sleep(0.05)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _read_state(self) -> dict[str, Any] | None:
        try:
            state = json.loads(self.state_file.read_text())
            return state if isinstance(state, dict) else None
        except (OSError, ValueError):
            return None

    def _write_json(self, path: Path, data: dict[str, Any]) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(path)

    @staticmethod
    def _answers(port: int) -> bool:
        client = pymongo.MongoClient(
            "127.0.0.1", port, serverSelectionTimeoutMS=1000, connectTimeoutMS=1000, directConnection=True
        )
        try:
            client.admin.command("ping")
            return True
        except AutoReconnect:
            return False
        finally:
            client.close()

    def _running(self) -> dict[str, Any] | None:
        state = self._read_state()
        if state is None:
            return None
        try:
            if _same_process(int(state["pid"]), float(state["create_time"])) and self._answers(int(state["port"])):
                return state
        except (KeyError, TypeError, ValueError):
            pass
        return None

    def _clear_stale(self) -> None:
        """No recorded live server: make sure nothing else serves the data, then remove leftovers."""
        pid_file = self.home / "nx.pid"
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            pid = None
        if pid is not None and _create_time(pid) is not None:
            with contextlib.suppress(psutil.Error):
                if any("serve_embedded" in part or "nx_27017" in part for part in psutil.Process(pid).cmdline()):
                    raise EmbeddedServerError(
                        f"an nx-27017 server (pid {pid}) serves {self.data_dir} but is not recorded in "
                        f"{self.state_file.name}: stop it first"
                    )
        for path in (pid_file, self.state_file):
            path.unlink(missing_ok=True)

    @property
    def _port_file(self) -> Path:
        return self.home / "port"

    def _last_port(self) -> int | None:
        try:
            port = int(self._port_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return port if 1024 <= port <= 65535 else None

    def open(self) -> EmbeddedServer:
        self.home.mkdir(parents=True, exist_ok=True)
        self.lease_dir.mkdir(exist_ok=True)
        me = psutil.Process()
        with self._locked():
            self._lease = self.lease_dir / f"{me.pid}-{uuid.uuid4().hex[:12]}.lease"
            self._write_json(self._lease, {"pid": me.pid, "create_time": me.create_time()})
            try:
                state = self._running()
                if state is not None:
                    self.port, self.reused = int(state["port"]), True
                else:
                    self._clear_stale()
                    server = NxServer.in_dir(self.home, lease_dir=self.lease_dir, lease_grace_s=self.lease_grace_s)
                    # the same port as last time when it is free: the store URL that functions were deployed
                    # with stays valid, so a later `deploy` or `start` finds them unchanged
                    server.preferred_port = self._last_port()
                    server.start(self.start_timeout_s)
                    self._port_file.write_text(str(server.port))
                    self.server, self.port, self.startup_s = server, server.port, server.startup_s
                    assert server.proc is not None
                    self._write_json(self.state_file, {
                        "pid": server.proc.pid, "create_time": _create_time(server.proc.pid) or 0.0,
                        "port": server.port, "data_dir": str(self.data_dir), "started": time.time(),
                    })
                    log.info("embedded nx-27017 started on 127.0.0.1:%s in %.2fs", server.port, server.startup_s)
            except BaseException:
                self._lease.unlink(missing_ok=True)
                self._lease = None
                raise
        atexit.register(self.close)
        return self

    def close(self) -> None:
        """Leave; the last user out stops the server. Idempotent, also registered with atexit."""
        if self._lease is None:
            return
        atexit.unregister(self.close)
        with self._locked():
            self._lease.unlink(missing_ok=True)
            self._lease = None
            if _live_leases(self.lease_dir):
                return  # another command still uses it
            state = self._read_state()
            if self.server is not None:
                self.server.stop()
            elif state is not None:
                with contextlib.suppress(KeyError, TypeError, ValueError):
                    _stop_pid(int(state["pid"]), float(state["create_time"]))
            self.state_file.unlink(missing_ok=True)

    def __enter__(self) -> EmbeddedServer:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------------------------------------------- store


def _plain(value: Any) -> Any:
    """Enums (e.g. providers.base.State) are stored as their values so every backend compares them alike."""
    return value.value if isinstance(value, enum.Enum) else value


def _public(doc: dict[str, Any], duplicate: bool) -> dict[str, Any]:
    return {**doc, "duplicate": duplicate}


class Store:
    """Typed access to runs and activations, plus ``blobs`` for models and updates.

    ``url`` is what functions get as ``FK_MONGO_URL`` and may contain a password: log ``display_url`` instead.
    Every operation retries transient network errors (AutoReconnect, NetworkTimeout) a few times and then
    raises StoreUnavailable; writes are keyed by natural ids, so a retried write cannot duplicate.
    """

    def __init__(
        self, db: Database, *, url: str, client: Any = None, secrets: Iterable[str] = (), attempts: int = 3,
        keep_models: int = 3, inline_limit: int = INLINE_LIMIT, embedded: EmbeddedServer | None = None,
    ) -> None:
        self.db = db
        self.db_name: str = db.name
        self.url = url
        self.display_url = display_url(url)
        self.hosts = hosts_of(url)
        self.client = client
        self.keep_models = keep_models
        self.embedded = embedded
        self._secrets = tuple(secrets)
        self._attempts = attempts
        self.runs = db[RUNS]
        self.activations = db[ACTIVATIONS]
        self.blobs = BlobStore(db, inline_limit=inline_limit, retry=self._call)

    # ------------------------------------------------------------------------------------------- plumbing

    @classmethod
    def connect(cls, conn: Connection, db_name: str, *, attempts: int = 3, start_attempts: int = 2, **kw: Any) -> Store:
        """Connect and ping (retrying server selection at start-up); StoreUnavailable if it cannot be reached."""
        try:
            client = pymongo.MongoClient(conn.url, **conn.options)
        except (ConfigurationError, ValueError) as exc:
            raise StoreConfigError(f"invalid MongoDB URL {conn.display_url}: {_one_line(exc, conn.secrets)}") from None
        try:
            for attempt in Retrying(
                stop=stop_after_attempt(start_attempts), wait=wait_exponential(multiplier=0.2, max=2.0),
                retry=retry_if_exception_type(AutoReconnect), reraise=True,
            ):
                with attempt:
                    client.admin.command("ping")
        except AutoReconnect as exc:
            client.close()
            raise StoreUnavailable(f"cannot reach MongoDB at {conn.hosts}: {_one_line(exc, conn.secrets)}") from None
        except OperationFailure as exc:
            client.close()
            if exc.code in (18, 13) or "auth" in str(exc).lower():
                raise StoreAuthError(
                    f"MongoDB at {conn.hosts} rejected the credentials: {_one_line(exc, conn.secrets)}"
                ) from None
            raise StoreUnavailable(f"MongoDB at {conn.hosts} refused ping: {_one_line(exc, conn.secrets)}") from None
        return cls(client[db_name], url=conn.url, client=client, secrets=conn.secrets, attempts=attempts, **kw)

    def _call(self, fn: Callable[[], T]) -> T:
        try:
            for attempt in Retrying(
                stop=stop_after_attempt(self._attempts), wait=wait_exponential(multiplier=0.1, max=1.0),
                retry=retry_if_exception_type(AutoReconnect), reraise=True,
            ):
                with attempt:
                    return fn()
        except AutoReconnect as exc:
            raise StoreUnavailable(f"lost MongoDB at {self.hosts}: {_one_line(exc, self._secrets)}") from None
        raise AssertionError("unreachable")

    def ensure_indexes(self) -> None:
        """Indexes the orchestrator's queries rely on; the activation key is unique."""
        self._call(lambda: self.runs.create_index([("experiment", 1), ("started", 1)], name="experiment_started"))
        self._call(lambda: self.activations.create_index(
            [("run_id", 1), ("round", 1), ("client_id", 1), ("attempt", 1)], unique=True, name="activation_key"))
        self._call(lambda: self.activations.create_index([("run_id", 1), ("state", 1)], name="run_state"))
        self.blobs.ensure_indexes()

    def ping(self) -> None:
        self._call(lambda: self.db.command("ping"))

    def close(self) -> None:
        if self.client is not None:
            self.client.close()

    # ----------------------------------------------------------------------------------------------- runs

    def create_run(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Insert a run (``_id`` is the run id); an existing run is returned unchanged with ``duplicate: True``."""
        run_id = doc.get("_id", doc.get("run_id"))
        if not isinstance(run_id, str) or not run_id or ":" in run_id:
            raise ValueError(f"run doc needs an '_id' without ':', got {run_id!r}")
        now = time.time()
        full = {k: _plain(v) for k, v in doc.items()}
        full.update(_id=run_id, run_id=run_id)
        full.setdefault("status", "running")
        full.setdefault("started", now)
        full.setdefault("updated", now)
        try:
            self._call(lambda: self.runs.insert_one(full))
            return _public(full, duplicate=False)
        except DuplicateKeyError:
            existing = self.get_run(run_id)
            if existing is None:
                raise
            return _public(existing, duplicate=True)

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        return self._call(lambda: self.runs.find_one({"_id": run_id}))

    def update_run(self, run_id: str, **fields: Any) -> dict[str, Any]:
        """``$set`` fields (dotted paths allowed) and return the run after the update."""
        values = {k: _plain(v) for k, v in fields.items()}
        values.setdefault("updated", time.time())
        doc = self._call(lambda: self.runs.find_one_and_update(
            {"_id": run_id}, {"$set": values}, return_document=pymongo.ReturnDocument.AFTER))
        if doc is None:
            raise RunMissing(run_id)
        return doc

    def list_runs(self, experiment: str | None = None) -> list[dict[str, Any]]:
        """Runs (optionally of one experiment), oldest first."""
        query = {} if experiment is None else {"experiment": experiment}
        return self._call(lambda: list(self.runs.find(query).sort([("started", 1), ("_id", 1)])))

    def latest_run(self, experiment: str) -> dict[str, Any] | None:
        runs = self._call(lambda: list(
            self.runs.find({"experiment": experiment}).sort([("started", -1), ("_id", -1)]).limit(1)))
        return runs[0] if runs else None

    def delete_run(self, run_id: str) -> int:
        """Remove a run with its activations, models and updates (blobs included); returns docs removed."""
        removed = self.blobs.delete_run(run_id)
        removed += self._call(lambda: self.activations.delete_many({"run_id": run_id})).deleted_count
        removed += self._call(lambda: self.runs.delete_one({"_id": run_id})).deleted_count
        return removed

    # ----------------------------------------------------------------------------------------- activations

    def insert_activation(self, doc: dict[str, Any]) -> str:
        """Record an activation (``_id`` defaults to a new uuid); returns its id. Repeating the same insert is a
        no-op; a different activation for the same (run, round, client, attempt) raises ActivationConflict."""
        full = {k: _plain(v) for k, v in doc.items()}
        full.setdefault("_id", uuid.uuid4().hex)
        for key in ("run_id", "round", "client_id", "attempt"):
            full.setdefault(key, None)
        try:
            self._call(lambda: self.activations.insert_one(full))
            return str(full["_id"])
        except DuplicateKeyError:
            existing = self._call(lambda: self.activations.find_one({"_id": full["_id"]}))
            same_key = existing is not None and all(
                existing.get(k) == full[k] for k in ("run_id", "round", "client_id", "attempt"))
            if same_key:
                return str(full["_id"])
            raise ActivationConflict(full["run_id"], full["round"], full["client_id"], full["attempt"]) from None

    def update_activation(self, activation_id: str, **fields: Any) -> dict[str, Any]:
        values = {k: _plain(v) for k, v in fields.items()}
        doc = self._call(lambda: self.activations.find_one_and_update(
            {"_id": activation_id}, {"$set": values}, return_document=pymongo.ReturnDocument.AFTER))
        if doc is None:
            raise ActivationMissing(activation_id)
        return doc

    def record_activations(self, inserts: Iterable[dict[str, Any]] = (),
                           updates: Iterable[tuple[str, dict[str, Any]]] = ()) -> None:
        """Many activation writes in two round trips (the tracker flushes once per polling pass).

        Inserts go first, so an update may follow its own insert in the same batch. Re-inserting the same
        ``_id`` (a retried flush) is a no-op; any other write error is raised.
        """
        docs = []
        for doc in inserts:
            full = {k: _plain(v) for k, v in doc.items()}
            full.setdefault("_id", uuid.uuid4().hex)
            for key in ("run_id", "round", "client_id", "attempt"):
                full.setdefault(key, None)
            docs.append(full)
        if docs:
            try:
                self._call(lambda: self.activations.insert_many(docs, ordered=False))
            except BulkWriteError as exc:
                for error in exc.details.get("writeErrors", []):
                    if error.get("code") != 11000:
                        raise
                    doc = docs[error["index"]]
                    existing = self._call(lambda d=doc: self.activations.find_one({"_id": d["_id"]}))
                    if existing is None or any(existing.get(k) != doc[k]
                                               for k in ("run_id", "round", "client_id", "attempt")):
                        raise ActivationConflict(doc["run_id"], doc["round"], doc["client_id"], doc["attempt"]) \
                            from None
        sets = [(activation_id, {"$set": {k: _plain(v) for k, v in fields.items()}}) for activation_id, fields in updates]
        if not sets:
            return
        try:
            self._call(lambda: self.activations.bulk_write(
                [pymongo.UpdateOne({"_id": a}, change) for a, change in sets], ordered=True))
        except TypeError:  # mongomock cannot replay pymongo 4.20's UpdateOne: one by one, same result
            for activation_id, change in sets:
                self._call(lambda a=activation_id, c=change: self.activations.update_one({"_id": a}, c))

    def find_activations(
        self, run_id: str, round: int | None = None, state: Any = None
    ) -> list[dict[str, Any]]:
        """Activations of a run (optionally one round, one state or a collection of states), in
        (round, client_id, attempt) order."""
        query: dict[str, Any] = {"run_id": run_id}
        if round is not None:
            query["round"] = round
        if state is not None:
            if isinstance(state, (list, tuple, set, frozenset)):
                query["state"] = {"$in": [_plain(s) for s in state]}
            else:
                query["state"] = _plain(state)
        return self._call(lambda: list(
            self.activations.find(query).sort([("round", 1), ("client_id", 1), ("attempt", 1)])))

    # ------------------------------------------------------------------------------------ models / updates

    def get_model_doc(self, run_id: str, round: int) -> dict[str, Any] | None:
        return self.blobs.get_model_doc(run_id, round)

    def list_model_docs(self, run_id: str) -> list[dict[str, Any]]:
        return self.blobs.list_model_docs(run_id)

    def collect_garbage(self, run_id: str, last_aggregated_round: int, protect: Iterable[int] = ()) -> dict[str, int]:
        """Drop blobs a resumed run no longer needs: global models beyond the newest ``keep_models`` (and not
        protected) and the updates of rounds already aggregated."""
        return {
            "models": self.blobs.gc_models(run_id, self.keep_models, protect),
            "updates": self.blobs.gc_updates(run_id, last_aggregated_round),
        }


@contextlib.contextmanager
def open_store(
    mongo: MongoSettings, *, workdir: Path | str, start_timeout_s: float = 30.0, attempts: int = 3
) -> Iterator[Store]:
    """Connect to the configured store (starting or joining the embedded server for ``url: embedded``), create
    the indexes, and clean up on exit, also on Ctrl-C and errors."""
    with contextlib.ExitStack() as stack:
        embedded = None
        if str(mongo.url).strip().lower() == EMBEDDED:
            embedded = stack.enter_context(EmbeddedServer(Path(workdir), start_timeout_s=start_timeout_s))
            conn = resolve(mongo, embedded_url=embedded.url)
        else:
            conn = resolve(mongo)
        store = Store.connect(
            conn, mongo.db, attempts=attempts, keep_models=int(getattr(mongo, "keep_models", 3)), embedded=embedded
        )
        stack.callback(store.close)
        store.ensure_indexes()
        yield store

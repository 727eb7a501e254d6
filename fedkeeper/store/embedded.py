"""The embedded nx-27017 server behind ``mongo_config.url: embedded``: one process per working directory.

Its own module because managing a server process (ports, locks, leases, pid and state files) is a job apart
from reading and writing the store; ``store.open_store`` starts or joins it and connects like to any MongoDB.

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

nx-27017 0.8.1 gaps worked around here:

- single-file mode (``--db FILE``) shares collections between logical databases and ``drop_database`` empties
  all of them, so the server runs with ``--data-dir`` (one SQLite file per database);
- it logs every command at INFO: the server runs with its loggers at WARNING (``FK_NX_LOG_LEVEL`` overrides);
- ``python -m nx_27017`` does not exist, so the server runs nx-27017's ``main`` through
  ``python -m fedkeeper.store.nxserve``, which adds the lease watchdog;
- its default asyncio mode hands every request from the event loop to a thread and back: 0.6 ms per round trip
  against 0.3 ms in its ``--threaded`` mode (a blocking thread per connection), which it runs in.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import json
import logging
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pymongo
from pymongo.errors import AutoReconnect

from fedkeeper.store.nxserve import create_time as _create_time
from fedkeeper.store.nxserve import live_leases as _live_leases
from fedkeeper.store.nxserve import same_process as _same_process
from fedkeeper.store.errors import EmbeddedServerError

log = logging.getLogger("fedkeeper.store")  # the name it logged under before it moved out of store.py

HOME = ".fedkeeper"
SERVER_MODULE = "fedkeeper.store.nxserve"  # what the server runs as (``python -m``), and how a stale one is recognised


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
        # (the folder that holds the `fedkeeper` package: its own folder on sys.path would shadow the standard
        # library's `secrets` and the `packaging` distribution with fedkeeper/secrets.py and fedkeeper/packaging.py)
        package_root = str(Path(__file__).resolve().parents[2])
        if package_root not in {p for p in sys.path if os.path.isabs(p)}:
            env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        if self.lease_dir is not None:
            env["FK_NX_LEASE_DIR"] = str(self.lease_dir)
            env["FK_NX_LEASE_GRACE_S"] = str(self.lease_grace_s)
        cmd = [
            sys.executable, "-m", SERVER_MODULE, "--host", self.host, "-p", str(port),
            "--data-dir", str(self.data_dir), "--log-file", str(self.log_file), "--pid-file", str(self.pid_file),
            "--threaded",  # a thread per connection: half the time per round trip of its asyncio mode (bench_scale)
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


def _is_server(cmdline: list[str]) -> bool:
    """A command line of an nx-27017 server: ours (``-m fedkeeper.store.nxserve``) or one started by hand."""
    return any(part in (SERVER_MODULE, "nx-27017") or "nx_27017" in part for part in cmdline)


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
        candidates = []
        if pid is not None and _create_time(pid) is not None:
            with contextlib.suppress(psutil.Error):
                if _is_server(psutil.Process(pid).cmdline()):
                    candidates.append(pid)
        other = self._server_on_data_dir()  # its pid file gone too: the command line still names the data
        if other is not None and other not in candidates:
            candidates.append(other)
        for server_pid in candidates:
            # A server nobody recorded: left by a command killed between starting it and writing store.json.
            # We hold the lock, so nobody is starting one now; if no other live command holds a lease it is an
            # orphan (its watchdog would stop it within the grace anyway): stop it now rather than refuse.
            others = [lease for lease in _live_leases(self.lease_dir) if lease != self._lease]
            created = _create_time(server_pid)
            if others or created is None:
                raise EmbeddedServerError(
                    f"an nx-27017 server (pid {server_pid}) serves {self.data_dir} but is not recorded in "
                    f"{self.state_file.name}: stop it first"
                )
            log.warning("stopping an orphaned nx-27017 server (pid %s) left on %s", server_pid, self.data_dir)
            _stop_pid(server_pid, created)
        for path in (pid_file, self.state_file):
            path.unlink(missing_ok=True)

    def _server_on_data_dir(self) -> int | None:
        """The pid of a running server whose command line names this data directory (a few ms to scan)."""
        mine = str(self.data_dir.resolve())
        for proc in psutil.process_iter(["cmdline"]):
            cmd = proc.info.get("cmdline") or []
            if not _is_server(cmd):
                continue
            for flag, value in zip(cmd, cmd[1:]):
                if flag == "--data-dir" and os.path.abspath(value) == mine:
                    return proc.pid
        return None

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
            self._write_json(self._lease, {"pid": me.pid, "create_time": _create_time(me.pid) or 0.0})
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

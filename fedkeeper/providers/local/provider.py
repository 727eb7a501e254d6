"""The embedded `local` platform (config `providers.local.<cluster>`): worker processes on this machine.

What a researcher runs on a laptop and what every end-to-end test runs on, so it behaves like a FaaS platform:
deploy unpacks the very zip the packager builds, invoke returns an activation id at once, warm workers are
reused and new ones are cold starts, timeouts kill, memory is capped, a crash fails only its activation, faults
can be injected deterministically (scheduling and workers: `local_pool`; faults: `local_faults`).

Deployments are folders, so a later command (another process) sees what an earlier `deploy` did:

    <workdir>/.fedkeeper/local/<cluster>/<function name>/
        code/         the unpacked artifact (the worker's cwd and sys.path[0])
        meta.json     digest, labels, limits, env (may hold the store URL: mode 0600)
        worker.log    the workers' stderr (handler prints, tracebacks with settings masked)

Activation records live in memory only: an activation id this process does not know polls as LOST, which is what
the activations of a crashed orchestrator become (the tracker re-invokes them).
"""

from __future__ import annotations

import atexit
import io
import json
import os
import re
import shutil
import time
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from fedkeeper.providers.base import (
    LABEL_EXPERIMENT,
    DeployResult,
    DeploySpec,
    FunctionInfo,
    FunctionMissing,
    Invocation,
    InvocationFailed,
    PlatformError,
    Provider,
    ProviderError,
    State,
    Status,
)
from fedkeeper.providers.local.pool import MAX_PAYLOAD_BYTES, WorkerPool
from fedkeeper.providers.local.worker import ENTRY_FILE, FunctionRuntime
from fedkeeper.signals import deferred

#: the payload key of the `faults.poison_scale` fault (read by functions/fl_client; no other platform sets it)
POISON_KEY = "local_fault_poison_scale"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
META_FILE = "meta.json"
CODE_DIR = "code"
LOG_FILE = "worker.log"


def _profile_key(payload: dict[str, Any]) -> dict[str, Any]:
    """(client, round, attempt) of a call, from the payload the tracker builds: the seed of its profile draws.
    A payload without them (the aggregator has no client; a bare test call has none) draws as client None,
    round 0, attempt 1."""

    def number(key: str, default: int | None) -> int | None:
        value = payload.get(key)
        return int(value) if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else default

    return {"client": number("client_id", None), "round_number": number("round", 0) or 0,
            "attempt": number("attempt", 1) or 1}


class LocalProvider(Provider):
    """One local cluster. The worker pool (and its dispatcher thread) starts on the first invoke."""

    kind = "local"

    def __init__(self, cluster: str, config: Any, *, workdir: Path) -> None:
        super().__init__(cluster, config, workdir=workdir)
        self.root = self.workdir / ".fedkeeper" / "local" / cluster
        self._pool: WorkerPool | None = None
        self._closed = False
        self._runtimes: dict[str, tuple[tuple[int, int, int], FunctionRuntime]] = {}
        self._settle_listeners: list[Callable[[], None]] = []
        atexit.register(self.close)  # safety net: no worker outlives the command

    # ------------------------------------------------------------------ deployments

    def _dir(self, name: str) -> Path:
        if not _NAME.fullmatch(name) or ".." in name:
            raise ProviderError(self.cluster, f"invalid function name {name!r} (letters, digits, '-', '_', '.')")
        return self.root / name

    def deploy(self, spec: DeploySpec) -> DeployResult:
        t0 = time.perf_counter()
        fdir = self._dir(spec.name)
        old = self._read_meta(spec.name)
        code = fdir / CODE_DIR
        _sweep_orphans(fdir, (".code-", ".old-"))
        _sweep_orphans(self.root, (".removed-",))
        if old is not None and old.get("digest") == spec.digest and (code / ENTRY_FILE).is_file():
            return DeployResult(spec.name, "unchanged", spec.digest, time.perf_counter() - t0)
        fdir.mkdir(parents=True, exist_ok=True)
        staging = fdir / f".code-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        trash = fdir / f".old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        meta = {
            "name": spec.name, "function": spec.function, "digest": spec.digest, "labels": dict(spec.labels),
            "memory_mb": int(spec.memory_mb), "timeout_s": float(spec.timeout_s),
            "concurrency": int(spec.concurrency), "env": dict(spec.env), "extra": spec.extra,
            "deployed": time.time(),
        }
        try:
            self._unpack(spec, staging)
            with deferred():  # Ctrl-C/SIGTERM wait: the code and its meta.json change together or not at all
                if code.exists():
                    code.rename(trash)
                staging.rename(code)
                self._write_private_json(fdir / META_FILE, meta)
        finally:
            with deferred():  # a signal must not cut the cleanup short and leave a staging folder behind
                shutil.rmtree(staging, ignore_errors=True)
                shutil.rmtree(trash, ignore_errors=True)
        self._runtimes.pop(spec.name, None)
        if self._pool is not None:
            self._pool.retire(spec.name)  # warm workers run the old code: let them go
        action = "created" if old is None else "updated"
        return DeployResult(spec.name, action, spec.digest, time.perf_counter() - t0)

    def _unpack(self, spec: DeploySpec, dest: Path) -> None:
        try:
            zf = zipfile.ZipFile(io.BytesIO(spec.artifact))
        except zipfile.BadZipFile as exc:
            raise ProviderError(self.cluster, f"artifact of {spec.name} is not a zip file: {exc}") from None
        with zf:
            names = zf.namelist()
            for member in names:
                path = PurePosixPath(member)
                if path.is_absolute() or ".." in path.parts:
                    raise ProviderError(self.cluster, f"artifact of {spec.name} has an unsafe path {member!r}")
            for required in (ENTRY_FILE, "handler.py"):
                if required not in names:
                    raise ProviderError(self.cluster, f"artifact of {spec.name} has no {required}; "
                                                      "build it with packaging.build(function, 'local')")
            dest.mkdir(parents=True)
            zf.extractall(dest)

    @staticmethod
    def _write_private_json(path: Path, data: dict[str, Any]) -> None:
        """Atomic write with mode 0600 from the first byte (the env may hold a password)."""
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh, indent=1, sort_keys=True, default=str)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _read_meta(self, name: str) -> dict[str, Any] | None:
        try:
            return json.loads((self._dir(name) / META_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise PlatformError(self.cluster, f"cannot read the deployment record of {name}: "
                                              f"{type(exc).__name__}") from None

    def remove(self, name: str) -> bool:
        fdir = self._dir(name)
        if not fdir.exists():
            return False
        existed = (fdir / META_FILE).is_file()
        self._runtimes.pop(name, None)
        if self._pool is not None:
            self._pool.retire(name)
        _sweep_orphans(self.root, (".removed-",))
        trash = self.root / f".removed-{os.getpid()}-{uuid.uuid4().hex[:8]}-{name}"
        with deferred():  # Ctrl-C/SIGTERM wait until the folder is gone: no half-removed trash is left behind
            try:
                fdir.rename(trash)  # disappears at once for every reader, then the files go
            except FileNotFoundError:
                return False
            shutil.rmtree(trash, ignore_errors=True)
        return existed

    def exists(self, name: str) -> bool:
        return (self._dir(name) / META_FILE).is_file()

    def list(self, labels: dict[str, str] | None = None) -> list[FunctionInfo]:
        out: list[FunctionInfo] = []
        if not self.root.is_dir():
            return out
        for fdir in sorted(self.root.iterdir()):
            if fdir.name.startswith(".") or not fdir.is_dir():
                continue
            try:
                meta = self._read_meta(fdir.name)
            except (PlatformError, ProviderError):
                continue
            if meta is None:
                continue
            have = meta.get("labels") or {}
            if labels is None and LABEL_EXPERIMENT not in have:
                continue  # not FedKeeper's (no experiment label): never listed, so never removed by label
            if labels and any(have.get(k) != v for k, v in labels.items()):
                continue
            out.append(FunctionInfo(name=fdir.name, labels=dict(have), digest=meta.get("digest"),
                                    memory_mb=meta.get("memory_mb"), timeout_s=meta.get("timeout_s")))
        return out

    # ------------------------------------------------------------------ invocations

    def _runtime(self, name: str) -> FunctionRuntime:
        """The deployed function's settings, re-read only when its meta.json changed (one stat per call)."""
        fdir = self._dir(name)
        meta_path = fdir / META_FILE
        try:
            st = meta_path.stat()
        except FileNotFoundError:
            raise FunctionMissing(self.cluster, f"function {name} is not deployed") from None
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        cached = self._runtimes.get(name)
        if cached is not None and cached[0] == key:
            return cached[1]
        meta = self._read_meta(name)
        if meta is None:
            raise FunctionMissing(self.cluster, f"function {name} is not deployed")
        runtime = FunctionRuntime(name=name, digest=str(meta["digest"]), code_dir=fdir / CODE_DIR,
                                  log_path=fdir / LOG_FILE, memory_mb=int(meta["memory_mb"]),
                                  timeout_s=float(meta["timeout_s"]), env=dict(meta.get("env") or {}))
        self._runtimes[name] = (key, runtime)
        return runtime

    def _ensure_pool(self) -> WorkerPool:
        if self._closed:
            raise PlatformError(self.cluster, "the local platform is closed")
        if self._pool is None:
            cfg = self.config
            self._pool = WorkerPool(
                self.cluster, concurrency=getattr(cfg, "concurrency", 2), keep_warm_s=getattr(cfg, "keep_warm_s", 60.0),
                cold_start_ms=getattr(cfg, "cold_start_ms", 0.0), faults=getattr(cfg, "faults", None),
                python=getattr(cfg, "python", None), profile=getattr(cfg, "profile", None))
            for callback in self._settle_listeners:
                self._pool.add_listener(callback)
        return self._pool

    def prestart(self, names: list[str]) -> int:
        """Start the worker processes of these deployed functions before their first call (with a cold-start
        model only: `WorkerPool.prestart` says why); returns how many workers are live."""
        pool = self._ensure_pool()
        if not pool.share_workers:
            return 0
        runtimes: dict[str, FunctionRuntime] = {}  # one per code digest: per-client copies share their workers
        for name in names:
            if len(runtimes) >= pool.concurrency:
                break
            try:
                runtime = self._runtime(name)
            except FunctionMissing:
                continue  # not deployed (yet): its first call reports that, as always
            runtimes.setdefault(runtime.digest, runtime)
        return pool.prestart(list(runtimes.values()))

    def on_settle(self, callback: Callable[[], None]) -> None:
        """Call `callback()` whenever one of this cluster's activations settles (from the pool's dispatcher thread):
        the tracker waits on it instead of sleeping out its polling pause, so a freed worker gets its next call at
        once (bench/bench_scale.py). Idempotent per callback."""
        if callback not in self._settle_listeners:
            self._settle_listeners.append(callback)
            if self._pool is not None:
                self._pool.add_listener(callback)

    def off_settle(self, callback: Callable[[], None]) -> None:
        self._settle_listeners = [c for c in self._settle_listeners if c != callback]
        if self._pool is not None:
            self._pool.remove_listener(callback)

    def invoke(self, name: str, payload: dict[str, Any]) -> Invocation:
        fn = self._runtime(name)
        if not isinstance(payload, dict):
            raise InvocationFailed(self.cluster, f"payload for {name} must be a JSON object, not "
                                                 f"{type(payload).__name__}")
        poison = getattr(getattr(self.config, "faults", None), "poison_scale", None)
        if poison is not None:  # a poisoning cluster (robust-aggregation experiments): only fl_client reads it
            payload = {**payload, POISON_KEY: float(poison)}
        try:
            params = json.dumps(payload, separators=(",", ":")).encode()
        except (TypeError, ValueError) as exc:
            raise InvocationFailed(self.cluster, f"payload for {name} is not JSON: {exc}") from None
        if len(params) > MAX_PAYLOAD_BYTES:
            raise InvocationFailed(self.cluster, f"payload for {name} is {len(params)} bytes; FaaS platforms cap "
                                                 f"it at about 1 MB: pass large data through the store")
        try:
            act = self._ensure_pool().submit(fn, params, **_profile_key(payload))
        except RuntimeError as exc:
            raise PlatformError(self.cluster, str(exc)) from None
        return Invocation(cluster=self.cluster, name=name, activation_id=act.id, submitted=act.submitted)

    def poll(self, inv: Invocation) -> Status:
        if self._pool is not None:
            status = self._pool.status(inv.activation_id)
            if status is not None:
                return status
        return Status(State.LOST, activation_id=inv.activation_id,
                      error="the local platform has no record of this activation (submitted by another process)")

    def cancel(self, inv: Invocation) -> Status | None:
        """The local platform stops a call: its worker is freed (or stopped mid-computation), billed up to now."""
        if self._pool is None:
            return None
        return self._pool.cancel(inv.activation_id)

    def wait(self, inv: Invocation, timeout: float | None = None) -> Status:
        """Block until done (local only; the orchestrator polls). For benchmarks and tests."""
        if self._pool is not None:
            status = self._pool.wait(inv.activation_id, timeout)
            if status is not None:
                return status
        return self.poll(inv)

    def worker_pids(self) -> list[int]:
        return self._pool.worker_pids() if self._pool is not None else []

    def profile_description(self) -> dict[str, Any] | None:
        """The cluster's timing profile as recorded in Logs/ (None without one)."""
        from fedkeeper.providers.local.profile import ProfilePlan

        profile = getattr(self.config, "profile", None)
        return ProfilePlan(profile, float(getattr(self.config, "keep_warm_s", 60.0))).describe()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            atexit.unregister(self.close)
        except Exception:  # noqa: BLE001 - interpreter shutting down
            pass
        if self._pool is not None:
            self._pool.close()


def _maker_alive(folder: Path) -> bool:
    """Staging and trash folders carry their maker's pid (`.code-<pid>-<hex>`); one of an older layout has none."""
    try:
        pid = int(folder.name.split("-")[1])
    except (IndexError, ValueError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def _sweep_orphans(folder: Path, prefixes: tuple[str, ...]) -> None:
    """Remove staging and trash folders left by a deploy or remove that was killed (SIGKILL cannot be deferred)
    while they existed; a live process's are its own."""
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        if entry.name.startswith(prefixes) and entry.is_dir(follow_symlinks=False) \
                and not _maker_alive(Path(entry.path)):
            shutil.rmtree(entry.path, ignore_errors=True)

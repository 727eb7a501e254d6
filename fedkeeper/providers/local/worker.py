"""One worker process of the local platform: how it is started, what it is given, how it is stopped.

A worker runs the packaged `fk_local_entry.py` (fedkeeper/providers/entries/local.py) in the unpacked function
folder. It gets a minimal environment (a few inherited variables, the deployment's settings, single-threaded
BLAS), its stderr goes to the function's log, and it leads its own process group: Ctrl-C in the terminal reaches
the orchestrator only (which then stops its workers in order), and killing the group also takes whatever the
handler started. The memory limit and the parent-death signal are applied by the entry itself, before the
handler is imported (see its docstring for why not in a `preexec_fn`).
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENTRY_FILE = "fk_local_entry.py"

#: Address space granted beyond the function's memory, for what the interpreter and its libraries *reserve*
#: without using. RLIMIT_AS counts virtual memory, FaaS platforms count resident memory. Measured here (Python
#: 3.11, numpy 2 with OpenBLAS, pymongo 4): after `import numpy, pymongo` and one MongoClient, VmSize is 147 MB
#: while VmRSS is 51 MB (OPENBLAS_NUM_THREADS=1, MALLOC_ARENA_MAX=1); without those two settings VmSize reaches
#: 275-340 MB for the same 51 MB resident. 128 MB covers the ~96 MB of reservations with some headroom, so a
#: function configured with N MB can hold roughly N MB of data before allocations fail, as on a real platform.
ADDRESS_SPACE_ALLOWANCE_MB = 128
#: how long a worker may take to start and import its handler (OpenWhisk's init timeout is 60 s too)
INIT_TIMEOUT_S = 60.0
#: inherited from the orchestrator's environment; everything else a worker sees is set explicitly
_INHERITED_ENV = ("PATH", "HOME", "USER", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "VIRTUAL_ENV",
                  "SSL_CERT_FILE", "SSL_CERT_DIR",
                  "FK_PROFILE_DIR")  # bench/bench_scale.py --profile: where the entry writes the worker's cProfile


@dataclass(frozen=True)
class FunctionRuntime:
    """What the pool needs to run one deployed function (read from its meta.json by the provider)."""

    name: str
    digest: str
    code_dir: Path
    log_path: Path
    memory_mb: int
    timeout_s: float
    env: dict[str, str] = field(default_factory=dict, repr=False)


class Worker:
    """One worker process. States: starting (no ready message yet), busy, idle, dying (waiting for its EOF).

    `act` is the call it runs; `queued` the next ones, in order, already written to its stdin while `act` runs
    (the pool's queue depth), which the worker starts as soon as it has answered `act` (or runs together with
    `act`, `entry.py`)."""

    __slots__ = ("fn", "proc", "pid", "in_fd", "out_fd", "rbuf", "wbuf", "state", "act", "queued", "running",
                 "ready", "available_at", "deadline", "kill_at", "last_used", "calls", "init_s", "ready_error")

    def __init__(self, fn: FunctionRuntime, proc: subprocess.Popen[bytes], now: float, cold_start_s: float) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        self.fn = fn
        self.proc = proc
        self.pid = proc.pid
        self.in_fd = proc.stdin.fileno()
        self.out_fd = proc.stdout.fileno()
        self.rbuf = bytearray()
        self.wbuf = bytearray()
        self.state = "starting"
        self.act: Any = None  # the activation it runs (pool._Activation)
        self.queued: deque[Any] = deque()  # the next ones, sent, not answered (pool._Activation)
        self.running = False
        self.ready = False
        self.available_at = now + cold_start_s
        self.deadline = now + INIT_TIMEOUT_S
        self.kill_at: float | None = None
        self.last_used = now
        self.calls = 0
        self.init_s: float | None = None
        self.ready_error: str | None = None


def exit_description(rc: int | None) -> str:
    if rc is None:
        return "worker closed its protocol channel"
    if rc < 0:
        try:
            return f"worker exited with code {rc} (killed by {signal.Signals(-rc).name})"
        except ValueError:
            return f"worker exited with code {rc}"
    return f"worker exited with code {rc}"


def worker_env(fn: FunctionRuntime, cluster: str) -> dict[str, str]:
    """Everything a worker sees in os.environ; the `FK_LOCAL_*` entries are consumed by the entry itself."""
    env = {k: os.environ[k] for k in _INHERITED_ENV if k in os.environ}
    env.update(fn.env)
    env.update({
        "PYTHONPATH": str(fn.code_dir),
        "PYTHONDONTWRITEBYTECODE": "1",  # keep the deployed folder exactly the unpacked zip
        "PYTHONUNBUFFERED": "1",
        "OPENBLAS_NUM_THREADS": "1",  # one core per worker, as a function gets; also fewer reserved buffers
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "MALLOC_ARENA_MAX": "1",  # glibc reserves 64 MB of address space per thread arena: see the allowance
        "FK_PLATFORM": "local",
        "FK_CLUSTER": cluster,
        "FK_FUNCTION_NAME": fn.name,
        "FK_MEMORY_LIMIT_MB": str(fn.memory_mb),
        "FK_LOCAL_PARENT_PID": str(os.getpid()),
        "FK_LOCAL_AS_LIMIT_BYTES": str((fn.memory_mb + ADDRESS_SPACE_ALLOWANCE_MB) << 20),
        "FK_LOCAL_MASKED": ",".join(sorted(fn.env)),
    })
    return env


def spawn_worker(python: str, fn: FunctionRuntime, cluster: str, now: float, cold_start_s: float) -> Worker:
    """Start one worker (raises OSError); its pipes are non-blocking, for the dispatcher's selector."""
    with open(fn.log_path, "ab") as log_file:
        proc = subprocess.Popen(
            [python, "-u", ENTRY_FILE], cwd=fn.code_dir, env=worker_env(fn, cluster), stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=log_file, close_fds=True, bufsize=0, process_group=0)
    w = Worker(fn, proc, now, cold_start_s)
    os.set_blocking(w.in_fd, False)
    os.set_blocking(w.out_fd, False)
    return w


def kill_quietly(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the worker and whatever it started: each worker leads its own process group."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
        return
    except (ProcessLookupError, PermissionError, OSError):
        pass
    try:
        proc.kill()
    except (ProcessLookupError, OSError):
        pass


def kill_leftovers(pgid: int) -> None:
    """After the worker is reaped, kill processes it left in its group (the id is not reused while they live)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, OSError):
        pass


def close_pipes(proc: subprocess.Popen[bytes]) -> None:
    for pipe in (proc.stdin, proc.stdout):
        try:
            if pipe is not None:
                pipe.close()
        except OSError:
            pass

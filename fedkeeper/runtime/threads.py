"""A small persistent thread pool for the aggregator's elementwise work (issue 18).

Why threads: NumPy ufuncs, BLAS and the hashers (hashlib, xxhash, blake3 on large buffers) release the GIL, and the
FedAvg kernel's operations are elementwise, so the chunks of one update can be split between threads without
changing a bit (every element sees the same operations in the same order, whoever computes it). Why persistent:
starting threads per update would cost more than the work they share (an update of 400k floats is ~0.3 ms).

Off by default (one thread, none started): on the 2-vCPU test machine two threads gave no wall-time gain over one
(bench_fedavg.py: 0.41 vs 0.37 ms per 1.5 MB update for the add, 0.25 vs 0.19 ms for decode and verify), since
each thread's share is a fraction of a millisecond and the arrays stream from memory. ``FK_AGG_THREADS=N`` turns it
on: N threads, capped by the CPUs this process may use (``os.sched_getaffinity`` where the platform has it, else
``os.cpu_count``, and a cgroup CPU quota), so a function given one vCPU stays single-threaded whatever it asks.
"""

from __future__ import annotations

import contextvars
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

#: the environment variable that caps the threads (an integer >= 1; unset or invalid: no cap)
ENV = "FK_AGG_THREADS"

_POOL: ThreadPoolExecutor | None = None
_POOL_SIZE = 0
_LOCK = threading.Lock()


def available_cpus() -> int:
    """The CPUs this process may use: its affinity mask where the platform has one, capped by a cgroup CPU quota
    (containers and functions often see every CPU of the host but may use one: more threads would only queue)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quota = _cgroup_quota()
    return max(1, min(cpus, quota) if quota is not None else cpus)


def _cgroup_quota() -> int | None:
    """Whole CPUs of this process's cgroup quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``), None when unlimited or
    unknown."""
    try:
        with open("/sys/fs/cgroup/cpu.max", encoding="ascii") as f:
            quota, period = f.read().split()[:2]
    except (OSError, ValueError):
        try:
            with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", encoding="ascii") as f:
                quota = f.read().strip()
            with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us", encoding="ascii") as f:
                period = f.read().strip()
        except OSError:
            return None
    try:
        if quota in ("max", "-1") or int(quota) <= 0:
            return None
        return max(1, int(quota) // max(1, int(period)))
    except ValueError:
        return None


def default_threads() -> int:
    """1, or ``FK_AGG_THREADS`` when it holds an integer >= 1, capped by the CPUs available."""
    raw = os.environ.get(ENV, "").strip()
    try:
        wanted = int(raw)
    except ValueError:
        return 1
    return max(1, min(available_cpus(), wanted)) if wanted >= 1 else 1


def resolve(threads: int | None) -> int:
    """``threads`` checked (an integer >= 1), or ``default_threads()`` for None."""
    if threads is None:
        return default_threads()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an integer >= 1 or None, got {threads!r}")
    return threads


def _pool(workers: int) -> ThreadPoolExecutor:
    """The shared pool with at least ``workers`` threads (grown, never shrunk: its threads idle at no cost)."""
    global _POOL, _POOL_SIZE
    with _LOCK:
        if _POOL is None or _POOL_SIZE < workers:
            old = _POOL
            _POOL = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fk-agg")
            _POOL_SIZE = workers
            if old is not None:
                old.shutdown(wait=False)
        return _POOL


def submit(fn: Callable[..., T], *args: Any) -> Future[T]:
    """Run ``fn(*args)`` on the shared pool (one worker at least), in a copy of the caller's context: NumPy keeps
    its error state (``np.errstate``) in a context variable, so the worker treats overflows as the caller does."""
    return _pool(1).submit(contextvars.copy_context().run, fn, *args)


def run_all(tasks: Sequence[Callable[[], T]]) -> list[T]:
    """Run the tasks concurrently, the first in the calling thread and the others in the pool; their results in
    order. Every task finishes before this returns (a task's buffers are never left in use), then the first
    exception, in task order, is raised."""
    if not tasks:
        return []
    if len(tasks) == 1:
        return [tasks[0]()]
    pool = _pool(len(tasks) - 1)
    futures = [pool.submit(contextvars.copy_context().run, task) for task in tasks[1:]]  # as in submit()
    first: Any = None
    error: BaseException | None = None
    try:
        first = tasks[0]()
    except BaseException as exc:  # noqa: BLE001 - re-raised below, once the other tasks are done
        error = exc
    results = [first]
    for future in futures:
        try:
            results.append(future.result())
        except BaseException as exc:  # noqa: BLE001
            error = error or exc
            results.append(None)
    if error is not None:
        raise error
    return results

"""The aggregator's thread pool (runtime/threads.py): sized by the CPUs the process may use, capped by
FK_AGG_THREADS; every task done before run_all returns, errors re-raised in task order; NumPy's error state
travels with the work."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from fedkeeper.runtime import threads


def test_default_threads_is_one_unless_the_environment_asks(monkeypatch):
    monkeypatch.setattr(threads, "available_cpus", lambda: 8)
    for raw, want in (("", 1), ("1", 1), ("3", 3), ("64", 8), ("0", 1), ("many", 1)):
        monkeypatch.setenv(threads.ENV, raw)
        assert threads.default_threads() == want, raw
    monkeypatch.delenv(threads.ENV)  # off unless asked for: two threads measured no faster on 2 vCPUs
    assert threads.default_threads() == 1 and threads.resolve(None) == 1 and threads.resolve(2) == 2
    for bad in (0, -1, True, 1.5, "2"):
        with pytest.raises(ValueError):
            threads.resolve(bad)


def test_available_cpus_honours_a_cgroup_quota(monkeypatch):
    monkeypatch.setattr(threads, "_cgroup_quota", lambda: 1)
    assert threads.available_cpus() == 1
    monkeypatch.setattr(threads, "_cgroup_quota", lambda: None)
    assert threads.available_cpus() >= 1


def test_run_all_waits_for_every_task_and_raises_the_first_error():
    done: list[int] = []

    def slow(i: int, fail: bool = False):
        def task():
            time.sleep(0.02 * (3 - i))
            done.append(i)
            if fail:
                raise RuntimeError(f"task {i}")
            return i * 10
        return task

    assert threads.run_all([slow(0), slow(1), slow(2)]) == [0, 10, 20]
    done.clear()
    with pytest.raises(RuntimeError, match="task 1"):
        threads.run_all([slow(0), slow(1, fail=True), slow(2, fail=True)])
    assert sorted(done) == [0, 1, 2]  # the caller's task and both failing ones all finished
    assert threads.run_all([]) == [] and threads.run_all([lambda: 5]) == [5]


def test_workers_run_in_the_callers_numpy_error_state():
    def overflow():
        np.multiply(np.float32(3e38), np.float32(10))
        return threading.current_thread().name

    with np.errstate(over="raise"):
        with pytest.raises(FloatingPointError):
            threads.run_all([lambda: None, overflow])
        with pytest.raises(FloatingPointError):
            threads.submit(overflow).result()
    with np.errstate(over="ignore"):
        assert threads.run_all([lambda: None, overflow])[1].startswith("fk-agg")

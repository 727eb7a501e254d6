"""The local platform's queue depth 2: a call written to a busy warm worker behind the call it runs.

What must hold (fedkeeper/providers/local/pool.py): the queued call is PENDING with no start until the worker
starts it; its timeout counts from that start; a worker killed (or timed out) before answering its running call
fails only that call, and the queued one is dispatched again, once; a queued call cancelled by the caller does not
run on; `concurrency` still counts workers.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fedkeeper.providers.base import State
from fedkeeper.providers.local import entry
from fedkeeper.providers.local.pool import WorkerPool
from fedkeeper.providers.local.provider import LocalProvider
from local_support import deploy, make_provider, running, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def provider(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalProvider]:
    monkeypatch.setenv("FK_LOCAL_DEPTH", "2")
    p = make_provider(tmp_path, concurrency=1, keep_warm_s=60)
    try:
        yield p
    finally:
        p.close()


def pool_of(provider: LocalProvider) -> WorkerPool:
    pool = provider._pool  # noqa: SLF001 - the test looks at where the dispatcher placed a call
    assert pool is not None
    return pool


def queued_ids(provider: LocalProvider) -> set[str]:
    return {w.queued.id for w in list(pool_of(provider)._workers) if w.queued is not None}  # noqa: SLF001


def running_then_queued(provider: LocalProvider, name: str, first: dict[str, Any], second: dict[str, Any]):
    """Submit two calls to the one worker and wait until the second sits in its queue slot."""
    a = provider.invoke(name, first)
    assert wait_until(lambda: provider.poll(a).start is not None)  # a started (its worker is ready)
    b = provider.invoke(name, second)
    assert wait_until(lambda: b.activation_id in queued_ids(provider))
    st = provider.poll(b)
    assert st.state is State.PENDING and st.start is None  # queued, not started
    return a, b


def test_queued_call_starts_on_the_same_warm_worker_when_the_first_answers(provider: LocalProvider) -> None:
    name = deploy(provider, "sleep")
    a, b = running_then_queued(provider, name, {"seconds": 0.4}, {"seconds": 0.05})
    sa, sb = provider.wait(a, 30), provider.wait(b, 30)
    assert sa.state is State.SUCCEEDED and sb.state is State.SUCCEEDED
    assert sb.result["pid"] == sa.result["pid"] and sb.cold is False
    assert sb.result["start"] >= sa.result["end"]  # one call at a time in a worker
    assert len(provider.worker_pids()) == 1  # concurrency counts workers, not calls


def test_timeout_counts_from_when_the_worker_starts_the_queued_call(provider: LocalProvider) -> None:
    name = deploy(provider, "sleep", timeout_s=1.0)
    # b waits ~0.7 s in the queue, then runs 0.7 s: 1.4 s after its submission, but within 1 s of its start
    a, b = running_then_queued(provider, name, {"seconds": 0.7}, {"seconds": 0.7})
    sa, sb = provider.wait(a, 30), provider.wait(b, 30)
    assert sa.state is State.SUCCEEDED
    assert sb.state is State.SUCCEEDED, sb.error
    assert sb.result["pid"] == sa.result["pid"]
    assert sb.start is not None and sb.start >= sa.result["end"] - 0.05


def test_queued_call_whose_handler_overruns_times_out_from_its_start(provider: LocalProvider) -> None:
    name = deploy(provider, "sleep", timeout_s=0.6)
    a, b = running_then_queued(provider, name, {"seconds": 0.3}, {"seconds": 30})
    assert provider.wait(a, 30).state is State.SUCCEEDED
    sb = provider.wait(b, 30)
    assert sb.state is State.TIMED_OUT
    assert sb.duration_s is not None and 0.5 <= sb.duration_s < 5  # counted from its start, not its submission


def test_worker_killed_mid_call_fails_only_the_running_call_and_redispatches_the_queued_one(
        provider: LocalProvider) -> None:
    name = deploy(provider, "sleep")
    a, b = running_then_queued(provider, name, {"seconds": 30}, {"seconds": 0.05})
    (pid,) = provider.worker_pids()
    os.kill(pid, 9)
    sa, sb = provider.wait(a, 30), provider.wait(b, 30)
    assert sa.state is State.FAILED and "SIGKILL" in sa.error
    assert sb.state is State.SUCCEEDED, sb.error  # not failed: it never started
    assert sb.result["pid"] != pid and sb.cold is True  # ran once, on a fresh worker
    assert wait_until(lambda: not running(pid))


def test_timeout_of_the_running_call_redispatches_the_queued_one(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FK_LOCAL_DEPTH", "2")
    p = make_provider(tmp_path, concurrency=1, keep_warm_s=60)
    try:
        name = deploy(p, "sleep", timeout_s=0.8)
        a, b = running_then_queued(p, name, {"seconds": 30}, {"seconds": 0.05})
        (pid,) = p.worker_pids()
        sa, sb = p.wait(a, 30), p.wait(b, 30)
        assert sa.state is State.TIMED_OUT
        assert sb.state is State.SUCCEEDED, sb.error
        assert sb.result["pid"] != pid
    finally:
        p.close()


def test_cancelled_queued_call_does_not_run_on(provider: LocalProvider) -> None:
    name = deploy(provider, "sleep")
    a, b = running_then_queued(provider, name, {"seconds": 0.4}, {"seconds": 30})
    (pid,) = provider.worker_pids()
    st = provider.cancel(b)
    assert st is not None and st.state is State.FAILED and "cancelled" in st.error
    assert provider.wait(a, 30).state is State.SUCCEEDED  # the running call is not touched
    assert wait_until(lambda: not running(pid))  # it started the cancelled call: stopped, as a running one is
    c = provider.invoke(name, {"seconds": 0})
    assert provider.wait(c, 30).state is State.SUCCEEDED


def test_close_loses_running_and_queued_calls(provider: LocalProvider) -> None:
    name = deploy(provider, "sleep")
    a, b = running_then_queued(provider, name, {"seconds": 30}, {"seconds": 30})
    (pid,) = provider.worker_pids()
    provider.close()
    assert provider.poll(a).state is State.LOST and provider.poll(b).state is State.LOST
    assert wait_until(lambda: not running(pid))


def test_depth_1_never_queues_behind_a_busy_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FK_LOCAL_DEPTH", "1")
    p = make_provider(tmp_path, concurrency=1, keep_warm_s=60)
    try:
        name = deploy(p, "sleep")
        a = p.invoke(name, {"seconds": 0.3})
        b = p.invoke(name, {"seconds": 0})
        assert pool_of(p).depth == 1
        while p.poll(b).state is State.PENDING:
            assert b.activation_id not in queued_ids(p)
            time.sleep(0.01)
        assert p.poll(a).state is State.SUCCEEDED and p.poll(b).state is State.SUCCEEDED
    finally:
        p.close()


def test_entry_sets_a_queued_calls_deadline_from_its_own_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """In process: the worker loop reads `timeout_ms` (a queued call) and sets FK_DEADLINE_MS at its start."""
    monkeypatch.setenv("FK_DEADLINE_MS", "")
    seen: list[tuple[float, str]] = []

    class Handler:
        @staticmethod
        def handle(params: dict) -> dict:
            seen.append((time.time(), os.environ["FK_DEADLINE_MS"]))
            time.sleep(float(params.get("seconds", 0)))
            return {}

    lines = [{"id": "a", "deadline_ms": 123, "params": {"seconds": 0.2}},
             {"id": "b", "timeout_ms": 5000, "params": {}}]
    proto_in = io.BytesIO(b"".join(json.dumps(m).encode() + b"\n" for m in lines))
    r, w = os.pipe()
    try:
        assert entry._serve(proto_in, w, Handler, []) == 0  # noqa: SLF001
        os.close(w)
        with os.fdopen(r, "rb") as out:
            replies = [json.loads(line) for line in out]
    finally:
        try:
            os.close(w)
        except OSError:
            pass
    assert [m["id"] for m in replies] == ["a", "b"] and all(m["ok"] for m in replies)
    assert seen[0][1] == "123"
    started_b = seen[1][0]
    assert abs(int(seen[1][1]) - (started_b * 1000 + 5000)) < 50  # from b's start, 0.2 s after the batch came


@pytest.mark.parametrize(("env", "profile", "expected"), [
    (None, None, 2), ("1", None, 1), ("2", None, 2), ("junk", None, 2), ("2", {"seed": 1}, 1), (None, {"seed": 1}, 1)])
def test_depth_comes_from_the_environment_and_a_timing_profile_keeps_it_at_1(
        monkeypatch: pytest.MonkeyPatch, env: str | None, profile: dict | None, expected: int) -> None:
    from fedkeeper.providers.local.config import Profile

    if env is None:
        monkeypatch.delenv("FK_LOCAL_DEPTH", raising=False)
    else:
        monkeypatch.setenv("FK_LOCAL_DEPTH", env)
    pool = WorkerPool("lab", concurrency=1, keep_warm_s=60, profile=Profile(**profile) if profile else None)
    try:
        assert pool.depth == expected
    finally:
        pool.close()


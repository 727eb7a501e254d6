"""The local platform's queue depth: calls written to a busy warm worker behind the call it runs.

What must hold (fedkeeper/providers/local/pool.py): a queued call is PENDING with no start until the worker
starts it (its status says `queued`); its timeout counts from that start; a worker killed (or timed out) before
answering its running call fails only that call, and the queued ones are dispatched again, once; a queued call
cancelled by the caller does not run on; `concurrency` still counts workers; a worker of short calls holds up to
`depth` of them, one of long calls holds two; the worker entry runs the calls waiting in its pipe together when
its handler offers `handle_batch` (fedkeeper/providers/local/entry.py).
"""

from __future__ import annotations

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
    return {a.id for w in list(pool_of(provider)._workers) for a in w.queued}  # noqa: SLF001


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


def _input(messages: list[dict]) -> int:
    """A pipe's read end holding these protocol lines, closed behind them (the worker's stdin)."""
    r, w = os.pipe()
    os.write(w, b"".join(json.dumps(m).encode() + b"\n" for m in messages))
    os.close(w)
    return r


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
    proto_in = _input(lines)
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
    (None, None, 4), ("1", None, 1), ("2", None, 2), ("3", None, 3), ("99", None, 8), ("junk", None, 4),
    ("2", {"seed": 1}, 1), (None, {"seed": 1}, 1)])
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



def _serve_lines(handler: Any, messages: list[dict | bytes]) -> tuple[int, list[dict]]:
    """Run the worker loop in process over these protocol lines; (its exit code, its replies)."""
    r_in, w_in = os.pipe()
    os.write(w_in, b"".join(m if isinstance(m, bytes) else json.dumps(m).encode() + b"\n" for m in messages))
    os.close(w_in)
    r, w = os.pipe()
    try:
        rc = entry._serve(r_in, w, handler, [])  # noqa: SLF001
        os.close(w)
        with os.fdopen(r, "rb") as out:
            return rc, [json.loads(line) for line in out]
    finally:
        os.close(r_in)
        try:
            os.close(w)
        except OSError:
            pass


class _Batching:
    """A handler that offers handle_batch and records how it was called."""

    def __init__(self, seconds: float = 0.01, fail: dict[int, BaseException] | None = None) -> None:
        self.seconds, self.fail = seconds, fail or {}
        self.calls: list[list[int]] = []

    def handle(self, params: dict) -> dict:
        self.calls.append([params["n"]])
        time.sleep(self.seconds)
        return {"n": params["n"]}

    def handle_batch(self, batch: list[dict]) -> list:
        self.calls.append([p["n"] for p in batch])
        time.sleep(self.seconds * len(batch))
        return [self.fail.get(p["n"], {"n": p["n"]}) for p in batch]


def test_entry_runs_the_calls_waiting_in_its_pipe_together() -> None:
    """The first call runs alone (no pace known yet); the three then waiting run as one batch, answered in order,
    each billed its share of the batch's time."""
    handler = _Batching()
    far = int(time.time() * 1000) + 60_000
    rc, replies = _serve_lines(handler, [{"id": c, "deadline_ms": far, "params": {"n": n}}
                                         for n, c in enumerate("abcd")])
    assert rc == 0 and handler.calls == [[0], [1, 2, 3]]
    assert [m["id"] for m in replies] == list("abcd") and [m["result"]["n"] for m in replies] == [0, 1, 2, 3]
    batch = replies[1:]
    assert len({(m["start"], m["end"]) for m in batch}) == 1  # one span: the batch's
    assert batch[0]["duration_s"] == pytest.approx((batch[0]["end"] - batch[0]["start"]) / 3, rel=0.05)


def test_entry_batches_only_within_a_share_of_the_first_calls_time_left() -> None:
    """Calls of 20 ms behind a first call with 100 ms left: two would take 40 ms, over a tenth of 100 ms, so each
    runs alone; the batch size is capped too."""
    handler = _Batching(seconds=0.02)
    soon = int(time.time() * 1000) + 100
    msgs = [{"id": "a", "params": {"n": 0}}] + [{"id": f"b{n}", "deadline_ms": soon, "params": {"n": n}}
                                                for n in range(1, 4)]
    rc, replies = _serve_lines(handler, msgs)
    assert rc == 0 and handler.calls == [[0], [1], [2], [3]] and len(replies) == 4
    handler = _Batching(seconds=entry.BATCH_CALL_S + 0.01)  # long calls never batch, whatever time is left
    rc, replies = _serve_lines(handler, [{"id": str(n), "params": {"n": n}} for n in range(3)])
    assert rc == 0 and handler.calls == [[0], [1], [2]]
    handler = _Batching(seconds=0.0005)
    rc, replies = _serve_lines(handler, [{"id": str(n), "params": {"n": n}} for n in range(1 + entry.MAX_BATCH + 2)])
    assert [len(c) for c in handler.calls] == [1, entry.MAX_BATCH, 2] and len(replies) == entry.MAX_BATCH + 3


def test_entry_batch_errors_are_each_calls_own_and_a_memory_error_retires_the_worker() -> None:
    handler = _Batching(fail={2: ValueError("bad shard"), 5: MemoryError()})
    msgs = [{"id": str(n), "params": {"n": n}} for n in range(4)]
    rc, replies = _serve_lines(handler, msgs)
    assert rc == 0 and handler.calls == [[0], [1, 2, 3]]
    assert [m["ok"] for m in replies] == [True, True, False, True]
    assert replies[2]["error"].startswith("ValueError: bad shard") and replies[2]["discard"] is False
    handler = _Batching(fail={2: MemoryError()})
    rc, replies = _serve_lines(handler, [{"id": str(n), "params": {"n": n}} for n in range(6)])
    assert rc == 0 and handler.calls == [[0], [1, 2, 3, 4, 5]]  # answered, then the process retires
    assert [m["ok"] for m in replies] == [True, True, False, True, True, True] and replies[2]["discard"] is True


def test_entry_answers_a_batch_before_a_bad_line_ends_it() -> None:
    handler = _Batching()
    rc, replies = _serve_lines(handler, [{"id": "a", "params": {"n": 0}}, {"id": "b", "params": {"n": 1}},
                                         {"id": "c", "params": {"n": 2}}, b"not json\n", {"id": "d", "params": {"n": 3}}])
    assert rc == 2 and [m["id"] for m in replies] == ["a", "b", "c"] and handler.calls == [[0], [1, 2]]


def test_entry_fails_every_call_of_a_batch_whose_handler_raised_or_answered_wrong() -> None:
    class Broken(_Batching):
        def handle_batch(self, batch: list[dict]) -> list:
            self.calls.append([p["n"] for p in batch])
            return [{"n": 1}] if batch[0]["n"] == 1 else None  # one answer for two calls, then no list

    handler = Broken()
    rc, replies = _serve_lines(handler, [{"id": str(n), "params": {"n": n}} for n in range(3)])
    assert rc == 0 and [m["ok"] for m in replies] == [True, False, False]
    assert "handle_batch() returned list of 1 results for 2 calls" in replies[1]["error"]


def _queue_peak(provider: LocalProvider, name: str, calls: int, seconds: float) -> tuple[int, list]:
    """Submit one 0.6 s call and then `calls` calls of `seconds` to one worker; the most calls ever queued on it,
    and the calls' handles."""
    first = provider.invoke(name, {"seconds": 0.6})
    assert wait_until(lambda: provider.poll(first).start is not None)
    handles = [provider.invoke(name, {"seconds": seconds}) for _ in range(calls)]
    peak, until = 0, time.monotonic() + 0.4
    while time.monotonic() < until:
        peak = max(peak, len(queued_ids(provider)))
        time.sleep(0.005)
    return peak, [first, *handles]


@pytest.mark.parametrize(("learned_s", "expected_peak"), [(0.0, 3), (0.1, 1)])
def test_a_worker_of_short_calls_queues_depth_minus_1_and_of_long_calls_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, learned_s: float, expected_peak: int) -> None:
    monkeypatch.setenv("FK_LOCAL_DEPTH", "4")
    p = make_provider(tmp_path, concurrency=1, keep_warm_s=60)
    try:
        name = deploy(p, "sleep")
        assert p.wait(p.invoke(name, {"seconds": learned_s}), 30).state is State.SUCCEEDED  # its pace, learned
        peak, handles = _queue_peak(p, name, 5, 0.0)
        assert peak == expected_peak
        waiting = [p.poll(h) for h in handles[1:]]
        assert all(st.state is State.PENDING and st.start is None and st.queued for st in waiting)
        done = [p.wait(h, 30) for h in handles]
        assert all(st.state is State.SUCCEEDED and not st.queued for st in done)
        assert len({st.result["pid"] for st in done}) == 1
    finally:
        p.close()


def test_max_inflight_follows_the_depth(monkeypatch: pytest.MonkeyPatch) -> None:
    from fedkeeper.providers.local.config import LocalCluster

    for env, per_worker in (("1", 2), ("2", 2), ("4", 4), ("8", 8)):
        monkeypatch.setenv("FK_LOCAL_DEPTH", env)
        assert LocalCluster(concurrency=3).max_inflight == 3 * per_worker


def test_the_worker_batches_the_calls_the_pool_queues_deep() -> None:
    """The worker's batching threshold and the pool's queue-depth threshold are one rule written twice (a function's
    zip ships without the pool's module): calls the pool queues several deep are the calls a worker batches."""
    from fedkeeper.providers.local import depth

    assert entry.BATCH_CALL_S == depth.SHORT_CALL_S

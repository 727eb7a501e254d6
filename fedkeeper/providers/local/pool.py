"""The local platform's scheduler: a pool of worker processes per cluster, driven by one dispatcher thread.

It behaves like a FaaS invoker rather than a function call:
- `submit` queues an activation and returns at once; one dispatcher thread places it on a warm idle worker of
  the same function (warm), or spawns a worker if the cluster is below `concurrency` (cold: spawn + import +
  `cold_start_ms`), or evicts the least recently used idle worker of another function to make room, or waits;
- a worker that runs past the function's timeout is killed (TIMED_OUT, OpenWhisk's message); one that exits
  mid-call fails only that activation; idle workers are reaped after `keep_warm_s`;
- faults drawn per activation (`local_faults`) are applied here: failure without running, a call that holds its
  worker until the timeout kills it, a worker killed mid-call, added latency;
- a timing profile (`profile`): a client call's reply is held until its simulated handler time has passed (its
  worker stays busy meanwhile, as a slower machine's would), and with a cold-start model the `cold` flag and
  the start-up delay come from simulated instances (`profile.InstanceModel`), not from the worker processes.

Queue depth (`depth`, env `FK_LOCAL_DEPTH`, default `DEFAULT_DEPTH`): a call that finds no idle worker and no
room for a new one is written to a busy warm worker of its function behind the call it runs, as an invoker
buffers activations per container, so the worker starts it the moment it has answered, without waiting for the
dispatcher's turnaround. A worker holds up to `depth` calls when its function's recent calls were short
(`SHORT_CALL_S`), two otherwise. The worker runs the calls it finds waiting in its pipe together when its handler
offers `handle_batch` and they fit well inside the first one's deadline (`entry.py`): the client function then
stores their updates with one command. A queued call stays PENDING with no start time until the reply before it
arrives; its timeout counts from that start (the entry sets its FK_DEADLINE_MS itself), and the tracker counts
an attempt's time limit from that start too. If the worker dies or is killed before answering the call before
it, the queued calls go back to the head of the queue for another worker, never failed for that (a call the
worker had begun runs again: an activation's update is keyed by its id, so a rerun stores nothing twice). Calls
with an injected timeout or crash never queue and never queue behind such a call, and a timing profile uses
depth 1 (its replies are held, and a held worker must not be computing the next call). `concurrency` still
counts worker processes.

The dispatcher waits on a selector over the workers' stdout pipes and a wake-up pipe, with the nearest deadline
as its timeout: there is no polling sleep, no thread per call, and `status()` is a dict lookup. Only the
dispatcher thread spawns workers, because PR_SET_PDEATHSIG fires when the *thread* that forked a child exits:
the workers live exactly as long as the dispatcher, which is the pool's lifetime.
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import math
import os
import selectors
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

from fedkeeper.providers.base import State, Status
from fedkeeper.providers.local.depth import MAX_DEPTH, SHORT_CALL_S, local_depth
from fedkeeper.providers.local.faults import FaultDecision, FaultPlan
from fedkeeper.providers.local.profile import NO_DRAW, Draw, InstanceModel, ProfilePlan, label
from fedkeeper.providers.local.worker import (
    ENTRY_FILE,
    INIT_TIMEOUT_S,
    FunctionRuntime,
    Worker,
    close_pipes,
    exit_description,
    kill_leftovers,
    kill_quietly,
    spawn_worker,
)

log = logging.getLogger("fedkeeper.providers.local.provider")

#: a retired worker gets this long to exit after its stdin closes, then it is killed
EXIT_GRACE_S = 2.0
#: platforms cap request and response bodies at about 1 MB (OpenWhisk 1 MB, Lambda async 1 MB/sync 6 MB)
MAX_PAYLOAD_BYTES = 1 << 20
MAX_REPLY_BYTES = (1 << 20) + 64 * 1024


class _Activation:
    __slots__ = ("id", "fn", "params", "submitted", "fault", "not_before", "state", "result", "error", "start",
                 "end", "duration_s", "cold", "injected", "pid", "draw", "start_mono", "cold_delay_s")

    def __init__(self, fn: FunctionRuntime, params: bytes, fault: FaultDecision, now: float,
                 draw: Draw = NO_DRAW) -> None:
        self.id = uuid.uuid4().hex
        self.fn = fn
        self.params = params
        self.submitted = time.time()
        self.fault = fault.kind
        self.not_before = now + fault.latency_s
        self.injected = fault.label
        self.state = State.PENDING
        self.result: dict[str, Any] | None = None
        self.error: str | None = None
        self.start: float | None = None
        self.end: float | None = None
        self.duration_s: float | None = None
        self.cold: bool | None = None
        self.pid: int | None = None
        self.draw = draw
        self.start_mono: float | None = None
        self.cold_delay_s = 0.0  # the profile's start-up delay this call waited (a simulated cold start)

    def status(self) -> Status:
        return Status(state=self.state, result=self.result, error=self.error, activation_id=self.id,
                      start=self.start, end=self.end, duration_s=self.duration_s, cold=self.cold,
                      injected=self.injected, queued=self.state is State.PENDING and self.start is None)


class WorkerPool:
    """All worker processes of one local cluster; see the module docstring for the scheduling rules."""

    def __init__(self, cluster: str, *, concurrency: int, keep_warm_s: float, cold_start_ms: float = 0.0,
                 faults: Any = None, python: str | None = None, profile: Any = None,
                 depth: int | None = None) -> None:
        self.cluster = cluster
        self.concurrency = max(1, int(concurrency))
        self.keep_warm_s = float(keep_warm_s)
        self.cold_start_s = float(cold_start_ms) / 1000.0
        self.python = python or sys.executable
        self._faults = FaultPlan(faults)
        self.plan = ProfilePlan(profile, self.keep_warm_s)
        self.instances = InstanceModel(self.plan.keep_warm_s, self.plan.max_warm) if self.plan.models_cold else None
        #: with simulated instances, a worker process serves every function of the same code and settings (the
        #: same spec digest: per-client copies of fl_client), so 100 per-client functions need no 100 processes
        self.share_workers = self.instances is not None
        #: calls a busy warm worker holds, running and sent ahead (module docstring); 1 with a timing profile
        self.depth = 1 if self.plan.active else max(1, min(MAX_DEPTH, int(depth if depth is not None
                                                                          else local_depth())))
        self._cv = threading.Condition()
        self._records: dict[str, _Activation] = {}
        self._inbox: deque[_Activation] = deque()
        self._retire_names: set[str] = set()
        self._cancelled: list[_Activation] = []  # settled by `cancel`; the dispatcher frees their workers
        #: `prestart` requests: functions to start workers for, and the event their caller waits on
        self._prestart_req: list[tuple[list[FunctionRuntime], threading.Event]] = []
        self._stopping = False
        self._closed = False
        self._wake_pending = False
        self._failure: BaseException | None = None
        #: called (no arguments, outside the lock) whenever an activation settles: the tracker's wake-up, so it
        #: hands the next call to a freed worker at once instead of after its polling pause
        self._listeners: list[Callable[[], None]] = []
        # dispatcher-only state
        self._ready: deque[_Activation] = deque()
        self._delayed: list[tuple[float, int, _Activation]] = []
        #: replies kept back until the profile's simulated handler time has passed
        self._held: list[tuple[float, int, Worker, _Activation, dict[str, Any]]] = []
        self._seq = itertools.count()
        #: recent handler time per function (`_note_duration`), for how deep its calls may queue (`_short`)
        self._call_s: dict[str, float] = {}
        self._workers: list[Worker] = []
        self._idle: dict[tuple[str, str], list[Worker]] = {}
        self._prestart_events: list[threading.Event] = []  # set once no worker is starting
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread = threading.Thread(target=self._run, name=f"fk-local-{cluster}", daemon=True)
        self._thread.start()

    def _wkey(self, fn: FunctionRuntime) -> tuple[str, str]:
        """Which idle workers may take a call of `fn`: its own (name, digest), or any of the same digest when
        warm and cold are the simulated instances' word (`share_workers`)."""
        return ("", fn.digest) if self.share_workers else (fn.name, fn.digest)

    # ------------------------------------------------------------------ caller side (any thread)

    def submit(self, fn: FunctionRuntime, params_json: bytes, *, client: int | None = None, round_number: int = 0,
               attempt: int = 1) -> _Activation:
        """Queue one activation and return its record at once; (client, round, attempt) seed its profile draws."""
        with self._cv:
            if self._failure is not None:
                raise RuntimeError(f"local cluster {self.cluster!r} dispatcher failed: {self._failure!r}")
            if self._stopping:
                raise RuntimeError(f"local cluster {self.cluster!r} is closed")
            draw = self.plan.draw(client, round_number, attempt) if self.plan.active else NO_DRAW
            act = _Activation(fn, params_json, self._faults.draw(), time.monotonic(), draw)
            self._records[act.id] = act
            self._inbox.append(act)
            signal_needed = not self._wake_pending  # one wake-up per batch: bursts do not flood the pipe
            self._wake_pending = True
        if signal_needed:
            self._wake()
        return act

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call `callback()` whenever an activation settles (it must be quick and must not raise)."""
        with self._cv:
            if callback not in self._listeners:
                self._listeners = [*self._listeners, callback]

    def remove_listener(self, callback: Callable[[], None]) -> None:
        with self._cv:
            self._listeners = [c for c in self._listeners if c != callback]

    def status(self, activation_id: str) -> Status | None:
        with self._cv:
            act = self._records.get(activation_id)
            return act.status() if act is not None else None

    def wait(self, activation_id: str, timeout: float | None = None) -> Status | None:
        """Block until the activation is done (or `timeout` passes); for benchmarks and tests."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            act = self._records.get(activation_id)
            if act is None:
                return None
            while act.state is State.PENDING:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self._cv.wait(remaining)
            return act.status()

    def cancel(self, activation_id: str) -> Status | None:
        """Stop a pending call (the caller abandoned it): settled at once as FAILED ("cancelled"), billed for the
        time it ran; the dispatcher then frees its worker — a reply held for the simulated handler time is
        dropped and the worker goes idle (its instance stays warm), a handler still computing is killed with its
        worker, as a platform stops a container. None: no such call; a call already done keeps its status."""
        with self._cv:
            act = self._records.get(activation_id)
            if act is None:
                return None
            if act.state is State.PENDING:
                ran = time.monotonic() - act.start_mono if act.start_mono is not None else 0.0
                self._finish(act, State.FAILED, error="cancelled by the caller", end=time.time(),
                             duration_s=max(0.0, ran) if act.start is not None else 0.0)
                self._cancelled.append(act)
                wake = True
            else:
                wake = False
            status = act.status()
        if wake:
            self._wake()
        return status

    def prestart(self, fns: list[FunctionRuntime], timeout: float = INIT_TIMEOUT_S) -> int:
        """Start idle workers for `fns` (round-robin over their worker keys, up to `concurrency` in all) and wait
        until they are ready or `timeout` passes; returns how many workers are live.

        Only with a cold-start model (`share_workers`): there cold and warm are the simulated instances' word, so
        starting a worker process — interpreter, imports — is the emulator's own cost, not the fabric's, and
        paying it inside the first round would add seconds of set-up to that round's time (bench_scheduling).
        Without a model a process start *is* this platform's cold start, and nothing is started ahead."""
        if not self.share_workers or not fns:
            return 0
        done = threading.Event()
        with self._cv:
            if self._stopping:
                raise RuntimeError(f"local cluster {self.cluster!r} is closed")
            self._prestart_req.append((list(fns), done))
        self._wake()
        done.wait(timeout)
        return len(self.worker_pids())

    def retire(self, name: str) -> None:
        """Stop the idle workers of a function (after it was redeployed or removed); busy ones finish first."""
        with self._cv:
            self._retire_names.add(name)
        self._wake()

    def worker_pids(self) -> list[int]:
        """Pids of the live worker processes (for tests and diagnostics)."""
        with self._cv:
            return [w.pid for w in list(self._workers)]

    def close(self, timeout: float = 10.0) -> None:
        """Stop every worker (busy activations become LOST) and the dispatcher; idempotent."""
        with self._cv:
            if self._closed:
                return
            self._closed = True
            self._stopping = True
        self._wake()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        if self._thread.is_alive():  # the dispatcher is stuck: do its shutdown from here
            log.warning("local cluster %s: dispatcher did not stop in %.0f s; killing workers", self.cluster, timeout)
            for w in list(self._workers):
                kill_quietly(w.proc)

    def _wake(self) -> None:
        if self._wake_w < 0:
            return
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, OSError):
            pass  # already awake (pipe full) or shutting down

    # ------------------------------------------------------------------ dispatcher thread

    def _run(self) -> None:
        try:
            while True:
                for key, _mask in self._sel.select(self._next_timeout()):
                    if key.data is None:
                        try:
                            while os.read(self._wake_r, 4096):
                                pass
                        except BlockingIOError:
                            pass
                        continue
                    worker, what = key.data
                    if what == "r":
                        self._on_readable(worker)
                    else:
                        self._flush(worker)
                now = time.monotonic()
                with self._cv:
                    if self._stopping:
                        break
                    inbox, self._inbox = self._inbox, deque()
                    self._wake_pending = False
                    retire, self._retire_names = self._retire_names, set()
                    cancelled, self._cancelled = self._cancelled, []
                    prestart, self._prestart_req = self._prestart_req, []
                for act in inbox:
                    if act.not_before > now:
                        heapq.heappush(self._delayed, (act.not_before, next(self._seq), act))
                    else:
                        self._ready.append(act)
                while self._delayed and self._delayed[0][0] <= now:
                    self._ready.append(heapq.heappop(self._delayed)[2])
                for act in cancelled:
                    self._free_cancelled(act, now)
                for name in retire:
                    for w in [w for w in self._workers if w.fn.name == name and w.state == "idle"]:
                        self._retire(w, now)
                for fns, event in prestart:
                    self._start_idle(fns, now)
                    self._prestart_events.append(event)
                self._timers(now)
                self._schedule(now)
                if self._prestart_events and not any(w.state == "starting" for w in self._workers):
                    for event in self._prestart_events:
                        event.set()
                    self._prestart_events.clear()
        except BaseException as exc:  # a bug here must not leave workers behind or callers waiting forever
            log.exception("local cluster %s: dispatcher failed", self.cluster)
            with self._cv:
                self._failure = exc
                self._stopping = True
        finally:
            self._shutdown()

    def _next_timeout(self) -> float | None:
        t = math.inf
        for w in self._workers:
            if w.state == "starting":
                t = min(t, w.deadline)
            elif w.state == "busy":
                t = min(t, w.deadline if w.running else w.available_at)
            elif w.state == "idle":
                t = min(t, w.last_used + self.keep_warm_s)
            elif w.kill_at is not None:
                t = min(t, w.kill_at)
        if self._delayed:
            t = min(t, self._delayed[0][0])
        if self._held:
            t = min(t, self._held[0][0])
        if t == math.inf:
            return None
        return max(0.0, t - time.monotonic())

    def _timers(self, now: float) -> None:
        while self._held and self._held[0][0] <= now:
            _, _, w, act, reply = heapq.heappop(self._held)
            self._release(w, act, reply, now)
        for w in list(self._workers):
            if w.state == "starting" and now >= w.deadline:
                act = w.act
                w.act = None
                self._kill(w)
                if act is not None:
                    self._finish(act, State.FAILED, error=f"worker of {w.fn.name} did not start within "
                                                          f"{INIT_TIMEOUT_S:g} s")
            elif w.state == "busy" and not w.running and now >= w.available_at and w.act is not None:
                self._start(w, w.act, now)
            elif w.state == "busy" and w.running and now >= w.deadline:
                if w.queued:  # its answer may be in the pipe already: then the queued call runs
                    self._on_readable(w)
                    if w.state != "busy" or not w.running or now < w.deadline:
                        continue
                act = w.act
                w.act = None
                self._kill(w)
                if act is not None:
                    ms = int(round(act.fn.timeout_s * 1000))
                    end = time.time()
                    self._finish(act, State.TIMED_OUT, end=end, duration_s=end - (act.start or end),
                                 error=f"The action exceeded its time limits of {ms} milliseconds.")
            elif w.state == "idle" and now >= w.last_used + self.keep_warm_s:
                self._retire(w, now)
            elif w.state == "dying" and w.kill_at is not None and now >= w.kill_at:
                self._kill(w)

    def _schedule(self, now: float) -> None:
        ready = self._ready
        while ready:
            act = ready[0]
            if act.state is not State.PENDING:
                ready.popleft()
                continue
            if act.fault == "failure":  # fails without occupying a worker, like a rejected request
                ready.popleft()
                t = time.time()
                self._finish(act, State.FAILED, error="injected failure", start=t, end=t, duration_s=0.0)
                continue
            idle = self._idle.get(self._wkey(act.fn))
            if idle:
                ready.popleft()
                worker = idle.pop()  # most recently used: the others age out and get reaped
                delay = self._simulated_start(act, now)
                worker.available_at = max(worker.available_at, now + delay)
                self._assign(worker, act, now, cold=False)
                continue
            if len(self._workers) >= self.concurrency:
                host = self._queue_host(act)
                if host is not None:
                    ready.popleft()
                    self._enqueue(host, act)
                    continue
                victim = min((w for w in self._workers if w.state == "idle"), key=lambda w: w.last_used,
                             default=None)
                if victim is None:
                    return  # every worker is busy: the next reply or exit wakes us
                self._kill(victim)  # evicted; it still counts until its exit is seen, then we come back here
                return
            ready.popleft()
            self._spawn(act, now, self._simulated_start(act, now))

    def _queue_host(self, act: _Activation) -> Worker | None:
        """A busy warm worker of `act`'s function with a free queue slot, the one with the fewest calls queued and
        then the one whose call started first (likely the first to answer); None when `act` must wait for an
        idle worker. A worker queues up to `depth` - 1 calls when its function's calls are short
        (`SHORT_CALL_S`, `_short`), one otherwise: behind a long call, a queued call waits that long while
        another worker may be free by then."""
        if self.depth < 2 or act.fault is not None:
            return None
        key = self._wkey(act.fn)
        slots = self.depth - 1 if self._short(act.fn) else 1
        best: Worker | None = None
        for w in self._workers:
            if (w.state == "busy" and w.running and len(w.queued) < slots and w.act is not None
                    and w.act.fault is None and self._wkey(w.fn) == key
                    and (best is None or (len(w.queued), w.act.start_mono or 0.0)
                         < (len(best.queued), best.act.start_mono or 0.0))):  # type: ignore[union-attr]
                best = w
        return best

    def _short(self, fn: FunctionRuntime) -> bool:
        """Are this function's calls short enough to queue several behind each other (their recent handler time,
        as the workers measured it)?"""
        recent = self._call_s.get(fn.name)
        return recent is not None and recent <= SHORT_CALL_S

    def _note_duration(self, fn: FunctionRuntime, msg: dict[str, Any]) -> None:
        """Keep a moving average of a function's handler time, weighted towards the latest (`_short`)."""
        try:
            d = float(msg.get("duration_s"))
        except (TypeError, ValueError):
            return
        prev = self._call_s.get(fn.name)
        self._call_s[fn.name] = d if prev is None else max(d, 0.7 * prev + 0.3 * d)

    def _enqueue(self, w: Worker, act: _Activation) -> None:
        """Write `act` to `w` behind its running call; its deadline is set when it starts (`_begin_queued`)."""
        w.queued.append(act)
        act.pid = w.pid
        act.cold = False
        timeout_ms = int(round(act.fn.timeout_s * 1000))
        self._send(w, b'{"id":"%s","timeout_ms":%d,"params":%s}\n' % (act.id.encode(), timeout_ms, act.params))

    def _begin_queued(self, w: Worker, act: _Activation, msg: dict[str, Any], now: float) -> None:
        """The worker answered its call and started the queued one at once: it runs from the reply's end."""
        try:
            lag = time.time() - float(msg.get("end"))
        except (TypeError, ValueError):
            lag = 0.0
        lag = min(max(0.0, lag), act.fn.timeout_s)
        w.act, w.running, w.state = act, True, "busy"
        if act.state is not State.PENDING:  # cancelled while queued: the handler computes for nobody, stop it
            w.act = None
            self._kill(w)
            return
        act.start_mono = now - lag
        act.start = time.time() - lag
        w.deadline = act.start_mono + act.fn.timeout_s

    def _requeue(self, w: Worker) -> None:
        """`w` is gone before it answered its running call: its queued calls go back to the head of the queue, in
        their order, for another worker. None of them was answered; the worker may have begun them (it runs the
        calls already in its pipe together, `entry.py`), and an activation run again is idempotent (its update is
        keyed by its activation id, first write wins)."""
        queued, w.queued = w.queued, deque()
        for act in reversed(queued):
            if act.state is not State.PENDING:
                continue
            act.pid = None
            act.cold = None
            self._ready.appendleft(act)
            log.debug("local cluster %s: call %s queued on worker %d goes back to the queue", self.cluster, act.id,
                      w.pid)

    def _start_idle(self, fns: list[FunctionRuntime], now: float) -> None:
        """Spawn workers with no call (they go idle when ready) for the distinct worker keys of `fns` in turn,
        while the cluster is below `concurrency`."""
        targets = list({self._wkey(fn): fn for fn in fns if (fn.code_dir / ENTRY_FILE).is_file()}.values())
        turn = 0
        while targets and len(self._workers) < self.concurrency:
            fn = targets[turn % len(targets)]
            turn += 1
            try:
                w = spawn_worker(self.python, fn, self.cluster, now, self.cold_start_s)
            except OSError as exc:
                log.warning("local cluster %s: cannot start a worker for %s: %s", self.cluster, fn.name, exc)
                return
            self._sel.register(w.out_fd, selectors.EVENT_READ, (w, "r"))
            self._workers.append(w)
            log.debug("local cluster %s: started worker %d for %s ahead of its calls", self.cluster, w.pid, fn.name)

    def _free_cancelled(self, act: _Activation, now: float) -> None:
        """The worker of a cancelled call: idle again when the handler is not computing (its reply is held, or it
        waits out a simulated start-up), stopped when it is; a starting worker goes idle once ready."""
        w = self._worker_of(act)
        if w is None:
            return  # not placed yet: `_schedule` skips settled calls
        if w.queued and w.state == "busy":
            self._on_readable(w)  # an answer already in the pipe moves the worker on to its queued call first
            w = self._worker_of(act)
            if w is None:
                return
        if act in w.queued:
            return  # sent but not started: `_begin_queued` stops the worker if it gets to it
        if w.state == "starting":
            w.act = None  # becomes a fresh idle worker when its ready message comes
        elif w.state == "holding" or (w.state == "busy" and not w.running):
            finished = w.state == "holding"
            w.act, w.running, w.state, w.last_used = None, False, "idle", now
            self._idle.setdefault(self._wkey(w.fn), []).append(w)
            if finished and self.instances is not None:
                self.instances.release(act.fn.name, now)  # the handler ran to its end: its instance is warm
        elif w.state == "busy":
            w.act = None
            self._kill(w)

    def _worker_of(self, act: _Activation) -> Worker | None:
        return next((w for w in self._workers if w.act is act or act in w.queued), None)

    def _simulated_start(self, act: _Activation, now: float) -> float:
        """With a cold-start model: take a simulated instance (warm, or a cold one whose start-up delay this call
        waits). Returns the delay; 0 without the model."""
        if self.instances is None:
            return 0.0
        warm = self.instances.acquire(act.fn.name, now)
        act.cold_delay_s = 0.0 if warm else act.draw.cold_delay_s
        act.cold = not warm
        return act.cold_delay_s

    def _spawn(self, act: _Activation, now: float, delay: float = 0.0) -> None:
        fn = act.fn
        if not (fn.code_dir / ENTRY_FILE).is_file():
            self._finish(act, State.FAILED, error=f"function {fn.name} is no longer deployed on {self.cluster}")
            return
        try:
            w = spawn_worker(self.python, fn, self.cluster, now, self.cold_start_s + delay)
        except OSError as exc:
            self._finish(act, State.FAILED, error=f"cannot start a worker for {fn.name}: {exc}")
            return
        self._sel.register(w.out_fd, selectors.EVENT_READ, (w, "r"))
        self._workers.append(w)
        w.act = act
        act.cold = True if self.instances is None else act.cold  # the simulated instance's word, with a model
        act.pid = w.pid
        log.debug("local cluster %s: spawned worker %d for %s", self.cluster, w.pid, fn.name)

    def _assign(self, w: Worker, act: _Activation, now: float, *, cold: bool) -> None:
        w.state = "busy"
        w.act = act
        w.running = False
        act.cold = cold if self.instances is None else act.cold
        act.pid = w.pid
        if now >= w.available_at:
            self._start(w, act, now)

    def _start(self, w: Worker, act: _Activation, now: float) -> None:
        w.running = True
        w.deadline = now + act.fn.timeout_s
        act.start = time.time()
        act.start_mono = now
        if act.fault == "timeout":
            return  # holds the worker, runs nothing, and is killed at the deadline like a hung handler
        deadline_ms = int((act.start + act.fn.timeout_s) * 1000)
        self._send(w, b'{"id":"%s","deadline_ms":%d,"params":%s}\n' % (act.id.encode(), deadline_ms, act.params))
        if act.fault == "crash":
            self._kill(w)  # dies mid-call; its EOF fails the activation like any crash

    # ------------------------------------------------------------------ worker I/O

    def _send(self, w: Worker, data: bytes) -> None:
        if w.wbuf:
            w.wbuf += data
            return
        try:
            n = os.write(w.in_fd, data)
        except BlockingIOError:
            n = 0
        except OSError:  # the worker is gone: its EOF on stdout reports it
            return
        if n < len(data):
            w.wbuf += data[n:]
            self._sel.register(w.in_fd, selectors.EVENT_WRITE, (w, "w"))

    def _flush(self, w: Worker) -> None:
        try:
            n = os.write(w.in_fd, w.wbuf)
        except BlockingIOError:
            return
        except OSError:
            n = len(w.wbuf)
        del w.wbuf[:n]
        if not w.wbuf:
            self._sel.unregister(w.in_fd)

    def _on_readable(self, w: Worker) -> None:
        try:
            chunk = os.read(w.out_fd, 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._on_exit(w)
            return
        w.rbuf += chunk
        while w.state != "gone":
            i = w.rbuf.find(b"\n")
            if i < 0:
                break
            line = bytes(w.rbuf[:i])
            del w.rbuf[:i + 1]
            self._on_message(w, line)
        if len(w.rbuf) > MAX_REPLY_BYTES and w.state != "dying":
            act = w.act
            w.act = None
            self._kill(w)
            if act is not None:
                self._finish(act, State.FAILED, error=f"result of {act.fn.name} exceeds {MAX_PAYLOAD_BYTES >> 20} MB; "
                                                       "return small results and keep large data in the store")

    def _on_message(self, w: Worker, line: bytes) -> None:
        if w.state == "dying":
            return  # killed (timeout, injected crash, eviction): whatever it still says is void
        now = time.monotonic()
        try:
            msg = json.loads(line)
        except ValueError:
            act = w.act
            w.act = None
            self._kill(w)
            if act is not None:
                self._finish(act, State.FAILED, error="worker broke the protocol (not a JSON line)")
            return
        if not w.ready:
            if msg.get("ready"):
                w.ready = True
                w.init_s = msg.get("import_s")
                log.debug("local cluster %s: worker %d of %s ready (handler import %.3f s)", self.cluster, w.pid,
                          w.fn.name, w.init_s or 0.0)
                if w.act is None:  # (its activation was settled meanwhile) a fresh warm worker
                    w.state = "idle"
                    w.last_used = now
                    self._idle.setdefault(self._wkey(w.fn), []).append(w)
                else:
                    w.state = "busy"
                    if now >= w.available_at:
                        self._start(w, w.act, now)
            else:
                w.ready_error = str(msg.get("error") or "worker failed to start")
                act = w.act
                w.act = None
                self._retire(w, now)
                if act is not None:
                    self._finish(act, State.FAILED, error=w.ready_error)
            return
        act = w.act
        if act is None or msg.get("id") != act.id:
            log.warning("local cluster %s: worker %d answered an unknown call; ignored", self.cluster, w.pid)
            return
        w.running = False
        w.calls += 1
        if act.draw.slowed and act.start_mono is not None:
            # the profile's simulated handler time: the reply waits, and the worker with it
            measured = float(msg.get("duration_s") or 0.0)
            simulated = act.draw.simulated_s(measured)
            msg["_simulated_s"], msg["_overrun_s"] = simulated, max(0.0, measured - simulated)
            release_at = act.start_mono + min(simulated, act.fn.timeout_s)
            if release_at > now:
                w.state = "holding"
                heapq.heappush(self._held, (release_at, next(self._seq), w, act, msg))
                return
        self._release(w, act, msg, now)

    def _release(self, w: Worker, act: _Activation, msg: dict[str, Any], now: float) -> None:
        """Settle a call from its worker's reply (after the profile's hold, if any) and free the worker."""
        if w.state not in ("busy", "holding") or w.act is not act:
            return  # the worker died or was stopped while its reply was held: that path settled the call
        w.act = None
        w.last_used = now
        simulated = msg.get("_simulated_s")
        fields = {"start": msg.get("start"), "end": msg.get("end"), "duration_s": msg.get("duration_s")}
        timed_out = False
        if simulated is not None:
            timed_out = simulated > act.fn.timeout_s
            fields.update(end=time.time(), duration_s=min(simulated, act.fn.timeout_s))
            parts = label(act.draw, cold_delay_s=act.cold_delay_s, overrun_s=float(msg.get("_overrun_s") or 0.0))
        else:
            parts = label(act.draw, cold_delay_s=act.cold_delay_s)
        if parts:
            act.injected = ",".join(([act.injected] if act.injected else []) + parts)
        if timed_out:  # the simulated handler ran past the function's timeout: killed there, its instance lost
            ms = int(round(act.fn.timeout_s * 1000))
            self._finish(act, State.TIMED_OUT, error=f"The action exceeded its time limits of {ms} milliseconds.",
                         **fields)
        elif msg.get("ok"):
            self._note_duration(act.fn, msg)
            result = msg.get("result")
            self._finish(act, State.SUCCEEDED, result=result if isinstance(result, dict) else {"value": result},
                         **fields)
        else:
            error = str(msg.get("error") or "the function failed")
            if error.startswith("MemoryError"):
                error += f" (memory limit {act.fn.memory_mb} MB)"
            self._finish(act, State.FAILED, error=error, **fields)
        if self.instances is not None and not timed_out and not msg.get("discard"):
            self.instances.release(act.fn.name, now)
        if msg.get("discard"):
            self._retire(w, now)  # it exits without reading on: its queued call is dispatched again (`_on_exit`)
        elif w.queued:
            self._begin_queued(w, w.queued.popleft(), msg, now)
        else:
            w.state = "idle"
            self._idle.setdefault(self._wkey(w.fn), []).append(w)

    def _on_exit(self, w: Worker) -> None:
        self._sel.unregister(w.out_fd)
        if w.wbuf:
            self._sel.unregister(w.in_fd)
            w.wbuf.clear()
        try:
            rc: int | None = w.proc.wait(timeout=0.5)
        except subprocess.TimeoutExpired:  # closed its pipe but lives on: not a worker we can use
            kill_quietly(w.proc)
            rc = w.proc.wait()
        kill_leftovers(w.pid)
        close_pipes(w.proc)
        self._forget(w)
        w.state = "gone"
        act = w.act
        w.act = None
        if act is not None and act.state is State.PENDING:
            error = w.ready_error or exit_description(rc)
            end = time.time()
            self._finish(act, State.FAILED, error=error, end=end,
                         duration_s=(end - act.start) if act.start else None)
        self._requeue(w)  # every answer it wrote was read before its EOF: a call still queued never started
        log.debug("local cluster %s: worker %d exited (%s)", self.cluster, w.pid, rc)

    # ------------------------------------------------------------------ worker lifecycle helpers

    def _forget(self, w: Worker) -> None:
        if w in self._workers:
            self._workers.remove(w)
        idle = self._idle.get(self._wkey(w.fn))
        if idle and w in idle:
            idle.remove(w)

    def _retire(self, w: Worker, now: float) -> None:
        """Ask a worker to exit (EOF on its stdin); it is killed if it has not exited after EXIT_GRACE_S."""
        idle = self._idle.get(self._wkey(w.fn))
        if idle and w in idle:
            idle.remove(w)
        if w.state in ("dying", "gone"):
            return
        w.state = "dying"
        w.kill_at = now + EXIT_GRACE_S
        try:
            if w.proc.stdin is not None and not w.wbuf:
                w.proc.stdin.close()
        except OSError:
            pass

    def _kill(self, w: Worker) -> None:
        idle = self._idle.get(self._wkey(w.fn))
        if idle and w in idle:
            idle.remove(w)
        if w.state == "gone":
            return
        w.state = "dying"
        w.kill_at = None
        kill_quietly(w.proc)

    def _finish(self, act: _Activation, state: State, *, result: dict[str, Any] | None = None,
                error: str | None = None, start: float | None = None, end: float | None = None,
                duration_s: float | None = None) -> None:
        with self._cv:
            if act.state is not State.PENDING:
                return
            if act.cold_delay_s > 0 and "cold=" not in (act.injected or ""):  # settled without a reply
                act.injected = ",".join(([act.injected] if act.injected else []) + [f"cold={act.cold_delay_s:.3f}s"])
            act.result = result
            act.error = error
            if start is not None:
                act.start = start
            act.end = end if end is not None else time.time()
            act.duration_s = duration_s
            act.params = b""  # the payload is not needed any more; keep long runs' memory flat
            act.state = state
            self._cv.notify_all()
            listeners = self._listeners
        for callback in listeners:
            callback()

    def _shutdown(self) -> None:
        """Stop every worker (runs in the dispatcher thread, the workers' PDEATHSIG parent)."""
        with self._cv:
            self._stopping = True
            leftovers = list(self._inbox) + list(self._ready) + [item[2] for item in self._delayed]
            self._inbox.clear()
        self._ready.clear()
        self._delayed.clear()
        for event in self._prestart_events + [event for _, event in self._prestart_req]:
            event.set()  # nobody waits on a closed pool
        why = "the local platform was closed before the activation finished"
        for act in leftovers:
            self._finish(act, State.LOST, error=why)
        now = time.monotonic()
        for w in list(self._workers):
            act, queued = w.act, w.queued
            w.act, w.queued = None, deque()
            for waiting in queued:
                self._finish(waiting, State.LOST, error=why)
            if act is not None:
                self._kill(w)
                self._finish(act, State.LOST, error=why)
            else:
                self._retire(w, now)
        deadline = time.monotonic() + 1.0
        for w in list(self._workers):
            try:
                w.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                kill_quietly(w.proc)
                w.proc.wait()
            kill_leftovers(w.pid)
            close_pipes(w.proc)
            self._forget(w)
            w.state = "gone"
        self._idle.clear()
        try:
            self._sel.close()
        finally:
            fds = (self._wake_r, self._wake_w)
            self._wake_r = self._wake_w = -1  # never write into a closed (and maybe reused) fd number
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass
            with self._cv:
                self._cv.notify_all()

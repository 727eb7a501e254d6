"""`fedkeeper stop`: end a running experiment cleanly from another terminal, through the store.

A signal only reaches a process on the same host; the store reaches the orchestrator wherever it runs. `stop`
writes a request (who asked, from where, when) into the run's document (`stop_request`); the orchestrator looks
for it before each round (`check`), so the round in flight finishes, then the run ends with status `stopped`,
the reason naming the request, the end event `run_stopped`, its lock released and exit 130 like an interrupt.
`start --resume RUN` clears the request and goes on from the next round.

A run whose document says `running` but whose lock no orchestrator holds (killed with SIGKILL) has nobody to
stop: `stop` says so and records nothing.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from fedkeeper.errors import Interrupted, RunFailed, UsageProblem
from fedkeeper.store.locks import Holder, this_host

#: the run status and the runs-document field of a stop request
STOPPED = "stopped"
STOP_FIELD = "stop_request"


class StopRequested(Interrupted):
    """`fedkeeper stop` asked this run to end (exit 130 once recorded); `reason` is what summary.json says."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class StopTimeout(RunFailed):
    """`stop --wait --timeout S`: the run was still going after S seconds (exit 1; the request stays)."""


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def new_request(now: float | None = None) -> dict[str, Any]:
    """Who asks: this host and pid, and when."""
    return {"host": this_host(), "pid": os.getpid(), "at": round(now if now is not None else time.time(), 6)}


def reason_of(request: dict[str, Any]) -> str:
    at = request.get("at")
    when = _utc(float(at)) if isinstance(at, (int, float)) else "an unknown time"
    return f"stopped by `fedkeeper stop` from {request.get('host', '?')}/{request.get('pid', '?')} at {when}"


def check(store: Any, run_id: str) -> None:
    """Raise `StopRequested` when the run's document holds a stop request (the orchestrator, between rounds)."""
    request = (store.get_run(run_id) or {}).get(STOP_FIELD)
    if isinstance(request, dict):
        raise StopRequested(reason_of(request))


def live_holder(store: Any, run_id: str) -> Holder | None:
    """The orchestrator that holds the run's lock now, or None (no lock, a lapsed lease, a gone process)."""
    lock = store.get_lock(run_id)
    if lock is None:
        return None
    expires = lock.get("expires")
    holder = Holder.of(lock)
    if (isinstance(expires, (int, float)) and expires <= time.time()) or holder.gone_from_this_host():
        return None
    return holder


@dataclass
class StopOutcome:
    """What `stop` did: whether it recorded a request, the run's status at the end, and what to tell the user."""

    run_id: str
    requested: bool
    status: str
    message: str
    holder: str | None = None
    request: dict[str, Any] | None = None
    waited_s: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def find_run(store: Any, run: str, experiment: str | None) -> dict[str, Any]:
    """A run by id, or `latest` of the config's experiment; an unknown run is a usage error (exit 2)."""
    if run == "latest":
        if experiment is None:
            raise UsageProblem("stop latest: give -c config.yaml to say whose latest run")
        doc = store.latest_run(experiment)
    else:
        doc = store.get_run(run)
    if doc is None:
        raise UsageProblem(f"no run {run!r} in the store" + (f" (experiment {experiment!r})" if experiment else ""))
    return doc


def stop_run(store: Any, run: dict[str, Any], *, wait: bool = False, timeout_s: float | None = None,
             poll_s: float = 0.2) -> StopOutcome:
    """Record a stop request on a running run; with `wait`, return once it has ended and let go of its lock."""
    run_id = str(run["_id"])
    status = str(run.get("status"))
    if status != "running":
        return StopOutcome(run_id, False, status, f"run {run_id} is not running (status {status}); nothing to stop")
    holder = live_holder(store, run_id)
    if holder is None:
        return StopOutcome(run_id, False, status, f"run {run_id} is recorded as running but no orchestrator holds "
                                                  f"it (ended without recording it?); nothing to stop")
    request = new_request()
    store.update_run(run_id, **{STOP_FIELD: request})
    outcome = StopOutcome(run_id, True, status, f"stop requested for run {run_id} (run by {holder.describe()}); "
                                                f"it stops after its current round", holder.describe(), request)
    if not wait:
        return outcome
    t0 = time.monotonic()
    while True:
        doc = store.get_run(run_id) or {}
        status = str(doc.get("status"))
        if status != "running" and live_holder(store, run_id) is None:
            break
        if timeout_s is not None and time.monotonic() - t0 > timeout_s:
            raise StopTimeout(f"run {run_id} is still running after {timeout_s:g} s; the stop request stays, it "
                              f"stops after its current round")
        time.sleep(poll_s)
    outcome.status, outcome.waited_s = status, round(time.monotonic() - t0, 3)
    done = int(doc.get("last_completed_round") or 0)
    outcome.message = (f"run {run_id} stopped after round {done}" if status == STOPPED else
                       f"run {run_id} ended {status} after round {done} before it saw the stop request")
    return outcome

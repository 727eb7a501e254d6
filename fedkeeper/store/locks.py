"""One orchestrator per run: a lease in the store's ``locks`` collection, renewed by a heartbeat thread.

Two ``fedkeeper start --resume RUN`` at once used to invoke the same clients under the same attempt numbers and
end in an ``ActivationConflict`` crash. Now a run is driven only by the process that holds its lock:

- the lock is one document (``_id`` = the run id) naming its holder: host, pid, the process's start time and a
  random token; it is taken with one atomic write (``Store.acquire_lock``), so of two contenders exactly one wins;
- a heartbeat thread renews the lease every ``FK_RUN_LOCK_HEARTBEAT_S`` seconds (default 5); the lease lasts
  ``LEASE_HEARTBEATS`` (3) heartbeats, so a holder that stops renewing (killed, frozen, cut off) loses it after
  about 15 s;
- a second orchestrator is refused with ``RunLocked`` (exit 1) naming the holder and when its lease expires;
- a lock left by a process killed with SIGKILL is taken over once its lease lapses, or at once when the holder ran
  on this host (``FK_RUN_LOCK_HOST``, else the host name) and its pid with that start time no longer runs;
- a holder that finds its lock gone (lapsed and taken: it was frozen longer than the lease) stops before its next
  tracker pass or round (``RunLock.check``) rather than write over the new holder's work.

Clocks: the lease's expiry is written with the holder's clock and read with the contender's; hosts are expected
to agree to well within a lease (NTP does).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Protocol

from fedkeeper.errors import RunFailed
from fedkeeper.store.nxserve import create_time, same_process

log = logging.getLogger("fedkeeper.store")

HEARTBEAT_ENV = "FK_RUN_LOCK_HEARTBEAT_S"
HOST_ENV = "FK_RUN_LOCK_HOST"  # the host name locks record; set it where hosts share one (containers)
DEFAULT_HEARTBEAT_S = 5.0
LEASE_HEARTBEATS = 3  # the lease lapses after this many heartbeats without a renewal


class RunLocked(RunFailed):
    """Another orchestrator holds the run (exit 1): the message names it and when its lease expires."""


class LockStore(Protocol):
    """The store's lock methods (``fedkeeper.store.Store`` implements them)."""

    def acquire_lock(self, name: str, holder: dict[str, Any], lease_s: float, *, now: float | None = None,
                     take_from: str | None = None) -> dict[str, Any]: ...

    def renew_lock(self, name: str, token: str, lease_s: float, *,
                   now: float | None = None) -> dict[str, Any] | None: ...

    def release_lock(self, name: str, token: str) -> bool: ...

    def get_lock(self, name: str) -> dict[str, Any] | None: ...


def this_host() -> str:
    """The name this process's locks record: ``FK_RUN_LOCK_HOST``, else the host name. Two hosts with one name
    (containers started with the same hostname, each with its own pids) must set distinct values, or one would
    take the other's pids for gone."""
    return os.environ.get(HOST_ENV, "").strip() or socket.gethostname()


def heartbeat_s() -> float:
    """The heartbeat interval: ``FK_RUN_LOCK_HEARTBEAT_S`` (seconds, > 0) or 5."""
    raw = os.environ.get(HEARTBEAT_ENV, "").strip()
    try:
        value = float(raw) if raw else DEFAULT_HEARTBEAT_S
    except ValueError:
        value = DEFAULT_HEARTBEAT_S
    return value if 0 < value <= 3600 else DEFAULT_HEARTBEAT_S


@dataclass(frozen=True)
class Holder:
    """Who holds a lock: enough to name it to a user and to tell whether it still runs."""

    host: str
    pid: int
    process_start: float  # the process's start time (unix): a later process that reuses the pid is not it
    token: str

    @classmethod
    def this_process(cls) -> Holder:
        pid = os.getpid()
        return cls(this_host(), pid, create_time(pid) or 0.0, uuid.uuid4().hex)

    @classmethod
    def of(cls, doc: dict[str, Any]) -> Holder:
        """The holder a lock document names; odd fields (a hand-edited document) read as unknown."""
        def number(value: Any, kind: type) -> Any:
            return kind(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else kind(0)
        return cls(str(doc.get("host") or "?"), number(doc.get("pid"), int), number(doc.get("process_start"), float),
                   str(doc.get("token") or ""))

    def as_doc(self) -> dict[str, Any]:
        return {"host": self.host, "pid": self.pid, "process_start": self.process_start, "token": self.token}

    def gone_from_this_host(self) -> bool:
        """True when it ran on this host and that process (pid and start time) no longer runs."""
        return self.host == this_host() and self.pid > 0 and not same_process(self.pid, self.process_start)

    def describe(self) -> str:
        started = _utc(self.process_start) if self.process_start else "unknown time"
        return f"pid {self.pid} on {self.host} (started {started})"


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


class RunLock:
    """The lock of one run for this process: `acquire` (or `RunLocked`), a heartbeat, `check`, `release`."""

    def __init__(self, store: LockStore, run_id: str, *, heartbeat: float | None = None,
                 holder: Holder | None = None) -> None:
        self.store, self.run_id = store, run_id
        self.heartbeat_s = heartbeat if heartbeat is not None else heartbeat_s()
        self.lease_s = self.heartbeat_s * LEASE_HEARTBEATS
        self.holder = holder or Holder.this_process()
        self.took_over: Holder | None = None  # the holder this process took the lock from, if any, and why
        self.took_over_because = ""
        self._renewed = 0.0
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> RunLock:
        """Take the lock and start the heartbeat, or raise `RunLocked` naming the holder. A lock whose lease
        lapsed, or whose holder ran on this host and is gone, is taken over (`took_over` says from whom)."""
        current = self.store.get_lock(self.run_id)
        take_from: str | None = None
        if current is not None and current.get("token") != self.holder.token:
            other = Holder.of(current)
            expires = current.get("expires")
            lapsed = isinstance(expires, (int, float)) and expires <= time.time()
            if lapsed or other.gone_from_this_host():
                take_from = other.token
                self.took_over_because = "its lease lapsed" if lapsed else "it no longer runs"
        doc = self.store.acquire_lock(self.run_id, self.holder.as_doc(), self.lease_s, take_from=take_from)
        if doc.get("token") != self.holder.token:
            raise RunLocked(self._refusal(doc))
        if take_from is not None and current is not None:
            self.took_over = Holder.of(current)
            log.warning("run %s: took over the lock of %s: %s", self.run_id, self.took_over.describe(),
                        self.took_over_because)
        self._renewed = time.time()
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name=f"fk-lock-{self.run_id}", daemon=True)
        self._thread.start()
        return self

    def _refusal(self, doc: dict[str, Any]) -> str:
        other = Holder.of(doc)
        expires = doc.get("expires")
        if isinstance(expires, (int, float)):
            left = max(0.0, float(expires) - time.time())
            when = f"its lease expires at {_utc(float(expires))} (in {left:.0f} s) unless it is renewed"
        else:
            when = "its lease has no expiry time"
        return (f"run {self.run_id} is being run by another orchestrator: {other.describe()}; {when}. "
                f"Wait for it to end; if that process is gone, resume again after the lease expires")

    def _beat(self) -> None:
        """Renew every heartbeat. A renewal the store refuses means another holder took the lock: lost. One the
        store does not answer is tried again; `check` settles it if a whole lease goes by without one."""
        while not self._stop.wait(self.heartbeat_s):
            try:
                doc = self.store.renew_lock(self.run_id, self.holder.token, self.lease_s)
            except Exception as exc:  # noqa: BLE001 - the store is unreachable for now: try again next beat
                log.warning("run %s: could not renew the run lock: %s", self.run_id, exc)
                continue
            if doc is None:
                self._lost = "its lock lapsed and another orchestrator took it over"
                return
            self._renewed = time.time()

    def check(self) -> None:
        """Raise `RunLocked` if this process no longer holds the lock: it must stop writing to the run.

        Cheap while the heartbeat keeps the lease fresh. After a whole lease without a renewal (this process
        was frozen, or the store did not answer) it asks the store: still ours → go on; taken → `RunLocked`; no
        answer → the store's error, and the run ends as failed like on any store failure."""
        if self._lost is None and self._thread is not None and time.time() - self._renewed > self.lease_s:
            if self.store.renew_lock(self.run_id, self.holder.token, self.lease_s) is None:
                self._lost = "its lock lapsed and another orchestrator took it over"
            else:
                self._renewed = time.time()
        if self._lost is not None:
            raise RunLocked(f"run {self.run_id}: this orchestrator stopped: {self._lost}")

    def release(self) -> None:
        """Stop the heartbeat and give the lock up (only if still ours). Idempotent."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        thread.join(timeout=self.heartbeat_s + 5)
        try:
            self.store.release_lock(self.run_id, self.holder.token)
        except Exception as exc:  # noqa: BLE001 - the lease lapses by itself
            log.warning("run %s: could not release the run lock (it lapses in %g s): %s", self.run_id,
                        self.lease_s, exc)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

"""Synchronous platform calls made asynchronous: a bounded thread pool for `invoke`, its futures for `poll`.

Lambda (`RequestResponse`), Cloud Functions and the other HTTP platforms (a POST to the function's URL) only offer
calls that block until the function has finished, while the Provider interface wants `invoke` to return at once.
These providers therefore submit the call to a `CallPool` and keep the future in `Invocation.handle`;
`settled_status` turns that future into a Status, `poll_call` also maps what the call raised the way the HTTP
providers do, `pooled_session` is an HTTP session whose connection pool serves as many calls at once, and
`Targets` keeps what a call of each function needs (its URL, timeout or key), read from the platform once.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Generic, TypeVar

import requests

from fedkeeper.providers.base import AuthError, FunctionMissing, Invocation, ProviderError, State, Status, Throttled

T = TypeVar("T")


class CallPool:
    """At most `max_workers` calls in flight; threads are started on the first call, not with the provider.

    After `close()` new calls are refused with `closed_error(cluster, "provider is closed")` and calls not yet
    sent are cancelled (their `poll` reports LOST); calls already running finish on their own.
    """

    def __init__(self, cluster: str, max_workers: int, thread_name_prefix: str, *,
                 closed_error: type[ProviderError] = ProviderError) -> None:
        self.cluster = cluster
        self._max_workers = max_workers
        self._thread_name_prefix = thread_name_prefix
        self._closed_error = closed_error
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, fn: Callable[..., Status], /, *args: Any) -> Future[Status]:
        with self._lock:
            if self._closed:
                raise self._closed_error(self.cluster, "provider is closed")
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self._max_workers,
                                                thread_name_prefix=self._thread_name_prefix)
            return self._pool.submit(fn, *args)

    def call(self, name: str, fn: Callable[..., Status], /, *args: Any) -> Invocation:
        """Submit `fn(*args, activation_id)` under a new activation id; the Invocation of function `name` holds
        its future."""
        activation_id = uuid.uuid4().hex
        future = self.submit(fn, *args, activation_id)
        return Invocation(cluster=self.cluster, name=name, activation_id=activation_id, submitted=time.time(),
                          handle=future)

    def close(self) -> bool:
        """Refuse new calls and cancel queued ones; False if it was closed already."""
        with self._lock:
            if self._closed:
                return False
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        return True


def settled_status(inv: Invocation, *, lost: str, cancelled: str, activation_id: str | None = None) -> Status:
    """The Status of a call submitted through a CallPool: PENDING while it runs; LOST with `lost` when this
    process holds no future for it (submitted by an earlier process), with `cancelled` when close() cancelled it
    before it was sent; else the call's own Status. An exception the call raised is re-raised for the provider
    to map. `activation_id` goes into the PENDING and LOST statuses."""
    future: Future[Status] | None = inv.handle
    if future is None:
        return Status(State.LOST, error=lost, activation_id=activation_id)
    if not future.done():
        return Status(State.PENDING, activation_id=activation_id)
    if future.cancelled():
        return Status(State.LOST, error=cancelled, activation_id=activation_id)
    return future.result()


def settle(error: ProviderError, activation_id: str | None) -> Status | None:
    """What `poll` does with an error a finished call raised: None to raise it again for Throttled,
    FunctionMissing and AuthError (the tracker backs off, redeploys, or stops the run), else FAILED with its
    reason, because the call is over and asking again cannot change its outcome (a PlatformError raised by
    `poll` would mean "could not ask, ask again")."""
    if isinstance(error, (Throttled, FunctionMissing, AuthError)):
        return None
    return Status(State.FAILED, error=f"{type(error).__name__}: {error.message}", activation_id=activation_id)


def poll_call(inv: Invocation, *, lost: str) -> Status:
    """`settled_status` for a call that cannot be resumed by another process (`lost` says why), with what the
    call raised `settle`d."""
    try:
        return settled_status(inv, activation_id=inv.activation_id, lost=lost,
                              cancelled=f"{inv.name}: cancelled before it was sent (provider closed)")
    except ProviderError as exc:
        settled = settle(exc, inv.activation_id)
        if settled is None:
            raise
        return settled


def pooled_session(max_inflight: int, *, minimum: int = 1) -> requests.Session:
    """An HTTP session that keeps up to `max_inflight` (at least `minimum`) connections per host open, for the
    calls a CallPool of that size makes at once."""
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=max(minimum, max_inflight))
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


class Targets(Generic[T]):
    """What a call of each function needs (its URL, timeout, key), by name: read from the platform on the first
    call of a name and kept until a deploy, a remove or a 404 `forget`s it. Thread-safe; the look-up itself runs
    outside the lock (two threads may both look up a name: the last one's answer is kept)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, T] = {}

    def get(self, name: str, look_up: Callable[[str], T], *, refresh: bool = False) -> T:
        """The kept target of `name`, else (or with `refresh`) `look_up(name)`'s, kept. A look-up that raises
        (no such function, not ready) keeps nothing new."""
        if not refresh:
            with self._lock:
                target = self._items.get(name)
            if target is not None:
                return target
        return self.put(name, look_up(name))

    def put(self, name: str, target: T) -> T:
        with self._lock:
            self._items[name] = target
        return target

    def forget(self, name: str) -> None:
        with self._lock:
            self._items.pop(name, None)

"""Synchronous platform calls made asynchronous: a bounded thread pool for `invoke`, its futures for `poll`.

Lambda (`RequestResponse`) and Cloud Functions (HTTPS to the function URL) only offer calls that block until the
function has finished, while the Provider interface wants `invoke` to return at once. Both providers therefore
submit the call to a `CallPool` and keep the future in `Invocation.handle`; `settled_status` turns that future
into a Status. What a call's exception means stays with each provider.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from fedkeeper.providers.base import Invocation, ProviderError, State, Status


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

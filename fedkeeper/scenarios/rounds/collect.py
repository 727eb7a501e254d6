"""Garbage collection of committed rounds, off the aggregation's critical path.

Why: once round r's model is committed, its update blobs (and the global models beyond ``keep_models``) are no
longer needed, and the aggregator used to prune them before it answered. On the embedded store that pruning costs
about 0.5 ms per update document (nx-27017 loads, copies and rewrites each one), as much as the aggregation
itself, and nothing waits for it. So the orchestrator asks the aggregator not to (payload ``gc: false``) and
prunes here, in one background thread, while the next round trains.

Guarantees (docs/reliability.md, "Garbage collection"):

- only what a resume cannot need: ``collect`` is called once round r is recorded, after the aggregator returned
  its model (the model document is the round's commit point; a resumed run starts after it and a repeated
  aggregation of round r returns the stored model), with exactly what the aggregator would have pruned
  (``gc_models`` with ``keep_models``, ``gc_updates`` through the payload's ``gc_through`` or r). Pruning later
  prunes no more;
- one pruner per run at a time, in order: requests are queued, and a request that is still queued when a newer
  one arrives is covered by it (both operations are cumulative);
- a run that ends waits for its pending collection and one more over every round (``close``), so a finished run's
  store is as it was when the aggregator pruned. A killed one leaves the blobs of at most two rounds unpruned (and
  stragglers' since its last collection over every round): the next collection of a resumed run takes them; nothing is lost or half-written either way (a document is marked pruned before its
  GridFS file goes);
- each collection looks only at the rounds it has not collected yet and the ``WINDOW`` rounds before them (a
  client abandoned by its round may still write its update a little later), and every ``FULL_EVERY``-th looks at
  all rounds, as the first of a session, the one after a failure and a final one when the run ends do: the query
  for blobs still held reads every update document of the rounds it covers, so a collection over all rounds grew
  with the run (about 1.3 ms per thousand pruned documents on the embedded store: 50 ms of its lock per round
  after 40 rounds of 1000 clients). A straggler's blob older than the window waits for the next full one;
- the embedded server holds its database lock for a whole command, and all its work shares one interpreter
  lock, so blobs are pruned in batches (``BATCH``) with a pause after each as long as the batch took (``PACE``):
  the next round's queries and the clients' writes go through in between, and the pruning spreads over the
  round instead of slowing its first second. A run that ends prunes what is left without pauses.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

#: update documents per pruning write: about 50 ms of the embedded server's lock each
BATCH = 100
#: pause after each write, as a multiple of the time it took (0: none)
PACE = 1.0
#: rounds before the first uncollected one that a collection looks at again (late updates of abandoned clients)
WINDOW = 4
#: every this many collections, one looks at every round of the run
FULL_EVERY = 10

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Request:
    """Collect after ``round``: models beyond the newest ``keep_models``, update blobs of rounds ``<= through``."""

    round: int
    keep_models: int
    through: int
    full: bool = False  # look at every round (else the uncollected ones and the WINDOW before them)


class Collector:
    """One background thread that runs the queued collections of one run, in order."""

    def __init__(self, blobs: Any, run_id: str, *, logger: logging.Logger | None = None, batch: int = BATCH,
                 pace: float = PACE) -> None:
        self.blobs, self.run_id, self.batch, self.pace = blobs, run_id, batch, pace
        self._closing = threading.Event()  # set by close: no more pauses
        self._mark = 0.0
        self.log = logger or log
        self._queue: queue.Queue[Request | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._collected: int | None = None  # through which round every update blob was pruned (None: not known)
        self._partial = 0  # collections since the last that looked at every round
        self._last: Request | None = None  # the newest request since the last close
        self.done: list[dict[str, Any]] = []  # what each collection pruned, and how long it took
        self.errors: list[str] = []

    def collect(self, round_number: int, keep_models: int, through: int) -> None:
        """Queue the collection after round ``round_number`` and return at once."""
        if keep_models <= 0:
            return
        with self._lock:
            self._put(Request(round_number, keep_models, min(through, round_number)))

    def _put(self, request: Request) -> None:
        self._last = request
        self._queue.put(request)
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._work, name=f"fk-gc-{self.run_id}", daemon=True)
            self._thread.start()

    def close(self, timeout_s: float | None = None) -> None:
        """Wait until every queued collection ran, the last of them over every round (a run's end, which leaves
        the store as an aggregator that pruned every round would; None: however long it takes)."""
        with self._lock:
            if self._last is not None:  # queued ones fold into it: one more collection at most
                self._put(Request(self._last.round, self._last.keep_models, self._last.through, full=True))
            self._last = None
            thread, self._thread = self._thread, None
            if thread is None or not thread.is_alive():  # a thread leaves only after taking the stop mark
                return
            self._queue.put(None)
            self._closing.set()
        thread.join(timeout_s)
        self._closing.clear()

    def _next(self) -> Request | None:
        """The newest queued request (older queued ones are covered by it), or None to stop."""
        item = self._queue.get()
        while item is not None:
            try:
                newer = self._queue.get_nowait()
            except queue.Empty:
                break
            if newer is None:  # stop after this one
                self._queue.put(None)
                break
            item = Request(newer.round, newer.keep_models, newer.through, full=item.full or newer.full)
        return item

    def _work(self) -> None:
        while (request := self._next()) is not None:
            t0 = self._mark = time.perf_counter()
            full = request.full or self._collected is None or self._partial + 1 >= FULL_EVERY
            after = None if full else max(0, min(int(self._collected or 0), request.through) - WINDOW)
            try:
                models = self.blobs.gc_models(self.run_id, keep_last=request.keep_models)
                updates = self.blobs.gc_updates(self.run_id, through_round=request.through, after_round=after,
                                                batch=self.batch, between=self._pause)
            except Exception as exc:  # noqa: BLE001 - a blob left unpruned is collected by the next request
                self._collected = None  # the next one looks at every round
                self.errors.append(f"{type(exc).__name__}: {exc}")
                self.log.warning("round %s: garbage collection failed (retried after the next round): %s",
                                 request.round, exc)
                continue
            seconds = time.perf_counter() - t0
            self._collected = max(request.through, self._collected or 0)
            self._partial = 0 if full else self._partial + 1
            self.done.append({"round": request.round, "models": models, "updates": updates, "seconds": seconds,
                              "after_round": after})
            self.log.debug("round %s: collected %s model and %s update blobs in %.3f s", request.round, models,
                           updates, seconds)

    def _pause(self) -> None:
        """Between two pruning writes: wait ``pace`` times as long as the last one took, unless the run ends."""
        now = time.perf_counter()
        if self.pace > 0:
            self._closing.wait(self.pace * (now - self._mark))
        self._mark = time.perf_counter()

"""Which stored client updates the aggregator may use, and the streaming aggregation over the admitted ones.

Why: an update document is written by whoever holds the store's credentials (every client function does), so each
of its fields is the writer's word. The orchestrator is the authority on what was asked for: for every client it
names the activation it issued (id and attempt) whose update it will take, and the aggregator recomputes how many
samples that client's shard holds from the seeded partition (``data.shard_sizes``). An update enters the average
only if its document is the one that activation wrote (run, round, client, activation id, attempt), it trained on
the previous global model, its ``num_examples`` is an integer in [1, shard size], its blob is the one the client
acknowledged (when the orchestrator saw the acknowledgement) and decodes to the model's names, shapes and dtypes
with finite values. Anything else is rejected with one of ``REASONS``, and the round goes on with the rest.

``Admitted`` hands the strategy the admitted updates one at a time (``ClientUpdate``s, lazily, in ascending
client-id order), so a streaming strategy holds one update at a time and an order-statistics one decides itself
what to keep. Weights are float64 from these validated integers (``strategies.StreamingMean``), so no count can
overflow or dominate beyond its shard: the total is at most the training set's size.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np

from . import strategies
from . import weights as W
from .blobstore import CorruptUpdate, update_key

log = logging.getLogger(__name__)

T = TypeVar("T")

#: why an update was rejected (the ``reason`` of a ``rejected`` entry), with what it means
REASONS: dict[str, str] = {
    "missing": "no update stored for the activation, or its blob was garbage-collected or is gone",
    "malformed": "a metadata field is absent or of the wrong type (e.g. client_id null), or the blob reference "
                 "or size is not one a FedKeeper writer produces",
    "forged": "the document names another run, round, client, activation id or attempt than the activation the "
              "orchestrator issued",
    "mismatch": "the stored blob is not the one the client function acknowledged (its sha256 differs)",
    "stale_round": "trained on another global model than the previous round's",
    "num_examples": "num_examples is not an integer between 1 and the number of samples of the client's shard",
    "bad_update": "the aggregation strategy refused the update",
    "too_stale": "issued in a round staler than the aggregation allows, or its base model is gone "
                 "(runtime/staleness.py)",
    **{reason: "the weight blob failed validation (runtime/weights.py)" for reason in sorted(W.REASONS)},
}

_SHA256 = re.compile(r"[0-9a-f]{64}")

#: the aggregator reads update documents in chunks of at most this many, holding at most this many blob bytes
#: (with the next chunk read ahead: two chunks of half that each)
READ_BATCH_MAX = 256
READ_BATCH_BYTES = 4 << 20
READ_AHEAD_SPLIT = 4
#: updates whose blob may exceed this share of ``READ_BATCH_BYTES`` are read one per round trip: a large model's
#: aggregator holds its float64 sums (twice the model) and one update, and a second update read with it (plus
#: the driver's copy of the reply) would be the largest thing in its memory (issue 18: within 2x of model + update)
READ_ONE_FRACTION = 4


class UpdateSource(Protocol):
    """What the aggregation reads (``blobstore.BlobStore`` implements it)."""

    def find_update(self, run_id: str, round: int, client_id: Any, activation_id: str | None = None
                    ) -> dict[str, Any] | None: ...

    def decode_update(self, doc: Mapping[str, Any], expected: W.Expected, run_id: str, round: int, client_id: Any,
                      *, max_bytes: int | None = None, check_finite: bool = True) -> dict[str, np.ndarray]: ...


@dataclass(frozen=True)
class Issued:
    """One client's update the orchestrator asks for: the activation it issued (and, if it saw the client's
    acknowledgement, the sha256 the client reported)."""

    client_id: int
    activation_id: str
    attempt: int
    sha256: str | None = None
    #: the round the activation was issued in, when older than the aggregation's (a stale update:
    #: runtime/staleness.py); None: the aggregation's round
    round: int | None = None

    def as_params(self) -> dict[str, Any]:
        out: dict[str, Any] = {"client_id": self.client_id, "activation_id": self.activation_id,
                               "attempt": self.attempt}
        if self.sha256 is not None:
            out["sha256"] = self.sha256
        if self.round is not None:
            out["round"] = self.round
        return out


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def parse_issued(raw: Any, num_clients: int, where: str = "params.updates") -> list[Issued]:
    """The orchestrator's list ``[{client_id, activation_id, attempt, sha256?}, ...]``, checked and in ascending
    client-id order (the aggregation order); ValueError naming the entry otherwise (a bad payload, not a bad
    update: the orchestrator built it)."""
    if not isinstance(raw, list):
        raise ValueError(f"{where} must be a list of {{client_id, activation_id, attempt}}, got {type(raw).__name__}")
    out: dict[int, Issued] = {}
    for i, entry in enumerate(raw):
        at = f"{where}[{i}]"
        if not isinstance(entry, Mapping):
            raise ValueError(f"{at} must be an object, got {entry!r}")
        cid, aid, attempt, sha, issued = (entry.get(k) for k in ("client_id", "activation_id", "attempt", "sha256",
                                                                 "round"))
        if not _is_int(cid) or not 0 <= cid < num_clients:
            raise ValueError(f"{at}.client_id must be an integer in 0..{num_clients - 1}, got {cid!r}")
        if not isinstance(aid, str) or not aid or ":" in aid or len(aid) > 200:
            raise ValueError(f"{at}.activation_id must be a non-empty string without ':', got {aid!r}")
        if not _is_int(attempt) or attempt < 1:
            raise ValueError(f"{at}.attempt must be an integer >= 1, got {attempt!r}")
        if sha is not None and (not isinstance(sha, str) or not _SHA256.fullmatch(sha)):
            raise ValueError(f"{at}.sha256 must be 64 lowercase hex digits, got {sha!r}")
        if issued is not None and (not _is_int(issued) or issued < 1):
            raise ValueError(f"{at}.round must be an integer >= 1, got {issued!r}")
        if int(cid) in out:
            raise ValueError(f"{at}.client_id {cid} is listed twice")
        out[int(cid)] = Issued(int(cid), aid, int(attempt), sha, None if issued is None else int(issued))
    return [out[c] for c in sorted(out)]


def check(doc: Any, item: Issued, *, run_id: str, round: int, shard_size: int) -> int:
    """The ``num_examples`` to weight this update with, once every metadata field the aggregation relies on is
    checked against the issued activation; CorruptUpdate with one of ``REASONS`` otherwise. The blob is not
    read here (``decode_update`` does that): metadata is cheap to refuse first."""

    def reject(reason: str, detail: str) -> CorruptUpdate:
        return CorruptUpdate(run_id, round, item.client_id, reason, detail)

    if doc is None:
        raise reject("missing", f"no update stored for activation {item.activation_id}")
    if not isinstance(doc, Mapping):
        raise reject("malformed", f"the update document is a {type(doc).__name__}")
    for key, kind, want in (("run_id", str, run_id), ("round", int, round), ("client_id", int, item.client_id),
                            ("activation_id", str, item.activation_id)):
        value = doc.get(key)
        if not (_is_int(value) if kind is int else isinstance(value, kind)):
            raise reject("malformed", f"{key} is {_show(value)}, not {'an integer' if kind is int else 'a string'}")
        if value != want:
            raise reject("forged", f"{key} is {_show(value)}, the orchestrator issued {want!r}")
    attempt = doc.get("attempt")
    if attempt is None:
        if doc.get("_id") != update_key(run_id, round, item.client_id):  # only pre-activation-key docs lack it
            raise reject("malformed", "attempt is missing")
    elif not _is_int(attempt):
        raise reject("malformed", f"attempt is {_show(attempt)}, not an integer")
    elif attempt != item.attempt:
        raise reject("forged", f"attempt is {_show(attempt)}, the orchestrator issued attempt {item.attempt}")
    sha = doc.get("sha256")
    if not isinstance(sha, str):
        raise reject("malformed", f"sha256 is {_show(sha)}, not a string")
    if item.sha256 is not None and sha != item.sha256:
        raise reject("mismatch", f"stored update {sha[:16]}… is not the one the client acknowledged "
                                 f"({item.sha256[:16]}…)")
    base = doc.get("base_round")
    if not _is_int(base):
        raise reject("malformed", f"base_round is {_show(base)}, not an integer")
    if base != round - 1:
        raise reject("stale_round", f"trained on round {_show(base)}, expected {round - 1}")
    n = doc.get("num_examples")
    if not _is_int(n) or not 1 <= n <= shard_size:
        raise reject("num_examples", f"num_examples is {_show(n)}; client {item.client_id}'s shard holds "
                                     f"{shard_size} samples")
    return int(n)


def _show(value: Any) -> str:
    """A hostile value, shown short: a document may hold megabytes in any field."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


def max_blob_bytes(expected: W.Expected) -> int:
    """The largest blob an update of this model can be: its arrays, their alignment, a generous header."""
    payload = sum(math.prod(int(d) for d in shape) * np.dtype(dtype).itemsize + W.ALIGN
                  for shape, dtype in expected.values())
    header = sum(512 + 12 * len(name) + 24 * len(shape) for name, (shape, _) in expected.items())
    return W.PREFIX_SIZE + header + W.ALIGN + payload


@dataclass
class Outcome:
    """What one aggregation made of the issued updates."""

    weights: dict[str, np.ndarray] | None  # None when no update was admitted
    accepted: list[int]
    rejected: list[dict[str, Any]]
    total_examples: int


def rejection(item: Issued, reason: str, detail: str) -> dict[str, Any]:
    return {"client_id": item.client_id, "activation_id": item.activation_id, "attempt": item.attempt,
            "reason": reason, "detail": detail}


class Admitted:
    """The issued updates that pass every check, as ``ClientUpdate``s in ascending client-id order, read lazily:
    each blob is fetched and decoded when the consumer asks for the next update, so a streaming strategy never
    holds two. Iterate once; ``accepted``, ``rejected`` and ``total_examples`` fill in as it goes (rejections are
    logged and recorded, and the iteration goes on with the next client).

    ``check_finite=False``: the blobs' NaN/Inf scan is left to the consumer, which must prove the values finite
    another way, and the rejections' warnings are held until ``release_warnings`` (a pass that may be discarded
    and run again must not log them twice): ``deferred_mean``."""

    def __init__(self, issued: Sequence[Issued], source: UpdateSource, *, run_id: str, round: int,
                 expected: W.Expected, shard_sizes: Sequence[int], check_finite: bool = True) -> None:
        self._issued = sorted(issued, key=lambda i: i.client_id)
        self._source, self._expected, self._shards = source, expected, shard_sizes
        self.run_id, self.round = run_id, round
        self.accepted: list[int] = []
        self.rejected: list[dict[str, Any]] = []
        self.total_examples = 0
        self._examples: dict[int, int] = {}
        self._started = False
        self._check_finite = check_finite
        self._held: list[tuple[str, tuple[Any, ...]]] | None = None if check_finite else []

    def __iter__(self) -> Iterator[strategies.ClientUpdate]:
        if self._started:
            raise RuntimeError("admitted updates are read once (each blob is fetched as it is consumed)")
        self._started = True
        return self._updates()

    def _updates(self) -> Iterator[strategies.ClientUpdate]:
        limit = max_blob_bytes(self._expected)
        for chunk, docs in self._chunks(limit):
            for item in chunk:
                yield from self._admit(item, docs, limit)

    def _chunks(self, limit: int) -> Iterator[tuple[list[Issued], dict[Any, Any] | None]]:
        """The issued updates in chunks, each chunk's documents read in one round trip when the source can
        (``find_updates``): a thousand small updates in a few round trips instead of a thousand. A chunk holds
        at most ``READ_BATCH_BYTES`` of blobs (one update when a single one is larger), so memory stays flat in
        the number of clients and near one update for big models.

        When two or more updates fit in half that budget, the next chunk is read (in a thread) while this one is
        verified and summed: the store works on its documents while this process works on the previous ones,
        and both chunks together still hold at most ``READ_BATCH_BYTES``. Big models read one update at a time,
        as before (a second one read ahead would double the memory the aggregator needs beside the model)."""
        fetch = getattr(self._source, "find_updates", None)
        if fetch is None:
            for item in self._issued:
                yield [item], None
            return
        ahead = READ_BATCH_BYTES // 2 // max(1, limit) >= 2
        size = max(1, min(READ_BATCH_MAX, (READ_BATCH_BYTES // 2 if ahead else READ_BATCH_BYTES) // max(1, limit)))
        if limit > READ_BATCH_BYTES // READ_ONE_FRACTION:
            size = 1
        if ahead:  # at least READ_AHEAD_SPLIT chunks (of 16 or more): a small round overlaps its reads too
            size = min(size, max(16, -(-len(self._issued) // READ_AHEAD_SPLIT)))
        chunks = [self._issued[start:start + size] for start in range(0, len(self._issued), size)]

        def read(chunk: list[Issued]) -> dict[Any, Any]:
            return fetch(self.run_id, [(self._round_of(i), i.client_id, i.activation_id) for i in chunk])

        if not ahead or len(chunks) < 2:
            for chunk in chunks:
                yield chunk, read(chunk)
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fk-read-ahead") as pool:
            pending = pool.submit(read, chunks[0])
            for k, chunk in enumerate(chunks):
                docs = pending.result()
                if k + 1 < len(chunks):
                    pending = pool.submit(read, chunks[k + 1])
                yield chunk, docs
                docs = None  # noqa: F841 - this chunk's documents go before the one after next is read

    def _round_of(self, item: Issued) -> int:
        return self.round if item.round is None else item.round

    def _admit(self, item: Issued, docs: dict[Any, Any] | None, limit: int) -> Iterator[strategies.ClientUpdate]:
        """The update of one issued activation if it passes every check (verified as it streams by), else a
        rejection recorded; its document is dropped from ``docs`` either way, so only decoded views go on."""
        rnd = self._round_of(item)
        try:
            if docs is None:
                doc = self._source.find_update(self.run_id, rnd, item.client_id, item.activation_id)
            else:
                doc = docs.pop((rnd, item.client_id, item.activation_id), None)
            n = check(doc, item, run_id=self.run_id, round=rnd, shard_size=self._shards[item.client_id])
            weights = self._source.decode_update(doc, self._expected, self.run_id, rnd, item.client_id,
                                                 max_bytes=limit, check_finite=self._check_finite)
        except CorruptUpdate as exc:
            self.rejected.append(rejection(item, exc.reason, exc.detail))
            self._warn("%s", exc)
            return
        doc = None  # the document holds the blob bytes: only the decoded views go on
        self.accepted.append(item.client_id)
        self._examples[item.client_id] = n
        self.total_examples += n
        yield strategies.ClientUpdate(item.client_id, n, weights)
        weights = None  # drop this blob's views before reading the next one

    def issued_round(self, client_id: int) -> int:
        """The round the client's listed activation was issued in (the aggregation's unless the entry says)."""
        item = next(i for i in self._issued if i.client_id == client_id)
        return self.round if item.round is None else item.round

    def activation_of(self, client_id: int) -> str:
        return next(i for i in self._issued if i.client_id == client_id).activation_id

    def refuse(self, update: strategies.ClientUpdate, detail: str, *, reason: str = "bad_update") -> None:
        """Move an update the consumer could not use from ``accepted`` to ``rejected`` (reason ``bad_update``
        unless told: ``too_stale`` from runtime/staleness.py)."""
        item = next(i for i in self._issued if i.client_id == update.client_id)
        self.accepted.remove(update.client_id)
        self.total_examples -= self._examples.pop(update.client_id)
        self.rejected.append(rejection(item, reason, detail))
        self._warn("update of client %s rejected (%s): %s", update.client_id, reason, detail)

    def _warn(self, message: str, *args: Any) -> None:
        if self._held is None:
            log.warning(message, *args)
        else:
            self._held.append((message, args))

    def release_warnings(self) -> None:
        """Log the rejections held so far (``check_finite=False``), and every later one at once."""
        held, self._held = self._held or [], None
        for message, args in held:
            log.warning(message, *args)


def deferred_mean(admit: Callable[[bool], Admitted], mean: Callable[[Admitted], T]) -> tuple[Admitted, T]:
    """``mean(admit(False))``: the FedAvg family's mean with the NaN/Inf scan of every update replaced by one check
    of the result; and when that fails, ``mean(admit(True))``, the per-update checks, which reject the offenders.

    Why: scanning each update for NaN/Inf is a pass over its bytes, a fifth of what verifying and adding it costs
    (issue 18). The check of the result is exact: each update enters the float64 sums times a weight >= 1, so a
    NaN or an Inf in any update makes its sums NaN or Inf, which no later addition undoes, and the mean is then not
    finite (``NonFiniteMean``); finite float32 or float16 values cannot overflow float64 sums (float64 ones are
    summed scaled by 2**-64). So a finite mean proves every update finite, and the first pass admitted exactly the
    updates the per-update checks admit, summed in the same order: the same bits. When the mean is not finite (a
    non-finite update, or a mean that overflows the model's dtype, which the second pass reports as before), the
    round reads its updates again: one client sending NaN costs a round at most one more pass, never a wrong model.

    ``admit(check_finite)`` builds the round's ``Admitted`` (each pass reads afresh); ``mean`` consumes it. A
    StrategyError other than NonFiniteMean does not depend on the values (names, shapes, order, no update at all),
    so the checked pass would fail too: it is raised from the first."""
    first = admit(False)
    try:
        result = mean(first)
    except strategies.NonFiniteMean as exc:
        log.warning("round %s of run %s: %s; aggregating again with every update checked for NaN/Inf",
                    first.round, first.run_id, exc)
    except BaseException:
        first.release_warnings()  # a pass that fails otherwise logs its rejections as a checked pass would
        raise
    else:
        first.release_warnings()
        return first, result
    again = admit(True)
    return again, mean(again)


def aggregate(issued: Sequence[Issued], source: UpdateSource, *, run_id: str, round: int, expected: W.Expected,
              shard_sizes: Sequence[int], strategy: strategies.StreamingMean | None = None) -> Outcome:
    """Admit and average the issued updates in ascending client-id order, one update in memory at a time (the
    FedAvg mean the aggregator computes for ``fedavg``, here for callers that want the mean alone)."""
    mean = strategy or strategies.StreamingMean()
    mean.begin(expected)
    admitted = Admitted(issued, source, run_id=run_id, round=round, expected=expected, shard_sizes=shard_sizes)
    for update in admitted:
        try:
            mean.add(update.weights, update.num_examples, client_id=update.client_id)
        except strategies.StrategyError as exc:
            admitted.refuse(update, str(exc))
    result = mean.result() if mean.count else None
    return Outcome(result, admitted.accepted, admitted.rejected, admitted.total_examples)


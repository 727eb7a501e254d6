"""Which stored update of each client the orchestrator hands to the aggregator: one that its own activation wrote.

The update documents of a round are written by the client functions, and can be written by anyone else who holds
the store's credentials; the activation records are the orchestrator's own. A client has stored its update (it is
not invoked again on resume, it counts toward the quorum, the aggregator is told to take it) only when a document
sits under the key of an `fl_client` activation this run recorded for that client in that round
(`runtime.blobstore.update_key`: `run:round:client:activation`, or `run:round:client` written by earlier versions
naming that activation). Of several, the activation the orchestrator saw succeed wins, then the latest attempt.
An activation recorded `abandoned` issues nothing: its round went on without it, so an update it stores after the
cut (or before a resume) is never aggregated (`scenarios.cohort`).
The aggregator checks the document itself (`runtime.admission`); the other documents of the round are ignored, and
those that no issued activation explains are reported.

Nothing here trusts a document's field types: `client_id: null`, a text round or an odd `_id` only make the
document ignored, never an exception.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fedkeeper.runtime.admission import Issued
from fedkeeper.runtime.blobstore import update_key

CLIENT_FUNCTION = "fl_client"
#: why a document of the round is not any client's update (the `reason` of an `update_ignored` event)
IGNORED_REASONS = {
    "unissued": "it names no fl_client activation this run recorded in this round (written by someone else, or by "
                "a call whose record an interrupted orchestrator never wrote)",
    "forged": "it names an issued activation but sits under another key than that activation's",
    "abandoned": "its activation was abandoned: the round went on without it, so its late update is not used",
}
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass
class RoundUpdates:
    """The clients of one round with a usable update, and what was left aside."""

    chosen: dict[int, Issued] = field(default_factory=dict)  # client id → the update the aggregator gets
    docs: list[dict[str, Any]] = field(default_factory=list)  # the chosen documents, as listed
    ignored: list[dict[str, Any]] = field(default_factory=list)  # {update, client_id, activation_id, reason}

    def for_aggregator(self, clients: Iterable[int]) -> list[dict[str, Any]]:
        """The aggregate payload's `updates` for these clients (ascending client id)."""
        return [self.chosen[c].as_params() for c in sorted(clients)]


@dataclass(frozen=True)
class _Record:
    activation_id: str
    client_id: int
    attempt: int
    succeeded: bool
    abandoned: bool


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _records(records: Iterable[Mapping[str, Any]], round_number: int) -> dict[str, _Record]:
    """The fl_client activations of the round by id; a record with odd fields (tampered) issues nothing."""
    out: dict[str, _Record] = {}
    for r in records:
        aid, client, attempt = r.get("_id"), r.get("client_id"), r.get("attempt")
        if (r.get("function") != CLIENT_FUNCTION or r.get("round") != round_number or not isinstance(aid, str)
                or not _is_int(client) or not _is_int(attempt)):
            continue
        out[aid] = _Record(aid, int(client), int(attempt), r.get("state") == "succeeded",
                           r.get("state") == "abandoned")
    return out


def issues_any(records: Iterable[Mapping[str, Any]], round_number: int) -> bool:
    """Whether the records issue any update of the round (an `fl_client` activation of it): without one, every
    document of the round is ignored, so a new round need not list them."""
    return bool(_records(records, round_number))


def _short(value: Any) -> Any:
    """A document's field for an event line: ints as they are, anything else as a short string."""
    if _is_int(value):
        return value
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= 120 else f"{text[:117]}..."


def round_updates(records: Iterable[Mapping[str, Any]], docs: Iterable[Mapping[str, Any]], *, run_id: str,
                  round_number: int, acks: Mapping[int, Any] | None = None) -> RoundUpdates:
    """Match the round's update documents (`BlobStore.list_updates`) to the round's activation records
    (`Store.find_activations`). `acks`: the results of the client activations this session saw succeed, by
    client id; an acknowledged sha256 is passed on so the aggregator takes exactly the acknowledged blob."""
    issued = _records(records, round_number)
    best: dict[int, tuple[tuple[bool, int], _Record, dict[str, Any]]] = {}
    out = RoundUpdates()
    for doc in docs:
        aid = doc.get("activation_id")
        record = issued.get(aid) if isinstance(aid, str) else None
        if record is None:
            reason = "unissued"
        elif doc.get("_id") not in (update_key(run_id, round_number, record.client_id, record.activation_id),
                                    update_key(run_id, round_number, record.client_id)):
            reason = "forged"
        elif record.abandoned:
            reason = "abandoned"
        else:
            rank = (record.succeeded, record.attempt)
            if record.client_id not in best or rank > best[record.client_id][0]:
                best[record.client_id] = (rank, record, dict(doc))
            continue
        out.ignored.append({"update": _short(doc.get("_id")), "client_id": _short(doc.get("client_id")),
                            "activation_id": _short(aid), "reason": reason})
    for client in sorted(best):
        _, record, doc = best[client]
        ack = (acks or {}).get(client)
        sha = None
        if isinstance(ack, Mapping) and ack.get("activation_id") == record.activation_id:
            sha = ack.get("sha256") if isinstance(ack.get("sha256"), str) and _SHA256.fullmatch(ack["sha256"]) \
                else None
        out.chosen[client] = Issued(client, record.activation_id, record.attempt, sha)
        out.docs.append(doc)
    return out

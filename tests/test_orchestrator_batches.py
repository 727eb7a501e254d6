"""The orchestrator's per-client bookkeeping done once per batch or per round (issue 18), with the same results:

- `Logs/` activation rows are written per tracker batch, after the batch's store records: the files hold what
  one call per row wrote, a row never names an activation the store does not hold in that state (also when the
  store refuses a batch), and a resumed run restores the rows of records a killed session stored but did not log;
- the clients' payloads of a round are built once (`ClientPayloads`) and are those of `client_payload`;
- a sync round reads its records once for the row's counts and cost (`rounds.common.round_records`).
In-process, fast.
"""

from __future__ import annotations

import contextlib
import csv
import json
from enum import StrEnum
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedkeeper import config as cfg
from fedkeeper import tracker as tracker_module
from fedkeeper.config.models import Resilience
from fedkeeper.results.run_folders import read_activations
from fedkeeper.results.runlog import ACTIVATION_COLUMNS, RunLog
from fedkeeper.runtime.privacy import DPMode
from fedkeeper.runtime.strategies import make_strategy
from fedkeeper.scenarios.federated_learning import (ClientPayloads, client_payload, data_spec, model_spec,
                                                     restore_rows, task_spec)
from fedkeeper.scenarios.rounds import common
from fedkeeper.secrets import Redactor
from fedkeeper.tracker import Tracker, missing_rows
from test_scale_paths import CappedFabric, CappedProvider, MemoryRecords, _jobs
from test_strategy_wiring import config_text


def _rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "activations.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _events(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / "events.jsonl").read_text(encoding="utf-8").splitlines()]


ROWS = [
    {"round": 1, "client_id": 3, "cluster": "lab", "platform": "local", "function": "fl_client",
     "activation_id": "a1", "platform_activation_id": "p1", "attempt": 1, "state": "succeeded", "cold": True,
     "start": 1700000000.5, "end": 1700000001.25, "duration_s": 0.75, "memory_mb": 256, "injected": None,
     "error": None},
    {"round": 1, "client_id": "server", "cluster": "lab", "platform": "local", "function": "fl_client",
     "activation_id": "a2", "attempt": 2, "state": "failed", "cold": False, "start": 1.0, "end": 2.0,
     "duration_s": float("nan"), "memory_mb": 256, "error": "boom\nwith Bearer abcdefgh12345 and a long line"},
    {"round": 2, "client_id": None, "cluster": "lab", "platform": "local", "function": "fl_server_aggregator",
     "activation_id": "a3", "attempt": 1, "state": "succeeded", "level": 1, "part": "1.0", "duration_s": 1e7},
]


def test_a_batch_of_rows_writes_what_one_call_per_row_wrote(tmp_path: Path) -> None:
    one, batch = RunLog(tmp_path / "one", "run", Redactor()), RunLog(tmp_path / "batch", "run", Redactor())
    try:
        for row in ROWS:
            one.activation(row)
        batch.activations(ROWS)
        batch.activations([])
    finally:
        one.close()
        batch.close()
    assert (one.dir / "activations.csv").read_text() == (batch.dir / "activations.csv").read_text()
    a, b = _events(one.dir), _events(batch.dir)
    assert [{k: v for k, v in e.items() if k != "ts"} for e in a] == [{k: v for k, v in e.items() if k != "ts"}
                                                                     for e in b]
    assert len(_rows(batch.dir)) == 3 and "abcdefgh12345" not in (batch.dir / "activations.csv").read_text()


class WatchedRecords(MemoryRecords):
    """Checks, at every write, that the log holds no row of an activation the store does not hold in that state."""

    def __init__(self, folder: Path, **kw: Any) -> None:
        super().__init__(**kw)
        self.folder = folder
        self.checked = 0

    def record_activations(self, inserts: Any = (), updates: Any = ()) -> None:
        self.check()
        super().record_activations(inserts, updates)

    def check(self) -> None:
        for row in _rows(self.folder):
            assert self.docs.get(row["activation_id"], {}).get("state") == row["state"], row
            self.checked += 1


def _tracker(tmp_path: Path, records: MemoryRecords, provider: CappedProvider) -> tuple[Tracker, RunLog]:
    runlog = RunLog(tmp_path / "Logs", "run1", Redactor())
    policy = Resilience(max_attempts=3, backoff_base_s=0.0, backoff_max_s=0.0, poll_initial_s=0.001,
                        poll_max_s=0.002, timeout_slack_s=0.0)
    return Tracker(CappedFabric(provider, 4), records, runlog, policy), runlog


@pytest.fixture
def every_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """A store write at every tracker pass (instead of at most every 250 ms): many batches in a short run."""
    monkeypatch.setattr(tracker_module, "FLUSH_EVERY_S", 0.0)


def test_rows_follow_their_store_records(tmp_path: Path, every_pass: None) -> None:
    records = WatchedRecords(tmp_path / "Logs" / "run1", delay_s=0.001)
    tracker, runlog = _tracker(tmp_path, records, CappedProvider(fail_once={2, 5}))
    try:
        tracker.run(_jobs(20))
    finally:
        tracker.close()
        runlog.close()
    records.check()
    assert records.checked > 22  # rows were there to check while the run went on, and at its end
    rows = _rows(runlog.dir)
    assert {r["activation_id"]: r["state"] for r in rows} == {k: d["state"] for k, d in records.docs.items()}
    assert len(rows) == 22 and sum(r["state"] == "failed" for r in rows) == 2
    assert sum(e["event"] == "activation" for e in _events(runlog.dir)) == 22


@pytest.mark.parametrize("fail_after", [3, 4, 5, 6])  # the refused batch: new calls, settled ones, or both
def test_a_batch_the_store_refuses_leaves_no_rows(tmp_path: Path, every_pass: None, fail_after: int) -> None:
    records = MemoryRecords(fail_after=fail_after)
    tracker, runlog = _tracker(tmp_path, records, CappedProvider(fail_once=set(), polls_to_settle=1))
    try:
        with pytest.raises(RuntimeError, match="store unreachable"):
            tracker.run(_jobs(40))
    finally:
        with contextlib.suppress(RuntimeError):  # what gathered since the refused batch: refused as well
            tracker.close()
        runlog.close()
    logged = {r["activation_id"]: r["state"] for r in _rows(runlog.dir)}
    assert logged and all(records.docs.get(a, {}).get("state") == s for a, s in logged.items())


def test_a_resumed_run_restores_the_rows_a_killed_session_did_not_write(tmp_path: Path) -> None:
    records = MemoryRecords()
    tracker, runlog = _tracker(tmp_path, records, CappedProvider(fail_once={1}))
    try:
        tracker.run(_jobs(6))
    finally:
        tracker.close()
        runlog.close()
    path = runlog.dir / "activations.csv"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:3]))  # killed after the store write, before the last rows: two rows left
    records.docs["x-open"] = {"_id": "x-open", "run_id": "run1", "round": 1, "client_id": 9, "state": "invoked"}

    class Store:
        def find_activations(self, run_id: str, round: int | None = None) -> list[dict[str, Any]]:
            return records.find_activations(run_id, round)

    resumed = RunLog(tmp_path / "Logs", "run1", Redactor())
    try:
        assert restore_rows(resumed, Store(), "run1") == 5
        assert restore_rows(resumed, Store(), "run1") == 0  # nothing twice
    finally:
        resumed.close()
    final = {k: d["state"] for k, d in records.docs.items() if d["state"] != "invoked"}
    assert {r["activation_id"]: r["state"] for r in read_activations(runlog.dir)} == final
    rows = _rows(runlog.dir)
    assert len(rows) == 7 and len({r["activation_id"] for r in rows}) == 7
    assert all(r["round"] == "1" and r["function"] == "fl_client" and r["cluster"] == "c1" for r in rows[2:])


def test_missing_rows_takes_each_final_state_it_does_not_see() -> None:
    records = [
        {"_id": "a", "round": 1, "client_id": 0, "state": "succeeded", "submitted": 5.0, "end": 6.5},
        {"_id": "b", "round": 1, "client_id": None, "state": "failed", "submitted": 1.0, "start": 2.0, "end": 3.0,
         "duration_s": 0.25, "level": 1, "part": "1.0"},
        {"_id": "c", "round": 1, "client_id": 1, "state": "invoked", "submitted": 1.0},
        {"_id": "d", "round": 1, "client_id": 2, "state": "lost", "submitted": 1.0},
    ]
    rows = missing_rows(records, {"d": "lost", "a": "failed"})
    assert [r["activation_id"] for r in rows] == ["b", "a"]  # by start
    assert rows[0]["client_id"] == "server" and rows[0]["part"] == "1.0" and rows[0]["duration_s"] == 0.25
    assert rows[1]["duration_s"] == 1.5 and rows[1]["start"] == 5.0
    assert set(rows[1]) <= set(ACTIVATION_COLUMNS)


def _payload_as_before(run_id: str, round_number: int, client_id: int, fl: Any) -> dict[str, Any]:
    """The client payload as it was built per client before `ClientPayloads`."""
    spec = fl.strategy_params()
    strategy = make_strategy(spec.pop("name"), spec)
    payload = {"run_id": run_id, "round": round_number, "client_id": client_id,
               "num_clients": fl.clients_info.total_num_clients, "seed": fl.seed, "model": model_spec(fl),
               "train": {**fl.model_params.model_dump(), **strategy.client_params()}, "data": data_spec(fl)}
    if fl.task is not None:
        payload["task"] = task_spec(fl)
    if fl.hash_alg != "sha256":
        payload["hash_alg"] = fl.hash_alg
    dp = fl.privacy_params()
    if dp is not None and dp["mode"] == DPMode.LOCAL:
        payload["privacy"] = dp
    return payload


@pytest.mark.parametrize("strategy,privacy", [
    (None, None), ({"name": "fedprox", "mu": 0.3}, None),
    (None, {"mode": "local", "noise_multiplier": 1.0, "clip_norm": 1.0}),
])
def test_the_round_payloads_are_each_clients_payload(strategy: Any, privacy: Any) -> None:
    fl = cfg.load_text(config_text(strategy=strategy, privacy_section=privacy, total=40), env={}).fl
    payloads = ClientPayloads("run", 4, fl)
    for client in (0, 7, 31):
        built = payloads(client)
        assert json.dumps(built) == json.dumps(_payload_as_before("run", 4, client, fl))
        assert json.dumps(client_payload("run", 4, client, fl)) == json.dumps(built)
    a, b = payloads(1), payloads(2)
    a["activation_id"] = "x"
    assert "activation_id" not in b and a["data"] == b["data"]


class RoundStore:
    def __init__(self, docs: list[dict[str, Any]]) -> None:
        self.docs = docs

    def find_activations(self, run_id: str, round: int | None = None) -> list[dict[str, Any]]:
        return [d for d in self.docs if round is None or d["round"] == round]

    def find_server_activations(self, run_id: str, round: int) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["round"] == round and d.get("client_id") is None]


def test_round_records_are_the_rounds_records() -> None:
    docs = [{"_id": f"c{i}", "round": 2, "client_id": i, "function": "fl_client", "state": "succeeded"}
            for i in range(5)]
    before = [dict(d) for d in docs] + [{"_id": "s0", "round": 2, "client_id": None, "state": "failed",
                                         "function": "fl_server_aggregator"}]
    docs += [{"_id": "s0", "round": 2, "client_id": None, "state": "failed", "function": "fl_server_aggregator"},
             {"_id": "s1", "round": 2, "client_id": None, "state": "succeeded", "function": "fl_server_aggregator"},
             {"_id": "o", "round": 3, "client_id": 1, "state": "succeeded", "function": "fl_client"}]

    class Exp:
        run_id = "run"
        store = RoundStore(docs)

    exp: Any = Exp()
    key = sorted  # order-free comparison by id
    assert key(r["_id"] for r in common.round_records(exp, 2, before)) == key(
        r["_id"] for r in common.round_records(exp, 2))
    assert len(common.round_records(exp, 2, before)) == 7


def test_a_round_without_issued_activations_has_no_stored_updates() -> None:
    """`issues_any` False ⇒ `round_updates` chooses nothing, whatever documents the round holds (why a new round
    skips listing them)."""
    from fedkeeper.runtime.blobstore import update_key
    from fedkeeper.scenarios.issued_updates import issues_any, round_updates

    docs = [{"_id": update_key("run", 2, c, f"a{c}"), "client_id": c, "activation_id": f"a{c}"} for c in range(3)]
    records = [{"_id": "a0", "round": 2, "client_id": None, "attempt": 1, "function": "fl_server_aggregator"},
               {"_id": "a1", "round": 1, "client_id": 1, "attempt": 1, "function": "fl_client"},
               {"_id": "a2", "round": 2, "client_id": 2, "attempt": None, "function": "fl_client"}]
    assert not issues_any(records, 2)
    assert round_updates(records, docs, run_id="run", round_number=2).chosen == {}
    issued = [*records, {"_id": "a1", "round": 2, "client_id": 1, "attempt": 1, "function": "fl_client",
                         "state": "succeeded"}]
    assert issues_any(issued, 2) and list(round_updates(issued, docs, run_id="run", round_number=2).chosen) == [1]


class SlowRecords(MemoryRecords):
    """A store whose writes take `delay_s`; notes how many calls the provider got while each write went on."""

    def __init__(self, provider: CappedProvider, delay_s: float) -> None:
        super().__init__(delay_s=delay_s)
        self.provider = provider
        self.during: list[int] = []

    def record_activations(self, inserts: Any = (), updates: Any = ()) -> None:
        before = len(self.provider.submitted)
        super().record_activations(inserts, updates)
        self.during.append(len(self.provider.submitted) - before)


def test_calls_go_out_while_the_store_writes_records(tmp_path: Path) -> None:
    """A slow store write no longer stalls the round: the tracker hands batches to its writer and goes on
    submitting; `run` returns with every record written, in order (an insert before its update)."""
    provider = CappedProvider(fail_once={3})
    records = SlowRecords(provider, delay_s=0.1)
    tracker, runlog = _tracker(tmp_path, records, provider)
    try:
        outcome = tracker.run(_jobs(30))
    finally:
        tracker.close()
        runlog.close()
    assert outcome.counts.succeeded == 30 and outcome.counts.retries == 1
    assert max(records.during) > 0  # calls were submitted while a write was in progress
    assert len(records.docs) == 31 and all(d["state"] in ("succeeded", "failed") for d in records.docs.values())
    assert {r["activation_id"]: r["state"] for r in _rows(runlog.dir)} == {
        k: d["state"] for k, d in records.docs.items()}


def test_activation_ids_are_uuid4_hex(tmp_path: Path) -> None:
    """`Tracker._new_id` sets the version and variant bits itself: each id is what `uuid.UUID(bytes=…, version=4)
    .hex` makes of the same random bytes, and no two are alike."""
    import uuid

    tracker, runlog = _tracker(tmp_path, MemoryRecords(), CappedProvider(fail_once=set()))
    try:
        ids = [tracker._new_id() for _ in range(600)]  # more than one 4 KiB refill
    finally:
        tracker.close()
        runlog.close()
    assert len(set(ids)) == 600
    for value in ids:
        parsed = uuid.UUID(hex=value)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122 and parsed.hex == value
        assert uuid.UUID(bytes=parsed.bytes, version=4).hex == value


class _Kind(StrEnum):
    DONE = "succeeded"


_CELLS = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-2**40, max_value=2**40),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1e7, -1e6, 0.0, -0.0, 1e-9]),
    st.text(max_size=40), st.text(min_size=490, max_size=520), st.sampled_from([
        "pa55word-x", "boom\nBearer abcdefgh12345", "mongodb://u:pa55word-x@h/db", "local", "laptop"]),
    st.just(_Kind.DONE))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.fixed_dictionaries({}, optional={k: _CELLS for k in ACTIVATION_COLUMNS}))
def test_an_activation_row_is_written_as_each_cell_and_event_alone_would_be(tmp_path: Path,
                                                                          row: dict[str, Any]) -> None:
    """The one-pass row (`RunLog._activation_row`, typed fast paths, remembered redaction of recurring values) is
    what `_cell` and `_event_line` make of each value: the same CSV cells and the same events.jsonl record."""
    runlog = RunLog(tmp_path / "cells", "run", Redactor(["pa55word-x"]))
    try:
        cell, record = runlog._activation_row(row)
        assert cell == {k: runlog._cell(row.get(k)) for k in ACTIVATION_COLUMNS}
        line = json.loads(runlog._event_line("activation", record["ts"], {k: row.get(k) for k in ACTIVATION_COLUMNS}))
        assert json.loads(runlog.redact(json.dumps(record, default=str))) == line
    finally:
        runlog.close()


def test_remembered_redaction_forgets_when_a_secret_is_added() -> None:
    redactor = Redactor(["alpha-secret"])
    assert redactor.repeated("laptop") == "laptop" and redactor.repeated("alpha-secret") == "***"
    redactor.add(["laptop"])  # a value remembered as clean holds a secret from now on
    assert redactor.repeated("laptop") == "***" == redactor("laptop")
    for i in range(Redactor.MEMO_MAX + 5):  # bounded: it starts over rather than grow with unique values
        assert redactor.repeated(f"id-{i}") == f"id-{i}"
    assert len(redactor._memo) <= Redactor.MEMO_MAX

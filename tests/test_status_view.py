"""`fedkeeper status` logic: functions on local clusters vs the config, runs and the current round from a store.

The store is the real `Store` on the session's nx-27017 server; the clusters are real `local` providers in a temp workdir.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from fedkeeper import config as cfg
from fedkeeper.errors import UsageProblem
from fedkeeper.fabric import Fabric
from fedkeeper.providers.base import PlatformError
from fedkeeper.scenarios.status import STALE_STORE_NOTE, collect_status, render_status
from fedkeeper.store import Store

STORE_ENV = {"FK_MONGO_URL": "mongodb://127.0.0.1:27999", "FK_MONGO_DB": "fk"}

CONFIG = """
experiment: st
providers:
  local:
    laptop: {{}}
    desk: {{}}
functions:
  fl_client:
    local: {{memory: {memory}, timeout: 60}}
scenarios:
  federated_learning:
    rounds: 3
    clients_info: {{total_num_clients: 4, num_clients_per_round: 2, placement: {{laptop: 2, desk: 2}}}}
    server: {{cluster: laptop}}
"""


def load(memory: int = 256):  # type: ignore[no-untyped-def]
    return cfg.load_text(CONFIG.format(memory=memory), env={})


@pytest.fixture
def store(nx_db) -> Store:  # type: ignore[no-untyped-def]
    return Store(nx_db, url="mongodb://127.0.0.1:27999")


@pytest.fixture
def deployed(tmp_path: Path):  # type: ignore[no-untyped-def]
    config = load()
    with Fabric(config, tmp_path) as fabric:
        fabric.deploy(fabric.plan("federated_learning"), STORE_ENV)
    return tmp_path


def _functions(data: dict) -> dict[tuple[str, str], dict]:
    return {(f["cluster"], f["name"]): f for f in data["functions"]}


def test_deployed_functions_are_in_sync_with_the_config_they_came_from(deployed: Path, store: Store) -> None:
    config = load()
    with Fabric(config, deployed) as fabric:
        data = collect_status(config, fabric, store, STORE_ENV)
    rows = _functions(data)
    assert set(rows) == {("laptop", "fk-st-fl-client"), ("desk", "fk-st-fl-client"),
                         ("laptop", "fk-st-fl-server-aggregator")}
    for row in rows.values():
        assert row["state"] == "deployed" and row["in_sync"] is True and row["limits_match"] is True
        assert row["digest"] == row["expected_digest"]
    assert rows[("laptop", "fk-st-fl-client")]["memory_mb"] == 256
    assert rows[("laptop", "fk-st-fl-client")]["timeout_s"] == 60


def test_a_changed_limit_or_store_shows_as_out_of_sync(deployed: Path, store: Store) -> None:
    config = load(memory=512)
    with Fabric(config, deployed) as fabric:
        rows = _functions(collect_status(config, fabric, store, STORE_ENV))
    client = rows[("laptop", "fk-st-fl-client")]
    assert client["in_sync"] is False and client["limits_match"] is False
    assert rows[("laptop", "fk-st-fl-server-aggregator")]["in_sync"] is True

    config = load()
    with Fabric(config, deployed) as fabric:
        rows = _functions(collect_status(config, fabric, store, {**STORE_ENV, "FK_MONGO_URL": "mongodb://h:1"}))
    client = rows[("laptop", "fk-st-fl-client")]
    assert client["in_sync"] is False and client["limits_match"] is True


def test_fresh_embedded_store_explains_every_difference(deployed: Path, store: Store) -> None:
    class Embedded:
        reused = False

    store.embedded = Embedded()  # type: ignore[assignment]
    config = load()
    with Fabric(config, deployed) as fabric:
        rows = _functions(collect_status(config, fabric, store, {**STORE_ENV, "FK_MONGO_URL": "mongodb://h:2"}))
    assert all(r["note"] == STALE_STORE_NOTE and r["in_sync"] is False for r in rows.values())


def test_missing_and_orphaned_functions(deployed: Path, store: Store) -> None:
    config = load()
    with Fabric(config, deployed) as fabric:
        fabric.provider("desk").remove("fk-st-fl-client")
        spec = fabric.deploy_spec("fl_client", "desk", STORE_ENV, name="fk-st-fl-client-9")
        fabric.provider("desk").deploy(spec)
        rows = _functions(collect_status(config, fabric, store, STORE_ENV))
    assert rows[("desk", "fk-st-fl-client")]["state"] == "missing"
    assert rows[("desk", "fk-st-fl-client")]["in_sync"] is False
    orphan = rows[("desk", "fk-st-fl-client-9")]
    assert orphan["state"] == "orphan" and orphan["in_sync"] is True and "not in the config" in orphan["note"]


def test_an_unreachable_cluster_does_not_hide_the_others(deployed: Path, store: Store,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    config = load()
    with Fabric(config, deployed) as fabric:
        def down(labels: object = None) -> list:
            raise PlatformError("desk", "connection refused")

        monkeypatch.setattr(fabric.provider("desk"), "list", down)
        data = collect_status(config, fabric, store, STORE_ENV)
    desk = [f for f in data["functions"] if f["cluster"] == "desk"]
    assert [(f["state"], f["note"]) for f in desk] == [("error", "PlatformError: desk: connection refused")]
    assert sum(f["cluster"] == "laptop" for f in data["functions"]) == 2
    out = io.StringIO()
    render_status(data, Console(file=out, width=160))
    assert "unreachable" in out.getvalue() and "connection refused" in out.getvalue()


def _runs(store: Store) -> None:
    store.create_run({"_id": "st-done", "experiment": "st", "status": "completed", "rounds": 2,
                      "last_completed_round": 2, "last_accuracy": 0.9, "started": 100.0})
    store.create_run({"_id": "st-live", "experiment": "st", "status": "running", "rounds": 3,
                      "last_completed_round": 1, "last_accuracy": 0.7, "started": 200.0})
    store.create_run({"_id": "other-run", "experiment": "other", "status": "running", "started": 300.0})
    states = {0: "succeeded", 1: "failed", 2: "invoked", 3: "succeeded"}
    for client, state in states.items():
        store.insert_activation({"run_id": "st-live", "round": 2, "client_id": client, "attempt": 1,
                                 "cluster": "laptop" if client < 2 else "desk", "state": state})
    store.insert_activation({"run_id": "st-live", "round": 2, "client_id": 1, "attempt": 2, "cluster": "laptop",
                             "state": "invoked"})
    store.insert_activation({"run_id": "st-live", "round": 1, "client_id": 0, "attempt": 1, "cluster": "laptop",
                             "state": "succeeded"})


def test_runs_of_the_experiment_and_the_current_round(deployed: Path, store: Store) -> None:
    _runs(store)
    config = load()
    with Fabric(config, deployed) as fabric:
        data = collect_status(config, fabric, store, STORE_ENV)
    assert [(r["run_id"], r["status"], r["rounds_done"], r["last_accuracy"]) for r in data["runs"]] == [
        ("st-done", "completed", 2, 0.9), ("st-live", "running", 1, 0.7)]
    assert list(data["current_rounds"]) == ["st-live"]
    current = data["current_rounds"]["st-live"]
    assert current["round"] == 2
    assert current["by_state"] == {"succeeded": 2, "failed": 1, "invoked": 2}
    assert current["clients_by_latest_state"] == {"succeeded": 2, "invoked": 2}  # client 1 is on attempt 2
    assert current["by_cluster"] == {"desk": {"invoked": 1, "succeeded": 1},
                                     "laptop": {"succeeded": 1, "failed": 1, "invoked": 1}}
    out = io.StringIO()
    render_status(data, Console(file=out, width=160))
    assert "st-live round 2: 1 failed, 2 invoked, 2 succeeded" in out.getvalue()


def test_one_run_by_id(deployed: Path, store: Store) -> None:
    _runs(store)
    config = load()
    with Fabric(config, deployed) as fabric:
        data = collect_status(config, fabric, store, STORE_ENV, run_id="st-done")
        assert [r["run_id"] for r in data["runs"]] == ["st-done"]
        assert data["current_rounds"]["st-done"]["round"] == 3
        assert data["current_rounds"]["st-done"]["activations"] == 0
        with pytest.raises(UsageProblem, match="--run other-run: no run of experiment 'st'"):
            collect_status(config, fabric, store, STORE_ENV, run_id="other-run")

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


# ------------------------------------------------------------------------------------- drift and reachability

from fedkeeper.scenarios.status import OUTDATED_NOTE, OTHER_STORE_NOTE, incomplete, verdict  # noqa: E402


@pytest.mark.parametrize("deployed, deployed_code, expected, expected_code, fresh, sync", [
    ("d1", "c1", "d1", "c1", False, "current"),
    ("d1", "c1", "d2", "c2", False, "outdated"),       # code or settings changed
    ("d1", "c1", "d2", "c2", True, "outdated"),        # ... also when the embedded store is new (not masked)
    ("d1", "c1", "d2", "c1", True, "current"),         # only the embedded store's address moved
    ("d1", "c1", "d2", "c1", False, "outdated"),       # a configured store moved: the functions point elsewhere
    ("d1", "c1", None, "c1", False, "current"),        # store unreachable: code and settings still compared
    ("d1", "c1", None, "c2", False, "outdated"),
    ("d1", None, "d2", "c2", False, "outdated"),       # deployed before the code label: whole digest
    ("d1", None, "d2", "c2", True, "unknown"),         # ... which a new embedded address makes unreadable
    ("d1", None, None, "c2", False, "unknown"),
])
def test_verdicts(deployed, deployed_code, expected, expected_code, fresh, sync) -> None:  # type: ignore[no-untyped-def]
    assert verdict(deployed, deployed_code, expected, expected_code, fresh_store_address=fresh)[0] == sync


def _changed_code(monkeypatch: pytest.MonkeyPatch, function: str) -> None:
    """Make `function`'s zip differ from the deployed one, as an edit of its handler would."""
    import dataclasses
    import hashlib

    from fedkeeper import packaging

    build = packaging.build

    def edited(name, kind, options=None, task=None):  # type: ignore[no-untyped-def]
        artifact = build(name, kind, options, task)
        if str(name) != function:
            return artifact
        data = artifact.data + b"# edited"
        return dataclasses.replace(artifact, data=data, sha256=hashlib.sha256(data).hexdigest())

    monkeypatch.setattr(packaging, "build", edited)


def test_changed_code_is_outdated_and_a_fresh_embedded_store_does_not_hide_it(
        deployed: Path, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    class Embedded:
        reused = False

    store.embedded = Embedded()  # type: ignore[assignment]  # status started it: a new address
    _changed_code(monkeypatch, "fl_client")
    config = load()
    with Fabric(config, deployed) as fabric:
        rows = _functions(collect_status(config, fabric, store, {**STORE_ENV, "FK_MONGO_URL": "mongodb://h:2"}))
    client, server = rows[("laptop", "fk-st-fl-client")], rows[("laptop", "fk-st-fl-server-aggregator")]
    assert (client["sync"], client["note"]) == ("outdated", OUTDATED_NOTE)
    assert client["limits_match"] is True  # same memory and timeout: only the code moved
    assert (server["sync"], server["note"]) == ("current", STALE_STORE_NOTE)
    with Fabric(config, deployed) as fabric:
        data = collect_status(config, fabric, store, STORE_ENV)
    out = io.StringIO()
    render_status(data, Console(file=out, width=160))
    assert "✗ outdated" in out.getvalue() and "✓ current" in out.getvalue()


def test_settings_or_store_moved_are_outdated(deployed: Path, store: Store) -> None:
    config = load(memory=512)
    with Fabric(config, deployed) as fabric:
        rows = _functions(collect_status(config, fabric, store, STORE_ENV))
    assert rows[("laptop", "fk-st-fl-client")]["sync"] == "outdated"
    assert rows[("laptop", "fk-st-fl-server-aggregator")]["sync"] == "current"
    config = load()
    with Fabric(config, deployed) as fabric:
        rows = _functions(collect_status(config, fabric, store, {**STORE_ENV, "FK_MONGO_URL": "mongodb://h:1"}))
    assert {r["sync"] for r in rows.values()} == {"outdated"}
    assert {r["note"] for r in rows.values()} == {OTHER_STORE_NOTE}


def test_without_the_store_the_functions_are_still_compared_and_the_runs_are_unknown(
        deployed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    _changed_code(monkeypatch, "fl_server_aggregator")
    config = load()
    with Fabric(config, deployed) as fabric:
        data = collect_status(config, fabric, None, None, store_error="cannot reach MongoDB at 127.0.0.1:9")
    rows = _functions(data)
    assert rows[("laptop", "fk-st-fl-client")]["sync"] == "current"
    assert rows[("laptop", "fk-st-fl-server-aggregator")]["sync"] == "outdated"
    assert data["runs"] is None and data["store"]["reachable"] is False
    assert data["errors"] == [{"source": "store", "message": "cannot reach MongoDB at 127.0.0.1:9"}]
    json.dumps(data)  # what --json prints
    problem = incomplete(data)
    assert problem is not None and problem.exit_code == 1 and "store: cannot reach MongoDB" in str(problem)
    out = io.StringIO()
    render_status(data, Console(file=out, width=160))
    assert "runs: unknown" in out.getvalue() and "unreachable" in out.getvalue()


def test_a_lost_cluster_is_an_error_of_the_whole_status(deployed: Path, store: Store,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    config = load()
    with Fabric(config, deployed) as fabric:
        monkeypatch.setattr(fabric.provider("desk"), "list",
                            lambda labels=None: (_ for _ in ()).throw(PlatformError("desk", "connection refused")))
        data = collect_status(config, fabric, store, STORE_ENV)
    assert data["errors"] == [{"source": "cluster desk", "message": "PlatformError: desk: connection refused"}]
    assert incomplete(data) is not None
    assert incomplete({**data, "errors": []}) is None


# ------------------------------------------------------------------------------------- on a fake OpenWhisk

OW_CONFIG = """
experiment: stow
providers:
  openwhisk:
    ow: {{api_host: "{url}", auth: "${{OW_AUTH}}", memory: {memory}}}
scenarios:
  federated_learning:
    clients_info: {{total_num_clients: 2, num_clients_per_round: 2}}
"""


@pytest.mark.integration
def test_drift_and_reachability_on_a_fake_openwhisk(fake_openwhisk, store: Store,  # type: ignore[no-untyped-def]
                                                    tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"OW_AUTH": fake_openwhisk.auth}

    def ow_config(memory: int = 256):  # type: ignore[no-untyped-def]
        return cfg.load_text(OW_CONFIG.format(url=fake_openwhisk.url, memory=memory), env=env)

    config = ow_config()
    with Fabric(config, tmp_path) as fabric:
        fabric.deploy(fabric.plan("federated_learning"), STORE_ENV)
        rows = _functions(collect_status(config, fabric, store, STORE_ENV))
    assert {(name, r["sync"], r["in_sync"]) for (_c, name), r in rows.items()} == {
        ("fk-stow-fl-client", "current", True), ("fk-stow-fl-server-aggregator", "current", True)}

    config = ow_config(memory=384)  # settings changed since the deploy
    with Fabric(config, tmp_path) as fabric:
        rows = _functions(collect_status(config, fabric, store, STORE_ENV))
    assert {r["sync"] for r in rows.values()} == {"outdated"}
    assert all(r["limits_match"] is False for r in rows.values())

    config = ow_config()
    _changed_code(monkeypatch, "fl_client")  # code changed since the deploy
    with Fabric(config, tmp_path) as fabric:
        rows = _functions(collect_status(config, fabric, store, STORE_ENV))
    assert rows[("ow", "fk-stow-fl-client")]["sync"] == "outdated"
    assert rows[("ow", "fk-stow-fl-server-aggregator")]["sync"] == "current"

    fake_openwhisk.stop()  # the controller is gone: its row says so, and the status is an error
    with Fabric(config, tmp_path) as fabric:
        data = collect_status(config, fabric, store, STORE_ENV)
    assert [(f["cluster"], f["state"], f["sync"]) for f in data["functions"]] == [("ow", "error", "unreachable")]
    assert [e["source"] for e in data["errors"]] == ["cluster ow"]
    assert fake_openwhisk.auth.split(":", 1)[1] not in str(data)


def test_the_command_exits_1_and_prints_json_when_a_cluster_is_unreachable(run_cli, nx_db,  # type: ignore[no-untyped-def]
                                                                             nx_server: str, tmp_path: Path) -> None:
    import json
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    config = tmp_path / "c.yaml"
    config.write_text(f"""\
experiment: stcli
providers:
  local: {{laptop: {{}}}}
  openwhisk:
    gone: {{api_host: "http://127.0.0.1:{closed}", auth: "${{OW_AUTH}}", request_timeout_s: 2}}
mongo_config: {{url: "{nx_server}", db: {nx_db.name}}}
scenarios:
  federated_learning:
    clients_info: {{total_num_clients: 2, num_clients_per_round: 2, placement: {{laptop: 2, gone: 0}}}}
""")
    env = {"OW_AUTH": "1f9c2d8e-0000-4000-8000-000000000001:" + "k" * 64}
    result = run_cli("status", "--json", "-c", config, env=env, cwd=tmp_path)
    assert result.code == 1, result.stderr
    data = json.loads(result.stdout)
    assert [e["source"] for e in data["errors"]] == ["cluster gone"]
    assert data["runs"] == [] and data["store"]["reachable"] is True
    assert {(f["cluster"], f["sync"]) for f in data["functions"]} == {("laptop", "missing"), ("gone", "unreachable")}
    assert result.stderr.splitlines()[-1].startswith("error: status incomplete: cluster gone: ")
    assert "k" * 64 not in result.stdout + result.stderr

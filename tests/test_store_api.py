"""Store accessors (runs, activations, indexes, gc) on mongomock and nx-27017, and URL/secret handling."""

from __future__ import annotations

import enum
import socket
import types

import numpy as np
import pytest
from pymongo.errors import AutoReconnect

from fedkeeper.store import (
    ActivationConflict,
    ActivationMissing,
    RunMissing,
    Store,
    StoreConfigError,
    StoreUnavailable,
    display_url,
    hosts_of,
    open_store,
    resolve,
)

CANARY = "s3cr3t-CANARY-pw"


class State(str, enum.Enum):  # the shape of providers.base.State
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


def settings(**kw) -> types.SimpleNamespace:
    base = dict(
        url="embedded", db="fedkeeper", username=None, password=None, auth_source=None, tls=None, tls_ca_file=None,
        tls_allow_invalid_certificates=False, connect_timeout_ms=5000, server_selection_timeout_ms=5000, keep_models=3,
    )
    base.update(kw)
    return types.SimpleNamespace(**base)


@pytest.fixture
def store(any_db) -> Store:
    s = Store(any_db, url="mongodb://127.0.0.1:27017", keep_models=2)
    s.ensure_indexes()
    return s


# ------------------------------------------------------------------------------------------------------- runs


def test_runs_create_get_update_list_latest(store: Store) -> None:
    first = store.create_run({"_id": "r1", "experiment": "exp", "seed": 1, "started": 100.0})
    assert first["duplicate"] is False and first["status"] == "running" and first["run_id"] == "r1"
    again = store.create_run({"_id": "r1", "experiment": "exp", "seed": 99})
    assert again["duplicate"] is True and again["seed"] == 1
    store.create_run({"_id": "r2", "experiment": "exp", "started": 200.0})
    store.create_run({"_id": "r3", "experiment": "other", "started": 300.0})
    updated = store.update_run("r1", status=State.SUCCEEDED, last_round=4, **{"final.accuracy": 0.9})
    assert updated["status"] == "succeeded" and updated["last_round"] == 4 and updated["final"] == {"accuracy": 0.9}
    assert store.get_run("r1")["last_round"] == 4
    assert [r["_id"] for r in store.list_runs("exp")] == ["r1", "r2"]
    assert [r["_id"] for r in store.list_runs()] == ["r1", "r2", "r3"]
    assert store.latest_run("exp")["_id"] == "r2"
    assert store.latest_run("none") is None and store.get_run("nope") is None
    with pytest.raises(RunMissing) as info:
        store.update_run("nope", status="failed")
    assert str(info.value) == "run nope does not exist"
    with pytest.raises(ValueError):
        store.create_run({"experiment": "exp"})


# ------------------------------------------------------------------------------------------------ activations


def act(client: str | None, attempt: int = 1, round: int = 1, **kw) -> dict:
    return {"run_id": "r1", "round": round, "client_id": client, "attempt": attempt, "state": State.PENDING, **kw}


def test_activation_key_is_unique_and_inserts_are_idempotent(store: Store) -> None:
    a = store.insert_activation(act("c1", _id="a-1"))
    assert a == "a-1"
    assert store.insert_activation(act("c1", _id="a-1")) == "a-1"  # a retried insert
    with pytest.raises(ActivationConflict) as info:
        store.insert_activation(act("c1", _id="a-2"))  # same (run, round, client, attempt), another id
    assert "round 1 client c1 attempt 1" in str(info.value)
    generated = store.insert_activation(act("c1", attempt=2))
    assert len(generated) == 32
    store.insert_activation(act(None, _id="agg-1"))  # the aggregator has no client id
    assert len(store.find_activations("r1")) == 3


def test_activation_updates_and_queries(store: Store) -> None:
    for client, attempt, rnd in [("c2", 1, 1), ("c1", 2, 1), ("c1", 1, 1), ("c1", 1, 2)]:
        store.insert_activation(act(client, attempt, rnd, _id=f"{client}-{attempt}-{rnd}"))
    doc = store.update_activation("c1-1-1", state=State.FAILED, error="boom", end=12.5)
    assert doc["state"] == "failed" and doc["error"] == "boom"
    store.update_activation("c1-2-1", state=State.SUCCEEDED)
    order = [(d["round"], d["client_id"], d["attempt"]) for d in store.find_activations("r1")]
    assert order == [(1, "c1", 1), (1, "c1", 2), (1, "c2", 1), (2, "c1", 1)]
    assert [d["_id"] for d in store.find_activations("r1", round=1, state=State.FAILED)] == ["c1-1-1"]
    assert [d["_id"] for d in store.find_activations("r1", state="succeeded")] == ["c1-2-1"]
    assert len(store.find_activations("r1", state=[State.FAILED, State.SUCCEEDED])) == 2
    assert store.find_activations("r1", round=3) == [] and store.find_activations("zz") == []
    with pytest.raises(ActivationMissing):
        store.update_activation("nope", state="lost")


def test_indexes_exist(store: Store) -> None:
    keys = [tuple(k for k, _ in spec["key"]) for spec in store.activations.index_information().values()]
    assert ("run_id", "round", "client_id", "attempt") in keys and ("run_id", "state") in keys
    run_keys = [tuple(k for k, _ in spec["key"]) for spec in store.runs.index_information().values()]
    assert ("experiment", "started") in run_keys
    store.ensure_indexes()  # idempotent


def test_delete_run_and_collect_garbage(store: Store) -> None:
    store.create_run({"_id": "r1", "experiment": "e"})
    store.insert_activation(act("c1"))
    w = {"w": np.ones(4, np.float32)}
    for r in range(4):
        store.blobs.write_model("r1", r, w, {"accuracy": 0.1 * r})
        store.blobs.write_update("r1", r, "c1", w, base_round=r - 1, num_examples=3)
    assert store.collect_garbage("r1", last_aggregated_round=2) == {"models": 2, "updates": 3}
    assert [d["round"] for d in store.list_model_docs("r1") if not d.get("pruned")] == [2, 3]
    assert store.get_model_doc("r1", 0)["pruned"]
    assert store.delete_run("r1") == 4 + 4 + 1 + 1
    assert store.get_run("r1") is None and store.list_model_docs("r1") == []


# ------------------------------------------------------------------------------------------ retries and errors


def test_transient_errors_are_retried_then_reported(mongomock_db) -> None:
    store = Store(mongomock_db, url=f"mongodb://u:{CANARY}@127.0.0.1:9", secrets=[CANARY], attempts=3)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise AutoReconnect("connection reset")
        return "ok"

    assert store._call(flaky) == "ok" and len(calls) == 3
    calls.clear()

    def down():
        calls.append(1)
        raise AutoReconnect(f"127.0.0.1:9 closed, password {CANARY}")

    with pytest.raises(StoreUnavailable) as info:
        store._call(down)
    assert len(calls) == 3  # bounded
    assert "127.0.0.1:9" in str(info.value) and CANARY not in str(info.value)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("where", ["url", "fields"])
def test_unreachable_store_is_one_line_naming_the_host_never_the_password(tmp_path, where) -> None:
    port = closed_port()
    if where == "url":
        cfg = settings(url=f"mongodb://admin:{CANARY}@127.0.0.1:{port}/?authSource=admin")
    else:
        cfg = settings(url=f"mongodb://127.0.0.1:{port}", username="admin", password=CANARY)
    cfg.server_selection_timeout_ms = cfg.connect_timeout_ms = 200
    with pytest.raises(StoreUnavailable) as info:
        with open_store(cfg, workdir=tmp_path):
            pass
    text = str(info.value)
    assert text.startswith(f"cannot reach MongoDB at 127.0.0.1:{port}")
    assert "\n" not in text and CANARY not in text and CANARY not in repr(info.value)
    assert info.value.__cause__ is None and info.value.exit_code == 1


# ------------------------------------------------------------------------------------------------ URL handling


def test_resolve_folds_credentials_and_tls_into_one_url(monkeypatch) -> None:
    monkeypatch.setenv("FK_TEST_PW", "p@ss:word/1")
    cfg = settings(
        url="mongodb://db1.example:27017,db2.example:27018/?replicaSet=rs0&serverSelectionTimeoutMS=900",
        username="fk user", password="${FK_TEST_PW}", auth_source="admin", tls=True, tls_ca_file="/etc/ca.pem",
        tls_allow_invalid_certificates=True,
    )
    conn = resolve(cfg)
    assert conn.url.startswith("mongodb://fk+user:p%40ss%3Aword%2F1@db1.example:27017,db2.example:27018/?")
    for part in ("replicaSet=rs0", "authSource=admin", "tls=true", "tlsCAFile=%2Fetc%2Fca.pem",
                 "tlsAllowInvalidCertificates=true"):
        assert part in conn.url
    assert conn.options == {"connectTimeoutMS": 5000}  # the URL's serverSelectionTimeoutMS wins
    assert conn.hosts == "db1.example:27017,db2.example:27018"
    assert "p%40ss" not in conn.display_url and "fk+user:***@db1.example" in conn.display_url
    assert set(conn.secrets) >= {"p@ss:word/1", "p%40ss%3Aword%2F1"}


def test_resolve_errors_name_the_key_not_the_value(monkeypatch) -> None:
    monkeypatch.delenv("FK_UNSET_PW", raising=False)
    with pytest.raises(StoreConfigError, match=r"mongo_config.url refers to \$\{FK_UNSET_PW\}"):
        resolve(settings(url="mongodb://u:${FK_UNSET_PW}@h:1"))
    with pytest.raises(StoreConfigError, match="password but no username"):
        resolve(settings(url="mongodb://h:1", password=CANARY))
    with pytest.raises(StoreConfigError) as info:
        resolve(settings(url=f"http://u:{CANARY}@h"))
    assert CANARY not in str(info.value)
    assert resolve(settings(url="mongodb://u:${FK_UNSET_PW:-dflt}@h:1")).secrets == ("dflt",)


def test_display_url_and_hosts() -> None:
    url = f"mongodb+srv://me:{CANARY}@cluster0.example.net/db?authMechanismProperties=AWS_SESSION_TOKEN:{CANARY}"
    shown = display_url(url)
    assert CANARY not in shown and "me:***@cluster0.example.net" in shown
    assert hosts_of(url) == "cluster0.example.net"
    assert display_url("mongodb://127.0.0.1:5") == "mongodb://127.0.0.1:5"
    secret_obj = types.SimpleNamespace(get_secret_value=lambda: CANARY)  # pydantic SecretStr shape
    assert CANARY in resolve(settings(url="mongodb://h:1", username="u", password=secret_obj)).url

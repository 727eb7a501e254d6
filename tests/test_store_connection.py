"""The store's connection handling: mongo_config → URL, secrets kept out of every message, bounded retries.

What the Store does with a server is the contract suite's job (tests/contract/test_store_*.py).
"""

from __future__ import annotations

import socket
import types

import pymongo
import pytest
from pymongo.errors import AutoReconnect
from store_support import settings

from fedkeeper.store import Store, StoreConfigError, StoreUnavailable, display_url, hosts_of, open_store, resolve

CANARY = "s3cr3t-CANARY-pw"


# ------------------------------------------------------------------------------------------ retries and errors


def test_transient_errors_are_retried_then_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    client = pymongo.MongoClient("mongodb://127.0.0.1:9", connect=False)  # never contacted: the replies are scripted
    try:
        store = Store(client.fk, url=f"mongodb://u:{CANARY}@127.0.0.1:9", secrets=[CANARY], attempts=3)
        calls = []

        def flaky(*args, **kwargs):
            calls.append(1)
            if len(calls) < 3:
                raise AutoReconnect("connection reset")
            return {"_id": "r1"}

        monkeypatch.setattr(store.runs, "find_one", flaky)
        assert store.get_run("r1") == {"_id": "r1"} and len(calls) == 3
        calls.clear()

        def down(*args, **kwargs):
            calls.append(1)
            raise AutoReconnect(f"127.0.0.1:9 closed, password {CANARY}")

        monkeypatch.setattr(store.runs, "find_one", down)
        with pytest.raises(StoreUnavailable) as info:
            store.get_run("r1")
        assert len(calls) == 3  # bounded
        assert "127.0.0.1:9" in str(info.value) and CANARY not in str(info.value)
    finally:
        client.close()


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
    assert conn.options == {"connectTimeoutMS": 2000}  # the URL's serverSelectionTimeoutMS wins
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


# ------------------------------------------------------------------------------------------ how fast, how often

UNREACHABLE_CONFIG = """\
experiment: unreachable
providers: {{local: {{laptop: {{}}}}}}
mongo_config: {{url: "mongodb://admin:${{FK_TEST_STORE_PW}}@127.0.0.1:{port}/?authSource=admin"}}
scenarios:
  federated_learning:
    rounds: 1
    clients_info: {{total_num_clients: 2, num_clients_per_round: 2}}
"""


@pytest.mark.parametrize("command", [["start"], ["status"], ["status", "--json"]])
def test_an_unreachable_store_is_reported_within_3_s_with_the_url_redacted(run_cli, tmp_path,  # type: ignore[no-untyped-def]
                                                                            command) -> None:
    """The issue's bound, measured as the command's wall time through the CLI (in-process, so the interpreter's
    start-up is not counted): mongo_config's 2 s server selection, one ping, no retry for a store nobody
    answers for."""
    import json
    import time

    port = closed_port()
    config = tmp_path / "c.yaml"
    config.write_text(UNREACHABLE_CONFIG.format(port=port))
    env = {"FK_TEST_STORE_PW": CANARY}
    assert run_cli("validate", "-c", config, env=env).code == 0  # imports done: the clock measures the command
    started = time.perf_counter()
    result = run_cli(*command, "-c", config, "--logs-dir", tmp_path / "Logs", env=env, cwd=tmp_path)
    elapsed = time.perf_counter() - started
    assert result.code == 1, result.stderr
    print(f"{' '.join(command)}: store unreachable reported after {elapsed:.2f} s")
    assert elapsed < 3.0, f"{command}: {elapsed:.2f} s"
    shown = f"cannot reach MongoDB at 127.0.0.1:{port} (mongodb://admin:***@127.0.0.1:{port}/?authSource=admin)"
    assert shown in result.stderr.splitlines()[-1]
    assert CANARY not in result.stdout + result.stderr and "Traceback" not in result.stderr
    if "--json" in command:  # what status could find is still printed, as JSON, with the error in it
        data = json.loads(result.stdout)
        assert data["runs"] is None and data["errors"][0]["source"] == "store"
        assert shown in data["errors"][0]["message"]
        assert {f["state"] for f in data["functions"]} == {"missing"}


class _FakeClient:
    """Stands in for MongoClient in Store.connect: pings fail `failures` times; `answered` says whether the
    server's monitor heard from it (a replica set electing a primary) or not (connection refused)."""

    def __init__(self, failures: int, answered: bool) -> None:
        from pymongo.server_type import SERVER_TYPE

        self.pings, self.failures, self.closed = 0, failures, False
        kind = SERVER_TYPE.RSSecondary if answered else SERVER_TYPE.Unknown
        server = types.SimpleNamespace(server_type=kind)
        self.topology_description = types.SimpleNamespace(server_descriptions=lambda: {("h", 1): server})
        self.admin = types.SimpleNamespace(command=self._ping)
        self.options = types.SimpleNamespace(server_selection_timeout=2.0)
        self._real = pymongo.MongoClient("mongodb://127.0.0.1:9", connect=False)  # never contacted

    def _ping(self, name: str) -> dict:
        self.pings += 1
        if self.pings <= self.failures:
            raise pymongo.errors.ServerSelectionTimeoutError("No primary available for writes")
        return {"ok": 1}

    def __getitem__(self, name: str) -> object:
        return self._real[name]

    def close(self) -> None:
        self.closed = True
        self._real.close()


@pytest.mark.parametrize("answered, failures, pings, reached", [
    (False, 5, 1, False),  # nobody answers: one server-selection wait, then the error
    (True, 2, 3, True),    # a server that answers but is not ready yet (an election): waited for
    (True, 5, 3, False),   # ... up to start_attempts pings
])
def test_only_a_store_that_answered_is_pinged_again(monkeypatch: pytest.MonkeyPatch, answered: bool, failures: int,
                                                    pings: int, reached: bool) -> None:
    from fedkeeper.store import repository

    fake = _FakeClient(failures, answered)
    monkeypatch.setattr(repository.pymongo, "MongoClient", lambda url, **kw: fake)
    monkeypatch.setattr(repository.time, "sleep", lambda s: None)
    conn = resolve(settings(url="mongodb://h:1"))
    if reached:
        store = Store.connect(conn, "fk", start_attempts=3)
        assert store.client is fake
        store.close()
    else:
        with pytest.raises(StoreUnavailable, match=r"^cannot reach MongoDB at h:1 \(mongodb://h:1\) within 2 s: No primary"):
            Store.connect(conn, "fk", start_attempts=3)
        assert fake.closed
    assert fake.pings == pings

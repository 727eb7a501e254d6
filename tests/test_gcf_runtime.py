"""The packaged Cloud Functions zips under Google's own Python runtime (`functions-framework`, from the package
index: what the GCF Python buildpack runs), over HTTP on 127.0.0.1, end to end against the embedded store:
nodeinfo, the aggregator's init, two clients, the aggregation, and a function error (HTTP 500 with
`{"error": "<Type>: <message>"}`, the shape the provider reads as a failed function).

Each zip is unpacked as GCF's build would leave it (its requirements are this venv's packages) and served by
`python -m functions_framework --target entry --source main.py`, with the environment variables a 2nd gen
function gets (K_SERVICE, K_REVISION, FUNCTION_TARGET, PORT and the function's own FK_* settings).
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymongo
import pytest
import requests

from fedkeeper import packaging
import fl_payloads as fl


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FunctionsFramework:
    """One deployed function: its unpacked zip served by the functions-framework runtime."""

    def __init__(self, function: str, workdir: Path, env: dict[str, str]) -> None:
        artifact = packaging.build(function, "google")
        self.root = workdir / function
        with zipfile.ZipFile(io.BytesIO(artifact.data)) as zf:
            zf.extractall(self.root)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"{function}.log"
        self._log = open(self.log_path, "wb")
        base = {k: v for k, v in os.environ.items() if not k.startswith(("FK_", "PYTHON"))}
        netguard = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p.endswith("netguard")]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "functions_framework", "--target=entry", "--source=main.py",
             "--host=127.0.0.1", f"--port={self.port}"], cwd=self.root, stdout=self._log,
            stderr=subprocess.STDOUT, start_new_session=True,
            env={**base, **env, "PYTHONPATH": os.pathsep.join(netguard), "K_SERVICE": f"fk-gcf-{function}",
                 "K_REVISION": "1", "FUNCTION_TARGET": "entry", "FUNCTION_SIGNATURE_TYPE": "http",
                 "PORT": str(self.port)})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"functions-framework exited: {self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"functions-framework did not listen: {self.log()}")

    def post(self, payload: dict[str, Any]) -> requests.Response:
        return requests.post(self.url, json=payload, timeout=120)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._log.close()


@pytest.fixture
def store(nx_server: str) -> Iterator[dict[str, str]]:
    db = f"ff_{uuid.uuid4().hex[:10]}"
    yield {"FK_MONGO_URL": nx_server, "FK_MONGO_DB": db}
    client: pymongo.MongoClient = pymongo.MongoClient(nx_server, serverSelectionTimeoutMS=5000)
    client.drop_database(db)
    client.close()


@pytest.mark.integration
def test_the_functions_run_under_functions_framework(tmp_path: Path, nx_server: str,
                                                     store: dict[str, str]) -> None:
    servers = {fn: FunctionsFramework(fn, tmp_path, store) for fn in ("nodeinfo", "fl_server_aggregator",
                                                                      "fl_client")}
    try:
        info = servers["nodeinfo"].post({"probe": 1})
        assert info.status_code == 200 and info.json()["environment"] == "google", info.text
        agg, cli = servers["fl_server_aggregator"], servers["fl_client"]
        init = agg.post(fl.init("ff"))
        assert init.status_code == 200, (init.text, agg.log())
        assert init.headers["X-FedKeeper-Cold"] == "1"
        clients = []
        for client_id in (1, 2):
            sent = fl.client("ff", 1, client_id)
            ack = cli.post(sent)
            assert ack.status_code == 200 and ack.json()["ok"] is True, (ack.text, cli.log())
            clients.append((sent, ack.json()))
        aggregated = agg.post(fl.aggregate("ff", 1, clients))
        assert aggregated.status_code == 200 and aggregated.json()["num_updates"] == 2, aggregated.text
        assert aggregated.headers["X-FedKeeper-Cold"] == "0"  # the same instance, warm
        failed = agg.post({"mode": "train", "run_id": "ff"})
        assert failed.status_code == 500
        assert failed.json()["error"].startswith("ValueError: ") and "init or aggregate" in failed.json()["error"]
        assert store["FK_MONGO_URL"] not in failed.text
    finally:
        for server in servers.values():
            server.stop()
    client: pymongo.MongoClient = pymongo.MongoClient(nx_server, serverSelectionTimeoutMS=5000)
    try:
        db = client[store["FK_MONGO_DB"]]
        assert {doc["_id"] for doc in db.models.find({}, {"_id": 1})} == {"ff:0", "ff:1"}
    finally:
        client.close()


def test_the_fake_admin_api_refuses_what_the_quotas_refuse(tmp_path: Path) -> None:
    """Memory and timeout beyond a 2nd gen HTTP function's quotas are a 400 INVALID_ARGUMENT, as from the API."""
    from fake_gcf import ApiError, FakeGcf

    body = {"buildConfig": {"runtime": "python311", "entryPoint": "entry"},
            "serviceConfig": {"availableMemory": "65536Mi", "timeoutSeconds": 60}}
    with pytest.raises(ApiError) as err:
        FakeGcf._check_limits(body)
    assert err.value.code == 400 and "available_memory" in err.value.message
    body["serviceConfig"] = {"availableMemory": "512Mi", "timeoutSeconds": 7200}
    with pytest.raises(ApiError, match="between 1 and 3600 seconds"):
        FakeGcf._check_limits(body)
    body["serviceConfig"]["timeoutSeconds"] = 3600
    FakeGcf._check_limits(body)

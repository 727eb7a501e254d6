"""The packaged Lambda zips under AWS's own Python runtime interface client (`awslambdaric`, from the package
index), driven through the Runtime API (tests/lambda_runtime_api.py), end to end against the embedded store:
nodeinfo, the aggregator's init, two clients, the aggregation, and a function error as Lambda reports it.

One runtime process per function, as Lambda keeps one execution environment per function: it loads the
handler once and serves the following events warm.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pymongo
import pytest

from fedkeeper import packaging
from lambda_runtime_api import LambdaRuntime
import fl_payloads as fl
from test_aws_entry import unpack

import awslambdaric  # noqa: E402,F401 - in the test extra; a missing install must fail, not skip


@pytest.fixture
def store(nx_server: str) -> Iterator[dict[str, str]]:
    db = f"ric_{uuid.uuid4().hex[:10]}"
    yield {"FK_MONGO_URL": nx_server, "FK_MONGO_DB": db}
    client: pymongo.MongoClient = pymongo.MongoClient(nx_server, serverSelectionTimeoutMS=5000)
    client.drop_database(db)
    client.close()


def runtime(function: str, tmp_path: Path, env: dict[str, str]) -> LambdaRuntime:
    root = unpack(packaging.build(function, "aws"), tmp_path / function)
    return LambdaRuntime(root, env, function_name=f"fk-ric-{function.replace('_', '-')}")


@pytest.mark.integration
def test_the_functions_run_under_awslambdaric(tmp_path: Path, nx_server: str, store: dict[str, str]) -> None:
    with runtime("nodeinfo", tmp_path, store) as node:
        out = node.invoke({"probe": 1})
        assert out.error is None, (out.error, node.log())
        assert out.result["environment"] == "aws"

    with runtime("fl_server_aggregator", tmp_path, store) as agg, runtime("fl_client", tmp_path, store) as cli:
        init = agg.invoke(fl.init("ric"))
        assert init.error is None, (init.error, agg.log())
        assert 0.0 <= init.result["accuracy"] <= 1.0
        clients = []
        for client_id in (1, 2):
            sent = fl.client("ric", 1, client_id)
            ack = cli.invoke(sent)
            assert ack.error is None, (ack.error, cli.log())
            clients.append((sent, ack.result))
        aggregated = agg.invoke(fl.aggregate("ric", 1, clients))
        assert aggregated.error is None, (aggregated.error, agg.log())
        assert aggregated.result["num_updates"] == 2

        failed = agg.invoke({"mode": "train", "run_id": "ric"})  # the handler raises: Lambda's error shape
        assert failed.result is None and failed.error is not None
        assert failed.error["errorType"] == "ValueError"
        assert "params.mode must be init or aggregate" in failed.error["errorMessage"]
        assert isinstance(failed.error.get("stackTrace"), list)
        again = agg.invoke(fl.aggregate("ric", 1, clients))
        assert again.error is None and again.result.get("already_done") is True  # warm after an error

    client: pymongo.MongoClient = pymongo.MongoClient(nx_server, serverSelectionTimeoutMS=5000)
    try:
        db = client[store["FK_MONGO_DB"]]
        assert {doc["_id"] for doc in db.models.find({}, {"_id": 1})} == {"ric:0", "ric:1"}
        assert db.updates.count_documents({}) == 2
    finally:
        client.close()


@pytest.mark.integration
def test_a_handler_that_cannot_load_fails_each_event_with_the_hint(tmp_path: Path) -> None:
    """No numpy in the execution environment (no vendored wheels, no layer): awslambdaric's own Python is
    isolated from site-packages here, so the entry's hint is what every event answers."""
    folder = tmp_path / "needs_numpy"
    folder.mkdir()
    (folder / "handler.py").write_text("import numpy_is_not_here as numpy\nimport numpy\n"
                                       "def handle(params):\n    return {}\n")
    root = unpack(packaging.build(folder, "aws"), tmp_path / "task")
    with LambdaRuntime(root, {"FK_MONGO_URL": "mongodb://127.0.0.1:9", "FK_MONGO_DB": "x"}) as rt:
        out = rt.invoke({})
    assert out.error is not None and out.error["errorType"] == "HandlerError"
    assert "cannot load the function's handler: ModuleNotFoundError" in out.error["errorMessage"]

"""The packaged Lambda function: build the `aws` zip, unpack it, import `lambda_function` and call
`handler(event, context)` as Lambda's Python runtime would, against a real nx-27017 store.

Each call runs in a fresh interpreter whose sys.path starts with the unpacked zip (as /var/task does on Lambda),
so the zip's own `fedkeeper/runtime` is the one imported, never the orchestrator's package.
"""

from __future__ import annotations

import io
import json
import os
import platform
import re
import subprocess
import sys
import textwrap
import uuid
import zipfile
from pathlib import Path
from typing import Any

import pymongo
import pytest

from fedkeeper import packaging

MLP = {"model": "mlp", "input_size": 64, "hidden_size": 32, "output_size": 10}
TRAIN = {"optim": "adam", "lr": 0.01, "batch_size": 10, "local_epochs": 1, "mu": 0.0, "l2": 0.0}
DIGITS = {"dataset": "digits", "partition": "iid"}

# What Lambda's bootstrap does around a handler, reduced to the part that matters here: import the module named
# by Handler, call it with the event and a context, and report an exception as {"errorType", "errorMessage"}.
RUNTIME = textwrap.dedent("""
    import importlib, json, sys
    class Context:
        aws_request_id = "0f6c2a8e-1b1d-4c9e-9a51-3d2c1e0b7a11"
        function_name = "fk-exp-fn"
        def get_remaining_time_in_millis(self):
            return 30000
    event = json.loads(sys.stdin.read())
    try:
        module = importlib.import_module("lambda_function")
        result = module.handler(event, Context())
        import fedkeeper, os
        print(json.dumps({"ok": result, "fedkeeper_file": fedkeeper.__file__,
                          "activation": os.environ.get("FK_PLATFORM_ACTIVATION_ID"),
                          "deadline": os.environ.get("FK_DEADLINE_MS")}))
    except Exception as exc:
        print(json.dumps({"errorType": type(exc).__name__, "errorMessage": str(exc)}))
""")


def unpack(artifact: packaging.Artifact, dest: Path) -> Path:
    with zipfile.ZipFile(io.BytesIO(artifact.data)) as zf:
        zf.extractall(dest)
    return dest


def call(task_root: Path, event: dict[str, Any], env: dict[str, str], *, isolated: bool = False) -> dict[str, Any]:
    """Run the packaged handler in a fresh interpreter with `task_root` first on sys.path."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("FK_", "PYTHON"))}
    args = [sys.executable, *(["-I", "-S"] if isolated else []), "-c",
            f"import sys; sys.path.insert(0, {str(task_root)!r}); exec({RUNTIME!r})"]
    proc = subprocess.run(args, input=json.dumps(event), capture_output=True, text=True, cwd=task_root,
                          env={**base, **env}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture
def store_env(nx_server: str) -> Any:
    db = f"aws_{uuid.uuid4().hex[:10]}"
    yield {"FK_MONGO_URL": nx_server, "FK_MONGO_DB": db, "AWS_LAMBDA_FUNCTION_NAME": "fk-exp-fn",
           "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "512"}
    client: pymongo.MongoClient = pymongo.MongoClient(nx_server, serverSelectionTimeoutMS=5000)
    client.drop_database(db)
    client.close()


def test_zip_layout_for_lambda() -> None:
    artifact = packaging.build("nodeinfo", "aws")
    assert artifact.entry == "lambda_function.py"
    assert {"lambda_function.py", "handler.py", "fedkeeper/__init__.py"} <= set(artifact.files)
    assert any(f.startswith("fedkeeper/runtime/") for f in artifact.files)


def test_nodeinfo_through_the_lambda_handler(tmp_path: Path, store_env: dict[str, str]) -> None:
    root = unpack(packaging.build("nodeinfo", "aws"), tmp_path / "task")
    out = call(root, {"probe": 1}, store_env)
    result = out["ok"]
    assert result["environment"] == "aws"
    assert result["python"] == ".".join(map(str, sys.version_info[:3]))
    assert result["hostname"] and result["cpu_count"] >= 1
    assert out["activation"] == "0f6c2a8e-1b1d-4c9e-9a51-3d2c1e0b7a11" and int(out["deadline"]) > 0
    assert Path(out["fedkeeper_file"]).resolve() == (root / "fedkeeper" / "__init__.py").resolve()


def test_aggregator_init_and_client_round_through_the_lambda_handler(tmp_path: Path, nx_server: str,
                                                                      store_env: dict[str, str]) -> None:
    agg_root = unpack(packaging.build("fl_server_aggregator", "aws"), tmp_path / "agg")
    client_root = unpack(packaging.build("fl_client", "aws"), tmp_path / "client")
    init = call(agg_root, {"mode": "init", "run_id": "r1", "round": 0, "seed": 7, "model": MLP, "data": DIGITS,
                           "keep_models": 0}, store_env)
    assert "ok" in init, init
    assert 0.0 <= init["ok"]["accuracy"] <= 1.0
    assert Path(init["fedkeeper_file"]).resolve() == (agg_root / "fedkeeper" / "__init__.py").resolve()

    ack = call(client_root, {"run_id": "r1", "round": 1, "client_id": 3, "num_clients": 4, "seed": 7, "model": MLP,
                             "train": TRAIN, "data": DIGITS, "activation_id": "a-1", "attempt": 1}, store_env)
    assert "ok" in ack, ack
    agg = call(agg_root, {"mode": "aggregate", "run_id": "r1", "round": 1, "client_ids": [3], "seed": 7,
                          "model": MLP, "data": DIGITS, "keep_models": 0}, store_env)
    assert "ok" in agg and agg["ok"]["num_updates"] == 1, agg

    client: pymongo.MongoClient = pymongo.MongoClient(nx_server, serverSelectionTimeoutMS=5000)
    try:
        db = client[store_env["FK_MONGO_DB"]]
        assert {doc["_id"] for doc in db.models.find({}, {"_id": 1})} == {"r1:0", "r1:1"}
        assert db.updates.find_one({"_id": "r1:1:3"}) is not None
    finally:
        client.close()


def test_handler_error_reaches_lambda_with_type_and_message(tmp_path: Path, store_env: dict[str, str]) -> None:
    root = unpack(packaging.build("fl_server_aggregator", "aws"), tmp_path / "agg")
    out = call(root, {"mode": "train", "run_id": "r"}, store_env)
    assert out["errorType"] == "ValueError" and "params.mode must be init or aggregate" in out["errorMessage"]


def test_secret_in_an_error_message_is_masked(tmp_path: Path) -> None:
    folder = tmp_path / "leaky"
    folder.mkdir()
    (folder / "handler.py").write_text(
        "import os\n"
        "def handle(params):\n"
        "    raise ConnectionError('cannot reach ' + os.environ['FK_MONGO_URL'])\n")
    root = unpack(packaging.build(folder, "aws"), tmp_path / "task")
    secret_url = "mongodb://fk:pa55w0rd-x@db.example:27017/fk"
    out = call(root, {}, {"FK_MONGO_URL": secret_url, "FK_MONGO_DB": "fk"})
    assert out["errorType"] == "HandlerError"
    assert out["errorMessage"] == "ConnectionError: cannot reach ***"
    assert "pa55w0rd" not in json.dumps(out)


def test_missing_numpy_or_pymongo_gives_a_hint(tmp_path: Path, store_env: dict[str, str]) -> None:
    root = unpack(packaging.build("fl_server_aggregator", "aws"), tmp_path / "agg")
    # -I -S: no site-packages, like Lambda's python runtime without vendored wheels or a layer.
    out = call(root, {"mode": "init"}, store_env, isolated=True)
    assert out["errorType"] == "HandlerError"
    assert re.search(r"No module named '(numpy|bson|pymongo)'", out["errorMessage"])
    assert "vendor_wheels: true" in out["errorMessage"]
    assert store_env["FK_MONGO_URL"] not in out["errorMessage"]


@pytest.mark.slow
@pytest.mark.skipif(platform.machine() != "x86_64" or sys.version_info[:2] != (3, 11),
                    reason="runs the x86_64 / CPython 3.11 wheels Lambda would get on this machine")
def test_vendored_zip_runs_with_nothing_but_the_zip(tmp_path: Path, nx_server: str, store_env: dict[str, str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """vendor_wheels: the manylinux numpy/pymongo inside the zip are the only ones the handler can import."""
    from fedkeeper.providers.aws.config import LambdaCluster

    options = packaging.options_for(LambdaCluster(region="eu-west-1", architecture="x86_64"))
    assert options.vendor_wheels and options.platform_tag == "manylinux2014_x86_64"
    # Tests stay on this machine: pip may only use the wheel cache a `fedkeeper deploy`/`package` filled.
    wheels = options.cache_dir() / f"cp311-{options.platform_tag}"
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    packaging.clear_cache()
    try:
        artifact = packaging.build("fl_server_aggregator", "aws", options)
    except packaging.PackagingError as exc:
        pytest.skip(f"no cached manylinux wheels in {wheels} (run `fedkeeper package` once online): {exc}")
    finally:
        packaging.clear_cache()  # nothing built under these pip settings outlives the test
    assert len(artifact.data) < 50 * 2**20  # Lambda's direct upload limit
    root = unpack(artifact, tmp_path / "task")
    out = call(root, {"mode": "init", "run_id": "v1", "round": 0, "seed": 1, "model": MLP, "data": DIGITS,
                      "keep_models": 0}, store_env, isolated=True)
    assert "ok" in out, out
    assert 0.0 <= out["ok"]["accuracy"] <= 1.0

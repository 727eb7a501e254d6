"""The packaged Lambda function: build the `aws` zip, unpack it, import `lambda_function` and call
`handler(event, context)` as Lambda's Python runtime would, against a real nx-27017 store.

Each call runs in a fresh interpreter whose sys.path starts with the unpacked zip (as /var/task does on Lambda),
so the zip's own `fedkeeper/runtime` is the one imported, never the orchestrator's package.
"""

from __future__ import annotations

import importlib.metadata
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

import fl_payloads
from fedkeeper import packaging
from fedkeeper.providers.base import PackagingOptions

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

    sent = fl_payloads.client("r1", 1, 3)
    ack = call(client_root, sent, store_env)
    assert "ok" in ack, ack
    agg = call(agg_root, fl_payloads.aggregate("r1", 1, [(sent, ack["ok"])]), store_env)
    assert "ok" in agg and agg["ok"]["num_updates"] == 1, agg

    client: pymongo.MongoClient = pymongo.MongoClient(nx_server, serverSelectionTimeoutMS=5000)
    try:
        db = client[store_env["FK_MONGO_DB"]]
        assert {doc["_id"] for doc in db.models.find({}, {"_id": 1})} == {"r1:0", "r1:1"}
        assert db.updates.find_one({"_id": f"r1:1:3:{sent['activation_id']}"}) is not None
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


def wheel_from_installed(project: str, dest: Path) -> Path:
    """A wheel rebuilt from an installed distribution: its files as its RECORD lists them (scripts outside
    site-packages left out), named with the tags its WHEEL file records, so pip resolves it like the original."""
    dist = importlib.metadata.distribution(project)
    tags = [line.split(":", 1)[1].strip() for line in (dist.read_text("WHEEL") or "").splitlines()
            if line.startswith("Tag:")]
    parts = [sorted({t.split("-")[i] for t in tags}) for i in range(3)]
    name = dist.metadata["Name"].replace("-", "_")
    path = dest / f"{name}-{dist.version}-{'-'.join('.'.join(p) for p in parts)}.whl"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for file in dist.files or []:
            if file.parts[0] == ".." or "__pycache__" in file.parts or file.suffix == ".pyc":
                continue
            zf.write(file.locate(), file.as_posix())
    return path


@pytest.fixture(scope="module")
def installed_wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """numpy, pymongo and dnspython as wheels, rebuilt from this venv: an offline index with the binaries that
    load on this machine (their manylinux tags are the ones they were published with)."""
    house = tmp_path_factory.mktemp("installed-wheels")
    for project in ("numpy", "pymongo", "dnspython"):
        wheel_from_installed(project, house)
    return house


def offline_pip(monkeypatch: pytest.MonkeyPatch, house: Path) -> None:
    for var in [v for v in os.environ if v.upper().startswith("PIP_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(house))
    monkeypatch.setenv("PIP_DISABLE_PIP_VERSION_CHECK", "1")


@pytest.mark.slow
@pytest.mark.skipif(platform.machine() not in ("x86_64", "aarch64"), reason="manylinux wheels are x86_64/aarch64")
def test_vendored_zip_runs_with_nothing_but_the_zip(tmp_path: Path, nx_server: str, store_env: dict[str, str],
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   installed_wheelhouse: Path) -> None:
    """vendor_wheels: the manylinux numpy/pymongo inside the zip are the only ones the handler can import.

    The wheels are this venv's own, so the target is this machine's CPython on the newest manylinux policy its
    numpy was published for. Lambda's python3.11 (Amazon Linux 2, manylinux2014) gets them only if that policy
    is manylinux2014; otherwise packaging refuses it with the reason, which is checked too.
    """
    from fedkeeper.providers.aws.config import LambdaCluster

    offline_pip(monkeypatch, installed_wheelhouse)
    numpy_wheel = next(installed_wheelhouse.glob("numpy-*.whl")).name
    policies = sorted({m.group(0) for p in numpy_wheel.removesuffix(".whl").split("-")[-1].split(".")
                       if (m := re.match(r"manylinux_2_\d+|manylinux2014", p))},
                      key=lambda p: 17 if p == "manylinux2014" else int(p.split("_")[2]))
    python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    arch = "arm64" if platform.machine() == "aarch64" else "x86_64"
    lambda_options = packaging.options_for(LambdaCluster(region="eu-west-1", runtime=f"python{python}",
                                                         architecture=arch))
    packaging.clear_cache()
    try:
        if not set(lambda_options.platform_tags) & {f"{p}_{platform.machine()}" for p in policies}:
            with pytest.raises(packaging.PackagingError, match=rf"no wheel of .* for CPython {python}"):
                packaging.build("fl_server_aggregator", "aws", PackagingOptions(
                    **{**lambda_options.__dict__, "wheel_cache_dir": tmp_path / "w0"}))
        options = PackagingOptions(vendor_wheels=True, architecture=arch, python_version=python,
                                   wheel_platform=policies[-1], wheel_cache_dir=tmp_path / "wheels")
        artifact = packaging.build("fl_server_aggregator", "aws", options)
    finally:
        packaging.clear_cache()  # nothing built under these pip settings outlives the test
    assert len(artifact.data) < 50 * 2**20  # Lambda's direct upload limit
    assert any(f.startswith("numpy/") for f in artifact.files) and "bson/__init__.py" in artifact.files
    root = unpack(artifact, tmp_path / "task")
    out = call(root, {"mode": "init", "run_id": "v1", "round": 0, "seed": 1, "model": MLP, "data": DIGITS,
                      "keep_models": 0}, store_env, isolated=True)
    assert "ok" in out, out
    assert 0.0 <= out["ok"]["accuracy"] <= 1.0

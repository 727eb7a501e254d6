"""The task interface (fedkeeper/runtime/tasks): loading by module path, the built-in numpy task, FedKeeper's
partitioning for any task (quantity skew, per-client files, label histograms), the scikit-learn example task
through the functions in process, the `task:` key at validate time and `report --partition`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from function_support import load_handler
from fedkeeper.runtime import data as rdata
from fedkeeper.runtime import model as rmodel
from fedkeeper.runtime import tasks
from fedkeeper.runtime.tasks import numpy_models, partition

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "tasks"
SKLEARN_CONFIG = EXAMPLES / "sklearn_logreg" / "config.yaml"
MLP = {"model": "mlp", "input_size": 64, "hidden_size": 32, "output_size": 10}
DIGITS = {"dataset": "digits", "partition": "iid"}


def _handler(name: str):
    return load_handler(name, f"fk_task_test_{name}")


@pytest.fixture
def task_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder for throw-away task modules; each test's module names are unique, sys.path is restored."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(tasks, "_TASKS", type(tasks._TASKS)())
    return tmp_path


def _module(folder: Path, name: str, source: str) -> str:
    (folder / f"{name}.py").write_text(textwrap.dedent(source))
    return name


# ------------------------------------------------------------------------------------------------ loading


def test_the_builtin_task_is_the_numpy_model_bit_for_bit() -> None:
    task, ref = tasks.from_payload({"model": MLP}, "fl_client")
    mdl = rmodel.build_model(MLP)
    seed = rmodel.derive_seed(42, 0)
    a, b = task.init(seed), mdl.init(rmodel.derive_seed(42, 0))
    assert list(a) == list(b) and all(np.array_equal(a[k], b[k]) for k in a)
    assert task.weights_spec() == mdl.expected() and ref.module == tasks.BUILTIN_MODULE
    shard = partition.client_shard(task, ref.key, DIGITS, 4, 1, 42)
    legacy = rdata.client_split(rdata.DataSpec.from_params(DIGITS), 4, 1, 42)
    assert np.array_equal(shard.x, legacy.x) and np.array_equal(shard.y, legacy.y)
    hyper = {"optim": "adam", "lr": 0.01, "batch_size": 10, "local_epochs": 1}
    got = task.train(a, shard, hyper, rmodel.derive_seed(42, 1, 1))
    want, _ = rmodel.train_local(mdl, b, legacy.x, legacy.y, optim="adam", lr=0.01, batch_size=10, local_epochs=1,
                                 seed=rmodel.derive_seed(42, 1, 1))
    assert all(np.array_equal(got.weights[k], want[k]) for k in want) and got.num_examples == len(legacy)
    assert partition.shard_sizes(task, ref.key, DIGITS, 4, 42) == rdata.shard_sizes(
        rdata.DataSpec.from_params(DIGITS), 4, 42)


def test_load_task_by_module_path_task_object_and_make_task(task_dir: Path) -> None:
    _module(task_dir, "fk_t_obj", """
        from fedkeeper.runtime.tasks import numpy_models
        TASK = numpy_models.make_task({"model": "logreg", "input_size": 64, "output_size": 10})
    """)
    _module(task_dir, "fk_t_make", """
        from fedkeeper.runtime.tasks import numpy_models
        def make_task(params):
            if params.get("hidden", 1) < 1:
                raise ValueError("params.hidden must be >= 1")
            return numpy_models.make_task({"model": "mlp", "input_size": 64, "output_size": 10,
                                           "hidden_size": params.get("hidden", 8)})
    """)
    obj = tasks.load_task({"module": "fk_t_obj", "path": str(task_dir)})
    assert list(obj.weights_spec()) == ["w1", "b1"]
    made = tasks.load_task({"module": "fk_t_make", "params": {"hidden": 5}, "path": str(task_dir)})
    assert made.weights_spec()["w1"][0] == (64, 5)
    assert tasks.load_task({"module": "fk_t_make", "params": {"hidden": 5}, "path": str(task_dir)}) is made
    with pytest.raises(tasks.TaskError, match=r"^task\.params: params\.hidden must be >= 1"):
        tasks.load_task({"module": "fk_t_make", "params": {"hidden": 0}, "path": str(task_dir)})
    with pytest.raises(tasks.TaskError, match=r"^task\.params: .*TASK, which takes no params"):
        tasks.load_task({"module": "fk_t_obj", "params": {"x": 1}, "path": str(task_dir)})


@pytest.mark.parametrize("source, raw, message", [
    (None, {"module": "fk_t_missing_mod"}, r"task\.module: cannot import 'fk_t_missing_mod'"),
    ("X = 1\n", {"module": "fk_t_empty"}, r"task\.module: fk_t_empty exposes neither TASK nor make_task"),
    ("TASK = object()\n", {"module": "fk_t_notask"}, r"task\.module: .* lacks init, train"),
    ("raise RuntimeError('boom')\n", {"module": "fk_t_boom"}, r"task\.module: importing 'fk_t_boom' failed: "
                                                                r"RuntimeError: boom"),
    (None, {"module": "not a module"}, r"task\.module must be a dotted module path"),
    (None, {"module": "m", "extra": 1}, r"task: unknown key\(s\) extra"),
])
def test_load_task_errors_name_the_key(task_dir: Path, source: str | None, raw: dict, message: str) -> None:
    if source is not None:
        _module(task_dir, raw["module"], source)
    with pytest.raises(tasks.TaskError, match=message):
        tasks.load_task({**raw, "path": str(task_dir)} if "extra" not in raw else raw)


def test_results_are_checked_against_the_model() -> None:
    spec = {"w": ((2, 3), np.dtype(np.float32))}
    assert tasks.check_weights({"w": np.zeros((2, 3), np.float32)}, spec, "w")["w"].shape == (2, 3)
    with pytest.raises(tasks.TaskError, match=r"needs float32\[2, 3\]"):
        tasks.check_weights({"w": np.zeros((2, 3), np.float64)}, spec, "trained")
    with pytest.raises(tasks.TaskError, match="not finite"):
        tasks.check_weights({"w": np.full((2, 3), np.nan, np.float32)}, spec, "trained")
    with pytest.raises(tasks.TaskError, match="num_examples 0"):
        tasks.check_train_result(tasks.TrainResult({}, 0), 5)
    assert tasks.as_evaluation((np.float64(0.5), 0.25)) == (0.5, 0.25, {})
    assert tasks.as_evaluation(tasks.Evaluation(1.0, 1.0, {"f1": np.float32(0.5), "x": [1]})).metrics == {"f1": 0.5}
    with pytest.raises(tasks.TaskError, match=r"accuracy 2.0"):
        tasks.as_evaluation((0.1, 2.0))


# ------------------------------------------------------------------------------------------- partitioning


@settings(max_examples=60, deadline=None)
@given(n=st.integers(5, 300), k=st.integers(1, 5), classes=st.integers(1, 6), seed=st.integers(0, 2**32 - 1),
       scheme=st.sampled_from(rdata.INDEX_PARTITIONS), sigma=st.floats(0.1, 3.0), alpha=st.floats(0.05, 5.0))
def test_every_index_partition_is_disjoint_covering_and_seeded(n, k, classes, seed, scheme, sigma, alpha) -> None:
    labels = np.random.default_rng(seed).integers(0, classes, n)
    if scheme == "shards" and k * 2 > n:
        return
    parts = rdata.partition_indices(labels, k, scheme=scheme, seed=seed, alpha=alpha, quantity_sigma=sigma)
    joined = np.concatenate(parts)
    assert len(parts) == k and sorted(joined.tolist()) == list(range(n))
    assert min(len(p) for p in parts) >= 1 or scheme in ("shards",)
    again = rdata.partition_indices(labels, k, scheme=scheme, seed=seed, alpha=alpha, quantity_sigma=sigma)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 5000), k=st.integers(1, 50), sigma=st.floats(0.01, 4.0), seed=st.integers(0, 2**32 - 1))
def test_quantity_sizes_sum_exactly_and_leave_nobody_empty(n, k, sigma, seed) -> None:
    if k > n:
        return
    sizes = rdata.quantity_sizes(n, k, sigma, np.random.default_rng(seed))
    assert int(sizes.sum()) == n and int(sizes.min()) >= 1 and len(sizes) == k


def test_quantity_skew_is_skewed_and_labels_stay_iid() -> None:
    task, ref = tasks.from_payload({"model": MLP}, "t")
    spec = {"dataset": "digits", "partition": "quantity", "quantity_sigma": 1.5}
    summary = partition.summary(task, ref.key, spec, 10, 7)
    sizes = [c["size"] for c in summary["clients"]]
    assert sum(sizes) == 1437 and max(sizes) > 4 * min(sizes)
    assert summary["scheme"] == "quantity" and summary["params"] == {"quantity_sigma": 1.5}
    for client in summary["clients"]:
        assert sum(client["histogram"]) == client["size"]
    iid = partition.summary(task, ref.key, {**spec, "partition": "iid"}, 10, 7)
    assert len({c["size"] for c in iid["clients"]}) <= 2  # equal parts


def test_per_client_files_partition(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for c in range(3):
        n = 5 + c
        np.savez(tmp_path / f"client-{c}.npz", x=rng.integers(0, 17, (n, 64)).astype(np.float32) / 16,
                 y=np.full(n, c, np.int64))
    spec = {"dataset": "digits", "partition": "files", "client_files": str(tmp_path / "client-{client}.npz")}
    task, ref = tasks.from_payload({"model": MLP}, "t")
    shard = partition.client_shard(task, ref.key, spec, 3, 2, 42)
    assert len(shard) == 7 and set(shard.y.tolist()) == {2}
    assert partition.shard_sizes(task, ref.key, spec, 3, 42) == [5, 6, 7]
    summary = partition.summary(task, ref.key, spec, 3, 42)
    assert summary["classes"] == [0, 1, 2] and [c["histogram"] for c in summary["clients"]] == \
        [[5, 0, 0], [0, 6, 0], [0, 0, 7]]
    with pytest.raises(rdata.DataError, match="client_files is required"):
        rdata.DataSpec.from_params({"dataset": "digits", "partition": "files"})
    with pytest.raises(rdata.DataError, match=r"\{client\}"):
        rdata.DataSpec.from_params({"dataset": "digits", "partition": "files", "client_files": "a.npz"})


# ------------------------------------------------------------------------------------ the scikit-learn task


SK_TASK = {"module": "sklearn_logreg", "params": {}, "path": str(EXAMPLES)}


def test_sklearn_task_through_the_functions_is_deterministic_and_learns(nx_db, monkeypatch) -> None:
    pytest.importorskip("sklearn")
    monkeypatch.setattr(sys, "path", list(sys.path))
    client, aggregator = _handler("fl_client"), _handler("fl_server_aggregator")
    train = {"lr": 0.05, "local_epochs": 1, "mu": 0.0}
    data = {"dataset": "digits", "partition": "dirichlet", "alpha": 0.5}

    def run(run_id: str) -> tuple[dict, dict]:
        base = {"run_id": run_id, "seed": 3, "task": SK_TASK, "data": data, "keep_models": 0}
        init = aggregator.handle({**base, "mode": "init", "round": 0, "num_clients": 4}, db=nx_db)
        acks = [client.handle({**base, "round": 1, "client_id": c, "num_clients": 4, "train": train,
                               "activation_id": f"a-{c}", "attempt": 1}, db=nx_db) for c in range(4)]
        agg = aggregator.handle({**base, "mode": "aggregate", "round": 1, "num_clients": 4,
                                 "updates": [{k: a[k] for k in ("client_id", "activation_id", "attempt", "sha256")}
                                             for a in acks]}, db=nx_db)
        return init, agg

    init_a, agg_a = run("sk-a")
    init_b, agg_b = run("sk-b")
    assert agg_a["model_sha256"] == agg_b["model_sha256"] and init_a["model_sha256"] == init_b["model_sha256"]
    assert agg_a["accuracy"] > init_a["accuracy"] + 0.3 and not agg_a["rejected"]
    doc = nx_db["models"].find_one({"_id": "sk-a:0"})
    hist = doc["metrics"]["partition"]
    assert hist["scheme"] == "dirichlet" and sum(c["size"] for c in hist["clients"]) == 1437
    with pytest.raises(ValueError, match=r"fl_client: params.task.params: params.classes must be"):
        client.handle({"run_id": "x", "round": 1, "client_id": 0, "num_clients": 4, "seed": 3, "train": train,
                       "data": data, "activation_id": "a", "attempt": 1,
                       "task": {**SK_TASK, "params": {"classes": 1}}}, db=nx_db)
    with pytest.raises(ValueError, match=r"params.train.mu is 0.1: the sklearn task has no proximal term"):
        client.handle({"run_id": "sk-a", "round": 1, "client_id": 0, "num_clients": 4, "seed": 3,
                       "train": {**train, "mu": 0.1}, "data": data, "activation_id": "b", "attempt": 1,
                       "task": SK_TASK}, db=nx_db)


# ------------------------------------------------------------------------------------------ config, report


def _config(tmp_path: Path, task: object, **data_sampling: object) -> Path:
    config = yaml.safe_load(SKLEARN_CONFIG.read_text())
    config["scenarios"]["federated_learning"]["task"] = task
    config["scenarios"]["federated_learning"]["data_sampling"].update(data_sampling)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _issues(tmp_path: Path, task: object, **data_sampling: object) -> list[tuple[str, str]]:
    from fedkeeper.config import ConfigError, load

    try:
        load(_config(tmp_path, task, **data_sampling))
    except ConfigError as exc:
        return [(i.path, i.message) for i in exc.issues]
    return []


@pytest.mark.slow
def test_validate_loads_the_task_in_a_child_and_names_the_key(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    before = set(sys.modules)
    assert _issues(tmp_path, {**SK_TASK, "params": {"classes": 10}}) == []
    assert not any(m.startswith("sklearn") for m in set(sys.modules) - before)  # the orchestrator imports no framework
    assert _issues(tmp_path, {**SK_TASK, "params": {"classes": 1}}) == [
        ("scenarios.federated_learning.task.params", "params.classes must be an integer >= 3, got 1")]
    assert any(key == "scenarios.federated_learning.task.module" and "cannot import 'no_such_task_module'" in message
               for key, message in _issues(tmp_path, {"module": "no_such_task_module"}))
    assert "scenarios.federated_learning.task.path" in [
        k for k, _ in _issues(tmp_path, {"module": "sklearn_logreg", "path": "nowhere"})]
    assert [k for k, _ in _issues(tmp_path, SK_TASK, partition="files")] == [
        "scenarios.federated_learning.data_sampling"]


def test_validate_exits_2_on_a_bad_task(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "fedkeeper.cli", "validate", "-c",
                           str(_config(tmp_path, {**SK_TASK, "params": {"nope": 1}}))], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "scenarios.federated_learning.task.params" in done.stderr and "params.nope: unknown parameter" in done.stderr


def test_report_partition_reads_the_run_folder(tmp_path: Path) -> None:
    run = tmp_path / "Logs" / "r1"
    run.mkdir(parents=True)
    (run / "events.jsonl").write_text(json.dumps({"event": "run_started", "ts": 1.0, "run_id": "r1"}) + "\n")
    summary = {"scheme": "shards", "params": {"shards_per_client": 2}, "seed": 1, "num_clients": 2,
               "classes": [0, 1, 7], "clients": [{"client_id": 0, "size": 5, "histogram": [5, 0, 0]},
                                                 {"client_id": 1, "size": 4, "histogram": [0, 1, 3]}]}
    (run / "partition.json").write_text(json.dumps(summary))

    def report(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "fedkeeper.cli", "report", "r1", "--partition", *args],
                              cwd=tmp_path, capture_output=True, text=True, timeout=60,
                              env={**os.environ, "COLUMNS": "200"})

    table = report()
    assert table.returncode == 0, table.stderr
    assert "partition shards (shards_per_client 2)" in table.stdout and "100%" in table.stdout and "75%" in table.stdout
    data = json.loads(report("--json").stdout)
    assert [c["labels_present"] for c in data["clients"]] == [1, 2] and data["sizes"]["max"] == 5
    assert report("--csv").stdout.splitlines() == ["client_id,size,label_0,label_1,label_7", "0,5,5,0,0",
                                                   "1,4,0,1,3"]
    (run / "partition.json").unlink()
    gone = report()
    assert gone.returncode == 1 and "no partition recorded" in gone.stderr
    assert report("--clients").returncode == 2

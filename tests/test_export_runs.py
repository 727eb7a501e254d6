"""`fedkeeper export` and `fedkeeper runs`, in process on tiny runs (tests/round_support.py) on the session's nx-27017.

Export: the exported weights, loaded and evaluated, give exactly the accuracy the run recorded for that round; a
round keep_models removed is refused naming the rounds still there. Runs: list shows the store and Logs/ side by
side; delete and prune free what the listing said, leave the store audit clean, and spare a live run.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pymongo
import pytest

from fedkeeper.export import ExportError, export_model, load
from fedkeeper.store import Store
from round_support import experiment_yaml, start_in_process

pytestmark = pytest.mark.integration


@pytest.fixture
def lab(nx_server: str, tmp_path: Path):
    """(config path, workdir, client, db name, Store); the database is dropped afterwards."""
    client: pymongo.MongoClient = pymongo.MongoClient(nx_server, serverSelectionTimeoutMS=5000)
    db = f"t_{uuid.uuid4().hex[:12]}"
    text = experiment_yaml(nx_server, clusters={"lab": {"concurrency": 2}}, placement={"lab": 4}, rounds=4,
                           per_round=2, db=db)
    config = tmp_path / "config.yaml"
    config.write_text(text)
    store = Store(client[db], url=nx_server, keep_models=3)
    try:
        yield config, tmp_path, client, db, store
    finally:
        client.drop_database(db)
        client.close()


@pytest.fixture
def invoke(run_cli):  # type: ignore[no-untyped-def]
    """`fedkeeper ARGS --logs-dir WORKDIR/Logs` in process (conftest's run_cli): (exit code, output), the output
    being stdout alone for --json that exits 0 (the JSON document), else stdout + stderr."""
    def run(workdir: Path, *args: str) -> tuple[int, str]:
        result = run_cli(*args, "--logs-dir", workdir / "Logs", cwd=workdir)
        if "--json" in args and result.code == 0:
            return result.code, result.stdout
        return result.code, result.stdout + result.stderr
    return run


def test_export_load_and_evaluate_reproduce_the_recorded_accuracy(lab, invoke, tmp_path: Path) -> None:
    config, workdir, client, db, store = lab
    run = start_in_process(workdir, config.read_text(), client)
    docs = {d["round"]: d for d in store.list_model_docs(run.run_id)}
    kept = sorted(r for r, d in docs.items() if not d.get("pruned"))
    assert kept == [2, 3, 4] and docs[0].get("pruned")  # keep_models 3 removed rounds 0 and 1

    for round_number in kept:
        out = tmp_path / f"r{round_number}.npz"
        meta = export_model(store, store.get_run(run.run_id), out, round=round_number)
        model = load(out)
        loss, accuracy = model.evaluate()
        recorded = docs[round_number]["metrics"]
        assert accuracy == recorded["accuracy"] == meta["accuracy"]
        assert loss == pytest.approx(recorded["loss"], rel=1e-9)
        assert meta["model_sha256"] == docs[round_number]["sha256"] == model.metadata["model_sha256"]
        with np.load(out, allow_pickle=False) as npz:  # plain arrays, no pickle
            assert sorted(npz.files) == sorted(model.weights)
    test_rows = model.evaluate(*_digits_test())
    assert test_rows[1] == accuracy  # the same split given as arrays

    best = max(kept, key=lambda r: (docs[r]["metrics"]["accuracy"], r))
    code, out = invoke(workdir, "export", run.run_id, "--best", "--out", str(tmp_path / "best.npz"), "-c",
                       str(config), "--json")
    assert code == 0, out
    record = json.loads(out)
    assert record["round"] == best and record["accuracy"] == docs[best]["metrics"]["accuracy"]
    assert record["config_digest"] == run.summary["config_digest"] and record["fedkeeper_version"]
    assert {"run", "loss", "model", "data", "created"} <= set(record)

    with pytest.raises(ExportError, match=r"round 0 was removed \(keep_models\); rounds available: 2, 3, 4"):
        export_model(store, store.get_run(run.run_id), tmp_path / "gone.npz", round=0)
    code, out = invoke(workdir, "export", run.run_id, "--round", "9", "--out", str(tmp_path / "x.npz"),
                       "-c", str(config))
    assert code == 2 and "rounds available: 2, 3, 4" in out

    (tmp_path / "best.npz").write_bytes((tmp_path / "r2.npz").read_bytes())  # weights its record does not name
    with pytest.raises(ExportError, match="sha256"):
        load(tmp_path / "best.npz")


def _digits_test() -> tuple[np.ndarray, np.ndarray]:
    from fedkeeper.runtime import data

    split = data.load_split(data.DataSpec.from_params({"dataset": "digits"}), "test")
    return np.array(split.x), np.array(split.y)


def test_runs_list_delete_and_prune_free_what_they_say_and_leave_a_clean_store(lab, invoke) -> None:
    config, workdir, client, db, store = lab
    text = config.read_text().replace("rounds: 4", "rounds: 1")
    ids = [start_in_process(workdir, text, client).run_id for _ in range(3)]
    first, second, third = ids

    code, out = invoke(workdir, "runs", "list", "-c", str(config), "--json")
    assert code == 0, out
    listed = {r["run_id"]: r for r in json.loads(out)["runs"]}
    assert set(listed) == set(ids)
    for run_id in ids:
        entry = listed[run_id]
        assert entry["store"]["status"] == entry["logs"]["status"] == "completed" and not entry["live"]
        assert entry["store"]["rounds"] == entry["logs"]["rounds"] == 1
        assert entry["store"]["bytes"] > 0 and entry["logs"]["bytes"] > 0 and entry["store"]["documents"] > 0

    code, out = invoke(workdir, "runs", "delete", first, "-c", str(config), "--yes", "--json")
    assert code == 0, out
    result = json.loads(out)
    freed = result["deleted"][0]
    assert freed["store"]["bytes"] == listed[first]["store"]["bytes"]
    assert freed["logs"]["bytes"] == listed[first]["logs"]["bytes"]
    assert result["freed"]["bytes"] == freed["bytes"] > 0 and result["audit"]["clean"]
    assert store.get_run(first) is None and not (workdir / "Logs" / first).exists()

    store.acquire_lock(second, {"token": "other", "host": "elsewhere", "pid": 4242, "process_start": 1.0}, 60.0)
    code, out = invoke(workdir, "runs", "delete", second, "-c", str(config), "--yes")
    assert code == 1 and "is running under pid 4242 on elsewhere" in out
    code, out = invoke(workdir, "runs", "prune", "--keep", "1", "-c", str(config), "--yes", "--json")
    assert code == 0 and json.loads(out)["skipped_live"] == [second] and json.loads(out)["deleted"] == []
    code, out = invoke(workdir, "runs", "prune", "--keep", "1", "-c", str(config), "--yes", "--force", "--json")
    assert code == 0, out
    result = json.loads(out)
    assert [d["run_id"] for d in result["deleted"]] == [second] and result["freed"]["bytes"] > 0
    assert store.get_lock(second) is None and store.audit().clean
    assert [r["_id"] for r in store.list_runs()] == [third] and (workdir / "Logs" / third).is_dir()

    code, out = invoke(workdir, "runs", "show", third, "-c", str(config))
    assert code == 0 and third in out and "store bytes" in out
    code, out = invoke(workdir, "runs", "show", first, "-c", str(config))
    assert code == 2 and "no run" in out

"""Whole runs whose store holds hostile update documents, written by someone with the store's credentials: before
the run (the old `run:round:client` keys, `client_id: null`, guessed keys, 2**62 examples), during it (a
document under the key of an activation just issued, before the client writes), and before a resume. The run
completes with the same model as an undisturbed run, and the store and Logs/ say what was set aside."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pymongo
import pytest

from fedkeeper import config as cfg
from fedkeeper.cli.main import App
from fedkeeper.runtime import weights as W
from fedkeeper.runtime.blobstore import BlobStore, update_key
from fedkeeper.scenarios import federated_learning as fl_module
from fedkeeper.tracker import Tracker, select_clients
from round_support import Run, experiment_yaml

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOTAL, PER_ROUND, SEED = 4, 3, 42
LOGREG = {"w1": ((64, 10), np.float32), "b1": ((10,), np.float32)}


def junk(value: float = 1e3) -> dict[str, np.ndarray]:
    return {k: np.full(s, value, d) for k, (s, d) in LOGREG.items()}


class Runs:
    """In-process `start` runs on the session's nx-27017 server, each in its own database."""

    def __init__(self, url: str, tmp: Path) -> None:
        self.url, self.tmp = url, tmp
        self.client: pymongo.MongoClient = pymongo.MongoClient(url, serverSelectionTimeoutMS=5000)
        self.dbs: list[str] = []

    def config(self) -> tuple[str, Any]:
        name = f"t_{uuid.uuid4().hex[:12]}"
        self.dbs.append(name)
        text = experiment_yaml(self.url, db=name, clusters={"lab": {"concurrency": 2}}, placement={"lab": TOTAL},
                               rounds=2, per_round=PER_ROUND, seed=SEED, resilience={"max_attempts": 3})
        return text, self.client[name]

    def start(self, text: str, db: Any, workdir: str, *, run_id: str | None = None, resume: str | None = None,
              rounds: int | None = None) -> Run:
        path = self.tmp / workdir
        path.mkdir(exist_ok=True)
        config = cfg.load_text(text, source=str(path / "config.yaml"), base_dir=path)
        app = App(quiet=True, logs_dir=path / "Logs", workdir=path)
        summary = fl_module.start_command(app, config, rounds=rounds, resume=resume, run_id=run_id)
        return Run(summary, path / "Logs" / summary["run_id"], db)

    def close(self) -> None:
        for name in self.dbs:
            self.client.drop_database(name)
        self.client.close()


@pytest.fixture
def runs(nx_server: str, tmp_path: Path) -> Iterator[Runs]:
    harness = Runs(nx_server, tmp_path)
    try:
        yield harness
    finally:
        harness.close()


def plant(db: Any, run_id: str, round_number: int) -> int:
    """What a forger writes before a round starts; returns how many documents."""
    blobs = BlobStore(db)
    docs = 0
    for client in range(TOTAL):  # the key every update had before: first write won it
        blobs.write_update(run_id, round_number, client, junk(), base_round=round_number - 1, num_examples=2**62)
        db["updates"].update_one({"_id": update_key(run_id, round_number, client)},
                                 {"$set": {"activation_id": f"forged-{client}"}})
        blobs.write_update(run_id, round_number, client, junk(-1e3), base_round=round_number - 1,
                           num_examples=10**6, activation_id=f"guess{client}", attempt=1)
        docs += 2
    db["updates"].insert_one({"_id": f"{run_id}:{round_number}:null", "run_id": run_id, "round": round_number,
                              "client_id": None, "activation_id": None, "num_examples": "many", "created": "now"})
    db["updates"].insert_one({"_id": f"{run_id}:{round_number}:odd", "run_id": run_id, "round": round_number,
                              "client_id": {"$gt": 0}, "activation_id": ["x"], "blob": "inline"})
    return docs + 2


class ForgingFabric:
    """The tracker's view of the fabric, with a forger who writes under the key of each first activation of
    round 2 just before the platform runs it (the worst race: the key is known, the client has not written)."""

    def __init__(self, fabric: Any, db: Any) -> None:
        self._fabric, self._db = fabric, db
        self.forged: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fabric, name)

    def provider(self, cluster: str) -> Any:
        real, outer = self._fabric.provider(cluster), self

        class Forging:
            def __getattr__(self, name: str) -> Any:
                return getattr(real, name)

            def invoke(self, name: str, payload: dict[str, Any]) -> Any:
                if payload.get("client_id") is not None and payload["round"] == 2 and payload["attempt"] == 1:
                    BlobStore(outer._db).write_update(
                        payload["run_id"], 2, payload["client_id"], junk(5.0), base_round=1, num_examples=1,
                        activation_id=payload["activation_id"], attempt=1)
                    outer.forged.append(payload["activation_id"])
                return real.invoke(name, payload)

        return Forging()


def test_forged_documents_before_and_during_a_run_and_a_resume_leave_the_model_unchanged(
        runs: Runs, monkeypatch: pytest.MonkeyPatch) -> None:
    clean_text, clean_db = runs.config()
    clean = runs.start(clean_text, clean_db, "clean")
    assert clean.summary["status"] == "completed", clean.summary.get("error")

    text, db = runs.config()
    run_id = "hostile-run"
    planted = plant(db, run_id, 1) + plant(db, run_id, 2)
    forgers: list[ForgingFabric] = []

    class ForgedTracker(Tracker):
        def __init__(self, fabric: Any, *args: Any, **kwargs: Any) -> None:
            forgers.append(ForgingFabric(fabric, db))
            super().__init__(forgers[-1], *args, **kwargs)

    monkeypatch.setattr(fl_module, "Tracker", ForgedTracker)
    hostile = runs.start(text, db, "hostile", run_id=run_id)
    summary = hostile.summary
    assert summary["status"] == "completed", summary.get("error")
    assert summary["model_sha256"] == clean.summary["model_sha256"]  # no forged document reached the model

    ignored = hostile.events("update_ignored")
    assert len(ignored) == planted and {e["reason"] for e in ignored} == {"unissued"}
    assert hostile.events("update_rejected") == [] and all(int(r["rejected"]) == 0 for r in hostile.rounds())
    # each pre-empted activation failed (the client would not acknowledge the forger's update) and was retried
    forged = forgers[0].forged
    assert len(forged) == len(select_clients(SEED, 2, TOTAL, PER_ROUND))
    records = {r["_id"]: r for r in db["activations"].find({"run_id": run_id, "round": 2})}
    assert all(records[a]["state"] == "failed" and "UpdateConflict" in records[a]["error"] for a in forged)
    aggregated = db["models"].find_one({"_id": f"{run_id}:2"}, {"blob": 0})["metrics"]
    assert aggregated["clients"] == select_clients(SEED, 2, TOTAL, PER_ROUND) and aggregated["rejected"] == []

    # a third round, resumed over documents with client_id null and the like (it crashed a resume before)
    planted = plant(db, run_id, 3)
    monkeypatch.setattr(fl_module, "Tracker", Tracker)
    resumed = runs.start(text, db, "hostile", resume=run_id, rounds=3)
    more = runs.start(clean_text, clean_db, "clean", resume=clean.run_id, rounds=3)
    assert resumed.summary["status"] == more.summary["status"] == "completed", resumed.summary.get("error")
    assert resumed.summary["model_sha256"] == more.summary["model_sha256"]
    assert len([e for e in resumed.events("update_ignored") if e["round"] == 3]) == planted
    model, _ = BlobStore(db).read_model(run_id, 3, {k: v for k, v in LOGREG.items()})
    assert all(np.all(np.abs(a) < 100) for a in model.values())  # nothing of the ±1e3 junk
    assert W.num_params(model) == 650

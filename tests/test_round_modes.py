"""Round modes (docs/scheduling.md): deadline and buffered rounds on local clusters with a seeded timing profile,
in process. Same config and seed → same model in `deadline`; every mode passes the store audit (no update lost or
counted twice), also across an interruption and `--resume`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymongo
import pytest
import yaml

from chaos_audit import audit_run
from fedkeeper.errors import Interrupted
from fedkeeper.providers.local.config import Profile
from fedkeeper.providers.local.profile import ProfilePlan
from fedkeeper.scenarios import federated_learning as fl_module
from fedkeeper.tracker import Tracker
from round_support import experiment_yaml, start_in_process

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: 6 clients, drawn into a fast tier (40 ms) and a slow one (a 10× tier: 400 ms; client 1 with this seed);
#: deadline 0.2 s
PROFILE = {"seed": 7, "base_ms": 40, "tiers": [{"share": 0.67, "slowdown": 1}, {"share": 0.33, "slowdown": 10}]}


@pytest.fixture
def client(nx_server: str) -> Iterator[pymongo.MongoClient]:
    c: pymongo.MongoClient = pymongo.MongoClient(nx_server, serverSelectionTimeoutMS=5000)
    yield c
    c.close()


def _config(url: str, mode: dict[str, Any], *, rounds: int = 3, per_round: int = 3, prewarm: bool = False) -> str:
    data = yaml.safe_load(experiment_yaml(url, clusters={"c": {"concurrency": 3, "profile": PROFILE}},
                                          placement={"c": 6}, rounds=rounds, per_round=per_round))
    fl = data["scenarios"]["federated_learning"]
    fl["mode"] = mode
    fl["prewarm"] = prewarm
    data["pricing"] = {"local": {"gb_second": 0.0000166667, "per_million_invocations": 0.2}}
    return yaml.safe_dump(data, sort_keys=False)


def _audit(run: Any) -> Any:
    return audit_run(run.db, run.folder, overselect=True)


def test_deadline_discard_is_deterministic_and_audited(nx_server: str, client: Any, tmp_path: Path) -> None:
    mode = {"name": "deadline", "deadline_s": 0.2, "grace_s": 8.0}
    runs = [start_in_process(tmp_path / str(i), _config(nx_server, mode), client) for i in range(2)]
    for run in runs:
        assert run.summary["status"] == "completed", run.summary
        _audit(run)
        assert all(float(r["cost"]) > 0 for r in run.rounds())
    assert runs[0].summary["model_sha256"] == runs[1].summary["model_sha256"]
    # the slow tier (400 ms > D) is seen running past D and cut at once, not waited for (rounds.deadline.known_late)
    slow = [c for c in range(6) if ProfilePlan(Profile(**PROFILE), 60.0).traits(c).tier_slowdown > 1]
    calls = list(runs[0].db["activations"].find({"run_id": runs[0].run_id, "client_id": {"$in": slow}}))
    assert calls and {a["state"] for a in calls} == {"abandoned"}, [a["state"] for a in calls]


def test_deadline_carry_uses_late_updates_once(nx_server: str, client: Any, tmp_path: Path) -> None:
    # enough rounds for a slow client's 400 ms call to outlast the deadline and still land before the run ends: a
    # round whose clients are all punctual takes little more than their 40 ms, so 4 rounds could end before it
    run = start_in_process(tmp_path, _config(nx_server, {"name": "deadline", "deadline_s": 0.2, "late": "carry",
                                                         "grace_s": 8.0}, rounds=12), client)
    assert run.summary["status"] == "completed", run.summary
    _audit(run)
    stale = [u for r in range(1, 13) for u in run.db["models"].find_one({"_id": f"{run.run_id}:{r}"})["metrics"]
             ["updates"] if u["staleness"] > 0]
    assert stale, "a slow client's update should have been carried into a later round"


def test_buffered_completes_and_is_audited(nx_server: str, client: Any, tmp_path: Path) -> None:
    run = start_in_process(tmp_path, _config(nx_server, {"name": "buffered", "concurrency": 4, "buffer_size": 2},
                                             rounds=4, prewarm=True), client)
    assert run.summary["status"] == "completed", run.summary
    _audit(run)
    assert [int(r["aggregated"]) for r in run.rounds()] == [2, 2, 2, 2]


@pytest.mark.parametrize("mode", [{"name": "deadline", "deadline_s": 0.2, "late": "carry", "grace_s": 8.0},
                                  {"name": "buffered", "concurrency": 4, "buffer_size": 2}])
def test_every_mode_survives_an_interruption(nx_server: str, client: Any, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch, mode: dict[str, Any]) -> None:
    seen = {"n": 0}

    class Interrupting(Tracker):
        def _emit(self, job: Any, attempt: Any, what: str) -> None:
            super()._emit(job, attempt, what)
            if job.round == 2 and job.client_id is not None and what == "succeeded":
                seen["n"] += 1
                if seen["n"] == 1:
                    raise KeyboardInterrupt

    text = _config(nx_server, mode, rounds=4)
    with monkeypatch.context() as patch:
        patch.setattr(fl_module, "Tracker", Interrupting)
        with pytest.raises(Interrupted):
            start_in_process(tmp_path, text, client)
    run_id = next((tmp_path / "Logs").iterdir()).name
    run = start_in_process(tmp_path, text, client, resume=run_id)
    assert run.summary["status"] == "completed", run.summary
    assert run.summary["sessions"] == 2
    _audit(run)

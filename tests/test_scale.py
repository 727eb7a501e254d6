"""A round of a thousand clients on the local platform (issue 18): the whole path at the scale bench_scale.py
measures — a thousand invocations through two workers, a thousand activation records, a thousand updates read
by the aggregator in batches — and the run's records agree with each other.

Slow (about 15-30 s on the 2-core machine): the tiny MLP, one local epoch, one round, digits.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLIENTS = 1000


def config(folder: Path, hash_alg: str, pack: int = 1) -> Path:
    data = yaml.safe_load((ROOT / "config-sample.yaml").read_text())
    data["experiment"] = "scale"
    data["providers"]["local"] = {"laptop": {"concurrency": 2}, "laptop-server": {"concurrency": 1}}
    fl = data["scenarios"]["federated_learning"]
    fl.update(rounds=1, hash_alg=hash_alg)
    fl["model_params"]["local_epochs"] = 1
    fl["clients_info"].update(total_num_clients=CLIENTS, num_clients_per_round=CLIENTS, placement={"laptop": CLIENTS},
                              clients_per_invocation=pack)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.slow
def test_a_round_of_a_thousand_clients_completes_on_the_local_platform(tmp_path: Path, run_cli) -> None:  # type: ignore[no-untyped-def]
    from fedkeeper.runtime import weights as W

    alg = "xxh3_128" if W.hash_available("xxh3_128") else "sha256"  # a run's own digest choice, end to end
    result = run_cli("start", "-c", config(tmp_path, alg), "-q", "--json", cwd=tmp_path)
    assert result.code == 0, result.stderr[-2000:]
    run_dir = next((tmp_path / "Logs").iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds_completed"] == 1
    assert summary["activations"]["succeeded"] == CLIENTS + 2  # the clients, the init and the aggregation
    assert summary["activations"]["total"] == CLIENTS + 2
    with open(run_dir / "rounds.csv", newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    assert int(row["aggregated"]) == CLIENTS and int(row["rejected"]) == 0
    with open(run_dir / "activations.csv", newline="") as handle:
        clients = {int(a["client_id"]) for a in csv.DictReader(handle) if a["function"] == "fl_client"}
    assert clients == set(range(CLIENTS))
    aggregated = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()
                  if '"updates_aggregated"' in line]
    assert [c["client_id"] for c in aggregated[-1]["clients"]] == list(range(CLIENTS))
    # the store holds one update per client, written with the run's digest algorithm and recorded as such
    from fedkeeper.config.models import MongoConfig
    from fedkeeper.store import open_store

    with open_store(MongoConfig(), workdir=tmp_path) as store:
        docs = list(store.db["updates"].find({"run_id": summary["run_id"]}, {"hash_alg": 1}))
        model = store.get_model_doc(summary["run_id"], 1)
    assert len(docs) == CLIENTS and {d["hash_alg"] for d in docs} == {alg}
    assert model["hash_alg"] == alg and model["num_updates"] == CLIENTS


@pytest.mark.slow
def test_a_round_of_a_thousand_clients_in_packs_completes_and_equals_the_unpacked_model(tmp_path: Path,
                                                                                       run_cli) -> None:  # type: ignore[no-untyped-def]
    """Client packing (docs/aggregation.md#client-packing) at the same scale: 20 invocations of 50 clients, each
    storing one partial sum, combined by the aggregator (20 partials > fan_in 16: one inner level)."""
    import numpy as np

    from fedkeeper.config.models import MongoConfig
    from fedkeeper.store import open_store

    models = {}
    for pack in (1, 50):
        folder = tmp_path / f"k{pack}"
        folder.mkdir()
        result = run_cli("start", "-c", config(folder, "sha256", pack), "-q", "--json", cwd=folder)
        assert result.code == 0, result.stderr[-2000:]
        run_dir = next((folder / "Logs").iterdir())
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == "completed"
        with open(run_dir / "rounds.csv", newline="") as handle:
            (row,) = list(csv.DictReader(handle))
        assert int(row["aggregated"]) == CLIENTS
        with open_store(MongoConfig(), workdir=folder) as store:
            models[pack] = store.blobs.read_model(summary["run_id"], 1)[0]
            if pack > 1:
                records = list(store.db["activations"].find({"run_id": summary["run_id"], "function": "fl_client"}))
                assert len(records) == CLIENTS // pack
                assert sorted(c for r in records for c in r["clients"]) == list(range(CLIENTS))
                tree = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()
                        if '"tree_aggregation"' in line]
                assert tree[-1]["levels"] == [2]  # 20 pack partials: two inner nodes, then the final one
    for name, flat in models[1].items():
        np.testing.assert_allclose(models[50][name], flat, rtol=0, atol=1e-6)

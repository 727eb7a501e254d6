"""What only a real server can show: several processes writing at once, and data surviving a server restart."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pymongo
import pytest

from fedkeeper.runtime import weights as W
from fedkeeper.runtime.blobstore import BlobStore
from fedkeeper.store import NxServer

pytestmark = pytest.mark.integration

KEYS = 12
INCS = 40

# Each writer writes an update for every client key (the same keys as the other writer, with its own values,
# in lockstep so that the two race on every key: the same activation delivered twice) and increments shared
# counters; it reports the keys it won.
WRITER = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    from fedkeeper.runtime.blobstore import BlobStore, connect
    url, db_name, tag, value, keys, incs = sys.argv[1:7]
    db = connect(url, db_name)
    inline, gridfs = BlobStore(db), BlobStore(db, inline_limit=512)
    db.command("ping")
    print("ready", flush=True)
    start_at = float(sys.stdin.readline())
    won = []
    for i in range(int(keys)):
        while time.time() < start_at + 0.02 * i:  # both writers reach key i at the same moment
            time.sleep(0.0005)
        blobs = gridfs if i % 2 else inline  # odd keys go through GridFS
        doc = blobs.write_update("run", 1, f"c{i:02d}", {"w": np.full(1000, float(value), np.float32)},
                                 base_round=0, num_examples=1, activation_id="act", metrics={"tag": tag})
        if not doc["duplicate"]:
            won.append(doc["client_id"])
        db.counters.update_one({"_id": "run"}, {"$inc": {"writes": 1, f"by.{tag}": 1}})
    for _ in range(int(incs)):
        db.counters.find_one_and_update({"_id": "run"}, {"$inc": {"incs": 1}})
    print(json.dumps(won))
""")


def test_two_processes_write_overlapping_keys_without_loss_or_duplicates(nx_server, nx_db) -> None:
    nx_db.counters.insert_one({"_id": "run", "writes": 0, "incs": 0, "by": {"a": 0, "b": 0}})
    procs = {
        tag: subprocess.Popen(
            [sys.executable, "-c", WRITER, nx_server, nx_db.name, tag, value, str(KEYS), str(INCS)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for tag, value in (("a", "1.0"), ("b", "2.0"))
    }
    for proc in procs.values():  # both connected: start them at the same moment
        assert proc.stdout.readline().strip() == "ready", proc.communicate(timeout=60)[1]
    start_at = time.time() + 0.1
    won = {}
    for proc in procs.values():
        proc.stdin.write(f"{start_at}\n")
        proc.stdin.flush()
    for tag, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        won[tag] = json.loads(out)

    # Every key was won exactly once, and the stored doc is the winner's.
    assert sorted(won["a"] + won["b"]) == [f"c{i:02d}" for i in range(KEYS)]
    blobs = BlobStore(nx_db)
    docs = blobs.list_updates("run", 1)
    assert [d["client_id"] for d in docs] == [f"c{i:02d}" for i in range(KEYS)]
    assert nx_db.updates.count_documents({}) == KEYS
    for doc in docs:
        winner = "a" if doc["client_id"] in won["a"] else "b"
        assert doc["metrics"]["tag"] == winner
        weights, _ = blobs.read_update("run", 1, doc["client_id"], {"w": ((1000,), "float32")}, activation_id="act")
        assert float(weights["w"][0]) == {"a": 1.0, "b": 2.0}[winner]
    assert [d["storage"] for d in docs] == ["inline", "gridfs"] * (KEYS // 2)
    assert len(blobs._files.find({})) == KEYS // 2  # the loser of each GridFS race removed its file again
    counters = nx_db.counters.find_one({"_id": "run"})
    assert counters["writes"] == 2 * KEYS and counters["incs"] == 2 * INCS
    assert counters["by"] == {"a": KEYS, "b": KEYS}


def test_data_survives_a_server_restart(tmp_path: Path) -> None:
    server = NxServer.in_dir(tmp_path)
    big = {"w": np.random.default_rng(1).standard_normal(300_000).astype(np.float32)}  # 1.2 MB, several chunks
    small = {"w": np.arange(10, dtype=np.float32)}
    try:
        client = pymongo.MongoClient(server.start())
        blobs = BlobStore(client.fk, inline_limit=1024)  # small inline, big through GridFS
        blobs.write_model("r", 0, small, {"accuracy": 0.5})
        assert blobs.write_model("r", 1, big, {"accuracy": 0.6})["storage"] == "gridfs"
        blobs.write_update("r", 1, "c1", small, base_round=0, num_examples=5)
        client.fk.runs.insert_one({"_id": "r", "status": "running"})
        client.close()
        first_pid = server.pid
        assert server.stop() is not None and server.proc is None

        server.port = 0  # a new process on another free port, same data directory
        client = pymongo.MongoClient(server.start())
        assert server.pid != first_pid
        blobs = BlobStore(client.fk)
        np.testing.assert_array_equal(blobs.read_model("r", 0)[0]["w"], small["w"])
        np.testing.assert_array_equal(blobs.read_model("r", 1, W.spec_of(big))[0]["w"], big["w"])
        assert blobs.read_update("r", 1, "c1", W.spec_of(small))[1]["num_examples"] == 5
        assert client.fk.runs.find_one({"_id": "r"})["status"] == "running"
        assert blobs.write_model("r", 0, big, {})["duplicate"] is True  # unique keys survive too
        client.close()
    finally:
        server.stop()

"""The embedded store's WAL checkpointer (fedkeeper/store/checkpoint.py): commits stop checkpointing, the
checkpointer's passes move every committed page into the database file, the WAL is emptied at rest and when it
outgrows its limit, and closing a database leaves no WAL behind (a stale one would be replayed into a new file of
the same name)."""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pymongo
import pytest

from fedkeeper.store import checkpoint
from fedkeeper.store.embedded import NxServer

neosqlite = pytest.importorskip("neosqlite")


@pytest.fixture
def watched() -> Iterator[checkpoint.Checkpointer]:
    # tick_s long: the tests drive the passes themselves, except the one that checks the thread
    chk = checkpoint.watch(checkpoint.Checkpointer(tick_s=3600.0, idle_s=0.0))
    try:
        yield chk
    finally:
        checkpoint.unwatch()


def _fill(conn: object, n: int, size: int = 20_000) -> None:
    coll = conn["docs"]  # type: ignore[index]
    first = coll.count_documents({})
    for i in range(first, first + n):
        coll.insert_one({"_id": f"d{i}", "i": i, "pad": "x" * size})


def _wal(path: Path) -> int:
    wal = Path(f"{path}-wal")
    return wal.stat().st_size if wal.exists() else 0


def _rows_in_db_file_alone(path: Path, tmp_path: Path) -> int:
    """Rows a copy of the .db file holds without its WAL: what has been checkpointed into it."""
    copy = tmp_path / f"alone-{time.monotonic_ns()}.db"  # a new name each time: no WAL of an earlier copy beside it
    shutil.copyfile(path, copy)
    db = sqlite3.connect(copy)
    try:
        if db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'docs'").fetchone()[0] == 0:
            return 0
        return int(db.execute("SELECT count(*) FROM docs").fetchone()[0])
    finally:
        db.close()


def test_commits_do_not_checkpoint_and_a_pass_moves_them_into_the_database(watched: checkpoint.Checkpointer,
                                                                          tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    conn = neosqlite.Connection(str(path))
    try:
        assert conn.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        _fill(conn, 300)  # about 6 MB: SQLite's own autocheckpoint would have run at 4 MB
        assert _wal(path) > 4 << 20
        assert _rows_in_db_file_alone(path, tmp_path) < 300
        watched.tick()  # passive: every frame copied, and (idle_s 0) truncated
        assert watched.checkpoints["PASSIVE"] == 1 and watched.checkpoints["TRUNCATE"] == 1
        assert _wal(path) == 0
        assert _rows_in_db_file_alone(path, tmp_path) == 300
        _fill(conn, 1)
        assert conn["docs"].count_documents({}) == 301
    finally:
        conn.close()


def test_a_wal_over_its_limit_is_truncated_while_writes_go_on(tmp_path: Path) -> None:
    chk = checkpoint.watch(checkpoint.Checkpointer(tick_s=3600.0, idle_s=3600.0, limit_bytes=1 << 20))
    path = tmp_path / "b.db"
    try:
        conn = neosqlite.Connection(str(path))
        _fill(conn, 100)  # 2 MB
        chk.tick()
        assert chk.checkpoints == {"PASSIVE": 1, "TRUNCATE": 1}
        assert _wal(path) == 0
        _fill(conn, 10)  # 0.2 MB, under the limit, not idle: passive only, the file stays
        chk.tick()
        assert chk.checkpoints == {"PASSIVE": 2, "TRUNCATE": 1}
        assert _wal(path) > 0
        assert _rows_in_db_file_alone(path, tmp_path) == 110
        conn.close()
    finally:
        checkpoint.unwatch()


def test_closing_leaves_no_wal_and_a_new_database_of_the_same_name_starts_empty(watched: checkpoint.Checkpointer,
                                                                               tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    conn = neosqlite.Connection(str(path))
    _fill(conn, 20)
    watched.tick()  # the checkpointer now holds a connection of its own to the file
    conn["docs"].insert_one({"_id": "late"})
    assert _wal(path) > 0
    conn.close()  # it lets go first, so the database's own close is the last one and SQLite removes the WAL
    assert not Path(f"{path}-wal").exists() and not Path(f"{path}-shm").exists()
    assert watched._databases == {}
    os.unlink(path)  # nx-27017 drops a database this way: close, unlink the .db file
    again = neosqlite.Connection(str(path))
    try:
        assert "docs" not in again.list_collection_names()
    finally:
        again.close()


def test_in_memory_databases_are_not_watched(watched: checkpoint.Checkpointer) -> None:
    conn = neosqlite.Connection(":memory:")
    try:
        assert watched._databases == {}
    finally:
        conn.close()


def test_unwatch_restores_sqlite_autocheckpoint(tmp_path: Path) -> None:
    checkpoint.watch(checkpoint.Checkpointer(tick_s=3600.0))
    checkpoint.unwatch()
    conn = neosqlite.Connection(str(tmp_path / "d.db"))
    try:
        assert conn.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000
    finally:
        conn.close()


def test_the_thread_checkpoints_on_its_own(tmp_path: Path) -> None:
    chk = checkpoint.watch(checkpoint.Checkpointer(tick_s=0.02, idle_s=0.05))
    path = tmp_path / "e.db"
    try:
        conn = neosqlite.Connection(str(path))
        _fill(conn, 50)
        deadline = time.monotonic() + 10
        while (_wal(path) or not chk.checkpoints["TRUNCATE"]) and time.monotonic() < deadline:
            time.sleep(0.02)  # (the file is emptied a moment before the count goes up)
        assert _wal(path) == 0 and chk.checkpoints["TRUNCATE"] >= 1
        assert _rows_in_db_file_alone(path, tmp_path) == 50
        conn.close()
    finally:
        checkpoint.unwatch()


def test_the_embedded_server_checkpoints_off_the_request_path_and_keeps_what_it_acknowledged(tmp_path: Path) -> None:
    """Over the wire: writes acknowledged, the server killed (SIGKILL, no clean close), started again on the same
    files: every document is there, whether it was still in the WAL or already checkpointed."""
    server = NxServer.in_dir(tmp_path)
    url = server.start()
    try:
        client = pymongo.MongoClient(url, directConnection=True, serverSelectionTimeoutMS=5000)
        coll = client["fk"]["docs"]
        for i in range(200):
            coll.insert_one({"_id": i, "pad": "y" * 20_000})
        wal = tmp_path / "store" / "fk.db-wal"
        deadline = time.monotonic() + 10  # at rest: the checkpointer empties the WAL within about a second
        while (not wal.exists() or wal.stat().st_size) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert wal.exists() and wal.stat().st_size == 0
        for i in range(200, 260):  # these stay in the WAL: killed before the idle truncation
            coll.insert_one({"_id": i, "pad": "z" * 20_000})
        client.close()
        assert server.proc is not None
        server.proc.kill()
        server.proc.wait(timeout=10)
    finally:
        server.stop()
    again = NxServer.in_dir(tmp_path)
    url = again.start()
    try:
        with pymongo.MongoClient(url, directConnection=True, serverSelectionTimeoutMS=5000) as client:
            ids = sorted(d["_id"] for d in client["fk"]["docs"].find({}, {"_id": 1}))
        assert ids == list(range(260))
    finally:
        again.stop()

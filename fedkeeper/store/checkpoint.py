"""WAL checkpoints of the embedded store on a thread of their own, off the path of the store's requests (issue 18).

neosqlite opens every database in WAL mode with ``synchronous=NORMAL``: a commit appends to the WAL and is not
synced, and every 1000 pages (SQLite's ``wal_autocheckpoint``) the committing statement itself copies the WAL back
into the database file and syncs both. nx-27017 runs each request under its database's lock, so that copy and its
two fsyncs stalled every other request of the database: a 10 KB update insert cost the store 190 µs of wall time
for 100 µs of CPU (the rest waiting on fsync), measured with SQLite 3.40 on this project's test machine.

Here the server's connections commit without checkpointing (``wal_autocheckpoint=0``) and one daemon thread
checkpoints each database through a connection of its own, which holds none of nx-27017's locks: every ``tick_s``
a ``PASSIVE`` checkpoint (copies what was committed since the last one, blocking neither readers nor writers),
and a ``TRUNCATE`` one (waits up to ``busy_ms`` for readers and writers, copies the rest, empties the file) when
the WAL file has grown past ``limit_bytes`` or every frame in it has been copied for ``idle_s``. A passive
checkpoint seldom lets the WAL start over while writes keep coming (SQLite restarts it only when a writer finds
every frame copied), so without the truncating one the file would grow for as long as a run writes; with it, the
WAL is empty at rest and a truncation has at most one pass's frames left to copy.

What a commit guarantees is unchanged: a WAL commit under ``synchronous=NORMAL`` survives a crash of the server
(the kill and resume tests) and may be lost with the last few on a power cut, as before; a checkpoint only moves
committed pages and syncs as SQLite's own does (``synchronous=NORMAL`` on its connection: the WAL before copying,
the database after).

The checkpointing connection must close before the server's own: a database file is dropped by closing its
connection and unlinking the ``.db`` file, and SQLite deletes the ``-wal`` file only when the last connection to
the database closes. A stale WAL beside a new database of the same name would be replayed into it. `watch` wraps
neosqlite's ``Connection.close`` so that it releases the checkpointer's connection first.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("fedkeeper.store.checkpoint")

LIMIT_BYTES = 64 << 20
IDLE_S = 1.0
TICK_S = 0.1
BUSY_MS = 200


@dataclass(eq=False)
class _Database:
    """One watched database file: the checkpointer's connection to it and what the last checkpoint found."""

    path: str
    lock: threading.Lock = field(default_factory=threading.Lock)  # the connection is used by one thread at a time
    conn: sqlite3.Connection | None = None
    closed: bool = False
    frames: int = -1  # frames in the WAL at the last checkpoint
    still_since: float = field(default_factory=time.monotonic)  # since when every frame has been checkpointed


class Checkpointer:
    """Checkpoints the WAL of every watched database on one daemon thread (see the module's docstring)."""

    def __init__(self, *, limit_bytes: int = LIMIT_BYTES, idle_s: float = IDLE_S, tick_s: float = TICK_S,
                 busy_ms: int = BUSY_MS) -> None:
        self.limit_bytes = limit_bytes
        self.idle_s = idle_s
        self.tick_s = tick_s
        self.busy_ms = busy_ms
        self._databases: dict[int, _Database] = {}  # id(owner connection) -> database
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.checkpoints = {"PASSIVE": 0, "TRUNCATE": 0}

    def add(self, owner: Any, path: str) -> None:
        """Checkpoint ``path`` (a WAL database that ``owner`` writes with autocheckpoint off) until `remove`."""
        with self._lock:
            self._databases[id(owner)] = _Database(os.path.abspath(path))
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name="fk-wal-checkpoint", daemon=True)
                self._thread.start()

    def remove(self, owner: Any) -> None:
        """Close the checkpointer's connection to ``owner``'s database; waits for a checkpoint in progress."""
        with self._lock:
            db = self._databases.pop(id(owner), None)
        if db is not None:
            self._close(db)

    def stop(self) -> None:
        """End the thread and close every connection it holds (the watched databases' own stay open)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)
        with self._lock:
            databases = list(self._databases.values())
            self._databases.clear()
        for db in databases:
            self._close(db)

    @staticmethod
    def _close(db: _Database) -> None:
        with db.lock:
            db.closed = True
            if db.conn is not None:
                db.conn.close()
                db.conn = None

    def tick(self) -> None:
        """One pass over every watched database (the thread runs it every ``tick_s``; tests call it directly):
        a passive checkpoint of what was committed since the last, then a truncating one when the WAL file is over
        ``limit_bytes`` or every frame in it has been checkpointed for ``idle_s``."""
        with self._lock:
            databases = list(self._databases.values())
        for db in databases:
            try:
                size = os.stat(db.path + "-wal").st_size
            except OSError:  # no WAL (not written yet, or closed and deleted)
                continue
            if size == 0:
                continue
            done = self._checkpoint(db, "PASSIVE")
            now = time.monotonic()
            if done is None:
                continue
            frames, all_done = done
            if not all_done or frames != db.frames:
                db.frames, db.still_since = frames, now
            if size > self.limit_bytes or (all_done and now - db.still_since >= self.idle_s):
                self._checkpoint(db, "TRUNCATE")

    def _checkpoint(self, db: _Database, mode: str) -> tuple[int, bool] | None:
        """(frames in the WAL, all of them checkpointed), or None when it did not run (busy, closed, an error)."""
        with db.lock:
            if db.closed:
                return None
            try:
                if db.conn is None:
                    db.conn = sqlite3.connect(db.path, timeout=self.busy_ms / 1000, isolation_level=None,
                                              check_same_thread=False)
                    db.conn.execute("PRAGMA synchronous=NORMAL")
                busy, frames, copied = db.conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
            except sqlite3.Error as exc:  # busy beyond busy_ms, a database being dropped: the next pass retries
                log.debug("WAL checkpoint (%s) of %s: %s", mode, db.path, exc)
                return None
            self.checkpoints[mode] += 1
        if busy:
            return None
        return int(frames), frames == copied

    def _run(self) -> None:
        while not self._stop.wait(self.tick_s):
            try:
                self.tick()
            except Exception:  # never let a surprise end the thread: autocheckpoint is off for these databases
                log.exception("WAL checkpointer")


def watch(checkpointer: Checkpointer | None = None) -> Checkpointer:
    """Make every neosqlite connection this process opens on a WAL database file hand its checkpoints to
    ``checkpointer`` (a new one by default). Idempotent: a second call returns the first's; `unwatch` undoes it."""
    from neosqlite.connection import Connection

    current = getattr(Connection._configure_connection, "_fk_checkpoint", None)
    if current is not None:
        return current  # type: ignore[no-any-return]
    chk = checkpointer or Checkpointer()
    configure = Connection._configure_connection
    close = Connection.close

    def configured(self: Any) -> None:
        configure(self)
        chk.remove(self)  # a reconnect (neosqlite's auto_vacuum migration): the file may have been replaced
        mode = self.db.execute("PRAGMA journal_mode").fetchone()[0]
        path = next((row[2] for row in self.db.execute("PRAGMA database_list") if row[1] == "main"), "")
        if str(mode).lower() == "wal" and path:
            self.db.execute("PRAGMA wal_autocheckpoint=0")
            chk.add(self, path)

    def closing(self: Any) -> None:
        chk.remove(self)
        close(self)

    configured._fk_checkpoint = chk  # type: ignore[attr-defined]
    configured._fk_original = configure  # type: ignore[attr-defined]
    closing._fk_original = close  # type: ignore[attr-defined]
    Connection._configure_connection = configured  # type: ignore[method-assign]
    Connection.close = closing  # type: ignore[method-assign]
    return chk


def unwatch() -> None:
    """Put neosqlite's own methods back and stop the checkpointer (connections opened since keep autocheckpoint
    off: close them first)."""
    from neosqlite.connection import Connection

    configured = Connection._configure_connection
    chk = getattr(configured, "_fk_checkpoint", None)
    if chk is None:
        return
    Connection._configure_connection = configured._fk_original  # type: ignore[attr-defined,method-assign]
    Connection.close = Connection.close._fk_original  # type: ignore[attr-defined,method-assign]
    chk.stop()

"""Process entry of the embedded nx-27017 server (``python -m fedkeeper.store.nxserve <nx-27017 options>``), and the
lease bookkeeping it shares with ``embedded.py``.

Why a module of its own: the server process should import nx-27017 and little else (importing the repository
would pull in the pymongo client, numpy and tenacity and add about half a second to every start), and
``python -m nx_27017`` does not exist in nx-27017 0.8.1.

It runs nx-27017's own ``main`` with these additions:

- its loggers at WARNING (``FK_NX_LOG_LEVEL`` overrides): at INFO it logs every command;
- its insert handler gets the message's sections in a list with a short text form (`quiet_insert_sections`):
  it formats them into a debug message on every insert, logged or not;
- faster, behaviour-identical replacements for nx-27017's and neosqlite's per-document hot paths (`nxfast`: the
  deep copies, the ObjectId converters, pruning's update_many, the blobs' base64 and JSON text), each applied only
  at the library version it was checked against; ``FK_NX_FAST=0`` leaves the libraries as they are;
- WAL checkpoints on a thread of their own instead of inside the committing request, which held its database's
  lock through two fsyncs (`checkpoint`; ``FK_NX_CHECKPOINT=0`` leaves SQLite's autocheckpoint in charge);
- with ``FK_PROFILE_DIR`` set, a cProfile of each connection thread there (bench/bench_scale.py --profile);
- a watchdog thread (when ``FK_NX_LEASE_DIR`` is set): each fedkeeper process that uses the server holds a
  lease file there (pid + process start time); when no live process has held one for ``FK_NX_LEASE_GRACE_S``
  seconds, the server stops itself, so even a user killed with SIGKILL leaves no server behind.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil


def create_time(pid: int) -> float | None:
    """When `pid` started, as an identity for leases, lock holders and store.json (None: no such process).

    On Linux: seconds after boot, from /proc/<pid>/stat's start ticks. Not psutil's wall-clock create_time, which
    is boot time + ticks and moves when the wall clock is stepped (a VM's clock sync does that): one step of 26 s
    made the test session's live lease look like a dead process's, and its server stopped itself mid-run."""
    if os.path.isdir("/proc/self"):
        try:
            with open(f"/proc/{pid}/stat", "rb") as stat:
                data = stat.read()
        except (FileNotFoundError, ProcessLookupError):
            return None
        except OSError:
            data = b""
        try:  # fields after the command name (which may hold spaces and parentheses); starttime is field 22
            return int(data[data.rindex(b")") + 2:].split()[19]) / os.sysconf("SC_CLK_TCK")
        except (ValueError, IndexError):
            pass
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return None


def same_process(pid: int, started: float) -> bool:
    """pid is alive and is the process recorded (not a later process that reused the pid)."""
    now = create_time(pid)
    return now is not None and abs(now - started) < 1.0


def live_leases(lease_dir: Path) -> list[Path]:
    """Lease files whose process still runs."""
    live = []
    for path in sorted(lease_dir.glob("*.lease")):
        try:
            info = json.loads(path.read_text())
            if same_process(int(info["pid"]), float(info["create_time"])):
                live.append(path)
        except (OSError, ValueError, KeyError, TypeError):
            continue  # half-written or foreign file: a real lease shows up on the next look
    return live


def watch_leases(lease_dir: Path, grace_s: float, poll_s: float = 0.5) -> None:
    """Stop this process (SIGTERM: nx-27017 exits cleanly) once no live lease was seen for ``grace_s``."""
    idle_since: float | None = None
    while True:
        time.sleep(poll_s)
        try:
            live = bool(live_leases(lease_dir))
        except OSError:
            live = False
        if live:
            idle_since = None
            continue
        idle_since = idle_since or time.monotonic()
        if time.monotonic() - idle_since >= grace_s:
            logging.getLogger("nx_27017").warning("no FedKeeper process holds a lease on this server: stopping")
            os.kill(os.getpid(), signal.SIGTERM)
            return


class _Sections(list):  # type: ignore[type-arg]
    """A wire message's sections whose text form is short: nx-27017 0.8.1 formats every insert's sections into a
    debug message (an f-string, built even when DEBUG is off), which for a 10 KB update blob took 0.18 ms, a
    quarter of the server's CPU per insert (bench/bench_scale.py --profile)."""

    def __repr__(self) -> str:
        return f"<{len(self)} sections>"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)


def quiet_insert_sections() -> None:
    """Hand nx-27017's insert handler the sections as `_Sections`: the same list, a short text form."""
    from nx_27017.handler import NeoSQLiteHandler

    handle_insert = NeoSQLiteHandler.handle_insert
    if getattr(handle_insert, "_fk_quiet", False):
        return

    def quiet(self: Any, msg: dict[str, Any]) -> Any:
        if isinstance(msg, dict) and isinstance(msg.get("sections"), list):
            msg["sections"] = _Sections(msg["sections"])
        return handle_insert(self, msg)

    quiet._fk_quiet = True  # type: ignore[attr-defined]
    NeoSQLiteHandler.handle_insert = quiet  # type: ignore[method-assign]


def profile_connections(out_dir: Path) -> None:
    """Profile every connection thread (cProfile, one file per thread in ``out_dir``) for bench/bench_scale.py:
    written when the connection closes, or at exit for those still open. Off unless ``FK_PROFILE_DIR`` is set."""
    import cProfile

    import nx_27017.server as nx_server

    import itertools

    out_dir.mkdir(parents=True, exist_ok=True)
    running: dict[int, cProfile.Profile] = {}
    serve = nx_server.handle_client_threaded
    numbers = itertools.count()  # thread idents are reused: a file per connection, never overwritten

    def dump(ident: int, prof: cProfile.Profile) -> None:  # whole files only: written aside, then renamed
        path = out_dir / f"store-{os.getpid()}-{ident}-{next(numbers)}.prof"
        prof.dump_stats(str(path.with_suffix(".tmp")))
        os.replace(path.with_suffix(".tmp"), path)

    def profiled(*args: object, **kwargs: object) -> None:
        prof = cProfile.Profile()
        running[threading.get_ident()] = prof
        prof.enable()
        try:
            serve(*args, **kwargs)
        finally:
            prof.disable()
            if running.pop(threading.get_ident(), None) is prof:
                dump(threading.get_ident(), prof)

    def at_exit() -> None:  # nx-27017 answers SIGTERM with sys.exit: the connections still open end here
        for ident, prof in list(running.items()):
            running.pop(ident, None)
            dump(ident, prof)

    nx_server.handle_client_threaded = profiled
    atexit.register(at_exit)


def main() -> None:
    level = getattr(logging, os.environ.get("FK_NX_LOG_LEVEL", "WARNING").upper(), logging.WARNING)
    for name in ("nx_27017", "neosqlite"):
        logging.getLogger(name).setLevel(level)
    lease_dir = os.environ.get("FK_NX_LEASE_DIR")
    if lease_dir:
        grace = float(os.environ.get("FK_NX_LEASE_GRACE_S", "5"))
        threading.Thread(target=watch_leases, args=(Path(lease_dir), grace), daemon=True, name="fk-leases").start()
    quiet_insert_sections()
    if os.environ.get("FK_NX_FAST", "1") != "0":
        from fedkeeper.store import nxfast

        nxfast.apply_all()
    if os.environ.get("FK_NX_CHECKPOINT", "1") != "0":
        from fedkeeper.store import checkpoint

        checkpoint.watch()
    if os.environ.get("FK_PROFILE_DIR"):
        profile_connections(Path(os.environ["FK_PROFILE_DIR"]))
    from nx_27017.nx_27017 import main as nx_main

    sys.argv[0] = "nx-27017"
    sys.exit(nx_main())


if __name__ == "__main__":
    main()

"""Process entry of the embedded nx-27017 server (``python -m fedkeeper.store.nxserve <nx-27017 options>``), and the
lease bookkeeping it shares with ``embedded.py``.

Why a module of its own: the server process should import nx-27017 and little else (importing the repository
would pull in the pymongo client, numpy and tenacity and add about half a second to every start), and
``python -m nx_27017`` does not exist in nx-27017 0.8.1.

It runs nx-27017's own ``main`` with two additions:

- its loggers at WARNING (``FK_NX_LOG_LEVEL`` overrides): at INFO it logs every command;
- a watchdog thread (when ``FK_NX_LEASE_DIR`` is set): each fedkeeper process that uses the server holds a
  lease file there (pid + process start time); when no live process has held one for ``FK_NX_LEASE_GRACE_S``
  seconds, the server stops itself, so even a user killed with SIGKILL leaves no server behind.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

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


def main() -> None:
    level = getattr(logging, os.environ.get("FK_NX_LOG_LEVEL", "WARNING").upper(), logging.WARNING)
    for name in ("nx_27017", "neosqlite"):
        logging.getLogger(name).setLevel(level)
    lease_dir = os.environ.get("FK_NX_LEASE_DIR")
    if lease_dir:
        grace = float(os.environ.get("FK_NX_LEASE_GRACE_S", "5"))
        threading.Thread(target=watch_leases, args=(Path(lease_dir), grace), daemon=True, name="fk-leases").start()
    from nx_27017.nx_27017 import main as nx_main

    sys.argv[0] = "nx-27017"
    sys.exit(nx_main())


if __name__ == "__main__":
    main()

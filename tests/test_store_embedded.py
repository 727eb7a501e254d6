"""The embedded nx-27017 server behind `mongo_config.url: embedded`: start, share, persist, stop, leave nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from fedkeeper.store import EmbeddedServer, EmbeddedServerError, open_store

from store_support import settings

pytestmark = pytest.mark.integration


def gone(pid: int, within_s: float = 10.0) -> bool:
    """True once pid no longer runs (zombies count as gone: their parent reaps them)."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def server_pid(workdir: Path) -> int:
    return json.loads((workdir / ".fedkeeper" / "store.json").read_text())["pid"]


def test_start_use_stop_and_data_survives_the_next_command(tmp_path: Path) -> None:
    with open_store(settings(), workdir=tmp_path) as store:
        assert store.url.startswith("mongodb://127.0.0.1:") and store.display_url == store.url
        assert store.embedded is not None and not store.embedded.reused and store.embedded.startup_s > 0
        pid = server_pid(tmp_path)
        assert psutil.Process(pid).is_running()
        store.create_run({"_id": "r1", "experiment": "e"})
        store.blobs.write_model("r1", 0, {"w": np.arange(4, dtype=np.float32)}, {"accuracy": 0.25})
    assert gone(pid, within_s=0)  # stopped and reaped on exit, not later
    assert (tmp_path / ".fedkeeper" / "store" / "fedkeeper.db").exists()
    assert not (tmp_path / ".fedkeeper" / "store.json").exists()
    assert list((tmp_path / ".fedkeeper" / "leases").iterdir()) == []

    with open_store(settings(), workdir=tmp_path) as store:  # "fedkeeper status" after the run
        assert server_pid(tmp_path) != pid
        assert store.get_run("r1")["experiment"] == "e"
        weights, doc = store.blobs.read_model("r1", 0)
        np.testing.assert_array_equal(weights["w"], np.arange(4, dtype=np.float32))
        assert doc["metrics"]["accuracy"] == 0.25


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_interrupt_or_error_inside_stops_the_server(tmp_path: Path, error: type[BaseException]) -> None:
    with pytest.raises(error):
        with open_store(settings(), workdir=tmp_path):
            pid = server_pid(tmp_path)
            raise error()
    assert gone(pid, within_s=0)


def test_a_second_command_joins_and_the_last_one_out_stops(tmp_path: Path) -> None:
    with open_store(settings(), workdir=tmp_path) as first:
        pid = server_pid(tmp_path)
        first.create_run({"_id": "r1", "experiment": "e"})
        code = textwrap.dedent(f"""
            import sys, types
            sys.path.insert(0, {str(Path(__file__).parent)!r})
            from store_support import settings
            from fedkeeper.store import open_store
            with open_store(settings(), workdir={str(tmp_path)!r}) as s:
                assert s.embedded.reused, "expected to join the running server"
                assert s.get_run("r1") is not None
                s.create_run({{"_id": "r2", "experiment": "e"}})
                print(s.url)
        """)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == first.url
        assert psutil.Process(pid).is_running()  # the other command left; we still hold a lease
        with open_store(settings(), workdir=tmp_path) as inner:  # and a nested one in this process
            assert inner.embedded.reused and inner.url == first.url
        assert first.get_run("r2") is not None
    assert gone(pid, within_s=0)


def test_ctrl_c_in_the_terminal_stops_the_server(tmp_path: Path) -> None:
    """SIGINT to the command's process group (what a terminal sends) reaches only the command, which cleans up."""
    code = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from store_support import settings
        from fedkeeper.store import open_store
        with open_store(settings(), workdir={str(tmp_path)!r}) as s:
            print("ready", flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        pid = server_pid(tmp_path)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert "KeyboardInterrupt" in err
        assert gone(pid, within_s=5)
        assert not (tmp_path / ".fedkeeper" / "store.json").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_server_outlives_no_killed_user(tmp_path: Path) -> None:
    """A command killed with SIGKILL cannot clean up: the server notices its lease is dead and stops itself."""
    code = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from fedkeeper.store import EmbeddedServer
        with EmbeddedServer(Path({str(tmp_path)!r}), lease_grace_s=0.5):
            print("ready", flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        pid = server_pid(tmp_path)
        proc.kill()
        proc.wait()
        assert gone(pid, within_s=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with open_store(settings(), workdir=tmp_path) as store:  # the stale state file does not confuse the next one
        assert not store.embedded.reused


def test_start_failure_reports_the_log_tail(tmp_path: Path) -> None:
    (tmp_path / ".fedkeeper" / "store").mkdir(parents=True)
    (tmp_path / ".fedkeeper" / "store" / "admin.db").write_bytes(b"garbage!" * 1024)  # not an SQLite file
    server = EmbeddedServer(tmp_path, start_timeout_s=20)
    with pytest.raises(EmbeddedServerError) as info:
        server.open()
    text = str(info.value)
    assert "embedded nx-27017 on 127.0.0.1:" in text and "\n" not in text
    assert text.endswith("file is not a database")
    assert not (tmp_path / ".fedkeeper" / "store.json").exists()
    assert list((tmp_path / ".fedkeeper" / "leases").iterdir()) == []


@pytest.mark.parametrize("forgotten", [("store.json",), ("store.json", "nx.pid")])
def test_a_second_server_on_the_same_data_is_refused(tmp_path: Path, forgotten: tuple[str, ...]) -> None:
    """A server that serves the data but is not recorded (its state file, even its pid file, gone) is found by
    its process and refused, rather than a second server opening the same SQLite files."""
    first = EmbeddedServer(tmp_path).open()
    try:
        pid = server_pid(tmp_path)
        for name in forgotten:
            (tmp_path / ".fedkeeper" / name).unlink()
        with pytest.raises(EmbeddedServerError) as info:
            EmbeddedServer(tmp_path).open()
        assert f"an nx-27017 server (pid {pid}) serves {tmp_path.resolve() / '.fedkeeper' / 'store'}" in str(info.value)
        assert str(info.value).endswith("stop it first")
        servers = [p for p in psutil.process_iter(["cmdline"])
                   if "fedkeeper.store.nxserve" in (p.info["cmdline"] or [])
                   and str(tmp_path.resolve()) in " ".join(p.info["cmdline"] or [])]
        assert [p.pid for p in servers] == [pid]  # no second one was started
        assert psutil.Process(pid).is_running()
    finally:
        first.close()
    assert gone(pid, within_s=5)


def test_the_server_process_applies_every_fast_path(tmp_path: Path) -> None:
    """The server child imports the standard library, not fedkeeper's own modules of the same name: with the
    fedkeeper package's folder on its path, fedkeeper/secrets.py shadowed `secrets` and the insert fast path was
    skipped in every real run (its warning, in nx.out, is the only trace)."""
    from fedkeeper.store import nxfast
    from fedkeeper.store.embedded import NxServer

    import fedkeeper

    server = NxServer.in_dir(tmp_path)
    server.start(timeout_s=30.0)
    try:
        assert server.pid is not None
        path = psutil.Process(server.pid).environ().get("PYTHONPATH", "").split(os.pathsep)
        assert str(Path(fedkeeper.__file__).resolve().parent) not in path
    finally:
        server.stop()
    out = (tmp_path / "nx.out").read_text()
    checked = nxfast.installed_versions() == {"nx-27017": nxfast.NX_VERSION, "neosqlite": nxfast.NEOSQLITE_VERSION}
    assert "nx fast path" not in out if checked else "skipped" in out

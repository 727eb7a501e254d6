"""Tests send traffic to 127.0.0.1 only: the network guard (tests/netguard/sitecustomize.py) and a check with it.

The guard rides along in every Python process that inherits `PYTHONPATH`, so one setting covers a test, the
`fedkeeper` processes it starts and their workers. Two checks run in the suite: the guard refuses and records
other hosts in a child and a grandchild process while loopback traffic goes through, and vendoring wheels (the
one place that used to download from the package index) runs pip under it without a single attempt. The whole
suite can be run under the guard the same way:

    PYTHONPATH=tests/netguard FK_NETGUARD=/tmp/net.log .venv-test/bin/python -m pytest -q -p no:cacheprovider
    test ! -s /tmp/net.log
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fedkeeper import packaging
from fedkeeper.packaging import PackagingOptions
from test_packaging import wheelhouse  # noqa: F401  (the local wheelhouse fixture)

GUARD_DIR = Path(__file__).resolve().parent / "netguard"


def guarded_env(log: Path) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(GUARD_DIR), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "FK_NETGUARD": str(log)}


def attempts(log: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_the_guard_refuses_other_hosts_in_children_and_lets_loopback_through(tmp_path: Path) -> None:
    log = tmp_path / "net.log"
    child = textwrap.dedent("""
        import socket, subprocess, sys
        assert socket._fk_netguard
        refused = []
        for target in [("192.0.2.1", 443), ("pypi.org", 443)]:
            try:
                socket.create_connection(target, timeout=2).close()
            except ConnectionRefusedError as exc:
                refused.append("network guard" in str(exc))
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            udp.sendto(b"q", ("8.8.8.8", 53))  # a resolver query that bypasses getaddrinfo
        except ConnectionRefusedError:
            refused.append(True)
        finally:
            udp.close()
        with socket.create_server(("127.0.0.1", 0)) as server:
            socket.create_connection(server.getsockname(), timeout=2).close()  # loopback goes through
            socket.create_connection(("localhost", server.getsockname()[1]), timeout=2).close()
        grandchild = "import socket; socket.create_connection(('10.0.0.7', 31001), timeout=2)"
        rc = subprocess.run([sys.executable, "-c", grandchild], capture_output=True).returncode
        print(refused, rc)
    """)
    out = subprocess.run([sys.executable, "-c", child], env=guarded_env(log), capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["[True,", "True,", "True]", "1"]
    targets = [(a["what"], a["target"]) for a in attempts(log)]
    assert targets == [("connect", "('192.0.2.1', 443)"), ("getaddrinfo", "'pypi.org'"),
                       ("sendto", "('8.8.8.8', 53)"), ("connect", "('10.0.0.7', 31001)")]


def test_vendoring_wheels_runs_pip_without_any_network_attempt(tmp_path: Path, wheelhouse: Path,  # noqa: F811
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "net.log"
    for key, value in guarded_env(log).items():
        if key in ("PYTHONPATH", "FK_NETGUARD"):
            monkeypatch.setenv(key, value)  # pip, started by packaging, inherits the guard
    packaging.clear_cache()
    try:
        art = packaging.build("nodeinfo", "aws", PackagingOptions(vendor_wheels=True, wheel_cache_dir=tmp_path / "w"))
    finally:
        packaging.clear_cache()
    assert "numpy/__init__.py" in art.files and "dns/__init__.py" in art.files
    assert attempts(log) == []
    # the guard was in pip's process: a child started the same way carries it
    probe = subprocess.run([sys.executable, "-c", "import socket; print(socket._fk_netguard)"],
                           capture_output=True, text=True, timeout=60)
    assert probe.stdout.strip() == "True", probe.stderr

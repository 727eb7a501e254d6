"""Network guard for test runs: every Python process that imports it may talk to 127.0.0.1 only.

Python imports `sitecustomize` at start-up from any folder on `PYTHONPATH`, so with this folder there every
process a test starts (the `fedkeeper` CLI, local workers, pip, the embedded store, the fakes' runtimes) carries
the guard, as long as it inherits the environment. With `FK_NETGUARD=<file>` set the guard is installed: a name
lookup of anything but a loopback name or an IP literal, and a connect/sendto to an address outside 127.0.0.0/8
and ::1, raises `NetworkGuardError` (an OSError, so code under test reports it like a network failure) and appends
one JSON line (pid, target, argv, current test) to <file>. Unix sockets are not affected.

Check the whole suite (docs in tests/test_no_network.py):

    PYTHONPATH=tests/netguard FK_NETGUARD=/tmp/net.log .venv-test/bin/python -m pytest -q -p no:cacheprovider
    test ! -s /tmp/net.log   # no attempt anywhere

Limits: a process started with an environment built from scratch drops the guard; C extensions that open their
own sockets (gRPC's core, for example) are not seen.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import sys
from typing import Any

ENV_VAR = "FK_NETGUARD"
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


class NetworkGuardError(ConnectionRefusedError):
    """A test process tried to reach a host other than this machine's loopback."""


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


def lookup_allowed(host: Any) -> bool:
    """Name lookups that stay on this machine: none, loopback names and IP literals (no resolver involved)."""
    if host is None:
        return True
    text = host.decode() if isinstance(host, bytes) else str(host)
    return text in ("", "<broadcast>") or text.lower() in LOOPBACK_NAMES or _is_ip(text)


def address_allowed(family: int, address: Any) -> bool:
    """Connect/send targets on loopback (and every non-IP socket family, such as Unix sockets)."""
    if family not in (socket.AF_INET, socket.AF_INET6) or not isinstance(address, tuple):
        return True
    host = address[0].decode() if isinstance(address[0], bytes) else str(address[0])
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False  # a name here would be resolved by the socket call itself


def _refuse(log_path: str, what: str, target: Any) -> NetworkGuardError:
    record = {"pid": os.getpid(), "what": what, "target": repr(target), "argv": sys.argv[:6],
              "test": os.environ.get("PYTEST_CURRENT_TEST", "")}
    try:
        with open(log_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
    except OSError:
        pass
    return NetworkGuardError(f"network guard: a test process tried to reach {target!r} ({what}); "
                             "only 127.0.0.1 is allowed")


def install(log_path: str) -> None:
    """Patch the socket module of this process; idempotent."""
    if getattr(socket, "_fk_netguard", None):
        return
    real_getaddrinfo = socket.getaddrinfo
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_sendto = socket.socket.sendto

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if not lookup_allowed(host):
            raise _refuse(log_path, "getaddrinfo", host)
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(self: socket.socket, address: Any) -> None:
        if not address_allowed(self.family, address):
            raise _refuse(log_path, "connect", address)
        return real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        if not address_allowed(self.family, address):
            raise _refuse(log_path, "connect_ex", address)
        return real_connect_ex(self, address)

    def sendto(self: socket.socket, data: Any, *args: Any) -> int:
        address = args[-1]
        if not address_allowed(self.family, address):
            raise _refuse(log_path, "sendto", address)
        return real_sendto(self, data, *args)

    socket.getaddrinfo = getaddrinfo
    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]
    socket.socket.sendto = sendto  # type: ignore[method-assign]
    socket._fk_netguard = True  # type: ignore[attr-defined]


if os.environ.get(ENV_VAR):
    install(os.environ[ENV_VAR])

"""Running the real `fedkeeper` console entry in a subprocess, on a pipe or on a terminal (a pty), and the
tiny configs the CLI tests share (one that runs, one invalid, one with an unreachable platform, one with an
unreachable store). Everything talks to 127.0.0.1 only; a closed port is a port we bound and released.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import socket
import struct
import subprocess
import sys
import termios
import time
from dataclasses import dataclass
from pathlib import Path

#: secrets the configs read from the environment; they must never appear in any output
OW_AUTH = "0a1b2c3d-uuid:k3y-s3cret-ow"
MONGO_PASSWORD = "m0ngo-s3cret-pw"
SECRETS = (OW_AUTH, "k3y-s3cret-ow", MONGO_PASSWORD)
#: what the terminal of the pty mode is
TERMINAL_COLUMNS, TERMINAL_ROWS = 120, 40
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[()][A-Z0-9]")
#: variables of the caller's environment that change how output looks; the tests set them explicitly
_LOOKS = ("NO_COLOR", "FORCE_COLOR", "COLUMNS", "LINES", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "CLICOLOR_FORCE")


@dataclass(frozen=True)
class Result:
    code: int
    stdout: str
    stderr: str
    seconds: float


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The caller's environment (with the network guard, if any) minus anything that changes the looks, plus
    the configs' secrets."""
    env = {k: v for k, v in os.environ.items() if k not in _LOOKS}
    env.update(OW_AUTH=OW_AUTH, MONGO_PASSWORD=MONGO_PASSWORD, TERM="xterm-256color")
    env.update(extra or {})
    return env


def fedkeeper(cwd: Path, *args: str, terminal: bool = False, env: dict[str, str] | None = None,
              timeout: float = 120) -> Result:
    """`fedkeeper ARGS` in `cwd`: stdout and stderr on pipes, or each on its own pty (a real terminal)."""
    argv = [sys.executable, "-m", "fedkeeper.cli", *args]
    full_env = cli_env(env)
    t0 = time.monotonic()
    if not terminal:
        proc = subprocess.run(argv, cwd=cwd, env=full_env, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=timeout)
        return Result(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - t0)
    code, out, err = _run_on_ptys(argv, cwd, full_env, timeout)
    return Result(code, out, err, time.monotonic() - t0)


def _run_on_ptys(argv: list[str], cwd: Path, env: dict[str, str], timeout: float) -> tuple[int, str, str]:
    """stdout and stderr each on a pty of TERMINAL_COLUMNS × TERMINAL_ROWS; output with \\r\\n turned to \\n.

    Read until the command exits and then whatever is left: a process it started and left running (a server
    that outlives it for a grace period) may hold the pty open, so its end of file is not waited for."""
    masters, slaves = [], []
    for _ in range(2):
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", TERMINAL_ROWS, TERMINAL_COLUMNS, 0, 0))
        masters.append(master)
        slaves.append(slave)
    try:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=slaves[0],
                                stderr=slaves[1], close_fds=True)
    finally:
        for slave in slaves:
            os.close(slave)
    data = {fd: bytearray() for fd in masters}
    open_fds = list(masters)
    deadline = time.monotonic() + timeout
    try:
        while open_fds:
            exited = proc.poll() is not None
            ready, _, _ = select.select(open_fds, [], [], 0 if exited else 0.05)
            for fd in ready:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:  # EIO: every writer closed its end
                    chunk = b""
                if chunk:
                    data[fd] += chunk
                else:
                    open_fds.remove(fd)
            if exited and not ready:
                break
            if time.monotonic() > deadline:
                proc.kill()
                raise subprocess.TimeoutExpired(argv, timeout)
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for fd in masters:
            os.close(fd)

    def text(fd: int) -> str:
        return data[fd].decode("utf-8", "replace").replace("\r\n", "\n")

    return code, text(masters[0]), text(masters[1])


# ---------------------------------------------------------------------------------------------- configs

_TINY = """\
experiment: {experiment}
providers:
  local:
    laptop: {{concurrency: 2}}
    agg: {{concurrency: 1}}
{extra_providers}mongo_config: {mongo}
functions:
  fl_client: {{local: {{memory: 512, timeout: 30}}, openwhisk: {{memory: 256, timeout: 30000}}}}
  fl_server_aggregator: {{local: {{memory: 1024, timeout: 60}}}}
scenarios:
  federated_learning:
    rounds: 2
    seed: 42
    clients_info: {{total_num_clients: 4, num_clients_per_round: 2, placement: {placement}}}
    server: {{cluster: agg}}
    data_sampling: {{model: logreg, input_size: 64, output_size: 10, partition: iid}}
    model_params: {{optim: sgd, lr: 0.05, batch_size: 16, local_epochs: 1}}
    training_test_data: {{dataset: digits}}
    resilience: {{backoff_base_s: 0.01, backoff_max_s: 0.05}}
"""


def tiny_config(experiment: str = "tiny", *, openwhisk_port: int | None = None,
                mongo_port: int | None = None) -> str:
    """A logreg on digits, 4 clients, 2 per round, 2 rounds on two local clusters and the embedded store.

    `openwhisk_port`: the clients go to an OpenWhisk cluster `ow-down` at that (closed) port instead.
    `mongo_port`: the store is a MongoDB at that (closed) port, with a password and short timeouts."""
    extra = ""
    placement = "{laptop: 4}"
    if openwhisk_port is not None:
        extra = (f"  openwhisk:\n    ow-down: {{api_host: 'http://127.0.0.1:{openwhisk_port}', auth: '${{OW_AUTH}}', "
                 f"request_timeout_s: 1}}\n")
        placement = "{ow-down: 4}"
    mongo = "{url: embedded, db: fedkeeper}"
    if mongo_port is not None:
        mongo = (f"{{url: 'mongodb://fk:${{MONGO_PASSWORD}}@127.0.0.1:{mongo_port}', db: fedkeeper, "
                 f"connect_timeout_ms: 300, server_selection_timeout_ms: 300}}")
    return _TINY.format(experiment=experiment, extra_providers=extra, mongo=mongo, placement=placement)


#: an invalid config: an unknown key and a placement that does not add up
BAD_CONFIG = """\
experiment: tiny
bogus_key: 1
providers: {local: {laptop: {}}}
scenarios:
  federated_learning:
    rounds: 2
    clients_info: {total_num_clients: 4, num_clients_per_round: 2, placement: {laptop: 3}}
"""

"""nodeinfo: the smoke-test function. Says where it ran: host, platform, Python, CPUs and the memory it may use.

Standard library only, so it deploys and cold-starts anywhere, even where numpy would not import. The memory
limit is the one the function actually gets: the cgroup limit (v2 ``memory.max``, else v1
``memory.limit_in_bytes``), then Lambda's configured size, and only then the machine's physical RAM.
"""

from __future__ import annotations

import os
import platform
import socket
import sys
import time
from pathlib import Path

_UNLIMITED = 1 << 60  # cgroup v1 reports "no limit" as a number near 2**63


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _cpu_model() -> str:
    info = _read("/proc/cpuinfo") or ""
    for line in info.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Hardware", "Processor", "cpu model") and value.strip():
            return value.strip()
    return platform.processor() or platform.machine() or "unknown"


def _cpu_count() -> int | None:
    """CPUs this process may run on (affinity), which is what a container or function really gets."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count()


def _cpu_quota() -> float | None:
    """CPUs granted by the cgroup v2 CPU quota (``cpu.max``: "<quota> <period>"), if one is set."""
    raw = _read("/sys/fs/cgroup/cpu.max")
    if raw:
        quota, _, period = raw.partition(" ")
        if quota != "max" and quota.isdigit() and period.isdigit() and int(period):
            return round(int(quota) / int(period), 3)
    return None


def memory_limit() -> tuple[float | None, str]:
    """(MB, source) of the memory limit."""
    local = os.environ.get("FK_MEMORY_LIMIT_MB")  # set by FedKeeper's local platform (enforced per worker)
    if os.environ.get("FK_PLATFORM") == "local" and local and local.isdigit():
        return float(local), "local platform"
    raw = _read("/sys/fs/cgroup/memory.max")
    if raw and raw != "max" and raw.isdigit():
        return int(raw) / 2**20, "cgroup v2"
    raw = _read("/sys/fs/cgroup/memory/memory.limit_in_bytes")
    if raw and raw.isdigit() and int(raw) < _UNLIMITED:
        return int(raw) / 2**20, "cgroup v1"
    lam = os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
    if lam and lam.isdigit():
        return float(lam), "lambda"
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20, "physical"
    except (ValueError, OSError, AttributeError):
        return None, "unknown"


def _environment() -> str:
    """Which platform runs us, from the variables each one sets in its functions."""
    if os.environ.get("__OW_ACTIVATION_ID") or os.environ.get("__OW_ACTION_NAME"):
        return "openwhisk"
    if os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):
        return "aws"
    if os.environ.get("K_SERVICE") or os.environ.get("FUNCTION_TARGET"):
        return "google"
    return "local"


def handle(params: dict) -> dict:
    mem_mb, mem_source = memory_limit()
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "cpu_count": _cpu_count(),
        "cpu_quota": _cpu_quota(),
        "cpu_model": _cpu_model(),
        "memory_limit_mb": round(mem_mb, 1) if mem_mb is not None else None,
        "memory_limit_source": mem_source,
        "environment": _environment(),
        "pid": os.getpid(),
        "time": time.time(),
    }

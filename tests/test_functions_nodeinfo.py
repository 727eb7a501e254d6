"""nodeinfo handler: reports the host it runs on, with no third-party imports."""

from __future__ import annotations

import ast
import json
import os
import sys
from pathlib import Path

from function_support import load_handler

HANDLER = Path(__file__).resolve().parents[1] / "functions" / "nodeinfo" / "handler.py"


def _load():
    return load_handler("nodeinfo", "fk_test_nodeinfo_handler")


nodeinfo = _load()


def test_nodeinfo_reports_this_host():
    info = nodeinfo.handle({})
    assert {"hostname", "platform", "python", "cpu_count", "cpu_model", "memory_limit_mb", "pid", "time"} <= set(info)
    assert info["python"] == sys.version.split()[0]
    assert info["pid"] == os.getpid()
    assert 1 <= info["cpu_count"] <= (os.cpu_count() or 1)
    assert info["cpu_model"] and isinstance(info["cpu_model"], str)
    assert info["memory_limit_mb"] > 16
    assert info["memory_limit_source"] in ("cgroup v2", "cgroup v1", "lambda", "physical")
    json.dumps(info)  # every platform must be able to return it


def test_memory_limit_prefers_cgroup_then_lambda_then_physical(monkeypatch):
    files = {"/sys/fs/cgroup/memory.max": "max", "/sys/fs/cgroup/memory/memory.limit_in_bytes": str(2**63 - 4096)}
    monkeypatch.setattr(nodeinfo, "_read", lambda path: files.get(path))
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512")
    assert nodeinfo.memory_limit() == (512.0, "lambda")
    files["/sys/fs/cgroup/memory/memory.limit_in_bytes"] = str(256 * 2**20)
    assert nodeinfo.memory_limit() == (256.0, "cgroup v1")
    files["/sys/fs/cgroup/memory.max"] = str(128 * 2**20)
    assert nodeinfo.memory_limit() == (128.0, "cgroup v2")
    files.clear()
    monkeypatch.delenv("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
    mb, source = nodeinfo.memory_limit()
    assert source == "physical" and mb > 16


def test_environment_is_recognised_from_platform_variables(monkeypatch):
    for var in ("__OW_ACTIVATION_ID", "__OW_ACTION_NAME", "AWS_LAMBDA_FUNCTION_NAME", "K_SERVICE", "FUNCTION_TARGET"):
        monkeypatch.delenv(var, raising=False)
    assert nodeinfo.handle({})["environment"] == "local"
    monkeypatch.setenv("K_SERVICE", "fk-x-nodeinfo")
    assert nodeinfo.handle({})["environment"] == "google"
    monkeypatch.setenv("__OW_ACTIVATION_ID", "abc")
    assert nodeinfo.handle({})["environment"] == "openwhisk"


def test_nodeinfo_imports_only_the_standard_library():
    tree = ast.parse(HANDLER.read_text())
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module.split(".")[0])
    assert modules <= set(sys.stdlib_module_names) | {"__future__"}

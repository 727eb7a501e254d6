"""`scenarios.federated_learning.task` at validate time: the folder exists, the module imports and gives a task,
its params are accepted, and there are enough training samples for the clients.

The task is loaded in a child process (`fedkeeper.runtime.tasks.check`) with the code the functions run, so the
orchestrator never imports a framework; each issue names the key to blame (`task.module`, `task.params`,
`task.path`), which `fedkeeper validate` reports with exit 2.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from fedkeeper.config.base import expand_path
from fedkeeper.config.errors import ConfigIssue
from fedkeeper.config.models import FederatedLearning

BASE = "scenarios.federated_learning"
CHECK_TIMEOUT_S = 120.0
_CACHE: dict[str, dict[str, Any]] = {}


def resolve_client_files(fl: FederatedLearning, base_dir: Path) -> list[ConfigIssue]:
    """A relative `data_sampling.client_files` is read from the config file's folder, like the data files."""
    template = fl.data_sampling.client_files
    if not template or "://" in template:
        return []
    absolute = expand_path(base_dir, template)
    fl.data_sampling.client_files = str(absolute)
    first = Path(str(absolute).replace("{client}", "0").split("#", 1)[0])
    if fl.data_sampling.partition == "files" and not first.is_file():
        return [ConfigIssue(f"{BASE}.data_sampling.client_files", f"no file for client 0: {first}")]
    return []


def check_task(fl: FederatedLearning, base_dir: Path, data: dict[str, Any]) -> list[ConfigIssue]:
    task = fl.task
    if task is None:
        return []
    if task.path is not None:
        folder = expand_path(base_dir, task.path)
        if not folder.is_dir():
            return [ConfigIssue(f"{BASE}.task.path", f"no such folder: {folder}")]
        task.path = str(folder.resolve())
    request = {"task": task.as_params(), "data": data, "num_clients": fl.clients_info.total_num_clients}
    key = json.dumps(request, sort_keys=True, default=str)
    answer = _CACHE.get(key)
    if answer is None:
        answer = _run_check(request)
        if answer.get("ok") or answer.get("key") != "process":
            _CACHE[key] = answer
    if not answer.get("ok"):
        where = {"params": "task.params", "data": "training_test_data", "process": "task.module"}.get(
            str(answer.get("key")), "task.module")
        return [ConfigIssue(f"{BASE}.{where}", str(answer.get("message")))]
    n, k = answer.get("train_size"), fl.clients_info.total_num_clients
    if isinstance(n, int) and k > n:
        return [ConfigIssue(f"{BASE}.clients_info.total_num_clients",
                            f"{k} clients, but the task's training split has {n} samples (at most {n})")]
    return []


def _run_check(request: dict[str, Any]) -> dict[str, Any]:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    try:
        done = subprocess.run([sys.executable, "-m", "fedkeeper.runtime.tasks.check"], input=json.dumps(request),
                              capture_output=True, text=True, timeout=CHECK_TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired:
        return {"ok": False, "key": "process", "message": f"loading the task took more than {CHECK_TIMEOUT_S:g} s"}
    lines = done.stdout.strip().splitlines()
    if lines:
        try:
            answer = json.loads(lines[-1])
            if isinstance(answer, dict):
                return answer
        except ValueError:
            pass
    tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return {"ok": False, "key": "process", "message": f"loading the task failed (exit {done.returncode}): {tail}"}

"""`python -m fedkeeper.runtime.tasks.check`: load a task as the functions would and report on it, as JSON.

`fedkeeper validate` (every config load) runs this in a child process, so that the orchestrator never imports a
framework (nor runs a task module's import-time code). Input on stdin: ``{"task": {module, params, path},
"data": {...} | null, "num_clients": int}``; output on stdout: ``{"ok": true, "name", "weights": {name: [shape,
dtype]}, "num_params", "train_size"?}`` or ``{"ok": false, "key": "module" | "params" | "data", "message"}``.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import sys
from typing import Any, Mapping

from fedkeeper.runtime.tasks import TaskError, load_task

_WHERE = "task"


def report(request: Mapping[str, Any]) -> dict[str, Any]:
    try:
        task = load_task(request.get("task"), _WHERE)
    except TaskError as exc:
        text = str(exc)
        match = re.match(rf"{_WHERE}\.(\w+): ", text)
        key = match.group(1) if match else "module"
        return {"ok": False, "key": key, "message": text[match.end():] if match else text}
    try:
        spec = task.weights_spec()
    except Exception as exc:  # noqa: BLE001 - the task's own failure, reported at its key
        return {"ok": False, "key": "module", "message": f"building the model failed: {type(exc).__name__}: {exc}"}
    out: dict[str, Any] = {"ok": True, "name": getattr(task, "name", type(task).__name__),
                           "weights": {k: [list(shape), str(dtype)] for k, (shape, dtype) in spec.items()},
                           "num_params": int(sum(math.prod(shape) for shape, _ in spec.values()))}
    data = request.get("data")
    if isinstance(data, Mapping) and data.get("partition") != "files" and not any(
            isinstance(v, str) and re.match(r"(?i)https?://", v) for v in data.values()):
        try:
            out["train_size"] = int(len(task.train_labels(data)))
        except Exception as exc:  # noqa: BLE001
            return {"ok": False, "key": "data", "message": f"{type(exc).__name__}: {exc}"}
    return out


def main() -> int:
    try:
        request = json.loads(sys.stdin.read())
    except ValueError as exc:
        print(json.dumps({"ok": False, "key": "module", "message": f"bad request: {exc}"}))
        return 0
    out = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):  # a task module's own prints must not garble the answer
        answer = report(request)
    out.write(json.dumps(answer) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

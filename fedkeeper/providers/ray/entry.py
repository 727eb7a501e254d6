"""Ray entry point, packaged as `fk_ray_entry.py`: the function instance actor (providers/ray/instance.py)
loads it from the unpacked zip and calls `invoke(params)` once per activation.

The answer is a dict: `{"ok": True, "result": {...}}`, or `{"ok": False, "error": "<Type>: message"}` when the
handler raised or cannot be loaded (masked: every `FK_*` setting value is replaced by ***, in the error and in
the traceback printed to the instance's log), plus `duration_ms`, the handler's own run time.
This file runs inside the function: standard library and the function folder only.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from typing import Any

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path[:1]:
    sys.path.insert(0, _HERE)

from fedkeeper.runtime.entry_support import describe, load_handler, mask_settings  # noqa: E402 - after sys.path

function_handler, _LOAD_ERROR = load_handler(
    "the Ray workers' Python needs numpy and pymongo installed (or a runtime_env that installs them)")


def invoke(params: Any) -> dict[str, Any]:
    started = time.perf_counter()

    def answer(body: dict[str, Any]) -> dict[str, Any]:
        body["duration_ms"] = round((time.perf_counter() - started) * 1000, 1)
        return body

    if function_handler is None:
        return answer({"ok": False, "error": mask_settings(_LOAD_ERROR)})
    if not isinstance(params, dict):
        return answer({"ok": False, "error": f"the params must be a dict, not {type(params).__name__}"})
    try:
        result = function_handler.handle(params)
        if not isinstance(result, dict):
            raise TypeError(f"the handler returned {type(result).__name__}, not a dict")
        return answer({"ok": True, "result": result})
    except Exception as exc:
        print(mask_settings(traceback.format_exc()), file=sys.stderr, flush=True)
        return answer({"ok": False, "error": mask_settings(describe(exc))})

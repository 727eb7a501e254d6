"""Google Cloud Functions (2nd gen) entry point, packaged as `main.py` (entry point `entry`, functions-framework).

Adapts an HTTP request to the function's `handle(params) -> dict`:

- the request's JSON body is `params` (an empty or non-JSON body gives `{}`; a JSON value that is not an
  object is refused with HTTP 400);
- the result goes back as HTTP 200 JSON; when the handler raises, the answer is HTTP 500 with the JSON body
  `{"error": "<Type>: <message>"}`. The orchestrator reads exactly that shape as "the function failed" (FAILED,
  counted against the client) and any other 500 as platform trouble (retried), so the two never mix;
- settings that may be secret (`FK_MONGO_URL`, `FK_MONGO_DB`) are the function's environment variables, set at
  deploy time; every `FK_*` value is masked in error messages and in the traceback written to the log;
- the header `X-FedKeeper-Cold: 1` marks the first call an instance serves, `X-FedKeeper-Duration-Ms` the
  handler's own run time, so reports can separate cold starts and platform overhead.

This file runs inside the function: standard library and the function folder only (functions-framework
provides the request object; nothing here imports flask).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback
from typing import Any

# The function folder first on sys.path: the zip's own `fedkeeper/runtime` must win over anything installed.
_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path[:1]:
    sys.path.insert(0, _HERE)

# what every entry file shares, packaged with the rest of the runtime
from fedkeeper.runtime.entry_support import describe, load_handler, mask_settings  # noqa: E402 - after sys.path

function_handler, _LOAD_ERROR = load_handler()

JSON_HEADERS = {"Content-Type": "application/json"}
_cold = True
_cold_lock = threading.Lock()


def _first_call() -> bool:
    global _cold
    with _cold_lock:
        cold, _cold = _cold, False
    return cold


def _answer(body: dict[str, Any], status: int, cold: bool, started: float) -> tuple[str, int, dict[str, str]]:
    headers = dict(JSON_HEADERS)
    headers["X-FedKeeper-Cold"] = "1" if cold else "0"
    headers["X-FedKeeper-Duration-Ms"] = f"{(time.perf_counter() - started) * 1000:.1f}"
    return json.dumps(body, separators=(",", ":"), allow_nan=False), status, headers


def entry(request: Any) -> tuple[str, int, dict[str, str]]:
    """functions-framework HTTP function: JSON in, JSON out."""
    cold = _first_call()
    started = time.perf_counter()
    if function_handler is None:
        return _answer({"error": mask_settings(_LOAD_ERROR)}, 500, cold, started)
    params = request.get_json(silent=True)
    if params is None:
        params = {}
    if not isinstance(params, dict):
        return _answer({"error": f"the request body must be a JSON object, not {type(params).__name__}"},
                       400, cold, started)
    try:
        result = function_handler.handle(params)
        if not isinstance(result, dict):
            raise TypeError(f"the handler returned {type(result).__name__}, not a dict")
        return _answer(result, 200, cold, started)
    except Exception as exc:
        print(mask_settings(traceback.format_exc()), file=sys.stderr, flush=True)
        return _answer({"error": mask_settings(describe(exc))}, 500, cold, started)

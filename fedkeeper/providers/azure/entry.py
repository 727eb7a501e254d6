"""Azure Functions entry point, packaged as `function_app.py` (the Python v2 programming model): one HTTP-triggered
function `entry` on the route `fk`, authorisation level FUNCTION (callers send a function key in
`x-functions-key`).

Adapts an HTTP request to the function's `handle(params) -> dict`:

- the request's JSON body is `params` (empty or not JSON: `{}`; a JSON value that is not an object: HTTP 400);
- the result goes back as HTTP 200 JSON; when the handler raises, HTTP 500 with the JSON body
  `{"error": "<Type>: <message>"}` — the shape the orchestrator reads as "the function failed"; any other 500
  (the host's own, e.g. a function timeout) is platform trouble;
- settings that may be secret (`FK_MONGO_URL`, ...) are app settings (environment variables); every `FK_*`
  value is masked in error messages and in the traceback logged (the `fk.function` logger, which the Functions
  host collects);
- headers: `X-FedKeeper-Cold: 1` on the first call a worker serves, `X-FedKeeper-Duration-Ms` the handler's own
  time, `X-FedKeeper-Invocation-Id` the host's invocation id (the activation id).

This file runs inside the function: the standard library, `azure.functions` (the Python worker provides it)
and the function folder only.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
import traceback
from typing import Any

import azure.functions as func

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path[:1]:
    sys.path.insert(0, _HERE)

from fedkeeper.runtime.entry_support import describe, load_handler, mask_settings  # noqa: E402 - after sys.path

function_handler, _LOAD_ERROR = load_handler(
    "list numpy and pymongo in requirements.txt and deploy with SCM_DO_BUILD_DURING_DEPLOYMENT=true")

log = logging.getLogger("fk.function")
app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)

_cold = True
_cold_lock = threading.Lock()


def _first_call() -> bool:
    global _cold
    with _cold_lock:
        cold, _cold = _cold, False
    return cold


def _answer(body: dict[str, Any], status: int, cold: bool, started: float, invocation_id: str) -> func.HttpResponse:
    headers = {"X-FedKeeper-Cold": "1" if cold else "0",
               "X-FedKeeper-Duration-Ms": f"{(time.perf_counter() - started) * 1000:.1f}"}
    if invocation_id:
        headers["X-FedKeeper-Invocation-Id"] = invocation_id
    return func.HttpResponse(json.dumps(body, separators=(",", ":"), allow_nan=False), status_code=status,
                             headers=headers, mimetype="application/json")


@app.route(route="fk", methods=["POST"])
def entry(req: func.HttpRequest, context: func.Context) -> func.HttpResponse:
    """JSON in, JSON out."""
    cold = _first_call()
    started = time.perf_counter()
    invocation_id = str(getattr(context, "invocation_id", "") or "")
    if function_handler is None:
        return _answer({"error": mask_settings(_LOAD_ERROR)}, 500, cold, started, invocation_id)
    try:
        params = json.loads(req.get_body() or b"{}")
    except ValueError:
        params = {}
    if not isinstance(params, dict):
        return _answer({"error": f"the request body must be a JSON object, not {type(params).__name__}"},
                       400, cold, started, invocation_id)
    try:
        result = function_handler.handle(params)
        if not isinstance(result, dict):
            raise TypeError(f"the handler returned {type(result).__name__}, not a dict")
        return _answer(result, 200, cold, started, invocation_id)
    except Exception as exc:
        log.error("%s", mask_settings(traceback.format_exc()))
        return _answer({"error": mask_settings(describe(exc))}, 500, cold, started, invocation_id)

"""AWS Lambda entry point, packaged as `lambda_function.py` (Handler = `lambda_function.handler`).

- Adapts Lambda's `handler(event, context)` to the function's `handle(params) -> dict`; the event is the JSON
  payload the orchestrator sent.
- Settings that may be secret (`FK_MONGO_URL`, `FK_MONGO_DB`) are the function's environment variables, set at
  deploy time. Lambda's request id and deadline are copied to `FK_PLATFORM_ACTIVATION_ID` / `FK_DEADLINE_MS`
  for platform-neutral code (as the OpenWhisk entry does); the handler's params are left as sent.
- Errors propagate, so Lambda reports `FunctionError: Unhandled` with the exception's type and message (the
  provider turns that into a failed activation). A message that would reveal an `FK_*` value (a MongoDB URL
  with its password, say) is re-raised with the value masked, since Lambda returns the message to the caller
  and writes it to CloudWatch. A handler that cannot be imported (numpy missing: no vendored wheels and no
  layer) fails every call with a hint instead of an opaque `Runtime.ImportModuleError`.

This file runs inside the function: standard library and the function folder only.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

# The function folder first on sys.path: the zip's own `fedkeeper/runtime` must win over anything installed.
_HERE = os.path.dirname(os.path.abspath(__file__))
if not sys.path or os.path.abspath(sys.path[0] or os.getcwd()) != _HERE:
    sys.path.insert(0, _HERE)

# what every entry file shares, packaged with the rest of the runtime
from fedkeeper.runtime.entry_support import load_handler, mask_settings  # noqa: E402 - after sys.path

function_handler, _LOAD_ERROR = load_handler(
    "Lambda's python runtime has no numpy/pymongo: set vendor_wheels: true on the cluster, "
    "or list a layer that provides them for the function's architecture")


class HandlerError(Exception):
    """The handler's exception with secret values masked; the message starts with the original type."""


def _params(event: Any) -> dict[str, Any]:
    if isinstance(event, (bytes, bytearray)):
        event = event.decode("utf-8")
    if isinstance(event, str):
        event = json.loads(event) if event.strip() else {}
    if event is None:
        return {}
    if not isinstance(event, dict):
        raise TypeError(f"the event must be a JSON object, not {type(event).__name__}")
    return dict(event)


def _note_context(context: Any) -> None:
    request_id = getattr(context, "aws_request_id", None)
    if request_id:
        os.environ["FK_PLATFORM_ACTIVATION_ID"] = str(request_id)
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    if callable(remaining):
        os.environ["FK_DEADLINE_MS"] = str(int(time.time() * 1000) + int(remaining()))


def handler(event: Any, context: Any) -> dict[str, Any]:
    _note_context(context)
    if function_handler is None:
        raise HandlerError(mask_settings(_LOAD_ERROR))
    params = _params(event)
    try:
        result = function_handler.handle(params)
    except Exception as exc:
        text = str(exc)
        masked = mask_settings(text)
        if masked == text:
            raise
        raise HandlerError(f"{type(exc).__name__}: {masked}") from None
    if not isinstance(result, dict):
        raise TypeError(f"the handler returned {type(result).__name__}, not a dict")
    return result

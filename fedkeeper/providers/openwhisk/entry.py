"""Apache OpenWhisk entry point, packaged as `__main__.py`; the Python runtime calls `main(args) -> dict`.

- Settings that may be secret (`FK_MONGO_URL`, `FK_MONGO_DB`, ...) are action parameters bound at deploy time,
  which OpenWhisk merges into `args`. Every `FK_*` key (and any key named in `FK_ENV_KEYS`) is moved into
  `os.environ` and removed from the parameters before `handle` sees them, so they reach the runtime code the same
  way as on the other platforms and never travel back in a result.
- Web-action keys (`__ow_method`, `__ow_headers`, ...) are dropped. The activation metadata stays where the
  runtime puts it, in `__OW_ACTIVATION_ID`, `__OW_ACTION_NAME`, `__OW_NAMESPACE`, `__OW_DEADLINE`; it is also
  copied to `FK_PLATFORM_ACTIVATION_ID` / `FK_DEADLINE_MS` for platform-neutral code.
- Errors: when the handler raises, `main` returns `{"error": "<Type>: <message>"}` with every `FK_*` value
  masked (settings whose name says URL/PASSWORD/SECRET/TOKEN/KEY/AUTH, values holding a URL, and keys named in
  `FK_ENV_KEYS`). That is the OpenWhisk convention for an application error (the activation's `response.status` becomes
  "application error", `success: false`), and it is what the runtime itself would return for an uncaught
  exception, except that the runtime would neither name the type nor mask secrets. The traceback goes to stderr,
  i.e. the activation logs, masked as well. A handler that cannot be imported gives the same kind of error on
  every call, with a hint: numpy missing from the kind's image (ModuleNotFoundError), or vendored wheels built
  for another Python than the kind runs (an ImportError such as numpy's "source directory" message, what cp311
  wheels say on `python:default`, which is Python 3.10 on a stock installation).

This file runs inside the function: standard library and the function folder only.
"""

from __future__ import annotations

import json
import os
import re
import sys
import traceback
from typing import Any

# The action folder first on sys.path: the zip's own `fedkeeper/runtime` must win over anything installed.
_HERE = os.path.dirname(os.path.abspath(__file__))
if not sys.path or os.path.abspath(sys.path[0] or os.getcwd()) != _HERE:
    sys.path.insert(0, _HERE)

# what every entry file shares, packaged with the rest of the runtime
from fedkeeper.runtime.entry_support import describe, load_handler, mask_settings  # noqa: E402 - after sys.path

function_handler, _LOAD_ERROR = load_handler(
    "OpenWhisk's python kinds ship without numpy/pymongo: set vendor_wheels: true on the cluster, "
    "or docker_image to an image that has them")

ENV_KEYS_PARAMETER = "FK_ENV_KEYS"


#: names of settings whose values are masked in errors and logs (plus any value holding a URL)
_SECRET_NAME = re.compile(r"URL|URI|PASS|SECRET|TOKEN|KEY|AUTH|CRED", re.IGNORECASE)
#: keys moved into os.environ because FK_ENV_KEYS named them; their secrecy is unknown, so they are masked
_EXTRA_ENV: set[str] = set()


def _is_secret(key: str, value: str) -> bool:
    """Secret-looking FK_* settings (not e.g. FK_MONGO_DB, which would garble every path) and FK_ENV_KEYS ones."""
    if key in _EXTRA_ENV:
        return True
    return key.startswith("FK_") and bool(_SECRET_NAME.search(key) or "://" in value)


def _masked(message: str) -> str:
    return mask_settings(message, _is_secret)


def _as_env(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def split_args(args: dict[str, Any]) -> dict[str, Any]:
    """Move the bound settings into os.environ; return what the handler should see."""
    extra_env = {k for k in str(args.get(ENV_KEYS_PARAMETER) or "").split(",") if k}
    _EXTRA_ENV.update(extra_env)
    params: dict[str, Any] = {}
    for key, value in args.items():
        if key == ENV_KEYS_PARAMETER:
            continue
        if key.startswith("FK_") or key in extra_env:
            os.environ[key] = _as_env(value)
        elif key.startswith("__ow_"):
            continue
        else:
            params[key] = value
    if os.environ.get("__OW_ACTIVATION_ID"):
        os.environ["FK_PLATFORM_ACTIVATION_ID"] = os.environ["__OW_ACTIVATION_ID"]
    if os.environ.get("__OW_DEADLINE"):
        os.environ["FK_DEADLINE_MS"] = os.environ["__OW_DEADLINE"]
    return params


def main(args: dict[str, Any]) -> dict[str, Any]:
    params = split_args(dict(args or {}))
    if function_handler is None:
        return {"error": _masked(_LOAD_ERROR)}
    try:
        result = function_handler.handle(params)
    except Exception as exc:
        print(_masked(traceback.format_exc()), file=sys.stderr, flush=True)
        return {"error": _masked(describe(exc))}
    if not isinstance(result, dict):
        return {"error": f"the handler returned {type(result).__name__}, not a dict"}
    return result

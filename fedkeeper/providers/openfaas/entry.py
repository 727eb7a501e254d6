"""OpenFaaS entry point, packaged as `index.py` (the name the python3-http template's image runs), served behind
of-watchdog in `http` mode (`fprocess="python index.py"`, `upstream_url=http://127.0.0.1:5000`).

The watchdog forwards each call of `/function/<name>` (or the queue-worker's call for `/async-function/<name>`)
to this process and passes its answer back; `fedkeeper.runtime.http_entry` is the server (200 result, 500
`{"error": ...}`, the cold-start header). Secret settings (`FK_MONGO_URL`, ...) come from the OpenFaaS secret
named in `FK_ENV_SECRET`, which the platform mounts as a file under /var/openfaas/secrets (a JSON object), and
are moved into os.environ before the handler is imported; they are never in a request or in the function's
visible `envVars`.

This file runs inside the function: standard library and the function folder only.
"""

from __future__ import annotations

import os
import sys

# The function folder first on sys.path: the image's own `fedkeeper/runtime` must win over anything installed.
_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path[:1]:
    sys.path.insert(0, _HERE)

from fedkeeper.runtime.http_entry import load_secret_env, serve  # noqa: E402 - after sys.path

#: where OpenFaaS mounts a function's secrets (https://docs.openfaas.com/reference/secrets/)
SECRETS_DIR = os.environ.get("FK_SECRETS_DIR", "/var/openfaas/secrets")
if os.environ.get("FK_ENV_SECRET"):
    load_secret_env(SECRETS_DIR, os.environ["FK_ENV_SECRET"])

from fedkeeper.runtime.entry_support import load_handler  # noqa: E402

function_handler, _LOAD_ERROR = load_handler(
    "the function's image must have numpy and pymongo: build it with the recipe in docs/platforms.md (OpenFaaS)")

if __name__ == "__main__":
    serve(function_handler, _LOAD_ERROR, default_port=5000)

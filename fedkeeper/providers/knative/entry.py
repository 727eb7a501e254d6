"""Knative Serving entry point, packaged as `server.py`; the function's image runs `python server.py`.

Knative's queue-proxy forwards each request of the Service's route to the user container on `$PORT` (8080 unless
the container's `ports` say otherwise; https://knative.dev/docs/serving/reference/runtime-contract/) and
passes its answer back; `fedkeeper.runtime.http_entry` is the server (200 result, 500 `{"error": ...}`, the
cold-start header on a new pod's first call: what scale-from-zero costs). Secret settings (`FK_MONGO_URL`, ...)
are environment variables from the Kubernetes Secret the Service names in `envFrom`, never in a request.

This file runs inside the function: standard library and the function folder only.
"""

from __future__ import annotations

import os
import sys

# The function folder first on sys.path: the image's own `fedkeeper/runtime` must win over anything installed.
_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path[:1]:
    sys.path.insert(0, _HERE)

from fedkeeper.runtime.entry_support import load_handler  # noqa: E402 - after sys.path
from fedkeeper.runtime.http_entry import serve  # noqa: E402

function_handler, _LOAD_ERROR = load_handler(
    "the function's image must have numpy and pymongo: build it with the recipe in docs/platforms.md (Knative)")

if __name__ == "__main__":
    # the queue-proxy reaches the container on the pod's own network: listen on every address of the pod
    os.environ.setdefault("FK_LISTEN_HOST", "0.0.0.0")
    serve(function_handler, _LOAD_ERROR, default_port=8080)

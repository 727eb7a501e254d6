"""Test function of the Cloud Functions provider tests and the provider contract suite: fails, sleeps or echoes.

`{"mode": "raise", "message": m}` raises RuntimeError(m) (with `leak: true` the message also carries
FK_MONGO_URL, to check that the entry masks it); `{"mode": "sleep", "seconds": s}` sleeps; anything else echoes
the params and says which FK_* variables are set (names only, never values).
"""

from __future__ import annotations

import os
import time


def handle(params: dict) -> dict:
    mode = params.get("mode", "echo")
    if mode == "raise":
        message = str(params.get("message", "boom"))
        if params.get("leak"):
            message += f" while talking to {os.environ.get('FK_MONGO_URL', '')}"
        raise RuntimeError(message)
    if mode == "sleep":
        time.sleep(float(params.get("seconds", 1.0)))
        return {"slept": float(params.get("seconds", 1.0))}
    return {"echo": params, "fk_env": sorted(k for k in os.environ if k.startswith("FK_")),
            "service": os.environ.get("K_SERVICE")}

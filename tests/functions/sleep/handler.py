"""Test function: sleeps params["seconds"] and reports its pid and unix start/end (for overlap checks)."""

import os
import time


def handle(params: dict) -> dict:
    start = time.time()
    time.sleep(float(params.get("seconds", 0.1)))
    return {"pid": os.getpid(), "start": start, "end": time.time()}

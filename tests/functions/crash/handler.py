"""Test function: the process dies mid-call (params["how"]: "exit" -> os._exit(code), "segv" -> SIGSEGV)."""

import os
import signal


def handle(params: dict) -> dict:
    if params.get("how") == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    os._exit(int(params.get("code", 3)))

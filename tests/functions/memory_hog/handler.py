"""Test function: allocates params["mb"] MB and touches every page (like a model that does not fit)."""

import os


def handle(params: dict) -> dict:
    mb = int(params.get("mb", 1))
    block = bytearray(mb << 20)
    for i in range(0, len(block), 4096):
        block[i] = 1
    return {"allocated_mb": mb, "pid": os.getpid()}

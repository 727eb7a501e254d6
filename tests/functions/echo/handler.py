"""Test function: returns its params and where it ran; prints to stdout to prove the protocol is protected."""

import os
import sys

import fedkeeper

CALLS = 0


def handle(params: dict) -> dict:
    global CALLS
    CALLS += 1
    print("echo handler says hello on stdout")  # must land in the log, not in the protocol channel
    os.write(1, b"raw write to fd 1\n")
    return {
        "params": params,
        "pid": os.getpid(),
        "calls": CALLS,
        "fedkeeper_file": fedkeeper.__file__,
        "cwd": os.getcwd(),
        "activation_id": os.environ.get("FK_ACTIVATION_ID"),
        "env": {k: os.environ.get(k) for k in params.get("env_keys", [])},
        "python": sys.version.split()[0],
    }

"""Test function: starts a long-running child process and returns its pid (it must not outlive the platform)."""

import subprocess


def handle(params: dict) -> dict:
    child = subprocess.Popen(["sleep", str(params.get("seconds", 60))])
    return {"child_pid": child.pid}

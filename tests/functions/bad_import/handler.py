"""Test function whose import fails: the platform must report it as the activation's error."""

import module_that_does_not_exist  # noqa: F401


def handle(params: dict) -> dict:
    return {}

"""Checks on the JSON payload a function receives, shared by the handlers so every function words a bad payload
the same way: "<function>: params.<key> ...", which is what the orchestrator shows for a failed activation."""

from __future__ import annotations

from typing import Any, Mapping


def required(function: str, params: Mapping[str, Any], key: str, kind: type | tuple[type, ...], *,
             minimum: int | None = None) -> Any:
    """`params[key]`, checked: present and not null, of `kind` (a bool is never an int here), at least
    `minimum`, and not an empty string; otherwise ValueError naming the function and the key."""
    if key not in params or params[key] is None:
        raise ValueError(f"{function}: params.{key} is required")
    value = params[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ValueError(f"{function}: params.{key} must be {getattr(kind, '__name__', kind)}, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{function}: params.{key} must be >= {minimum}, got {value!r}")
    if kind is str and not value:
        raise ValueError(f"{function}: params.{key} must not be empty")
    return value

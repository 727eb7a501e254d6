"""What the platform entry files (fedkeeper/providers/entries/<kind>.py) share: loading the function's handler
and keeping secret settings out of the error messages and tracebacks they hand back or log.

The entry files are packaged next to this folder, so they import it from the zip like the handlers import the
rest of `fedkeeper.runtime`; each entry puts its own folder first on sys.path before importing it. Standard library
only: an entry must still answer (with a hint) when numpy or pymongo cannot be imported.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterable
from types import ModuleType
from urllib.parse import urlsplit

#: what a function needs beyond the standard library; a handler failing to import one gets the platform's hint
RUNTIME_MODULES = frozenset({"numpy", "pymongo", "bson", "gridfs"})

MASK = "***"


def load_handler(missing_runtime_hint: str | None = None) -> tuple[ModuleType | None, str]:
    """(the function's `handler` module, ""), or (None, "cannot load the function's handler: <Type>: message").

    The entry reports that error on every call (masked) instead of failing the instance's start opaquely; when a
    runtime module is missing, `missing_runtime_hint` (how to provide it on this platform) is appended.
    """
    try:
        return importlib.import_module("handler"), ""  # the function's handler.py, at the zip root
    except Exception as exc:
        error = f"cannot load the function's handler: {describe(exc)}"
        if missing_runtime_hint and isinstance(exc, ModuleNotFoundError) and exc.name in RUNTIME_MODULES:
            error += f" ({missing_runtime_hint})"
        return None, error


def secret_values(values: Iterable[str]) -> list[str]:
    """What to mask for these setting values, longest first: each value of 4+ characters, and the password of
    any URL among them (it may show up on its own, e.g. in an authentication error)."""
    secrets: set[str] = set()
    for value in values:
        if len(value) < 4:
            continue
        secrets.add(value)
        try:
            password = urlsplit(value).password if "://" in value else None
        except ValueError:
            password = None
        if password and len(password) >= 3:
            secrets.add(password)
    return sorted(secrets, key=len, reverse=True)


def mask(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret replaced by ***; pass the secrets longest first so none is left half-masked."""
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text


def _is_fk_setting(key: str, value: str) -> bool:
    return key.startswith("FK_")


def mask_settings(text: str, select: Callable[[str, str], bool] = _is_fk_setting) -> str:
    """`text` with the values of the selected environment settings (default: every `FK_*`) masked.

    The environment is read on every call: settings may be set per call (OpenWhisk binds them as parameters).
    """
    return mask(text, secret_values(value for key, value in os.environ.items() if select(key, value)))


def describe(exc: BaseException) -> str:
    """"<Type>: message", the form every platform's error answer uses."""
    return f"{type(exc).__name__}: {exc}"

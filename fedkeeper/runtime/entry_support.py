"""What the platform entry files (fedkeeper/providers/entries/<kind>.py) share: loading the function's handler
and keeping secret settings out of the error messages and tracebacks they hand back or log.

The entry files are packaged next to this folder, so they import it from the zip like the handlers import the
rest of `fedkeeper.runtime`; each entry puts its own folder first on sys.path before importing it. Standard library
only: an entry must still answer (with a hint) when numpy or pymongo cannot be imported.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Callable, Iterable
from types import ModuleType

from fedkeeper.runtime import urls

#: what a function needs beyond the standard library; a handler failing to import one gets the platform's hint
RUNTIME_MODULES = frozenset({"numpy", "pymongo", "bson", "gridfs"})

MASK = "***"


def load_handler(missing_runtime_hint: str | None = None) -> tuple[ModuleType | None, str]:
    """(the function's `handler` module, ""), or (None, "cannot load the function's handler: <Type>: message").

    The entry reports that error on every call (masked) instead of failing the instance's start opaquely. When
    a runtime module cannot be imported, `missing_runtime_hint` (how to provide it on this platform) is
    appended: whether the module is missing (ModuleNotFoundError) or present but built for another Python or
    platform (an ImportError: numpy's "you should not try to import numpy from its source directory" is what
    cp311 wheels say on Python 3.10, and a C extension of the wrong ABI fails to load the same way).
    """
    try:
        return importlib.import_module("handler"), ""  # the function's handler.py, at the zip root
    except Exception as exc:
        error = f"cannot load the function's handler: {describe(exc)}"
        if missing_runtime_hint and runtime_import_failure(exc):
            version = f"{sys.version_info[0]}.{sys.version_info[1]}"
            if isinstance(exc, ModuleNotFoundError) and _top(exc.name) in RUNTIME_MODULES:
                error += f" ({missing_runtime_hint})"
            else:
                error += (f" (numpy/pymongo are there but do not load on this runtime's Python {version}: vendored "
                          f"wheels must be built for the runtime kind's Python and platform, i.e. the cluster's "
                          f"runtime must name the kind the platform really runs; {missing_runtime_hint})")
        return None, error


def _top(name: str | None) -> str:
    return (name or "").split(".", 1)[0]


def runtime_import_failure(exc: BaseException) -> bool:
    """True when an import of numpy/pymongo (or a part of them) failed anywhere in the exception's chain."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ImportError):
            if _top(current.name) in RUNTIME_MODULES:
                return True
            words = set(re.findall(r"[A-Za-z_][\w.]*", str(current)))
            if any(_top(word) in RUNTIME_MODULES for word in words):
                return True
        current = current.__cause__ or current.__context__
    return False


def secret_values(values: Iterable[str]) -> list[str]:
    """What to mask for these setting values, longest first: each value of 4+ characters, the password of any URL
    among them (it may show up on its own, e.g. in an authentication error; raw and decoded), and each password
    in the data-URL credentials (`urls.DATA_CREDENTIALS_ENV`, JSON)."""
    secrets: set[str] = set()
    for value in values:
        if len(value) < 4:
            continue
        secrets.add(value)
        if "://" in value:
            secrets.update(urls.passwords(value))
        if value.startswith("{"):
            for user, password in urls.decode_credentials(value).values():
                secrets.update({password, f"{user}:{password}"})
    return sorted((s for s in secrets if len(s) >= 3), key=len, reverse=True)


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

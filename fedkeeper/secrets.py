"""The one redactor every printed or logged string passes through.

Config loading, the console layer, `Logs/` writers and error messages all use `Redactor`, so a secret that the
config names (or anything shaped like a credential) is replaced by `***` wherever text leaves FedKeeper.

Two layers. Known values (every secret the config holds, and each password inside a URL among them) are replaced
in every form they may take: raw, JSON-escaped, percent-encoded, base64 in a Basic header — whatever characters
they hold. Credential shapes are replaced even when the value was never registered: the password of a URL (found
by `fedkeeper.runtime.urls`, which also reads a raw ``/``, ``?``, ``#`` or ``@`` as part of it), bearer and basic
tokens, private-key blocks. Code that cuts a URL apart (a host list for a message, a URL without its password)
uses the same module, so no piece of a password is ever printed as a host.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterable
from typing import TextIO

from fedkeeper.runtime import urls

MASK = "***"
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}")
_BASIC = re.compile(r"\b([Bb]asic\s+)(?=[A-Za-z0-9+/]*[0-9+/])[A-Za-z0-9+/]{12,}={0,2}")  # a token, not prose
# a block cut short (e.g. a truncated error message) is redacted to the end of the text
_PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)", re.S)


def _may_hold_bearer(text: str) -> bool:
    """False only where `_BEARER` cannot match: no "bearer" in any letter case. Non-ASCII text always goes to the
    regex (its case-insensitive matching is Unicode's; ASCII text lowered here is exactly what it compares)."""
    return not text.isascii() or "bearer" in text.lower()


#: shorter values would blank out ordinary words all over the output (URL passwords are found by shape anyway)
MIN_SECRET = 4


def redact_url_credentials(text: str) -> str:
    """Every ``scheme://user:password@`` in `text` → ``scheme://user:***@``; a bare ``scheme://token@`` → ``***@``."""
    out, last = [], 0
    for start, colon, end in urls.credential_spans(text):
        out.append(text[last:start])
        out.append(f"{text[start:colon]}:{MASK}" if colon >= 0 else MASK)
        last = end
    out.append(text[last:])
    return "".join(out)


def url_for_display(url: str) -> str:
    """A URL safe to print: its password (wide reading) replaced by ``***``; the user name stays."""
    parts = urls.wide_split(url)
    if parts is None or parts.userinfo is None:
        return redact_url_credentials(url)
    user = f"{parts.user}:{MASK}" if parts.password is not None else parts.userinfo
    return f"{parts.scheme}://{user}@{redact_url_credentials(parts.rest)}"


class Redactor:
    """Removes known secret values and anything that looks like a credential from text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: list[str] = []
        self._memo: dict[str, str] = {}
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        values = set(self._secrets)
        for s in secrets:
            if not s:
                continue
            parts = [s, *urls.passwords(s)] if "://" in s else [s]
            for value in parts:
                if len(value) >= MIN_SECRET:
                    values.update(f for f in urls.secret_forms(value) if len(f) >= MIN_SECRET)
        self._secrets = sorted(values, key=len, reverse=True)
        self._memo = {}  # what was redacted before may hold a secret known from now on

    #: `repeated` remembers at most this many values (then starts over): a run's cluster names, states, functions
    MEMO_MAX = 1024

    def repeated(self, text: str) -> str:
        """`self(text)` for a value that recurs (a cluster name, a state: the same few in every row of a log),
        remembered until a secret is added. The same result, redacted once instead of once per row."""
        memo = self._memo
        out = memo.get(text)
        if out is None:
            if len(memo) >= self.MEMO_MAX:
                memo.clear()
            out = memo[text] = self(text)
        return out

    def __call__(self, text: str) -> str:
        if not text:
            return text
        for s in self._secrets:
            if s in text:
                text = text.replace(s, MASK)
        if "://" in text:
            text = redact_url_credentials(text)
        # Each pattern runs only where the text holds a literal it cannot match without: `Logs/` writers pass every
        # cell of every row through here, and three regex scans per cell were most of a thousand-client round's
        # bookkeeping (bench/bench_scale.py). The hints are exact preconditions, so the result is the same.
        if _may_hold_bearer(text):
            text = _BEARER.sub(r"\1***", text)
        if "asic" in text:  # [Bb]asic, case-sensitive
            text = _BASIC.sub(r"\1***", text)
        if "-----BEGIN " in text:
            text = _PRIVATE_KEY.sub("***PRIVATE KEY***", text)
        return text


class RedactingStream(io.TextIOBase):
    """A text stream wrapper for consoles: everything printed passes through the redactor."""

    def __init__(self, stream: TextIO, redactor: Redactor) -> None:
        self._stream = stream
        self._redact = redactor

    def write(self, text: str) -> int:
        self._stream.write(self._redact(text))
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return self._stream.isatty()

    def fileno(self) -> int:
        return self._stream.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._stream, "encoding", "utf-8")


class RedactingFilter(logging.Filter):
    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self._redact = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.msg, record.args = self._redact(message), None
        if record.exc_text:
            record.exc_text = self._redact(record.exc_text)
        return True

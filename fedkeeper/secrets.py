"""The one redactor every printed or logged string passes through.

Config loading, the console layer, `Logs/` writers and error messages all use `Redactor`, so a secret that the
config names (or anything shaped like a credential) is replaced by `***` wherever text leaves FedKeeper.
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterable
from typing import TextIO


# the password part runs to the last '@' before the host (passwords may contain a raw '@')
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]+):(?P<pw>[^/\s]+)@")
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}")
_BASIC = re.compile(r"\b([Bb]asic\s+)(?=[A-Za-z0-9+/]*[0-9+/])[A-Za-z0-9+/]{12,}={0,2}")  # a token, not prose
# a block cut short (e.g. a truncated error message) is redacted to the end of the text
_PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)", re.S)


class Redactor:
    """Removes known secret values and anything that looks like a credential from text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: list[str] = []
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        values = set(self._secrets)
        for s in secrets:
            if s and len(s) >= 4:
                values.add(s)
                # the same secret as it may appear escaped in JSON or a URL
                values.add(json.dumps(s)[1:-1])
                from urllib.parse import quote

                values.add(quote(s, safe=""))
                if ":" in s:  # user:key pairs travel base64-encoded in Basic auth headers
                    import base64

                    values.add(base64.b64encode(s.encode()).decode("ascii"))
        self._secrets = sorted(values, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        if not text:
            return text
        for s in self._secrets:
            if s in text:
                text = text.replace(s, "***")
        text = _URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
        text = _BEARER.sub(r"\1***", text)
        text = _BASIC.sub(r"\1***", text)
        return _PRIVATE_KEY.sub("***PRIVATE KEY***", text)


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

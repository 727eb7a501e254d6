"""Credentials inside URLs (`scheme://user:password@host`): find them, take them out, tell origins apart.

One parser for every place that meets such a URL — the redactor (`fedkeeper.secrets`), the store's connection
string, the config's secret collection and checks, the data downloader inside the functions — so that they all
agree on where a password starts and ends. It lives in the runtime because the runtime is copied into every
function zip on its own (standard library only).

A password written raw (not percent-encoded) may hold any of ``:/?#[]@`` and spaces. RFC 3986 ends the authority
at the first ``/``, ``?`` or ``#``, so a strict split of ``mongodb://fk:pa/ss@db`` puts ``fk:pa`` where the host
belongs, and a piece of the password then shows up in messages ("cannot reach fk:pa"). Two readings are therefore
offered: `split` is the strict one (what urllib and pymongo do: use it to connect), `userinfo_end` the wide one (the
last ``@`` that is followed by a host list: use it to hide). `ambiguous` says when the two disagree, which the
config check reports as an error instead of guessing.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator, Mapping
from typing import Any
from dataclasses import dataclass
from urllib.parse import quote, quote_plus, unquote, unquote_plus

SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
#: one host (a name, an IPv4 address or a bracketed IPv6 literal) with an optional port
_HOST = r"(?:\[[0-9A-Fa-f:.%A-Za-z]+\]|[A-Za-z0-9._~%-]+)(?::[0-9]*)?"
#: a host list (`h1:27017,h2:27017`) followed by what may end it in a URL
_HOSTS_AT = re.compile(rf"{_HOST}(?:,{_HOST})*(?=$|[/?#\s\"'<>`)\]}},;|\\])")
_DEFAULT_PORTS = {"http": 80, "https": 443}
#: where a URL in free text surely ends: white space, an unescaped double quote (JSON escapes one inside a string
#: as \")
_WORD_END = re.compile(r'\s|(?<!\\)"')
#: the deploy-time setting that carries data-URL credentials to the functions (see `encode_credentials`)
DATA_CREDENTIALS_ENV = "FK_DATA_CREDENTIALS"


@dataclass(frozen=True)
class UrlParts:
    """A URL cut at its userinfo: ``scheme://`` + ``userinfo@`` + ``rest`` (each as written, still encoded)."""

    scheme: str
    userinfo: str | None
    rest: str

    @property
    def user(self) -> str | None:
        return None if self.userinfo is None else self.userinfo.partition(":")[0]

    @property
    def password(self) -> str | None:
        if self.userinfo is None or ":" not in self.userinfo:
            return None
        return self.userinfo.partition(":")[2]

    @property
    def hosts(self) -> str:
        """The host list (``h1:27017,h2``), without path, query or fragment."""
        return re.split(r"[/?#]", self.rest, maxsplit=1)[0]

    def without_userinfo(self) -> str:
        return f"{self.scheme}://{self.rest}"

    def credentials(self, plus: bool = False) -> tuple[str, str] | None:
        """(user, password) percent-decoded (``plus``: '+' is a space too, as pymongo reads it); None without."""
        if self.userinfo is None:
            return None
        decode = unquote_plus if plus else unquote
        return decode(self.user or ""), decode(self.password or "")


def split(url: str) -> UrlParts | None:
    """The strict reading (RFC 3986, as urllib and pymongo): the userinfo ends at the last ``@`` before the first
    ``/``, ``?`` or ``#``. None when `url` does not start with ``scheme://``."""
    m = SCHEME.match(url)
    if not m:
        return None
    scheme, body = url[: m.end() - 3], url[m.end():]
    authority = re.split(r"[/?#]", body, maxsplit=1)[0]
    if "@" not in authority:
        return UrlParts(scheme, None, body)
    userinfo = authority.rpartition("@")[0]
    return UrlParts(scheme, userinfo, body[len(userinfo) + 1:])


def userinfo_end(body: str, *, start: int = 0) -> int | None:
    """Index in `body` (the text after ``scheme://``) of the last ``@`` at or after `start` that is followed by a
    host list: the wide reading, which also takes a raw ``/``, ``?``, ``#`` or ``@`` to be part of a password."""
    at = body.rfind("@")
    while at >= start:
        if _HOSTS_AT.match(body, at + 1):
            return at
        at = body.rfind("@", start, at)
    return None


def wide_split(url: str) -> UrlParts | None:
    """The wide reading of a whole URL (see `userinfo_end`); the strict one where there is no such ``@``."""
    m = SCHEME.match(url)
    if not m:
        return None
    body = url[m.end():]
    end = userinfo_end(body)
    if end is None:
        return split(url)
    return UrlParts(url[: m.end() - 3], body[:end], body[end + 1:])


def ambiguous(url: str) -> bool:
    """True when the strict and the wide reading disagree about a ``user:password``: a password with a raw
    ``/``, ``?``, ``#`` or ``@`` (or an ``@`` in a path after one): it must be percent-encoded to mean one thing."""
    strict, wide = split(url), wide_split(url)
    if strict is None or wide is None or wide.userinfo is None or strict.userinfo == wide.userinfo:
        return False
    return ":" in wide.userinfo


def strip_userinfo(url: str) -> str:
    """The URL without ``user:password@`` (strict reading: the URL that is really fetched)."""
    parts = split(url)
    return url if parts is None or parts.userinfo is None else parts.without_userinfo()


def passwords(url: str) -> set[str]:
    """Every form a URL's password may take in text: as written (strict and wide readings), and decoded."""
    found: set[str] = set()
    for parts in (split(url), wide_split(url)):
        if parts is not None and parts.password:
            raw = parts.password
            found.update({raw, unquote(raw), unquote_plus(raw)})
    return {p for p in found if p}


def secret_forms(secret: str) -> set[str]:
    """The ways a secret value may show up in text: raw, JSON-escaped, percent-encoded (both flavours), and a
    ``user:key`` pair base64-encoded as in a Basic Authorization header."""
    forms = {secret, json.dumps(secret)[1:-1], quote(secret, safe=""), quote_plus(secret, safe=""), quote(secret)}
    if ":" in secret:
        forms.add(base64.b64encode(secret.encode()).decode("ascii"))
    return forms


# ---------------------------------------------------------------------------------------------- origins


def origin(url: str) -> str | None:
    """``scheme://host:port`` (lower case, default port filled in) of an http(s) URL; None for anything else.

    Two URLs may share a credential only when their origins are equal: a redirect to another scheme, host or
    port must not carry it."""
    parts = split(url)
    if parts is None or parts.scheme.lower() not in _DEFAULT_PORTS:
        return None
    hosts = parts.hosts
    m = re.fullmatch(r"(\[[^\]]*\]|[^:]*)(?::([0-9]*))?", hosts)
    if m is None or not m.group(1):
        return None
    scheme = parts.scheme.lower()
    port = int(m.group(2)) if m.group(2) else _DEFAULT_PORTS[scheme]
    return f"{scheme}://{m.group(1).lower()}:{port}"


def encode_credentials(by_origin: Mapping[str, tuple[str, str]]) -> str:
    """The `DATA_CREDENTIALS_ENV` value: ``{origin: [user, password]}`` as JSON (decoded user and password)."""
    return json.dumps({o: list(c) for o, c in sorted(by_origin.items())}, separators=(",", ":"))


def decode_credentials(text: str | None) -> dict[str, tuple[str, str]]:
    """The mapping `encode_credentials` wrote; {} for nothing or for anything malformed (never echoed)."""
    if not text:
        return {}
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(o): (str(c[0]), str(c[1])) for o, c in data.items()
            if isinstance(c, list) and len(c) == 2 and all(isinstance(v, str) for v in c)}


def detach_credentials(spec: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, tuple[str, str]]]:
    """A data spec with no ``user:password@`` left in its http(s) URLs, and the credentials taken out, by URL
    (without ``user:password@`` and without a ``#name`` suffix), decoded.

    The spec travels in every invocation payload, which platforms store and show to whoever holds a key; the
    credentials travel once, at deploy time, as `DATA_CREDENTIALS_ENV` (see `encode_credentials`)."""
    clean: dict[str, Any] = {}
    found: dict[str, tuple[str, str]] = {}
    for key, value in spec.items():
        parts = split(value) if isinstance(value, str) else None
        if parts is None or parts.userinfo is None or parts.scheme.lower() not in _DEFAULT_PORTS:
            clean[key] = value
            continue
        url = parts.without_userinfo()
        clean[key] = url
        found[url.partition("#")[0]] = parts.credentials()  # type: ignore[assignment]
    return clean, found


def credential_spans(text: str) -> Iterator[tuple[int, int, int]]:
    """(start, colon, end) of every ``user:password`` / bare ``userinfo`` after a ``scheme://`` in free text:
    ``text[start:end]`` is the userinfo (``end`` is its ``@``), ``colon`` the index of its first ``:`` or -1.

    Where the URL ends is a guess in free text, made generously: the userinfo runs to the last ``@`` followed by a
    host list before the next white space or unescaped double quote; when there is none there, but the URL goes on like
    ``user:...`` (a password with a raw space or quote), it runs to the first such ``@`` on the same line."""
    pos = 0
    while True:
        m = SCHEME.search(text, pos)
        if m is None:
            return
        start = m.end()
        line_end = text.find("\n", start)
        line_end = len(text) if line_end < 0 else line_end
        word = _WORD_END.search(text[start:line_end])
        word_end = start + word.start() if word else line_end
        word = text[start:word_end]
        at = userinfo_end(word)
        if at is not None and ":" not in word[:at] and re.search(r"[/?#]", word[:at]):
            # no password, and past a '/', '?' or '#': an '@' in a path (img@2x.png); only the strict reading counts
            authority = re.split(r"[/?#]", word, maxsplit=1)[0]
            at = authority.rfind("@") if "@" in authority else None
        if at is None and _looks_like_user_colon(word):
            rest = text[start:line_end]
            at = next((i for i in _ats(rest, word_end - start) if _HOSTS_AT.match(rest, i + 1)), None)
        if at is None:
            pos = start
            continue
        end = start + at
        colon = text.find(":", start, end)
        yield start, colon, end
        pos = end + 1


def _ats(text: str, start: int) -> Iterator[int]:
    i = text.find("@", start)
    while i >= 0:
        yield i
        i = text.find("@", i + 1)


def _looks_like_user_colon(word: str) -> bool:
    """``user:...`` rather than ``host:port/path``: a colon before any ``/`` that is not followed by a port."""
    head = re.split(r"[/?#]", word, maxsplit=1)[0]
    if ":" not in head:
        return False
    return not re.fullmatch(r"[0-9]+", head.partition(":")[2])

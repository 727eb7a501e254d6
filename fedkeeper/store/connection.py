"""mongo_config → one MongoDB URL plus client options, and the password-free ways to name it.

Its own module because it is pure string handling that several places need without a server or a client:
the Store (connecting), deployment (the ``FK_MONGO_URL`` given to functions) and every error message, which
may name ``hosts_of``/``display_url`` but never the full URL.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qsl, quote_plus, unquote_plus, urlencode, urlunsplit

from fedkeeper.runtime import urls
from fedkeeper.secrets import url_for_display
from fedkeeper.store.errors import StoreConfigError


class MongoSettings(Protocol):
    """What open_store reads from ``config.MongoConfig`` (duck-typed so the store does not depend on config)."""

    url: str
    db: str
    username: str | None
    password: Any  # str, or a SecretStr-like object with get_secret_value()
    auth_source: str | None
    tls: bool | None
    tls_ca_file: str | None
    tls_allow_invalid_certificates: bool
    connect_timeout_ms: int
    server_selection_timeout_ms: int
    keep_models: int


#: why a URL whose password holds a raw ``/``, ``?``, ``#`` or ``@`` is refused (the value is never quoted)
AMBIGUOUS_PASSWORD = ("mongo_config.url: the user name or password holds characters that must be percent-encoded "
                      "in a URL (any of / ? # @ : % [ ]; urllib.parse.quote_plus does it), or give the password "
                      "in mongo_config.password or password_file instead")

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_SECRET_QUERY_KEYS = {"authmechanismproperties", "tlscertificatekeyfilepassword"}


def _secret(value: Any) -> str | None:
    if value is None:
        return None
    getter = getattr(value, "get_secret_value", None)
    return str(getter() if callable(getter) else value)


def _expand_env(text: str, key: str) -> str:
    """Resolve ${NAME} / ${NAME:-default} left in a value (config.py normally did it already)."""

    def sub(m: re.Match[str]) -> str:
        value = os.environ.get(m.group(1))
        if value is None:
            if m.group(2) is None:
                raise StoreConfigError(f"{key} refers to ${{{m.group(1)}}}, which is not set")
            return m.group(2)
        return value

    return _ENV_REF.sub(sub, text)


def hosts_of(url: str) -> str:
    """``host:port[,host:port]`` of a MongoDB URL: what error messages may name. The wide reading of the userinfo
    (`fedkeeper.runtime.urls`): a password with a raw ``/`` or ``?`` never ends up named as a host."""
    parts = urls.wide_split(url)
    return (parts.hosts if parts is not None else "") or "?"


def display_url(url: str) -> str:
    """The URL with its password and secret options replaced by ``***`` (safe for logs and messages)."""
    parts = urls.wide_split(url)
    if parts is None:
        return url_for_display(url)
    hosts, _, tail = parts.rest.partition("/")
    path, _, query = tail.partition("?")
    netloc = hosts
    if parts.userinfo is not None:
        user = unquote_plus(parts.user or "")
        netloc = f"{quote_plus(user)}{':***' if parts.password is not None else ''}@{hosts}"
    query = urlencode([(k, "***" if k.lower() in _SECRET_QUERY_KEYS else v)
                       for k, v in parse_qsl(query.partition("#")[0], keep_blank_values=True)], safe="*,:/")
    shown = f"{parts.scheme}://{netloc}" + (f"/{path.partition('#')[0]}" if tail else "") + (f"?{query}" if query else "")
    return url_for_display(shown)


@dataclass(frozen=True)
class Connection:
    """A resolved connection: the full URL (may hold a password) and the client-only options."""

    url: str
    options: dict[str, Any]
    secrets: tuple[str, ...] = ()

    @property
    def hosts(self) -> str:
        return hosts_of(self.url)

    @property
    def display_url(self) -> str:
        return display_url(self.url)


def resolve(mongo: MongoSettings, embedded_url: str | None = None) -> Connection:
    """Turn mongo_config into one URL that functions can use as is (``FK_MONGO_URL``) plus client timeouts.

    Credentials, authSource and TLS settings from separate keys are folded into the URL; options already in the
    URL win over the config's defaults.
    """
    timeouts = {
        "connectTimeoutMS": int(getattr(mongo, "connect_timeout_ms", 5000)),
        "serverSelectionTimeoutMS": int(getattr(mongo, "server_selection_timeout_ms", 5000)),
    }
    if embedded_url is not None:
        return Connection(embedded_url, timeouts)
    raw = _expand_env(str(mongo.url), "mongo_config.url")
    if urls.ambiguous(raw):
        raise StoreConfigError(AMBIGUOUS_PASSWORD)
    parts = urls.split(raw)  # not urlsplit: a raw '[' in a password is "Invalid IPv6 URL" to it
    if parts is None or parts.scheme not in ("mongodb", "mongodb+srv") or not parts.rest:
        raise StoreConfigError(f"mongo_config.url must be 'embedded' or a mongodb:// URL, got {display_url(raw)!r}")
    hosts = parts.hosts
    path, _, query_text = parts.rest[len(hosts):].partition("#")[0].partition("?")
    user, password = parts.credentials(plus=True) or (None, None)
    if parts.password is None:
        password = None
    if mongo.username:
        user = _expand_env(mongo.username, "mongo_config.username")
    cfg_password = _secret(getattr(mongo, "password", None))
    if cfg_password:
        password = _expand_env(cfg_password, "mongo_config.password")
    if password and not user:
        raise StoreConfigError("mongo_config has a password but no username")
    netloc = hosts
    if user:
        netloc = f"{quote_plus(user)}{':' + quote_plus(password) if password else ''}@{hosts}"
    query = parse_qsl(query_text, keep_blank_values=True)
    present = {k.lower() for k, _ in query}

    def add(key: str, value: Any) -> None:
        if value is not None and key.lower() not in present:
            query.append((key, value))

    add("authSource", getattr(mongo, "auth_source", None))
    tls = getattr(mongo, "tls", None)
    add("tls", None if tls is None else str(bool(tls)).lower())
    add("tlsCAFile", getattr(mongo, "tls_ca_file", None))
    if getattr(mongo, "tls_allow_invalid_certificates", False):
        add("tlsAllowInvalidCertificates", "true")
    url = urlunsplit((parts.scheme, netloc, path or "/", urlencode(query), ""))
    options = {k: v for k, v in timeouts.items() if k.lower() not in present}
    secrets = tuple(s for s in {password, quote_plus(password) if password else None} if s)
    return Connection(url, options, secrets)


def _one_line(exc: BaseException, secrets: Iterable[str] = ()) -> str:
    """A short, single-line reason from a pymongo error, with any secret removed."""
    text = str(exc).split(", Timeout:")[0].split(", full error:")[0]
    text = " ".join(text.split())
    for s in secrets:
        text = text.replace(s, "***")
    return text[:300] or type(exc).__name__

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
from urllib.parse import parse_qsl, quote_plus, unquote_plus, urlencode, urlsplit, urlunsplit

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


def _split_netloc(netloc: str) -> tuple[str | None, str | None, str]:
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        return None, None, netloc
    user, colon, password = userinfo.partition(":")
    return unquote_plus(user), (unquote_plus(password) if colon else None), hosts  # as pymongo parses it


def hosts_of(url: str) -> str:
    """``host:port[,host:port]`` of a MongoDB URL: what error messages may name."""
    return _split_netloc(urlsplit(url).netloc)[2] or "?"


def display_url(url: str) -> str:
    """The URL with its password and secret options replaced by ``***`` (safe for logs and messages)."""
    parts = urlsplit(url)
    user, password, hosts = _split_netloc(parts.netloc)
    netloc = hosts
    if user is not None:
        netloc = f"{quote_plus(user)}{':***' if password is not None else ''}@{hosts}"
    query = [(k, "***" if k.lower() in _SECRET_QUERY_KEYS else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query, safe="*,:/"), ""))


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
    parts = urlsplit(raw)
    if parts.scheme not in ("mongodb", "mongodb+srv") or not parts.netloc:
        raise StoreConfigError(f"mongo_config.url must be 'embedded' or a mongodb:// URL, got {display_url(raw)!r}")
    user, password, hosts = _split_netloc(parts.netloc)
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
    query = parse_qsl(parts.query, keep_blank_values=True)
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
    url = urlunsplit((parts.scheme, netloc, parts.path or "/", urlencode(query), ""))
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

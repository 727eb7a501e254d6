"""The redactor that every printed and logged line goes through (fedkeeper.results.runlog.Redactor).

Known secrets are replaced wherever they appear — raw, JSON-escaped, percent-encoded, base64 in a Basic auth
header — and credential shapes are removed even when the value was never registered (a URL's password, a
bearer token, a private-key block, also one cut short)."""

from __future__ import annotations

import base64
import io
import json
import logging
from urllib.parse import quote

import pytest

from fedkeeper.secrets import RedactingFilter, RedactingStream, Redactor

OW_KEY = "23bc46b1-71f6-4ed5-8c54-816aa4f8c502:CANARYowKEY123zO3xZCLrMN6v2BKK1dXYFp"
PEM = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqCANARYpem\nline2CANARY\n-----END PRIVATE KEY-----\n"


@pytest.fixture
def redact() -> Redactor:
    return Redactor([OW_KEY, OW_KEY.split(":", 1)[1], "m0ngo/Pa$$:w@rd", PEM])


def test_known_secret_replaced_everywhere_in_a_line(redact: Redactor) -> None:
    line = f"auth={OW_KEY} again {OW_KEY}"
    assert redact(line) == "auth=*** again ***"


def test_json_escaped_secret_is_replaced(redact: Redactor) -> None:
    text = json.dumps({"private_key": PEM, "note": "x"})
    out = redact(text)
    assert "CANARY" not in out
    assert '"note": "x"' in out


def test_percent_encoded_secret_is_replaced(redact: Redactor) -> None:
    out = redact(f"GET /login?password={quote('m0ngo/Pa$$:w@rd', safe='')}&x=1")
    assert "m0ngo" not in out and "Pa%24%24" not in out
    assert out.endswith("&x=1")


def test_basic_auth_header_of_a_known_key_is_replaced(redact: Redactor) -> None:
    header = "Authorization: Basic " + base64.b64encode(OW_KEY.encode()).decode()
    assert redact(header) == "Authorization: Basic ***"


@pytest.mark.parametrize("url, expected", [
    ("mongodb://fk:unknownPW99@db.example.org:27017/fl", "mongodb://fk:***@db.example.org:27017/fl"),
    ("mongodb+srv://fk:p@ss@cluster0.example.net/", "mongodb+srv://fk:***@cluster0.example.net/"),
    ("https://uuid:key0123@10.0.0.7:31001/api/v1/namespaces/guest", "https://uuid:***@10.0.0.7:31001/api/v1/namespaces/guest"),
])
def test_url_passwords_are_removed_even_when_unknown(url: str, expected: str) -> None:
    assert Redactor()(f"cannot reach {url} (timeout)") == f"cannot reach {expected} (timeout)"


def test_bearer_tokens_are_removed_even_when_unknown() -> None:
    out = Redactor()("Authorization: Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl")
    assert out == "Authorization: Bearer ***"


def test_private_key_blocks_are_removed_even_when_unknown() -> None:
    text = "a -----BEGIN RSA PRIVATE KEY-----\nQUJD\n-----END RSA PRIVATE KEY----- b"
    assert Redactor()(text) == "a ***PRIVATE KEY*** b"


def test_private_key_block_cut_short_is_removed_to_the_end() -> None:
    text = 'error: {"private_key": "-----BEGIN PRIVATE KEY-----\\nMIIEvQIBADANBgkqhki'
    out = Redactor()(text)
    assert "MIIEv" not in out and out.startswith('error: {"private_key": "')


def test_prose_is_left_alone() -> None:
    text = "basic training took 3.2 s on https://example.org/path; Bearer of good news"
    assert Redactor()(text) == text


def test_short_values_are_not_treated_as_secrets() -> None:
    # a 3-character "secret" would blank out ordinary words all over the output
    assert Redactor(["abc", ""])("abc def") == "abc def"


def test_redacting_stream_and_logging_filter(redact: Redactor) -> None:
    buffer = io.StringIO()
    RedactingStream(buffer, redact).write(f"key {OW_KEY}\n")
    assert buffer.getvalue() == "key ***\n"

    logger = logging.getLogger("fedkeeper.test.redactor")
    logger.propagate = False
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(RedactingFilter(redact))
    logger.addHandler(handler)
    try:
        logger.warning("auth %s failed", OW_KEY)
        try:
            raise RuntimeError(f"bad key {OW_KEY}")
        except RuntimeError:
            logger.exception("boom")
    finally:
        logger.removeHandler(handler)
    assert "CANARY" not in out.getvalue()
    assert "auth *** failed" in out.getvalue()
    assert "RuntimeError: bad key ***" in out.getvalue()

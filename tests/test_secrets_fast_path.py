"""The redactor's pre-checks (a pattern runs only where the text holds a literal it needs) change no output.

`Redactor.__call__` skips the bearer, basic and private-key regexes on text without "bearer" (any case), "asic" or
"-----BEGIN ". Property: on generated text that mixes credentials of every shape (known secrets, bearer and basic
tokens in any letter case, private-key blocks whole and cut short, URLs with passwords) with prose and non-ASCII
letters that case-fold oddly, the result equals the full redaction (every regex over every text) as it was
before the pre-checks.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedkeeper import secrets
from fedkeeper.secrets import MASK, Redactor, redact_url_credentials

SECRETS = ["s3cr3t-Value", "m0ngo/Pa$$:w@rd", "23bc46b1:CANARYowKEY123zO3xZ"]


def full_redaction(redactor: Redactor, text: str) -> str:
    """The redaction without pre-checks: every pattern over every text."""
    if not text:
        return text
    for s in redactor._secrets:
        if s in text:
            text = text.replace(s, MASK)
    if "://" in text:
        text = redact_url_credentials(text)
    text = secrets._BEARER.sub(r"\1***", text)
    text = secrets._BASIC.sub(r"\1***", text)
    return secrets._PRIVATE_KEY.sub("***PRIVATE KEY***", text)


TOKEN = st.text(st.sampled_from("abcXYZ019+/=._~-"), min_size=0, max_size=20)
#: letters that match ASCII ones only under Unicode case-folding (Kelvin sign, long s, dotted/dotless i, Å)
ODD = st.sampled_from(["\u212a", "\u017f", "\u0130", "\u0131", "\u212b", "é", "ß", "\n", "\t", " "])


@st.composite
def case_variant(draw: st.DrawFn, word: str) -> str:
    return "".join(c.upper() if draw(st.booleans()) else c for c in word)


FRAGMENTS = st.one_of(
    st.text(max_size=12),
    ODD,
    st.sampled_from(SECRETS),
    st.builds(lambda w, sp, t: w + sp + t, case_variant("bearer"), st.sampled_from([" ", "  ", "\t", "\n", ""]),
              TOKEN),
    st.builds(lambda w, sp, t: w + sp + t, st.sampled_from(["Basic", "basic", "BASIC", "xbasic", "asic"]),
              st.sampled_from([" ", "\t", ""]), TOKEN),
    st.builds(lambda kind, body, end: f"-----BEGIN {kind}PRIVATE KEY-----{body}" + (
        f"-----END {kind}PRIVATE KEY-----" if end else ""),
              st.sampled_from(["", "RSA ", "EC ", "rsa "]), st.text(max_size=10), st.booleans()),
    st.builds(lambda scheme, user, pw, host: f"{scheme}://{user}:{pw}@{host}",
              st.sampled_from(["mongodb", "https", "redis+tls"]), st.sampled_from(["u", "admin", ""]),
              st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=10),
              st.sampled_from(["h:27017/db", "host", "a,b/x?y=1"])),
    st.sampled_from(["-----BEGIN ", "://", "bear", "Bearer", "ſ", "be\u0131rer"]),
)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parts=st.lists(FRAGMENTS, max_size=8), joiner=st.sampled_from(["", " ", "\n", ",", '"']))
def test_pre_checks_give_the_full_redaction(parts: list[str], joiner: str) -> None:
    redactor = Redactor(SECRETS)
    text = joiner.join(parts)
    assert redactor(text) == full_redaction(redactor, text)


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=60))
def test_pre_checks_on_any_text(text: str) -> None:
    redactor = Redactor()
    assert redactor(text) == full_redaction(redactor, text)


def test_the_credentials_are_still_removed() -> None:
    """The pre-checks let through no shape the full redaction removes (a fixed case of each)."""
    redact = Redactor()
    assert redact("Authorization: BeArEr abcdefgh1234") == "Authorization: BeArEr ***"
    assert redact("auth basic dXNlcjpwYXNzd29yZA==") == "auth basic ***"
    assert redact("x -----BEGIN EC PRIVATE KEY-----\nabc") == "x ***PRIVATE KEY***"
    assert redact("mongodb://u:pw@h/db") == "mongodb://u:***@h/db"
    assert redact("laptop") == "laptop"

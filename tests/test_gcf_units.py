"""Unit tests of the Cloud Functions provider's pure parts: resource fields, ID-token cache, answer mapping."""

from __future__ import annotations

import base64
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from fedkeeper.providers.google.config import GcfCluster
from fedkeeper.providers.google import resources as res
from fedkeeper.providers.base import (
    LABEL_DIGEST,
    AuthError,
    FunctionMissing,
    InvocationFailed,
    PlatformError,
    State,
    Throttled,
)
from fedkeeper.providers.google.auth import (
    DEFAULT_TOKEN_LIFETIME_S,
    IdTokenCache,
    admin_credentials,
    id_token_fetcher,
    token_expiry,
)
from fedkeeper.providers.google.http import Target, classify

DIGEST = "0123456789abcdef" * 4


@pytest.fixture(autouse=True)
def _loopback() -> Iterator[None]:
    from fake_gcf import loopback_only

    with loopback_only():
        yield


def _jwt(claims: dict) -> str:
    def b64(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{b64({'alg': 'RS256'})}.{b64(claims)}.c2ln"


# ---------------------------------------------------------------------------------------------- resources


def test_function_id_rules() -> None:
    assert res.check_function_id("fk-digits-fedavg-fl-client-12") == "fk-digits-fedavg-fl-client-12"
    for bad in ("fk_exp", "Fk-exp", "1fk", "fk-", "f" * 64, ""):
        with pytest.raises(ValueError, match="Cloud Functions id"):
            res.check_function_id(bad)


def test_labels_follow_gcf_rules() -> None:
    labels = res.sanitize_labels({"fedkeeper-function": "fl_client", "Team Name": "ML Group/2", "9lives": "x" * 80})
    assert labels["fedkeeper-function"] == "fl_client"
    assert labels["team_name"] == "ml_group_2"
    assert labels["k9lives"] == "x" * 63
    for key, value in labels.items():
        assert re.fullmatch(r"[a-z][a-z0-9_-]{0,62}", key), key
        assert re.fullmatch(r"[a-z0-9_-]{0,63}", value), value


def test_digest_split_over_two_labels_round_trips() -> None:
    labels = res.digest_labels(DIGEST.upper())
    assert all(len(v) <= 63 for v in labels.values())
    assert labels[LABEL_DIGEST] == DIGEST[:32]
    assert res.stored_digest(labels) == DIGEST
    assert res.stored_digest({}) is None


def test_memory_units() -> None:
    assert res.memory_field(512) == "512Mi"
    assert res.memory_mb("512Mi") == 512
    assert res.memory_mb("2Gi") == 2048
    assert res.memory_mb("256M") == 244  # decimal megabytes, as GCF's own default is written
    assert res.memory_mb(str(128 * 2**20)) == 128
    assert res.memory_mb("lots") is None and res.memory_mb(None) is None


def test_cpu_only_when_concurrency_needs_it() -> None:
    assert res.cpu_field(512, 1) is None
    assert res.cpu_field(512, 8) == "1"
    assert res.cpu_field(4096, 8) is None


def test_settings_digest_changes_with_settings_but_hides_values() -> None:
    base = res.settings_digest("python311", None, {"A": "secret-value"}, {}, None)
    assert base == res.settings_digest("python311", None, {"A": "secret-value"}, {}, None)
    assert base != res.settings_digest("python312", None, {"A": "secret-value"}, {}, None)
    assert base != res.settings_digest("python311", 5, {"A": "secret-value"}, {}, None)
    assert base != res.settings_digest("python311", None, {"A": "other"}, {}, None)
    assert "secret" not in base


def test_parameters_become_env_strings() -> None:
    assert res.env_from_parameters({"A": "x", "B": 3, "C": {"k": [1]}}) == {"A": "x", "B": "3", "C": '{"k": [1]}'}


# ---------------------------------------------------------------------------------------------- ID tokens


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_token_expiry_reads_exp_and_falls_back() -> None:
    assert token_expiry(_jwt({"exp": 1234}), now=0) == 1234
    assert token_expiry("not-a-jwt", now=100) == 100 + DEFAULT_TOKEN_LIFETIME_S


def test_id_token_cache_reuses_until_expiry_per_audience() -> None:
    clock = Clock()
    fetched: list[str] = []

    def fetch(audience: str) -> str:
        fetched.append(audience)
        return _jwt({"aud": audience, "exp": clock.now + 3600, "n": len(fetched)})

    cache = IdTokenCache(fetch, clock=clock, margin_s=120)
    first, fresh = cache.get("https://a")
    assert fresh
    again, fresh = cache.get("https://a")
    assert again == first and not fresh
    cache.get("https://b")
    assert fetched == ["https://a", "https://b"]
    clock.now += 3600 - 121
    assert cache.get("https://a") == (first, False)
    clock.now += 2  # inside the margin before expiry: renewed
    renewed, fresh = cache.get("https://a")
    assert renewed != first and fresh
    assert fetched == ["https://a", "https://b", "https://a"]


def test_id_token_cache_invalidate_only_the_stale_token() -> None:
    tokens = iter(["t1", "t2", "t3"])
    cache = IdTokenCache(lambda aud: next(tokens), clock=Clock())
    assert cache.get("u")[0] == "t1"
    cache.invalidate("u", "other")  # someone else's stale token: keep ours
    assert cache.get("u")[0] == "t1"
    cache.invalidate("u", "t1")
    assert cache.get("u") == ("t2", True)


def test_id_token_cache_one_fetch_for_a_burst() -> None:
    calls = []
    gate = threading.Event()

    def fetch(audience: str) -> str:
        calls.append(audience)
        gate.wait(5)
        return "tok"

    cache = IdTokenCache(fetch, clock=Clock())
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(cache.get("u")[0])) for _ in range(8)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join(10)
    assert results == ["tok"] * 8
    assert calls == ["u"]


def _cluster(**kw: object) -> GcfCluster:
    return GcfCluster(project_id="p", region="r", **kw)


def test_anonymous_credentials_cannot_mint_id_tokens() -> None:
    from google.auth.credentials import AnonymousCredentials

    config = _cluster(credentials="anonymous")
    assert isinstance(admin_credentials("gcf", config), AnonymousCredentials)
    with pytest.raises(AuthError, match="id_token: false"):
        id_token_fetcher("gcf", config)("https://f")


def test_bad_credentials_file_is_auth_error_without_content(tmp_path: Path) -> None:
    key = tmp_path / "sa.json"
    key.write_text(json.dumps({"type": "service_account", "client_email": "x@y", "private_key": "SECRET-KEY-TEXT"}))
    with pytest.raises(AuthError) as info:
        admin_credentials("gcf", _cluster(credentials=str(key)))
    assert "SECRET-KEY-TEXT" not in str(info.value)
    assert str(key) in str(info.value)


def test_inline_service_account_info_is_used(tmp_path: Path) -> None:
    from fake_gcf import FakeGcf

    with FakeGcf(workdir=tmp_path) as fake:
        info = fake.service_account(tmp_path / "sa.json", "p")
        creds = admin_credentials("gcf", _cluster(service_account_info=info))
        assert creds.service_account_email == info["client_email"]
        token = id_token_fetcher("gcf", _cluster(service_account_info=info))("https://f.example")
        assert fake.id_tokens[token] == "https://f.example"
        assert fake.token_requests[-1]["target_audience"] == "https://f.example"


# ---------------------------------------------------------------------------------------------- answers


def _response(code: int, body: bytes | str = b"", content_type: str = "application/json",
              headers: dict[str, str] | None = None) -> requests.Response:
    response = requests.Response()
    response.status_code = code
    response._content = body.encode() if isinstance(body, str) else body
    response.headers.update({"Content-Type": content_type, **(headers or {})})
    return response


TARGET = Target(name="fk-x-nodeinfo", url="https://r-p.cloudfunctions.net/fk-x-nodeinfo", timeout_s=30)


def _classify(response: requests.Response):
    return classify("gcf", TARGET, response, activation_id="ours", start=1.0, end=3.5)


def test_success_with_execution_id_and_cold_flag() -> None:
    status = _classify(_response(200, '{"ok": 1}', headers={"Function-Execution-Id": "abc123",
                                                              "X-FedKeeper-Cold": "1"}))
    assert status.state is State.SUCCEEDED and status.result == {"ok": 1}
    assert status.activation_id == "abc123" and status.cold is True and status.duration_s == 2.5


def test_success_without_execution_id_keeps_ours() -> None:
    status = _classify(_response(200, "[1, 2]"))
    assert status.state is State.SUCCEEDED and status.result == {"result": [1, 2]}
    assert status.activation_id == "ours" and status.cold is None


def test_success_with_non_json_body_is_failed() -> None:
    status = _classify(_response(200, "<html>", content_type="text/html"))
    assert status.state is State.FAILED and "non-JSON" in status.error


def test_function_error_body_is_failed() -> None:
    status = _classify(_response(500, '{"error": "ValueError: bad shard"}'))
    assert status.state is State.FAILED and status.error == "ValueError: bad shard"


@pytest.mark.parametrize("code, error", [
    (429, Throttled), (503, Throttled), (401, AuthError), (403, AuthError), (404, FunctionMissing),
    (500, PlatformError), (502, PlatformError), (400, InvocationFailed), (413, InvocationFailed),
])
def test_platform_refusals_are_typed(code: int, error: type) -> None:
    with pytest.raises(error) as info:
        _classify(_response(code, "<html>platform says no</html>", content_type="text/html"))
    assert info.value.cluster == "gcf" and TARGET.name in str(info.value)


def test_throttled_carries_retry_after() -> None:
    with pytest.raises(Throttled) as info:
        _classify(_response(429, "Rate exceeded.", content_type="text/plain", headers={"Retry-After": "7"}))
    assert info.value.retry_after_s == 7.0


def test_gateway_timeout_is_timed_out() -> None:
    status = _classify(_response(504, "upstream request timeout", content_type="text/plain"))
    assert status.state is State.TIMED_OUT and "30 s" in status.error


def test_application_default_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fake_gcf import FakeGcf

    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    with pytest.raises(AuthError, match="application default credentials"):
        admin_credentials("gcf", _cluster())
    with FakeGcf(workdir=tmp_path) as fake:
        info = fake.service_account(tmp_path / "adc.json", "p")
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "adc.json"))
        assert admin_credentials("gcf", _cluster()).service_account_email == info["client_email"]
        token = id_token_fetcher("gcf", _cluster())("https://adc.example")  # fetch_id_token reads the same file
        assert fake.id_tokens[token] == "https://adc.example"

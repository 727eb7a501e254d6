"""Data-URL credentials: sent to their own origin only, handed over at deploy time, never in a payload; the
download cache checked against `sha256` on every reuse, or the lack of a checksum said plainly.

Servers are http.server instances on 127.0.0.1 (two of them, on different ports, for the redirect test); every
one is stopped at the end of its test.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import io
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fedkeeper.config import load_text
from fedkeeper.fabric import Fabric
from fedkeeper.runtime import data as D
from fedkeeper.runtime import urls
from fedkeeper.runtime.entry_support import mask, secret_values
from fedkeeper.scenarios.federated_learning import aggregator_payload, client_payload, unchecked_downloads

USER, PASSWORD = "fk", "CANARYdata/pw:8842@x"
BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


class Site:
    """One HTTP server on 127.0.0.1: serves `files`, answers `redirects` with 302, records every Authorization."""

    def __init__(self, *, require: str | None = None) -> None:
        self.files: dict[str, bytes] = {}
        self.redirects: dict[str, str] = {}
        self.seen: list[tuple[str, str | None]] = []  # (path, Authorization header)
        site = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                auth = self.headers.get("Authorization")
                site.seen.append((self.path, auth))
                if self.path in site.redirects:
                    self.send_response(302)
                    self.send_header("Location", site.redirects[self.path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif require is not None and auth != require:
                    self.send_error(401)
                elif self.path in site.files:
                    body = site.files[self.path]
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                else:
                    self.send_error(404)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    D.clear_caches()
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    monkeypatch.setattr(D, "BACKOFF_S", 0.01)
    monkeypatch.delenv(urls.DATA_CREDENTIALS_ENV, raising=False)


@pytest.fixture
def sites() -> Iterator[tuple[Site, Site]]:
    """`home` wants the credential; `other` (another port: another origin) serves anyone."""
    home, other = Site(require=BASIC), Site()
    try:
        yield home, other
    finally:
        home.close()
        other.close()


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def with_userinfo(url: str) -> str:
    return url.replace("http://", f"http://{USER}:{urls.quote(PASSWORD, safe='')}@")


# ---------------------------------------------------------------------------------------------- origins


def test_a_redirect_to_another_origin_never_carries_the_credential(sites: tuple[Site, Site]) -> None:
    home, other = sites
    other.files["/y.npy"] = npy(np.arange(5))
    home.redirects["/y.npy"] = f"{other.url}/y.npy"
    path = D.download(with_userinfo(f"{home.url}/y.npy"))
    assert np.array_equal(np.load(path), np.arange(5))
    assert home.seen == [("/y.npy", BASIC)]  # the credential went to its own origin...
    assert other.seen == [("/y.npy", None)]  # ...and not across the redirect to another port


def test_a_redirect_within_the_origin_keeps_the_credential(sites: tuple[Site, Site]) -> None:
    home, _ = sites
    home.files["/new.npy"] = npy(np.arange(3))
    home.redirects["/old.npy"] = f"{home.url}/new.npy"
    D.download(with_userinfo(f"{home.url}/old.npy"))
    assert home.seen == [("/old.npy", BASIC), ("/new.npy", BASIC)]


def test_a_redirect_back_from_another_origin_does_not_get_it_back(sites: tuple[Site, Site]) -> None:
    home, other = sites
    home.redirects["/a.npy"] = f"{other.url}/b.npy"
    other.redirects["/b.npy"] = f"{home.url}/c.npy"
    home.files["/c.npy"] = npy(np.arange(2))
    with pytest.raises(D.DataError, match="401") as info:
        D.download(with_userinfo(f"{home.url}/a.npy"))
    assert [auth for _p, auth in other.seen] == [None]
    assert PASSWORD not in str(info.value) and "CANARY" not in str(info.value)


@pytest.mark.parametrize("a, b, same", [
    ("http://h:80/x", "http://H/y", True),
    ("https://h/x", "https://h:443/y", True),
    ("http://h/x", "https://h/x", False),            # another scheme
    ("http://h:8080/x", "http://h:8081/x", False),   # another port
    ("http://127.0.0.1/x", "http://localhost/x", False),  # another host name, even for the same machine
    ("http://u:p@h/x", "http://h/y", True),          # userinfo is not part of the origin
    ("http://[::1]:9/x", "http://[::1]:9/y", True),
])
def test_origins(a: str, b: str, same: bool) -> None:
    assert (urls.origin(a) == urls.origin(b)) is same
    assert urls.origin("ftp://h/x") is None and urls.origin("mongodb://h/x") is None


# ---------------------------------------------------------------------------------------------- deploy time


CONFIG = """
experiment: creds
providers: {{local: {{laptop: {{}}}}}}
scenarios:
  federated_learning:
    rounds: 1
    clients_info: {{total_num_clients: 2, num_clients_per_round: 2}}
    training_test_data:
      train_images: "{base}/train_x.npy"
      train_labels: "{base}/train_y.npy"
      test_images: "{base}/test.npz#x"
      test_labels: https://public.example.org/test_y.npy
      sha256: {{train_labels: "{digest}"}}
"""


def config_with(password: str) -> object:
    base = f"https://{USER}:{urls.quote(password, safe='')}@data.example.org/mnist"
    return load_text(CONFIG.format(base=base, digest="a" * 64))


def test_payloads_carry_no_credential_and_the_functions_get_it_at_deploy_time(tmp_path: Path) -> None:
    config = config_with(PASSWORD)
    fl = config.fl  # type: ignore[attr-defined]
    for payload in (client_payload("r", 1, 0, fl), aggregator_payload("r", 1, "aggregate", fl, 3)):
        text = repr(payload)
        assert "CANARY" not in text and "@data.example.org" not in text
        assert payload["data"]["test_images"] == "https://data.example.org/mnist/test.npz#x"
    fabric = Fabric(config, tmp_path)  # type: ignore[arg-type]
    store_env = {"FK_MONGO_URL": "mongodb://127.0.0.1:1", "FK_MONGO_DB": "fl"}
    with fabric:
        client = fabric.deploy_spec("fl_client", "laptop", store_env)
        server = fabric.deploy_spec("fl_server_aggregator", "laptop", store_env)
        assert urls.DATA_CREDENTIALS_ENV not in fabric.function_env("nodeinfo")
    for spec in (client, server):
        known = urls.decode_credentials(spec.env[urls.DATA_CREDENTIALS_ENV])
        assert known == {f"https://data.example.org/mnist/{name}": (USER, PASSWORD)
                         for name in ("train_x.npy", "train_y.npy", "test.npz")}
        assert "CANARY" not in repr(spec) and "CANARY" not in repr(spec.labels)
    # a changed password changes the digest: the functions are redeployed with it
    with Fabric(config_with(PASSWORD + "2"), tmp_path) as changed:  # type: ignore[arg-type]
        assert changed.deploy_spec("fl_client", "laptop", store_env).digest != client.digest


def test_the_function_reattaches_the_credential_from_its_environment(sites: tuple[Site, Site],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    home, other = sites
    home.files["/x.npy"] = npy(np.arange(4))
    clean = f"{home.url}/x.npy"
    with pytest.raises(D.DataError, match="401"):  # no credential anywhere: the server refuses
        D.download(clean)
    monkeypatch.setenv(urls.DATA_CREDENTIALS_ENV, urls.encode_credentials({clean: (USER, PASSWORD)}))
    assert np.array_equal(np.load(D.download(clean)), np.arange(4))
    other.files["/x.npy"] = npy(np.arange(4))
    D.download(f"{other.url}/x.npy")  # a URL the credential was not given for gets none
    assert other.seen == [("/x.npy", None)]


def test_function_errors_mask_the_data_credentials() -> None:
    value = urls.encode_credentials({"https://h/x.npy": (USER, PASSWORD)})
    secrets = secret_values([value, f"mongodb://fk:{urls.quote_plus('m0/ngo pw')}@h/db"])
    text = f"auth {USER}:{PASSWORD} failed; pw {PASSWORD}; store m0/ngo pw; {value}"
    out = mask(text, secrets)
    assert "CANARY" not in out and "m0/ngo" not in out


# ---------------------------------------------------------------------------------------------- checksums


def test_the_cache_is_checked_on_every_reuse_and_keyed_without_the_credential(sites: tuple[Site, Site]) -> None:
    home, _ = sites
    good = npy(np.arange(6))
    home.files["/d.npy"] = good
    digest = hashlib.sha256(good).hexdigest()
    first = D.download(with_userinfo(f"{home.url}/d.npy"), sha256=digest)
    # the same file with another password (rotated): no new download, the cache key has no credential in it
    home_other_pw = f"{home.url}/d.npy".replace("http://", "http://fk:rotated@")
    assert D.download(home_other_pw, sha256=digest) == first and len(home.seen) == 1
    assert "rotated" not in first.name and PASSWORD not in first.name
    first.write_bytes(npy(np.arange(99)))  # tampered with in the cache: fetched again, since a digest is known
    assert D.download(with_userinfo(f"{home.url}/d.npy"), sha256=digest).read_bytes() == good
    assert len(home.seen) == 2
    home.files["/d.npy"] = npy(np.arange(7))  # the server now serves something else: refused, nothing cached
    first.unlink()
    with pytest.raises(D.DataError, match=r"has sha256 .*, expected .*nothing was cached") as info:
        D.download(with_userinfo(f"{home.url}/d.npy"), sha256=digest)
    assert "CANARY" not in str(info.value) and not first.exists()


def test_the_cache_folder_is_private(tmp_path: Path) -> None:
    folder = D.cache_dir()
    assert folder.name.endswith(str(os.getuid()))
    folder.mkdir(mode=0o777)
    folder.chmod(0o777)
    D._private_cache_dir()
    assert folder.stat().st_mode & 0o777 == 0o700  # tightened
    folder.rmdir()
    elsewhere = tmp_path / "planted"
    elsewhere.mkdir()
    folder.symlink_to(elsewhere)  # someone made the cache path point at their folder
    with pytest.raises(D.DataError, match="not this user's own folder"):
        D._private_cache_dir()


def test_unchecked_downloads_are_said_plainly(run_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    config = config_with(PASSWORD)
    assert unchecked_downloads(config.fl) == {  # type: ignore[attr-defined]
        "train_images": "https://data.example.org/mnist/train_x.npy",
        "test_images": "https://data.example.org/mnist/test.npz",  # (no credential, no #name)
        "test_labels": "https://public.example.org/test_y.npy"}
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG.format(base="http://fk:${FKT_DATA_PW}@data.example.org/mnist", digest="a" * 64))
    result = run_cli("validate", "-c", path.name, env={"FKT_DATA_PW": "CANARYdataPW77"}, cwd=tmp_path)
    assert result.code == 0, result.stderr
    assert result.stderr.count("downloaded without a checksum") == 3
    assert "train_labels: downloaded without" not in result.stderr
    assert "sends its password unencrypted" in result.stderr
    assert "CANARY" not in result.stdout + result.stderr


def test_a_data_password_written_into_the_file_warns() -> None:
    text = CONFIG.format(base="https://fk:CANARYinline77@data.example.org/mnist", digest="a" * 64)
    warnings = [str(w) for w in load_text(text).warnings]
    assert sum("holds a password written into the config file" in w for w in warnings) == 3
    assert not any("CANARY" in w for w in warnings)


def test_an_ambiguous_data_url_is_refused_without_quoting_it(run_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG.format(base="https://fk:${FKT_DATA_PW}@data.example.org/mnist", digest="a" * 64))
    result = run_cli("validate", "-c", path.name, env={"FKT_DATA_PW": "CANARY/data?pw"}, cwd=tmp_path)
    assert result.code == 2
    assert "training_test_data.train_images: the user name or password in this URL holds characters" in result.stderr
    assert "CANARY" not in result.stdout + result.stderr and "data?pw" not in result.stderr

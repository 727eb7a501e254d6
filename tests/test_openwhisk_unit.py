"""OpenWhisk pieces that need no running action: record mapping, transport settings, config forms, entry file,
and the fake controller's own fidelity to the documented REST shapes."""

from __future__ import annotations

import base64
import importlib.util
import os
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import requests

from fake_openwhisk import FakeOpenWhisk
from fedkeeper import config as cfg
from fedkeeper.providers.openwhisk.config import OpenWhiskCluster
from fedkeeper.providers.base import AuthError, State
from fedkeeper.providers.openwhisk.provider import OpenWhiskProvider, activation_status
from fedkeeper.providers.openwhisk.client import retry_after_seconds, split_auth

AUTH = "23bc46b1-71f6-4ed5-8c54-816aa4f8c502:123zO3xZCLrMN6v2BKK1dXYFpXlPkccOFqm12CdAsMgRU4VrNZ9lyGVCGuMDGIwP"


# ---------------------------------------------------------------------------------------------- activation records


def record(status: str, result: dict[str, Any] | None, **extra: Any) -> dict[str, Any]:
    doc = {"activationId": "f" * 32, "start": 1_700_000_000_000, "end": 1_700_000_001_500, "duration": 1500,
           "response": {"status": status, "success": status == "success", "result": result},
           "annotations": [{"key": "waitTime", "value": 12}]}
    doc.update(extra)
    return doc


def test_success_maps_times_from_ms_to_seconds() -> None:
    status = activation_status(record("success", {"ok": 1}), "f" * 32)
    assert status.state is State.SUCCEEDED and status.result == {"ok": 1} and status.error is None
    assert (status.start, status.end, status.duration_s) == (1_700_000_000.0, 1_700_000_001.5, 1.5)
    assert status.cold is False and status.activation_id == "f" * 32


def test_init_time_marks_a_cold_start() -> None:
    doc = record("success", {}, annotations=[{"key": "initTime", "value": 300}, {"key": "waitTime", "value": 5}])
    assert activation_status(doc, "x").cold is True


@pytest.mark.parametrize(("status", "error", "state"), [
    ("application error", "ValueError: bad", State.FAILED),
    ("action developer error", "The action exceeded its time limits of 60000 milliseconds.", State.TIMED_OUT),
    ("action developer error", "The action did not produce a valid response and exited unexpectedly.", State.FAILED),
    ("action developer error", "The action did not return a dictionary.", State.FAILED),
    ("whisk internal error", "Failed to run container", State.FAILED),
    ("something new", "?", State.FAILED),
])
def test_error_statuses(status: str, error: str, state: State) -> None:
    mapped = activation_status(record(status, {"error": error}), "x")
    assert mapped.state is state
    assert error in (mapped.error or "")
    if status == "whisk internal error":
        assert mapped.error == f"whisk internal error: {error}"


def test_error_without_text_and_structured_errors() -> None:
    assert activation_status(record("application error", {}), "x").error == \
        "activation ended with status 'application error'"
    nested = activation_status(record("application error", {"error": {"code": 7}}), "x")
    assert nested.state is State.FAILED and nested.error == '{"code": 7}'


# ---------------------------------------------------------------------------------------------- transport settings


def test_split_auth_at_the_first_colon() -> None:
    assert split_auth("uuid:key:with:colons") == ("uuid", "key:with:colons")
    for bad in ("nokey", ":key", "uuid:"):
        with pytest.raises(ValueError):
            split_auth(bad)


def test_retry_after_parsing() -> None:
    assert retry_after_seconds("2") == 2.0
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past


def test_tls_verification_is_on_by_default(tmp_path: Path) -> None:
    with OpenWhiskProvider("ow", OpenWhiskCluster(api_host="https://ow.example.org", auth=AUTH),
                           workdir=tmp_path) as p:
        assert p.client.session.verify is True and p.client.verify is True
        assert p.client.session.auth == tuple(AUTH.split(":", 1))
        assert p.client.base_path == "/api/v1/namespaces/_"


def test_tls_verification_off_only_when_configured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    config = OpenWhiskCluster(api_host="https://ow.example.org", auth=AUTH, verify_tls=False)
    with OpenWhiskProvider("ow-selfsigned", config, workdir=tmp_path) as p:
        assert p.client.session.verify is False
        sent: dict[str, Any] = {}

        def fake_request(method: str, url: str, **kwargs: Any) -> requests.Response:
            sent.update(kwargs, url=url)
            response = requests.Response()
            response.status_code, response._content = 200, b"[]"
            return response

        # An env CA bundle must not flip the setting either way: verify is passed explicitly on every call.
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/nonexistent/ca.pem")
        monkeypatch.setattr(p.client.session, "request", fake_request)
        assert p.list() == []
        assert sent["verify"] is False and AUTH not in sent["url"]
    assert "verification is OFF" in caplog.text and AUTH.split(":")[1] not in caplog.text


def test_missing_or_malformed_auth_is_an_auth_error(tmp_path: Path) -> None:
    with pytest.raises(AuthError, match="no key configured"):
        OpenWhiskProvider("ow", OpenWhiskCluster(api_host="https://ow.example.org"), workdir=tmp_path)
    with pytest.raises(AuthError, match="uuid:key"):
        OpenWhiskProvider("ow", OpenWhiskCluster(api_host="https://ow.example.org", auth="justakey"),
                          workdir=tmp_path)


def test_cluster_repr_hides_the_key() -> None:
    assert AUTH.split(":")[1] not in repr(OpenWhiskCluster(api_host="https://ow.example.org", auth=AUTH))


# ---------------------------------------------------------------------------------------------- config forms


def write_config(tmp_path: Path, cluster_yaml: str) -> Path:
    path = tmp_path / "fedkeeper.yaml"
    path.write_text("experiment: owcfg\nscenarios: {smoke: {}}\nproviders:\n  openwhisk:\n    ow1:\n"
                    + textwrap.indent(textwrap.dedent(cluster_yaml), "      "), encoding="utf-8")
    return path


def test_legacy_base_url_with_a_key_is_split_and_never_sent_in_urls(fake_openwhisk: FakeOpenWhisk,
                                                                    tmp_path: Path) -> None:
    uuid, key = fake_openwhisk.auth.split(":", 1)
    host = fake_openwhisk.url.split("//", 1)[1]
    config = cfg.load(write_config(tmp_path, f"base_url: http://{uuid}:{key}@{host}/api/v1/namespaces/guest\n"))
    cluster = config.providers.openwhisk["ow1"]
    assert (cluster.api_host, cluster.namespace, cluster.auth) == (fake_openwhisk.url, "guest", fake_openwhisk.auth)
    assert any("base_url" in w.path for w in config.warnings)
    with OpenWhiskProvider("ow1", cluster, workdir=tmp_path) as p:
        assert p.list() == []
    assert fake_openwhisk.requests and all(key not in r.url and uuid not in r.url for r in fake_openwhisk.requests)
    assert fake_openwhisk.requests[-1].path == "/api/v1/namespaces/guest/actions"


def test_auth_from_env_and_from_a_wskprops_file(fake_openwhisk: FakeOpenWhisk, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FK_TEST_OW_AUTH", fake_openwhisk.auth)
    from_env = cfg.load(write_config(tmp_path, f"api_host: {fake_openwhisk.url}\nauth: ${{FK_TEST_OW_AUTH}}\n"))
    assert fake_openwhisk.auth in from_env.secrets()
    props = tmp_path / "wskprops"
    props.write_text(f"APIHOST={fake_openwhisk.url}\nAUTH={fake_openwhisk.auth}\n", encoding="utf-8")
    from_file = cfg.load(write_config(tmp_path, f"auth_file: {props}\n"))
    for config in (from_env, from_file):
        with OpenWhiskProvider("ow1", config.providers.openwhisk["ow1"], workdir=tmp_path) as p:
            assert p.list() == []


# ---------------------------------------------------------------------------------------------- entry file


def load_entry(tmp_path: Path, handler_source: str) -> Any:
    """Import entries/openwhisk.py as the runtime would (`main__`), next to a given handler.py."""
    folder = tmp_path / "action"
    folder.mkdir()
    (folder / "handler.py").write_text(textwrap.dedent(handler_source), encoding="utf-8")
    entry = Path(__file__).resolve().parents[1] / "fedkeeper" / "providers" / "openwhisk" / "entry.py"
    (folder / "main__.py").write_bytes(entry.read_bytes())
    sys.modules.pop("handler", None)
    spec = importlib.util.spec_from_file_location("main__", folder / "main__.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Any:
    for key in list(os.environ):
        if key.startswith(("FK_", "__OW_")) or key == "SECRET_X":
            monkeypatch.delenv(key)
    yield monkeypatch
    sys.modules.pop("handler", None)
    sys.path[:] = [p for p in sys.path if "action" not in Path(p).name]


def test_entry_splits_settings_from_params(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    entry = load_entry(tmp_path, """
        import os
        def handle(params):
            return {"params": params, "url": os.environ.get("FK_MONGO_URL"), "x": os.environ.get("SECRET_X"),
                    "n": os.environ.get("FK_NUMBER")}
    """)
    clean_env.setenv("__OW_ACTIVATION_ID", "abc")
    out = entry.main({"FK_MONGO_URL": "mongodb://h/x", "FK_NUMBER": 3, "SECRET_X": "s", "FK_ENV_KEYS": "SECRET_X",
                      "__ow_headers": {}, "a": 1})
    assert out == {"params": {"a": 1}, "url": "mongodb://h/x", "x": "s", "n": "3"}
    assert os.environ["FK_PLATFORM_ACTIVATION_ID"] == "abc"


def test_entry_returns_masked_errors(tmp_path: Path, clean_env: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    entry = load_entry(tmp_path, """
        import os
        def handle(params):
            if params.get("kind") == "list":
                return [1, 2]
            if params.get("kind") == "path":
                raise KeyError("fedkeeper/runtime/model.py")
            raise RuntimeError("cannot reach " + os.environ["FK_MONGO_URL"])
    """)
    url = "mongodb://user:hunter2secret@db.example.org/fk"
    out = entry.main({"FK_MONGO_URL": url, "FK_MONGO_DB": "fedkeeper"})
    assert out == {"error": "RuntimeError: cannot reach ***"}
    clean_env.setenv("FK_MONGO_URL", "mongodb://db.example.org/fedkeeper")  # no password: the whole URL is masked
    assert entry.main({"FK_MONGO_DB": "fedkeeper"}) == {"error": "RuntimeError: cannot reach ***"}
    nodb = entry.main({"FK_MONGO_URL": "fedkeeper", "FK_MONGO_DB": "fedkeeper"})
    assert nodb == {"error": "RuntimeError: cannot reach ***"}  # a URL setting is masked whatever it holds
    assert "hunter2secret" not in capsys.readouterr().err
    assert entry.main({"FK_MONGO_URL": url, "kind": "list"}) == {"error": "the handler returned list, not a dict"}
    # FK_MONGO_DB is not a secret: masking its value would garble every message that mentions the package
    assert entry.main({"FK_MONGO_URL": url, "FK_MONGO_DB": "fedkeeper", "kind": "path"}) == \
        {"error": "KeyError: 'fedkeeper/runtime/model.py'"}


def test_entry_reports_a_handler_that_cannot_be_imported(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    entry = load_entry(tmp_path, "import numpy_that_does_not_exist\n")
    out = entry.main({})
    assert out["error"].startswith("cannot load the function's handler: ModuleNotFoundError")


# ---------------------------------------------------------------------------------------------- the fake itself


def test_fake_speaks_the_documented_shapes(fake_openwhisk: FakeOpenWhisk) -> None:
    base = f"{fake_openwhisk.url}/api/v1/namespaces/_/actions"
    auth = tuple(fake_openwhisk.auth.split(":", 1))
    code = "def main(args):\n    return {'hello': args.get('name', 'world')}\n"
    body = {"exec": {"kind": "python:3.11", "code": code}}
    assert requests.put(f"{base}/hello", json=body, timeout=10).status_code == 401
    assert requests.put(f"{base}/hello", json=body, auth=auth, timeout=10).status_code == 200
    conflict = requests.put(f"{base}/hello", json=body, auth=auth, timeout=10)
    assert conflict.status_code == 409 and set(conflict.json()) == {"error", "code"}
    bad_kind = requests.put(f"{base}/old", json={"exec": {"kind": "python:3", "code": code}}, auth=auth, timeout=10)
    assert bad_kind.status_code == 400 and "python:3" in bad_kind.json()["error"]

    done = requests.post(f"{base}/hello?blocking=true&result=true", json={"name": "ow"}, auth=auth, timeout=60)
    assert done.status_code == 200 and done.json() == {"hello": "ow"}
    assert len(done.headers["x-openwhisk-activation-id"]) == 32
    full = requests.post(f"{base}/hello?blocking=true", json={}, auth=auth, timeout=60).json()
    assert full["response"]["status"] == "success" and full["response"]["result"] == {"hello": "world"}
    record = requests.get(f"{fake_openwhisk.url}/api/v1/namespaces/guest/activations/{full['activationId']}",
                          auth=auth, timeout=10)
    assert record.status_code == 200 and record.json()["activationId"] == full["activationId"]
    assert requests.get(f"{fake_openwhisk.url}/api/v1/namespaces/_/activations/{'0' * 32}", auth=auth,
                        timeout=10).status_code == 404
    too_big = requests.post(f"{base}/hello", data=b'{"x": "' + b"a" * (1024 * 1024) + b'"}', auth=auth, timeout=10,
                            headers={"Content-Type": "application/json"})
    assert too_big.status_code == 413
    failing = {"exec": {"kind": "python:3.11", "code": "def main(args):\n    return {'error': 'no'}\n"}}
    assert requests.put(f"{base}/fails", json=failing, auth=auth, timeout=10).status_code == 200
    assert requests.post(f"{base}/fails?blocking=true", json={}, auth=auth, timeout=60).status_code == 502
    got = requests.get(f"{base}/hello?code=false", auth=auth, timeout=10).json()
    assert "code" not in got["exec"] and got["version"] == "0.0.1"
    listed = requests.get(f"{base}?limit=200&skip=0", auth=auth, timeout=10).json()
    assert {a["name"] for a in listed} == {"hello", "fails"} and "code" not in listed[0]["exec"]
    assert requests.delete(f"{base}/hello", auth=auth, timeout=10).status_code == 200
    assert requests.delete(f"{base}/hello", auth=auth, timeout=10).status_code == 404


def test_fake_runs_a_zip_and_reports_a_failed_init(fake_openwhisk: FakeOpenWhisk) -> None:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("__main__.py", "import no_such_module\n")
    base = f"{fake_openwhisk.url}/api/v1/namespaces/_/actions"
    auth = tuple(fake_openwhisk.auth.split(":", 1))
    body = {"exec": {"kind": "python:3.11", "binary": True, "code": base64.b64encode(buf.getvalue()).decode()}}
    assert requests.put(f"{base}/broken", json=body, auth=auth, timeout=10).status_code == 200
    out = requests.post(f"{base}/broken?blocking=true", json={}, auth=auth, timeout=60).json()
    assert out["response"]["status"] == "action developer error"
    assert out["response"]["result"]["error"].startswith("Initialization has failed due to: ModuleNotFoundError")


def test_entry_hint_covers_wheels_built_for_another_python(fake_openwhisk: FakeOpenWhisk, tmp_path: Path) -> None:
    """cp311 wheels on python:default (3.10): numpy is there but raises ImportError, not ModuleNotFoundError.
    Run as the runtime runs it (the fake controller's action process), with a numpy that fails like that."""
    import io
    import zipfile

    from fedkeeper import packaging

    folder = tmp_path / "abi"
    (folder / "numpy").mkdir(parents=True)
    (folder / "numpy" / "__init__.py").write_text(
        "raise ImportError('Error importing numpy: you should not try to import numpy from its source directory; "
        "please exit the numpy source tree, and relaunch your python interpreter from there.')\n")
    (folder / "handler.py").write_text("import numpy\ndef handle(params):\n    return {}\n")
    artifact = packaging.build(folder, "openwhisk")
    assert "numpy/__init__.py" in zipfile.ZipFile(io.BytesIO(artifact.data)).namelist()
    base = f"{fake_openwhisk.url}/api/v1/namespaces/_/actions"
    auth = tuple(fake_openwhisk.auth.split(":", 1))
    body = {"exec": {"kind": "python:default", "binary": True, "code": base64.b64encode(artifact.data).decode()}}
    assert requests.put(f"{base}/abi", json=body, auth=auth, timeout=30).status_code == 200
    out = requests.post(f"{base}/abi?blocking=true&result=true", json={}, auth=auth, timeout=60).json()
    assert out["error"].startswith("cannot load the function's handler: ImportError: Error importing numpy")
    assert "vendored wheels must be built for the runtime kind's Python" in out["error"]

"""No secret from a config reaches stdout, stderr, Logs/, a package zip, a payload or an error message.

Canary values are planted where secrets live — an OpenWhisk key and AWS keys through ${ENV}, a MongoDB
password inside the store URL, a GCP private key in a service-account file, a token in function parameters, a
password in the data URLs — and then the commands run: the ones that succeed (validate, deploy --dry-run,
package) and the ones that fail on their error paths (an OpenWhisk controller, a Lambda endpoint and a MongoDB
server on a 127.0.0.1 port that refuses connections). Every output and every file written is searched, the
members of zip files included.

`test_every_command_on_every_platform` (slow) does it for real: one config with clusters on all four platforms
(the fakes of tests/fake_openwhisk.py, tests/fake_gcf.py and tests/fake_lambda.py, each with canary
credentials), a password-protected store (tests/fake_mongo_auth.py in front of nx-27017) and data files behind
HTTP Basic auth; validate, deploy --dry-run, package, deploy, status, start, logs, report, smoke and remove run,
then the error paths (a wrong store password, a key the platform refuses, a data password the server refuses).
The payloads every fake recorded and everything the functions logged are searched too.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest

OW_AUTH = "c0ffee00-1111-2222-3333-444455556666:CANARYowKEY8842zO3xZCLrMN6v2BKK1d"
AWS_KEY_ID = "AKIACANARY8842AWSID0"
AWS_SECRET = "CANARYawsSECRET8842xyzAbCdEfGhIjKlMnOpQr"
MONGO_PW = "CANARYmongoPW8842"
GCP_KEY_ID = "CANARYgcpKEYID5521abcdef"
GCP_PEM = "-----BEGIN PRIVATE KEY-----\nMIIEvCANARYgcpPEM5521line1\nCANARYgcpPEM5521line2\n-----END PRIVATE KEY-----\n"
API_TOKEN = "CANARYparamTOKEN7731"
DATA_PW = "CANARYdataPW6613/x y"

#: what must never appear: every secret whole, and the distinctive parts (the key without the uuid, a PEM line)
CANARIES = [OW_AUTH, OW_AUTH.split(":", 1)[1], AWS_KEY_ID, AWS_SECRET, MONGO_PW, GCP_KEY_ID, "CANARYgcpPEM5521",
            API_TOKEN, "CANARYdataPW6613"]
ENV = {"FKT_OW_AUTH": OW_AUTH, "FKT_AWS_KEY_ID": AWS_KEY_ID, "FKT_AWS_SECRET": AWS_SECRET,
       "FKT_MONGO_PW": MONGO_PW, "FKT_API_TOKEN": API_TOKEN, "FKT_DATA_PW": quote(DATA_PW, safe="")}


def assert_clean(*texts: str, where: str = "output") -> None:
    for text in texts:
        for canary in CANARIES:
            assert canary not in text, f"secret {canary[:12]}… leaked into {where}:\n{text[:2000]}"


def assert_tree_clean(root: Path, skip: set[Path]) -> int:
    """Search every file under root (bytes, so binary files count too); returns how many were searched.

    The local platform's record of a deployed function (.fedkeeper/local/<cluster>/<function>/meta.json) is
    that platform's equivalent of a cloud function's configuration: it holds the function's environment and
    parameters by design, so it is exempt — but it must be readable by its owner only."""
    count = 0
    for path in root.rglob("*"):
        if not path.is_file() or path in skip:
            continue
        if path.name == "meta.json" and path.relative_to(root).parts[:2] == (".fedkeeper", "local"):
            assert path.stat().st_mode & 0o077 == 0, f"{path} must be private (mode 0600)"
            continue
        for where, data in _contents(path):
            assert_bytes_clean(data, f"{path.relative_to(root)}{where}")
        count += 1
    return count


def assert_bytes_clean(data: bytes, where: str, canaries: list[str] | None = None) -> None:
    for canary in canaries or CANARIES:
        for form in {canary, json.dumps(canary)[1:-1], quote(canary, safe=""), quote_plus(canary)}:
            assert form.encode() not in data, f"secret {canary[:12]}… found in {where}"


def _contents(path: Path) -> list[tuple[str, bytes]]:
    """A file's bytes, and for a zip (a function package) each member's, uncompressed."""
    data = path.read_bytes()
    out = [("", data)]
    if data[:4] == b"PK\x03\x04":
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            out += [(f"!{name}", zf.read(name)) for name in zf.namelist()]
    return out


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A 127.0.0.1 port that refuses connections for the whole test (bound, never listening: no race)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def write_service_account(folder: Path) -> Path:
    path = folder / "sa.json"
    path.write_text(json.dumps({
        "type": "service_account", "project_id": "canary-project", "private_key_id": GCP_KEY_ID,
        "private_key": GCP_PEM, "client_email": "fk@canary-project.iam.gserviceaccount.com",
        "token_uri": "https://oauth2.googleapis.com/token"}))
    return path


def clusters_yaml(port: int) -> str:
    """Every platform, all on a refusing loopback port (so no network traffic leaves this machine)."""
    return f"""
  openwhisk:
    ow:
      api_host: http://127.0.0.1:{port}
      auth: ${{FKT_OW_AUTH}}
      request_timeout_s: 2
  aws:
    lam:
      region: eu-central-1
      endpoint_url: http://127.0.0.1:{port}
      access_key_id: ${{FKT_AWS_KEY_ID}}
      secret_access_key: ${{FKT_AWS_SECRET}}
  google:
    gcf:
      project_id: canary-project
      region: europe-west1
      credentials: sa.json
      api_endpoint: http://127.0.0.1:{port}
"""


def failing_config(folder: Path, port: int) -> Path:
    """Clients on every platform and a password-protected store, none of which answers."""
    write_service_account(folder)
    path = folder / "fail.yaml"
    path.write_text(f"""
experiment: canary
providers:
  local:
    laptop: {{concurrency: 1}}
{clusters_yaml(port)}
mongo_config:
  url: mongodb://fk:${{FKT_MONGO_PW}}@127.0.0.1:{port}/?authSource=admin
  server_selection_timeout_ms: 300
  connect_timeout_ms: 300
functions:
  fl_client:
    local: {{parameters: {{api_token: "${{FKT_API_TOKEN}}"}}}}
scenarios:
  federated_learning:
    rounds: 1
    clients_info: {{total_num_clients: 4, num_clients_per_round: 4, placement: {{laptop: 1, ow: 1, lam: 1, gcf: 1}}}}
    training_test_data:
      train_images: https://fk:${{FKT_DATA_PW}}@127.0.0.1:{port}/digits/train_x.npy
      train_labels: https://fk:${{FKT_DATA_PW}}@127.0.0.1:{port}/digits/train_y.npy
      test_images: https://fk:${{FKT_DATA_PW}}@127.0.0.1:{port}/digits/test.npz#x
      test_labels: https://fk:${{FKT_DATA_PW}}@127.0.0.1:{port}/digits/test.npz#y
""")
    return path


@pytest.mark.parametrize("args, code", [
    (["validate"], 0),
    (["validate", "--json"], 0),
    (["deploy", "--dry-run"], 0),
    (["deploy", "--dry-run", "--json"], 0),
    (["deploy"], 1),                                               # the store refuses: StoreUnavailable
    (["-v", "deploy", "--scenario", "smoke", "--clusters", "ow"], 1),  # OpenWhisk refuses; traceback shown
    (["remove", "--clusters", "lam"], 1),                          # the Lambda endpoint refuses
    (["remove", "--clusters", "gcf"], 1),                          # the fake PEM does not load: AuthError
    (["remove", "--clusters", "ow"], 1),                           # the OpenWhisk controller refuses
    (["status"], 1),
    (["-v", "start"], 1),                                          # the store refuses; traceback shown
    (["smoke", "--clusters", "laptop,ow"], 1),                     # nodeinfo on local works; OpenWhisk refuses
    (["package", "--out", "build/functions"], 0),                  # the zips are searched member by member
    (["logs", "latest"], 2),                                       # no run yet
    (["report", "latest"], 2),
], ids=lambda v: "-".join(v) if isinstance(v, list) else str(v))
def test_commands_never_print_a_secret(args: list[str], code: int, run_cli, tmp_path: Path,  # type: ignore[no-untyped-def]
                                       refused_port: int) -> None:
    config = failing_config(tmp_path, refused_port)
    result = run_cli(*args, "-c", config.name, env=ENV, cwd=tmp_path)
    assert result.code == code, result.stdout + result.stderr
    assert "Traceback" not in result.stderr or "-v" in args
    assert_clean(result.stdout, result.stderr)
    assert_tree_clean(tmp_path, skip={config, tmp_path / "sa.json"})


def test_a_failing_command_as_a_real_process(tmp_path: Path, refused_port: int) -> None:
    """The same through real file descriptors: nothing a child process or a library prints may leak."""
    config = failing_config(tmp_path, refused_port)
    proc = subprocess.run([sys.executable, "-m", "fedkeeper.cli", "-v", "deploy", "-c", config.name],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120, env={**os.environ, **ENV})
    assert proc.returncode == 1, proc.stderr
    assert "127.0.0.1" in proc.stderr  # the error names the host it could not reach...
    assert_clean(proc.stdout, proc.stderr)  # ...and never the password


def test_config_errors_never_print_a_secret(run_cli, tmp_path: Path, refused_port: int) -> None:  # type: ignore[no-untyped-def]
    config = failing_config(tmp_path, refused_port)
    text = config.read_text()
    # secrets in values that are wrong for other reasons: they must be reported without being quoted
    text = text.replace("request_timeout_s: 2", "request_timeout_s: ${FKT_OW_AUTH}")
    text = text.replace("region: eu-central-1", "region: eu-central-1\n      max_inflight: ${FKT_AWS_SECRET}")
    text = text.replace("experiment: canary", "experiment: canary\nunknown_key: ${FKT_MONGO_PW}")
    config.write_text(text)
    result = run_cli("validate", "-c", config.name, env=ENV, cwd=tmp_path)
    assert result.code == 2
    assert "providers.openwhisk.ow.request_timeout_s" in result.stderr
    assert "providers.aws.lam.max_inflight" in result.stderr
    assert "unknown_key: unknown key" in result.stderr
    assert_clean(result.stdout, result.stderr)


@pytest.mark.slow
def test_a_real_run_leaves_no_secret_in_output_or_logs(tmp_path: Path, refused_port: int) -> None:
    """One round with 4 clients on the local platform and the embedded store; the other clusters hold the
    planted credentials but host no client (they are never contacted)."""
    write_service_account(tmp_path)
    config = tmp_path / "run.yaml"
    config.write_text(f"""
experiment: canary-run
providers:
  local:
    laptop: {{concurrency: 2}}
{clusters_yaml(refused_port)}
mongo_config:
  url: embedded
functions:
  fl_client:
    local: {{parameters: {{api_token: "${{FKT_API_TOKEN}}"}}}}
scenarios:
  federated_learning:
    rounds: 1
    clients_info:
      total_num_clients: 4
      num_clients_per_round: 4
      placement: {{laptop: 4, ow: 0, lam: 0, gcf: 0}}
    model_params: {{local_epochs: 1}}
""")
    env = {**os.environ, **{k: v for k, v in ENV.items() if k != "FKT_MONGO_PW"}}
    proc = subprocess.run([sys.executable, "-m", "fedkeeper.cli", "start", "-c", config.name, "--rounds", "1"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_clean(proc.stdout, proc.stderr)
    runs = list((tmp_path / "Logs").iterdir())
    assert len(runs) == 1
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds_completed"] == 1
    written = (runs[0] / "config.yaml").read_text()
    assert "auth: '***'" in written and "api_token: '***'" in written
    searched = assert_tree_clean(tmp_path, skip={config, tmp_path / "sa.json"})
    assert searched >= 6  # the Logs/ files at least


# ---------------------------------------------------------------------------------------------- every platform, for real


class DataSite:
    """The digits as .npy/.npz files behind HTTP Basic auth on 127.0.0.1; records the Authorization it gets."""

    def __init__(self, user: str, password: str) -> None:
        import base64
        import http.server
        import threading

        from fedkeeper.runtime import data as rdata

        spec = rdata.DataSpec()
        train, test = rdata.load_split(spec, "train"), rdata.load_split(spec, "test")
        self.files = {"/digits/train_x.npy": _npy(train.x), "/digits/train_y.npy": _npy(train.y),
                      "/digits/test.npz": _npz(x=test.x, y=test.y)}
        expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.seen: list[tuple[str, bool]] = []  # (path, had the right credential)
        site = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                ok = self.headers.get("Authorization") == expected
                site.seen.append((self.path, ok))
                body = site.files.get(self.path)
                if not ok or body is None:
                    self.send_error(401 if not ok else 404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def forget_downloads(self) -> None:
        """Remove the functions' cached copies of this site's files (every function here runs on this machine;
        the cache is keyed by the URL without its credential, and this site's port is its own)."""
        import hashlib
        import tempfile

        for folder in {Path(tempfile.gettempdir()), Path("/tmp")}:
            for path in self.files:
                name = hashlib.sha256(f"{self.url}{path}".encode()).hexdigest()[:40]
                (folder / f"fedkeeper-data-{os.getuid()}" / name).unlink(missing_ok=True)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def _npy(array: object) -> bytes:
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _npz(**arrays: object) -> bytes:
    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


LAMBDA_LOOPBACK = "http://127.0.0.1:9"  # the Lambda cluster's endpoint_url: see `lambda_on_loopback`


@pytest.fixture
def every_platform(tmp_path: Path, nx_server: str) -> Iterator[dict[str, object]]:
    """The four platforms' fakes with canary credentials, the password-protected store, the data site."""
    from fake_gcf import FakeGcf, loopback_only
    from fake_lambda import FakeLambda
    from fake_mongo_auth import AuthProxy
    from fake_openwhisk import FakeOpenWhisk

    fakes = tmp_path / "fakes"
    with contextlib.ExitStack() as stack:
        stack.enter_context(loopback_only())
        ow = FakeOpenWhisk(auth=OW_AUTH, workdir=fakes / "openwhisk")
        ow.start()
        stack.callback(ow.stop)
        gcf = FakeGcf(workdir=fakes / "gcf", pending_polls=0)
        gcf.start()
        stack.callback(gcf.close)
        gcf.require_access_token = gcf.require_id_token = True
        lam = FakeLambda(fakes / "lambda", access_key_ids={AWS_KEY_ID})
        lam.start()
        stack.callback(lam.stop)
        stack.enter_context(lambda_on_loopback())
        store = stack.enter_context(AuthProxy(nx_server, "fk", MONGO_PW))
        site = DataSite("fk", DATA_PW)
        stack.callback(site.close)
        yield {"ow": ow, "gcf": gcf, "lam": lam, "store": store, "site": site, "dir": tmp_path / "run",
               "nx": nx_server, "db": f"canary_{os.getpid()}_{tmp_path.name[-12:].replace('-', '_')}"}


@contextlib.contextmanager
def lambda_on_loopback() -> Iterator[None]:
    """The Lambda cluster names a 127.0.0.1 endpoint (a loopback cluster may use the store on this machine, as
    every other cluster here does); its requests are handed to the in-process moto under Lambda's own host name
    before anything is sent. Installed after FakeLambda, so it runs before the fake's own hook."""
    from fedkeeper.providers.aws import client as aws_client

    real = aws_client.make_session

    def rewrite(request: object, **_: object) -> None:
        url = request.url  # type: ignore[attr-defined]
        if url.startswith(LAMBDA_LOOPBACK):
            request.url = "https://lambda.eu-west-1.amazonaws.com" + url[len(LAMBDA_LOOPBACK):]  # type: ignore[attr-defined]

    def make_session(cluster: str, config: object) -> object:
        session = real(cluster, config)
        session.events.register_first("before-send.lambda", rewrite)
        return session

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(aws_client, "make_session", make_session)
        yield


def every_platform_config(folder: Path, env: dict[str, object]) -> tuple[Path, list[str]]:
    """The config, and the canaries of the GCP key (the fake signs with a real key: its lines are the canaries)."""
    from fake_lambda import REGION

    ow, gcf, lam, store, site = (env[k] for k in ("ow", "gcf", "lam", "store", "site"))
    info = gcf.service_account(folder / "sa.json", "canary-project")  # type: ignore[attr-defined]
    info["private_key_id"] = GCP_KEY_ID
    (folder / "sa.json").write_text(json.dumps(info))
    pem_lines = [line for line in info["private_key"].strip().splitlines()[2:-1] if len(line) > 20]
    data = f"http://fk:${{FKT_DATA_PW}}@127.0.0.1:{site.url.rsplit(':', 1)[1]}/digits"  # type: ignore[attr-defined]
    path = folder / "every.yaml"
    path.write_text(f"""
experiment: canary-all
providers:
  local:
    laptop: {{concurrency: 2}}
  openwhisk:
    ow:
      api_host: {ow.url}
      auth: ${{FKT_OW_AUTH}}
  aws:
    lam:
      region: {REGION}
      role_arn: {lam.role_arn}
      endpoint_url: {LAMBDA_LOOPBACK}
      access_key_id: ${{FKT_AWS_KEY_ID}}
      secret_access_key: ${{FKT_AWS_SECRET}}
      vendor_wheels: false
  google:
    gcf:
      project_id: canary-project
      region: europe-west1
      credentials: sa.json
      api_endpoint: {gcf.endpoint}
mongo_config:
  url: mongodb://127.0.0.1:{store.port}/?authSource=admin
  db: {env["db"]}
  username: fk
  password: ${{FKT_MONGO_PW}}
functions:
  fl_client:
    local: {{parameters: {{api_token: "${{FKT_API_TOKEN}}"}}}}
    openwhisk: {{memory: 512, timeout: 120000}}
    aws: {{memory: 512, timeout: 120}}
    google: {{memory: 512, timeout: 120}}
scenarios:
  federated_learning:
    rounds: 1
    seed: 3
    clients_info: {{total_num_clients: 4, num_clients_per_round: 4, placement: {{laptop: 1, ow: 1, lam: 1, gcf: 1}}}}
    server: {{cluster: laptop}}
    model_params: {{local_epochs: 1, batch_size: 32}}
    resilience: {{max_attempts: 2, backoff_base_s: 0.1}}
    training_test_data:
      train_images: {data}/train_x.npy
      train_labels: {data}/train_y.npy
      test_images: {data}/test.npz#x
      test_labels: {data}/test.npz#y
""")
    return path, pem_lines


@pytest.mark.slow
@pytest.mark.integration
def test_every_command_on_every_platform(every_platform: dict[str, object], run_cli) -> None:  # type: ignore[no-untyped-def]
    folder: Path = every_platform["dir"]  # type: ignore[assignment]
    folder.mkdir()
    config, pem_lines = every_platform_config(folder, every_platform)
    canaries = [*CANARIES, *pem_lines]
    ow, gcf, lam, store, site = (every_platform[k] for k in ("ow", "gcf", "lam", "store", "site"))
    outputs: list[str] = []

    def cli(*args: str, code: int = 0, env: dict[str, str] | None = None) -> str:
        result = run_cli(*args, "-c" if args[0] not in ("logs", "report") else "--logs-dir",
                         config.name if args[0] not in ("logs", "report") else "Logs",
                         env={**ENV, **(env or {})}, cwd=folder)
        outputs.extend([result.stdout, result.stderr])
        assert result.code == code, f"{args}: exit {result.code}\n{result.stdout}\n{result.stderr}"
        return result.stdout + result.stderr

    cli("validate")
    cli("deploy", "--dry-run")
    cli("package", "--out", "build/functions")
    cli("deploy")
    cli("status")
    started = cli("start", "--json")
    summary = json.loads(started[started.index("{"):started.rindex("}") + 1])
    assert summary["status"] == "completed", started
    assert {a["cluster"] for a in _activations(folder)} >= {"laptop", "ow", "lam", "gcf"}
    assert store.authenticated > 0  # type: ignore[attr-defined] # the store password was really used
    assert site.seen and all(ok for _path, ok in site.seen)  # type: ignore[attr-defined] # so was the data password
    cli("logs", "latest")
    cli("report", "latest")
    cli("smoke")
    cli("status", "--json")

    # error paths: a wrong store password, a key the platform refuses, a data password the site refuses
    cli("-v", "start", code=1, env={"FKT_MONGO_PW": "CANARYwrongPW0001"})
    cli("-v", "smoke", "--clusters", "ow", code=1,
        env={"FKT_OW_AUTH": OW_AUTH.split(":")[0] + ":CANARYowBADkey00000000000000000000"})
    refused_before = sum(not ok for _p, ok in site.seen)  # type: ignore[attr-defined]
    site.forget_downloads()  # type: ignore[attr-defined] # else the functions use their cached copies
    cli("-v", "start", code=1, env={"FKT_DATA_PW": quote("CANARYdataBAD0001", safe="")})
    assert sum(not ok for _p, ok in site.seen) > refused_before  # type: ignore[attr-defined] # redeployed with it
    cli("remove")

    canaries += ["CANARYwrongPW0001", "CANARYowBADkey", "CANARYdataBAD0001"]
    for text in outputs:
        for canary in canaries:
            assert canary not in text, f"secret {canary[:12]}… printed:\n{text[-3000:]}"
    searched = 0
    for path in folder.rglob("*"):
        if not path.is_file() or path.name in ("every.yaml", "sa.json"):
            continue
        if path.name == "meta.json" and ".fedkeeper" in path.parts:  # the local platform's function config
            assert path.stat().st_mode & 0o077 == 0
            continue
        for where, data in _contents(path):
            assert_bytes_clean(data, f"{path.relative_to(folder)}{where}", canaries)
        searched += 1
    assert searched >= 10 and list((folder / "build" / "functions").glob("*.zip"))
    payloads = [r.body for r in ow.requests_to("POST", "/actions/")]  # type: ignore[attr-defined]
    payloads += [r.body for r in gcf.invocations] + [r.body for r in lam.invocations]  # type: ignore[attr-defined]
    assert len(payloads) >= 6
    for body in payloads:
        assert_bytes_clean(body, "an invocation payload", canaries)
        assert b"@127.0.0.1" not in body  # no data URL with its credential in it
    lines = [f"{r.method} {r.url} {r.headers}" for r in lam.requests]  # type: ignore[attr-defined]
    lines += [f"{r.method} {r.url} " + repr({k: v for k, v in r.headers.items() if k.lower() != "authorization"})
              for r in [*ow.requests, *gcf.received]]  # type: ignore[attr-defined]
    for line in lines:
        assert_bytes_clean(line.encode(), "a request line", canaries)
    with ow._lock:  # type: ignore[attr-defined]
        ow_logs = [line for record in ow.activations.values() for line in record.get("logs") or []]  # type: ignore[attr-defined]
    function_logs = "\n".join([*ow_logs, *lam.logs.values(),  # type: ignore[attr-defined]
                               *(p.read_text(errors="replace") for p in (every_platform["dir"].parent / "fakes" / "gcf")  # type: ignore[attr-defined]
                                 .glob("*.log"))])
    assert_bytes_clean(function_logs.encode(), "the functions' logs", canaries)
    import bson
    import pymongo

    client: pymongo.MongoClient = pymongo.MongoClient(every_platform["nx"], serverSelectionTimeoutMS=5000)
    try:  # the store keeps the run's config and every activation's error: no credential in any of it
        db = client[every_platform["db"]]  # type: ignore[index]
        documents = 0
        for name in db.list_collection_names():
            if name.endswith(".chunks"):
                continue  # GridFS weight bytes
            for doc in db[name].find():
                assert_bytes_clean(bson.encode(doc), f"the store's {name} collection", canaries)
                documents += 1
        assert documents > 10
    finally:
        client.drop_database(every_platform["db"])  # type: ignore[arg-type]
        client.close()


def _activations(folder: Path) -> list[dict[str, str]]:
    import csv

    rows: list[dict[str, str]] = []
    for path in (folder / "Logs").glob("*/activations.csv"):
        with path.open(newline="") as f:
            rows += list(csv.DictReader(f))
    return rows

"""No secret from a config reaches stdout, stderr or Logs/.

Canary values are planted where secrets live — an OpenWhisk key and AWS keys through ${ENV}, a MongoDB
password inside the store URL, a GCP private key in a service-account file, a token in function parameters —
and then the commands run: the ones that succeed (validate, deploy --dry-run, a real one-round `start` on the
local platform) and the ones that fail on their error paths (an OpenWhisk controller, a Lambda endpoint and a
MongoDB server on a 127.0.0.1 port that refuses connections). Every output and every file written is searched.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

OW_AUTH = "c0ffee00-1111-2222-3333-444455556666:CANARYowKEY8842zO3xZCLrMN6v2BKK1d"
AWS_KEY_ID = "AKIACANARY8842AWSID0"
AWS_SECRET = "CANARYawsSECRET8842xyzAbCdEfGhIjKlMnOpQr"
MONGO_PW = "CANARYmongoPW8842"
GCP_KEY_ID = "CANARYgcpKEYID5521abcdef"
GCP_PEM = "-----BEGIN PRIVATE KEY-----\nMIIEvCANARYgcpPEM5521line1\nCANARYgcpPEM5521line2\n-----END PRIVATE KEY-----\n"
API_TOKEN = "CANARYparamTOKEN7731"

#: what must never appear: every secret whole, and the distinctive parts (the key without the uuid, a PEM line)
CANARIES = [OW_AUTH, OW_AUTH.split(":", 1)[1], AWS_KEY_ID, AWS_SECRET, MONGO_PW, GCP_KEY_ID, "CANARYgcpPEM5521",
            API_TOKEN]
ENV = {"FKT_OW_AUTH": OW_AUTH, "FKT_AWS_KEY_ID": AWS_KEY_ID, "FKT_AWS_SECRET": AWS_SECRET,
       "FKT_MONGO_PW": MONGO_PW, "FKT_API_TOKEN": API_TOKEN}


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
        data = path.read_bytes()
        for canary in CANARIES:
            for form in {canary, json.dumps(canary)[1:-1]}:
                assert form.encode() not in data, f"secret {canary[:12]}… found in {path.relative_to(root)}"
        count += 1
    return count


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
    (["status"], 1),
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

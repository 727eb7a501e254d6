"""The shipped configs (config-sample.yaml, examples/*.yaml) validate given their environment variables."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from fedkeeper import config as cfg
from fedkeeper.config import ConfigError, load

ROOT = Path(__file__).parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
REQUIRED = {"openwhisk.yaml", "gcf.yaml", "lambda.yaml", "mixed.yaml", "legacy-prototype.yaml",
            "fault-injection.yaml", "fedprox-noniid.yaml"}


@pytest.fixture(scope="module")
def dummy_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Dummy values for every variable the examples reference (a real service-account file shape included)."""
    key_file = tmp_path_factory.mktemp("gcp") / "sa.json"
    key_file.write_text(json.dumps({
        "type": "service_account", "project_id": "my-project", "private_key_id": "DUMMYkeyid",
        "private_key": "-----BEGIN PRIVATE KEY-----\nDUMMYpem\n-----END PRIVATE KEY-----\n",
        "client_email": "fedkeeper@my-project.iam.gserviceaccount.com", "token_uri": "https://oauth2.googleapis.com/token"}))
    return {
        "OW_API_HOST": "https://openwhisk.example.org", "OW_AUTH": "uuid-1:DUMMYowKey", "OW_HOST": "10.0.0.7:31001",
        "MONGO_URL": "mongodb://fedkeeper:DUMMYpw@mongo.example.org:27017/",
        "GCP_PROJECT": "my-project", "GOOGLE_APPLICATION_CREDENTIALS": str(key_file),
        "GCP_SA_CLIENT_EMAIL": "fedkeeper@my-project.iam.gserviceaccount.com",
        "GCP_SA_PRIVATE_KEY": "-----BEGIN PRIVATE KEY-----\nDUMMYpem\n-----END PRIVATE KEY-----\n",
        "FEDKEEPER_LAMBDA_ROLE": "arn:aws:iam::123456789012:role/fedkeeper-lambda",
        "AWS_ACCESS_KEY_ID": "AKIADUMMY0000000000", "AWS_SECRET_ACCESS_KEY": "DUMMYsecretAccessKey",
        "AWS_PROFILE": "research",
        "OPENFAAS_PASSWORD": "DUMMYofPassword", "KNATIVE_TOKEN": "DUMMYknToken",
        "AZURE_SUBSCRIPTION_ID": "0b1f6471-1bf0-4dda-aec3-cb9272f09590", "AZURE_TENANT_ID": "72f988bf-0000-0000-0000-2d7cd011db47",
        "AZURE_CLIENT_ID": "fk-client-0000", "AZURE_CLIENT_SECRET": "DUMMYazureSecret",
        "AZURE_STORAGE_CONNECTION_STRING": "DefaultEndpointsProtocol=https;AccountName=fk;AccountKey=DUMMYkey==",
    }


def referenced(path: Path) -> set[str]:
    text = "\n".join(line.split(" #", 1)[0] for line in path.read_text().splitlines()
                     if not line.lstrip().startswith("#"))
    return {m.group(1) for m in re.finditer(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", text)}


def test_every_platform_mix_has_an_example() -> None:
    assert REQUIRED <= {p.name for p in EXAMPLES}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_validates_with_its_env(path: Path, dummy_env: dict[str, str]) -> None:
    config = load(path, env=dummy_env)
    assert config.scenarios.federated_learning is not None
    counts = cfg.placement(config)
    assert sum(counts.values()) == config.fl.clients_info.total_num_clients
    remote = [n for n in cfg.hosting_clusters(config) if not config.clusters()[n].is_loopback]
    if remote:
        assert not config.mongo_config.embedded
        assert "MONGO_URL" in referenced(path)
    dumped = json.dumps(cfg.redacted(config))
    assert "DUMMY" not in dumped
    if path.name != "legacy-prototype.yaml":
        assert config.warnings == [], [str(w) for w in config.warnings]


@pytest.mark.parametrize("path", [p for p in EXAMPLES if referenced(p)], ids=lambda p: p.stem)
def test_example_documents_and_needs_its_env_vars(path: Path) -> None:
    header = "\n".join(line for line in path.read_text().splitlines() if line.lstrip().startswith("#"))
    for name in referenced(path):
        assert name in header, f"{path.name}: ${{{name}}} is used but not explained in the comments"
    with pytest.raises(ConfigError) as info:
        load(path, env={})
    assert any("environment variable" in i.message for i in info.value.issues)


def test_config_sample_is_the_embedded_default() -> None:
    config = load(ROOT / "config-sample.yaml", env={})
    assert config.mongo_config.embedded
    assert [c.kind for c in config.clusters().values()] == ["local", "local"]  # clients, and a warm aggregator
    text = (ROOT / "config-sample.yaml").read_text()
    for platform in ("openwhisk:", "google:", "aws:"):
        assert f"# {platform}" in text, f"the sample should show how to add {platform}"


def test_the_commented_clusters_of_the_sample_are_valid_when_uncommented(tmp_path: Path,
                                                                         dummy_env: dict[str, str]) -> None:
    """What the sample shows a researcher (uncomment a cluster, place clients, point at a store) validates."""
    lines = []
    for line in (ROOT / "config-sample.yaml").read_text().splitlines():
        match = re.match(r"^  # (\s*[a-z_-]+:(?: .*)?)$", line)
        lines.append(f"  {match.group(1)}" if match else line)
    text = "\n".join(lines)
    assert "ow-edge:" in text and "gcf-eu:" in text and "lambda-eu:" in text
    text = text.replace("placement: {laptop: 20}", "placement: {laptop: 5, ow-edge: 5, gcf-eu: 5, lambda-eu: 5}")
    text = re.sub(r"url: embedded\b", "url: ${MONGO_URL}", text)
    (tmp_path / "gcp-service-account.json").write_text(Path(dummy_env["GOOGLE_APPLICATION_CREDENTIALS"]).read_text())
    (tmp_path / "config.yaml").write_text(text)
    config = load(tmp_path / "config.yaml", env=dummy_env)
    assert {c.kind for c in config.clusters().values()} == {"local", "openwhisk", "google", "aws"}
    assert cfg.placement(config) == {"laptop": 5, "ow-edge": 5, "gcf-eu": 5, "lambda-eu": 5}

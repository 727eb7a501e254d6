"""docs/config-reference.md names every key the models accept and every legacy key that is translated."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

from fedkeeper.config import legacy as config_legacy
from fedkeeper.config import _unwrap
from fedkeeper.config.models import Config

DOC = (Path(__file__).parent.parent / "docs" / "config-reference.md").read_text(encoding="utf-8")


def model_keys(model: type[BaseModel], seen: set[type[BaseModel]] | None = None) -> set[str]:
    seen = seen if seen is not None else set()
    seen.add(model)
    keys: set[str] = set()
    for name, field in model.model_fields.items():
        keys.add(name)
        annotation = _unwrap(field.annotation)
        args = getattr(annotation, "__args__", ()) if getattr(annotation, "__origin__", None) is dict else ()
        target = _unwrap(args[1]) if args else annotation
        if isinstance(target, type) and issubclass(target, BaseModel) and target not in seen:
            keys |= model_keys(target, seen)
    return keys


#: every word inside a `code span` of the doc: a key counts as documented when it appears in one
CODE_WORDS = {word for span in re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", DOC, flags=re.S))
              for word in re.findall(r"[\w-]+", span)}


def documented(key: str) -> bool:
    return key in CODE_WORDS


def test_every_config_key_is_documented() -> None:
    missing = sorted(k for k in model_keys(Config) if not documented(k))
    assert not missing, f"keys missing from docs/config-reference.md: {missing}"


def test_every_legacy_key_is_documented() -> None:
    legacy = (set(config_legacy.NOOP_KEYS) | set(config_legacy.NOOP_FUNCTION_KEYS) | set(config_legacy.NOOP_FUNCTIONS)
              | set(config_legacy.LEGACY_COUNT_KEYS) - {"lambda_clients_count"}
              | {"base_url", "ow_auth", "ow_api_host", "ow_apigw_access_token", "server_cluster_name",
                 "server_manager_functions", "client_functions", "collection", "train_images_url", "openfaas"})
    missing = sorted(k for k in legacy if k not in DOC)
    assert not missing, f"legacy keys missing from docs/config-reference.md: {missing}"


def test_platform_limits_in_the_doc_match_the_code() -> None:
    from fedkeeper.providers.google.config import GCF_MEMORY_MB, GCF_TIMEOUT_S
    from fedkeeper.providers.aws.config import LAMBDA_MEMORY_MB, LAMBDA_TIMEOUT_S

    assert f"| AWS Lambda | {LAMBDA_MEMORY_MB[0]}–{LAMBDA_MEMORY_MB[1]} MB | ≤ {LAMBDA_TIMEOUT_S} s |" in DOC
    assert f"{GCF_MEMORY_MB[0]}–{GCF_MEMORY_MB[1]} MB | ≤ {GCF_TIMEOUT_S} s |" in DOC

"""Whatever is in the file, loading ends in a Config or a ConfigError — never another exception (which the CLI
would show as an unexpected error) — and no message quotes a secret. Seeded, so failures reproduce."""

from __future__ import annotations

import copy
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from fedkeeper.config import ConfigError, load_text

ROOT = Path(__file__).parent.parent
SOURCES = [ROOT / "config-sample.yaml", ROOT / "tests" / "configs" / "legacy" / "prototype.yaml",
           *sorted((ROOT / "examples").glob("*.yaml"))]
SECRET = "FUZZsecret9931"
ENV = {"OW_API_HOST": "https://openwhisk.example.org", "OW_AUTH": f"u-1:{SECRET}", "OW_HOST": "10.0.0.7:31001",
       "MONGO_URL": f"mongodb://fk:{SECRET}@db.example.org", "GCP_PROJECT": "my-project",
       "GOOGLE_APPLICATION_CREDENTIALS": "missing-sa.json", "GCP_SA_CLIENT_EMAIL": "fk@my-project.iam.gserviceaccount.com",
       "GCP_SA_PRIVATE_KEY": f"-----BEGIN PRIVATE KEY-----\n{SECRET}\n-----END PRIVATE KEY-----\n",
       "FEDKEEPER_LAMBDA_ROLE": "arn:aws:iam::123456789012:role/x", "AWS_ACCESS_KEY_ID": "AKIAFUZZ0000",
       "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_PROFILE": "research"}
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
VALUES: list[Any] = [None, [], {}, [1, 2], {"x": 1}, "", "abc", -1, 0, 10**12, 1.5, True, "${FUZZ_UNSET}", "1e3",
                     "[bold]x", "a:b@c", "${OW_AUTH}", "${MONGO_URL}", {"ow_auth": "${OW_AUTH}"}]


def paths(tree: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if prefix:
        yield prefix
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from paths(value, prefix + (key,))
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            yield from paths(value, prefix + (i,))


def mutate(tree: Any, rng: random.Random) -> None:
    for _ in range(rng.randint(1, 3)):
        path = rng.choice(list(paths(tree)))
        parent = tree
        for part in path[:-1]:
            parent = parent[part]
        roll = rng.random()
        if roll < 0.7:
            parent[path[-1]] = copy.deepcopy(rng.choice(VALUES))
        elif isinstance(parent, dict) and roll < 0.85:
            parent.pop(path[-1])
        elif isinstance(parent, dict):
            parent[f"{path[-1]}x"] = parent.pop(path[-1])


@pytest.mark.parametrize("seed", range(4))
def test_mutated_configs_load_or_fail_cleanly(seed: int) -> None:
    rng = random.Random(seed)
    outcomes = {"valid": 0, "invalid": 0}
    for _ in range(100):
        source = rng.choice(SOURCES)
        tree = yaml.load(source.read_text(), Loader=LOADER)  # noqa: S506 - a safe loader
        mutate(tree, rng)
        try:
            config = load_text(yaml.dump(tree, Dumper=DUMPER), env=ENV, base_dir=source.parent)
        except ConfigError as exc:
            outcomes["invalid"] += 1
            assert exc.issues
            assert SECRET not in str(exc)
        else:
            outcomes["valid"] += 1
            assert not any(SECRET in str(w) for w in config.warnings)
    assert outcomes["invalid"] > 20  # the mutations do break things


@pytest.mark.parametrize("seed", range(2))
def test_mangled_text_fails_cleanly(seed: int) -> None:
    rng = random.Random(seed)
    texts = [p.read_text() for p in SOURCES[:2]]
    for _ in range(150):
        chars = list(rng.choice(texts))
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(chars))
            roll = rng.random()
            if roll < 0.4:
                del chars[i]
            elif roll < 0.8:
                chars.insert(i, rng.choice(":{}[]-#'\"\t\n ,&*!|>%@`$"))
            else:
                chars[i] = rng.choice("abc019_.")
        try:
            load_text("".join(chars), env={})
        except ConfigError:
            pass

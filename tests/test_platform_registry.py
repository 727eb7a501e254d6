"""The platform registry: one registration per platform, and no platform knowledge outside its folder."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from fedkeeper.providers import registry
from fedkeeper.providers.base import PlatformSpec, Provider

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "fedkeeper"
TOY = Path(__file__).resolve().parent / "platforms"


def test_builtin_platforms_are_registered_in_a_fixed_order() -> None:
    assert registry.kinds()[:4] == ("local", "openwhisk", "aws", "google")
    assert [s.kind for s in registry.platforms()] == list(registry.kinds())


@pytest.mark.parametrize("kind", registry.kinds())
def test_every_platform_describes_itself_completely(kind: str) -> None:
    spec = registry.get(kind)
    assert isinstance(spec, PlatformSpec) and spec.kind == kind and spec.title
    assert issubclass(spec.cluster_model, BaseModel) and spec.cluster_model.kind == kind  # type: ignore[attr-defined]
    assert issubclass(registry.provider_class(kind), Provider)
    assert spec.entry_source().is_file() and spec.entry_name.endswith(".py")
    assert spec.price.gb_second >= 0 and spec.price.source
    assert spec.timeout_unit_s > 0
    folder = PACKAGE / "providers" / kind
    assert (folder / "spec.py").is_file() and (folder / "config.py").is_file() and (folder / "entry.py").is_file()


def test_unknown_kind_names_the_known_ones() -> None:
    with pytest.raises(registry.UnknownPlatform, match="unknown provider kind 'heroku'; known: local, openwhisk"):
        registry.get("heroku")


def test_a_cluster_model_that_disagrees_with_its_platform_is_refused() -> None:
    class Wrong(PlatformSpec):
        kind = "wrong"
        cluster_model = registry.get("local").cluster_model

    with pytest.raises(ValueError, match="must agree"):
        registry.register(Wrong())
    assert "wrong" not in registry.kinds()


def _platform_literals() -> set[str]:
    names = set(registry.kinds())
    for spec in registry.platforms():
        names.update(spec.legacy_aliases)
    return names


#: places outside the platform folders where a platform's name is legitimately a plain string
ALLOWED = {
    ("cli/console.py", "google"),  # the google-auth library's logger name, quieted like botocore's
}


def test_no_code_outside_a_platform_folder_names_a_platform() -> None:
    """`Outside its own folder no code compares against a platform's name`: no such string literal at all
    (the runtime and the functions run inside the platforms and are not orchestrator code)."""
    literals = _platform_literals()
    platform_dirs = {PACKAGE / "providers" / k for k in registry.kinds()}
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if any(d in path.parents for d in platform_dirs) or PACKAGE / "runtime" in path.parents:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
                      and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings \
                    and node.value in literals:
                rel = str(path.relative_to(PACKAGE))
                if (rel, node.value) not in ALLOWED:
                    found.append(f"{rel}:{node.lineno}: {node.value!r}")
    assert not found, "platform names outside their folders:\n" + "\n".join(found)


# ------------------------------------------------------------------------------- a platform from outside


def _toy_env() -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(TOY), os.environ.get("PYTHONPATH", "")]))
    return {**os.environ, "FK_PLATFORMS": "toy_platform", "PYTHONPATH": path, "COLUMNS": "200"}


TOY_CONFIG = """
experiment: toy
providers:
  toy:
    box: {concurrency: 2}
    box-server: {concurrency: 1}
functions:
  fl_client:
    toy: {memory: 256, timeout: 60}
  fl_server_aggregator:
    toy: {memory: 512, timeout: 120}
scenarios:
  federated_learning:
    rounds: 2
    seed: 3
    clients_info: {total_num_clients: 4, num_clients_per_round: 2, placement: {box: 4}}
    server: {cluster: box-server}
    data_sampling: {model: logreg}
    model_params: {local_epochs: 1}
"""


def _fedkeeper(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fedkeeper.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=240, env=_toy_env())


def test_a_registered_platform_is_validated_by_its_own_limits(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(TOY_CONFIG.replace("toy: {memory: 256, timeout: 60}",
                                                          "toy: {memory: 4096, timeout: 60}"))
    proc = _fedkeeper(tmp_path, "validate", "-c", "bad.yaml")
    assert proc.returncode == 2, proc.stderr
    assert "functions.fl_client.toy.memory: Toy FaaS memory must be 128..2048 MB (got 4096)" in proc.stderr
    (tmp_path / "typo.yaml").write_text(TOY_CONFIG.replace("box: {concurrency: 2}", "box: {concurency: 2}"))
    proc = _fedkeeper(tmp_path, "validate", "-c", "typo.yaml")
    assert proc.returncode == 2 and "providers.toy.box.concurency" in proc.stderr, proc.stderr


@pytest.mark.integration
def test_a_platform_registered_from_outside_runs_an_experiment_end_to_end(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(TOY_CONFIG)
    proc = _fedkeeper(tmp_path, "validate", "-c", "config.yaml", "--json")
    assert proc.returncode == 0, proc.stderr
    clusters = json.loads(proc.stdout)["clusters"]
    assert {(c["name"], c["kind"], c["platform"]) for c in clusters} == {
        ("box", "toy", "Toy FaaS"), ("box-server", "toy", "Toy FaaS")}
    proc = _fedkeeper(tmp_path, "-v", "start", "-c", "config.yaml", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["status"] == "completed" and summary["rounds_completed"] == 2
    proc = _fedkeeper(tmp_path, "status", "-c", "config.yaml", "--json")
    assert proc.returncode == 0, proc.stderr
    assert {f["cluster"] for f in json.loads(proc.stdout)["functions"]} == {"box", "box-server"}
    proc = _fedkeeper(tmp_path, "report", "latest", "--json")
    assert proc.returncode == 0, proc.stderr
    cost = json.loads(proc.stdout)["cost"]["platforms"]
    assert [c["price_source"] for c in cost] == ["toy list price"] and cost[0]["total_usd"] > 0
    proc = _fedkeeper(tmp_path, "remove", "-c", "config.yaml")
    assert proc.returncode == 0, proc.stderr

"""The dependency direction of docs/architecture.md, checked on every import (module level and inside functions).

runtime ← store ← providers/base ← providers/<kind> ← fabric ← tracker ← scenarios ← cli; `errors`, `secrets` and
`signals` are the foundation everyone may use. A platform's folder may read `config.base` (the Model base) and
`config.legacy` (the prototype's shared helpers) but not the assembled config, which is built from the registry.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fedkeeper"
FUNCTIONS = Path(__file__).resolve().parents[1] / "functions"


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
    return [(line, name) for line, name in out if name == "fedkeeper" or name.startswith("fedkeeper.")]


#: (importer prefix, forbidden prefixes, allowed exceptions)
RULES: list[tuple[str, tuple[str, ...], tuple[str, ...]]] = [
    ("fedkeeper.runtime", ("fedkeeper.",), ("fedkeeper.runtime",)),
    ("fedkeeper.errors", ("fedkeeper.",), ("fedkeeper.errors",)),
    # the redactor reads URLs with the runtime's parser (standard library only), the one functions use too
    ("fedkeeper.secrets", ("fedkeeper.",), ("fedkeeper.secrets", "fedkeeper.runtime.urls")),
    ("fedkeeper.signals", ("fedkeeper.",), ("fedkeeper.signals",)),
    ("fedkeeper.store", ("fedkeeper.",), ("fedkeeper.store", "fedkeeper.runtime", "fedkeeper.errors",
                                         "fedkeeper.secrets")),
    ("fedkeeper.providers", ("fedkeeper.",), ("fedkeeper.providers", "fedkeeper.runtime", "fedkeeper.errors",
                                             "fedkeeper.secrets", "fedkeeper.signals", "fedkeeper.store",
                                             "fedkeeper.config.base", "fedkeeper.config.legacy",
                                             "fedkeeper.__version__")),
    ("fedkeeper.fabric", ("fedkeeper.tracker", "fedkeeper.activations", "fedkeeper.scenarios", "fedkeeper.cli",
                          "fedkeeper.results"), ()),
    ("fedkeeper.tracker", ("fedkeeper.scenarios", "fedkeeper.cli", "fedkeeper.results.report",
                           "fedkeeper.providers.local", "fedkeeper.providers.openwhisk", "fedkeeper.providers.aws",
                           "fedkeeper.providers.google", "fedkeeper.providers.registry"), ()),
    ("fedkeeper.activations", ("fedkeeper.scenarios", "fedkeeper.cli", "fedkeeper.tracker", "fedkeeper.fabric"), ()),
    ("fedkeeper.scenarios", ("fedkeeper.cli",), ()),
    ("fedkeeper.results", ("fedkeeper.cli", "fedkeeper.scenarios", "fedkeeper.tracker", "fedkeeper.fabric"), ()),
    ("fedkeeper.config", ("fedkeeper.fabric", "fedkeeper.tracker", "fedkeeper.scenarios", "fedkeeper.cli",
                          "fedkeeper.results", "fedkeeper.store", "fedkeeper.packaging"), ()),
]


def _violations() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module(path)
        for prefix, forbidden, allowed in RULES:
            if module != prefix and not module.startswith(prefix + "."):
                continue
            for line, name in _imports(path):
                if any(name == f or name.startswith(f if f.endswith(".") else f + ".") or name == f.rstrip(".")
                       for f in forbidden) and not any(name == a or name.startswith(a + ".") for a in allowed):
                    found.append(f"{module} (line {line}) imports {name}")
    return found


def test_imports_follow_the_dependency_direction() -> None:
    found = _violations()
    assert not found, "imports against the dependency direction:\n" + "\n".join(found)


@pytest.mark.parametrize("handler", sorted(FUNCTIONS.glob("*/handler.py")), ids=lambda p: p.parent.name)
def test_functions_use_only_the_runtime(handler: Path) -> None:
    """What runs in the cloud gets `fedkeeper/runtime` and nothing else of FedKeeper."""
    bad = [name for _line, name in _imports(handler) if not name.startswith("fedkeeper.runtime")]
    assert not bad, f"{handler}: {bad}"


def test_the_checker_sees_a_violation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rules are not vacuous: an upward import in a copy of the tree is reported."""
    fake = tmp_path / "fedkeeper"
    (fake / "runtime").mkdir(parents=True)
    (fake / "runtime" / "bad.py").write_text("from fedkeeper.store import Store\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    assert _violations() == ["fedkeeper.runtime.bad (line 1) imports fedkeeper.store.Store"]
